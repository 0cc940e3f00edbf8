"""Fakes shipped with the shared library for every service's tests."""

from gridloop_common.testing.clock import FakeClock, FakeTimeEventLoop, run_on_fake_time
from gridloop_common.testing.databases import side_database
from gridloop_common.testing.proxy import TcpProxy

__all__ = ["FakeClock", "FakeTimeEventLoop", "TcpProxy", "run_on_fake_time", "side_database"]
