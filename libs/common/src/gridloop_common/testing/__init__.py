"""Fakes shipped with the shared library for every service's tests."""

from gridloop_common.testing.clock import FakeClock
from gridloop_common.testing.proxy import TcpProxy

__all__ = ["FakeClock", "TcpProxy"]
