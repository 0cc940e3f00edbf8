"""What the CLI knows of the stack: each service's console script and port, and the simulators."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

__all__ = ["SERVICES", "SIMULATED_DEVICES", "SIMULATORS", "ServiceProcess"]


@dataclass(frozen=True)
class ServiceProcess:
    """One child process of `gridloop up`."""

    name: str
    command: tuple[str, ...]
    port: int | None = None
    migrates: bool = False
    port_variable: str | None = None  # the setting that moves the port


# Order matters for `migrate`: telemetry-ingest owns flux.*, which the others read.
SERVICES: Final[tuple[ServiceProcess, ...]] = (
    ServiceProcess("telemetry-ingest", ("gridloop-ingest",), 8081, True, "GRIDLOOP_INGEST_PORT"),
    ServiceProcess("scheduler", ("gridloop-scheduler",), 9101, True, "GRIDLOOP_SCHEDULER_PORT"),
    ServiceProcess("webhook-gateway", ("gridloop-gateway",), 8080, False, "GRIDLOOP_GATEWAY_PORT"),
    ServiceProcess("optimizer", ("gridloop-optimizer",), 9102, True, "GRIDLOOP_OPTIMIZER_PORT"),
    ServiceProcess("device-agent", ("gridloop-agent",), 9103, False, "GRIDLOOP_AGENT_PORT"),
)

# The simulated chargers' Basic-auth password: a local development stack's, like guest/guest for RabbitMQ.
SIMULATED_CHARGER_PASSWORD: Final = "simulated-charger"
_SIMULATED_CHARGER_PASSWORD_SHA256: Final = hashlib.sha256(SIMULATED_CHARGER_PASSWORD.encode()).hexdigest()

# Arguments in braces are filled from the environment when the process starts.
SIMULATORS: Final[tuple[ServiceProcess, ...]] = (
    ServiceProcess("sim-battery", ("gridloop", "sim", "battery", "--port", "5020")),
    ServiceProcess("sim-meter", ("gridloop", "sim", "meter", "--port", "5021")),
    # Two EV chargers dialling in to the agent: a V1G on OCPP 1.6J and a V2G on OCPP 2.1.
    ServiceProcess(
        "sim-charger-v1g",
        (
            "gridloop",
            "sim",
            "charger",
            "--url",
            "ws://127.0.0.1:{GRIDLOOP_OCPP_PORT}/ocpp",
            "--id",
            "SIM-V1G-1",
            "--password",
            SIMULATED_CHARGER_PASSWORD,
            "--protocol",
            "ocpp1.6",
            "--soc",
            "35",
        ),
    ),
    ServiceProcess(
        "sim-charger-v2g",
        (
            "gridloop",
            "sim",
            "charger",
            "--url",
            "ws://127.0.0.1:{GRIDLOOP_OCPP_PORT}/ocpp",
            "--id",
            "SIM-V2G-1",
            "--password",
            SIMULATED_CHARGER_PASSWORD,
            "--protocol",
            "ocpp2.1",
            "--v2g",
            "--soc",
            "70",
        ),
    ),
    ServiceProcess(
        "sim-upstream",
        (
            "gridloop",
            "sim",
            "upstream",
            "--port",
            "8090",
            "--webhook-url",
            "{GRIDLOOP_WEBHOOK_URL}",
            "--webhook-secret",
            "{GRIDLOOP_WEBHOOK_SECRET_FIRST}",
            "--demo",
        ),
    ),
)

# The devices `gridloop up` registers for its simulators (docs/design.md §4 metadata).
SIMULATED_DEVICES: Final[tuple[tuple[str, str, dict[str, object]], ...]] = (
    (
        "battery-1",
        "bess",
        {
            "capacity_kwh": 13.5,
            "max_power_kw": 5,
            "site_meter": "meter-1",
            "modbus": {"host": "127.0.0.1", "port": 5020, "unit_id": 1, "profile": "sunspec"},
        },
    ),
    ("meter-1", "meter", {"modbus": {"host": "127.0.0.1", "port": 5021, "unit_id": 1, "profile": "sunspec"}}),
    (
        "ev-v1g-1",
        "electric_vehicle_v1g",
        {
            "max_power_kw": 11,
            "phases": 3,
            "ocpp": {"id": "SIM-V1G-1", "version": "1.6", "password_sha256": _SIMULATED_CHARGER_PASSWORD_SHA256},
        },
    ),
    (
        "ev-v2g-1",
        "electric_vehicle_v2g",
        {
            "max_power_kw": 11,
            "phases": 3,
            "ocpp": {"id": "SIM-V2G-1", "version": "2.1", "password_sha256": _SIMULATED_CHARGER_PASSWORD_SHA256},
        },
    ),
)
