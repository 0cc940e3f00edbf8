"""Every service's /metrics exposition passes `promtool check metrics`, Prometheus's own linter.

Each service's app module is imported in a process of its own, so its registry holds exactly what that
service serves (the default registry, rendered by ``generate_latest`` as ``/metrics`` does). A labelled
metric has no sample until its first label set is used, and promtool lints only families with samples,
so every such family is given one zero sample here: a name is checked before it is ever incremented
(``gridloop_reordered_days_total`` failed only once a day had been reordered).

promtool comes from the Debian package ``prometheus``; scripts/ensure-infrastructure.sh installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

SERVICES = [
    ("webhook-gateway", "webhook_gateway.app"),
    ("scheduler", "scheduler.app"),
    ("optimizer", "optimizer.app"),
    ("telemetry-ingest", "telemetry_ingest.app"),
    ("device-agent", "device_agent.app"),
]

_RENDER = """
import importlib
import sys

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

importlib.import_module(sys.argv[1])

SAMPLES = {
    "counter": [("_total", {})],
    "gauge": [("", {})],
    "histogram": [("_bucket", {"le": "+Inf"}), ("_count", {}), ("_sum", {})],
    "summary": [("_count", {}), ("_sum", {})],
    "info": [("_info", {})],
    "stateset": [("", {})],
    "unknown": [("", {})],
}


class EveryFamilySampled:
    def collect(self):
        for family in REGISTRY.collect():
            if family.samples:
                yield family
                continue
            sampled = Metric(family.name, family.documentation, family.type, family.unit)
            for suffix, labels in SAMPLES[family.type]:
                sampled.add_sample(family.name + suffix, labels, 0.0)
            yield sampled


registry = CollectorRegistry(auto_describe=False)
registry.register(EveryFamilySampled())
sys.stdout.buffer.write(generate_latest(registry))
"""


@pytest.mark.parametrize(("service", "module"), SERVICES, ids=[service for service, _ in SERVICES])
def test_the_exposition_passes_promtool_check_metrics(service: str, module: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: run scripts/ensure-infrastructure.sh"
    exposition = subprocess.run(
        [sys.executable, "-c", _RENDER, module], capture_output=True, check=True, timeout=120
    ).stdout
    assert b"# TYPE gridloop_" in exposition  # the service's own metrics, not only the process collector's

    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)

    assert result.returncode == 0, f"{service}: {(result.stdout + result.stderr).decode()}"
