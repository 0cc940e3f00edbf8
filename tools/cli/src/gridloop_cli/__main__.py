"""The `gridloop` command: migrate, up, status, keys, sim, plan."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg

from gridloop_cli import commands, keys, plans, stack, status
from gridloop_cli.services import SERVICES, SIMULATED_DEVICES
from gridloop_common.messaging import RpcError, UnroutableError

__all__ = ["main"]

_DEV_ENVIRONMENT_FILE = Path(".gridloop/dev.env")


def _read_environment_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, separator, value = line.partition("=")
            if separator and not line.lstrip().startswith("#"):
                values[name.strip()] = value.strip()
    return values


def development_environment() -> dict[str, str]:
    """The process environment, completed with `.env` and with development secrets made once per checkout."""
    generated = _read_environment_file(_DEV_ENVIRONMENT_FILE)
    if not generated:
        generated = {
            "GRIDLOOP_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
            "GRIDLOOP_JWT_SECRET": secrets.token_urlsafe(48),
        }
        _DEV_ENVIRONMENT_FILE.parent.mkdir(exist_ok=True)
        _DEV_ENVIRONMENT_FILE.write_text(
            "# development secrets made by `gridloop up`; not for production\n"
            + "".join(f"{name}={value}\n" for name, value in generated.items()),
            encoding="utf-8",
        )
    environment = {**generated, **_read_environment_file(Path(".env")), **os.environ}
    environment.setdefault("GRIDLOOP_UPSTREAM_URL", "http://127.0.0.1:8090")
    environment.setdefault("GRIDLOOP_WEBHOOK_URL", "http://127.0.0.1:8080/v1/webhooks")
    environment.setdefault("GRIDLOOP_OCPP_PORT", "9000")  # where the simulated chargers dial in
    return environment


def _migrate(environment: dict[str, str]) -> int:
    for service in SERVICES:
        if not service.migrates:
            continue
        print(f"migrating {service.name} ...", flush=True)
        result = subprocess.run([*service.command, "migrate"], env=environment, check=False)
        if result.returncode != 0:
            print(f"gridloop: migration of {service.name} failed (exit {result.returncode})", file=sys.stderr)
            return result.returncode
    print("migrations done")
    return 0


def _register_simulated_devices(environment: dict[str, str]) -> None:
    """Put the simulators' battery, meter and chargers in the registry (once), so the agent drives them."""
    url = environment.get("GRIDLOOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/gridloop")

    async def register() -> None:
        connection = await asyncpg.connect(url)
        try:
            for name, device_type, metadata in SIMULATED_DEVICES:
                await connection.execute(
                    "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, $2, 'SIM', $3::jsonb)"
                    " ON CONFLICT (name) DO NOTHING",
                    name,
                    device_type,
                    json.dumps(metadata),
                )
        finally:
            await connection.close()

    asyncio.run(register())
    print("simulated devices registered: " + ", ".join(name for name, _, _ in SIMULATED_DEVICES))


def _status(environment: dict[str, str]) -> int:
    amqp_url = environment.get("GRIDLOOP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    ports = {
        service.name: int(environment[service.port_variable])
        for service in SERVICES
        if service.port_variable and environment.get(service.port_variable, "").isdigit()
    }
    # The device list of telemetry-ingest takes the service_role key, signed here with the stack's secret.
    secret = environment.get("GRIDLOOP_JWT_SECRET")
    service_key = keys.make_key(secret=secret, role="service_role", valid_days=1) if secret else None
    services, queues, devices = asyncio.run(status.collect(amqp_url=amqp_url, ports=ports, service_key=service_key))
    print(status.render(services, queues, devices))
    return 0 if all(service.state == "ready" for service in services) else 1


def _keys(environment: dict[str, str]) -> int:
    secret = environment.get("GRIDLOOP_JWT_SECRET")
    if not secret:
        print("gridloop: GRIDLOOP_JWT_SECRET is not set", file=sys.stderr)
        return 2
    for role in keys.ROLES:
        print(f"{role}: {keys.make_key(secret=secret, role=role)}")
    return 0


def _commands(environment: dict[str, str], action: list[str], limit: int) -> int:
    amqp_url = environment.get("GRIDLOOP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    try:
        if action[:1] == ["show"] and len(action) == 2:
            answer = asyncio.run(
                commands.fetch(
                    amqp_url=amqp_url, routing_key="scheduler.commands.show", request={"command_id": action[1]}
                )
            )
            print(commands.render_show(answer))
        elif not action:
            answer = asyncio.run(
                commands.fetch(amqp_url=amqp_url, routing_key="scheduler.commands.list", request={"limit": limit})
            )
            print(commands.render_list(answer))
        else:
            print("usage: gridloop commands [show COMMAND_ID]", file=sys.stderr)
            return 2
    except (RpcError, UnroutableError) as error:
        print(f"gridloop: {error}", file=sys.stderr)
        return 1
    return 0


def _plans(environment: dict[str, str], action: list[str], limit: int) -> int:
    amqp_url = environment.get("GRIDLOOP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    try:
        if action[:1] == ["show"] and len(action) == 2:
            answer = asyncio.run(
                commands.fetch(amqp_url=amqp_url, routing_key=plans.RUNS_SHOW, request={"run_id": action[1]})
            )
            print(plans.render_show(answer))
        elif not action:
            answer = asyncio.run(
                commands.fetch(amqp_url=amqp_url, routing_key=plans.RUNS_LIST, request={"limit": limit})
            )
            print(plans.render_list(answer))
        else:
            print("usage: gridloop plans [show RUN_ID]", file=sys.stderr)
            return 2
    except (RpcError, UnroutableError) as error:
        print(f"gridloop: {error}", file=sys.stderr)
        return 1
    return 0


def _plan(scenario: str, out: str | None, repetitions: int) -> int:
    """Solve one scenario file with the optimizer's own command, run as a process: the CLI imports no
    service (import-linter contract), it runs them, as `migrate` does."""
    optimizer = next(service for service in SERVICES if service.name == "optimizer")
    installed = Path(sys.executable).with_name(optimizer.command[0])
    command = [str(installed) if installed.exists() else optimizer.command[0], *optimizer.command[1:]]
    command += ["plan", scenario, "--repetitions", str(repetitions)]
    if out is not None:
        command += ["--out", out]
    try:
        return subprocess.run(command, check=False).returncode
    except FileNotFoundError:
        print(f"gridloop: {optimizer.command[0]} is not installed (uv sync --all-packages)", file=sys.stderr)
        return 2


def _simulate(kind: str, argv: list[str]) -> int:
    # Imported late: heavy, and needed only by `sim`.
    import gridloop_simulators.battery
    import gridloop_simulators.charger
    import gridloop_simulators.meter
    import gridloop_simulators.upstream

    runner = {
        "battery": gridloop_simulators.battery.main,
        "charger": gridloop_simulators.charger.main,
        "meter": gridloop_simulators.meter.main,
        "upstream": gridloop_simulators.upstream.main,
    }[kind]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner(argv))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gridloop", description="Run and inspect a gridloop stack.")
    subcommands = parser.add_subparsers(dest="command", required=True)
    subcommands.add_parser("migrate", help="create the database and apply every service's migrations")
    up = subcommands.add_parser("up", help="run every service and simulator until Ctrl-C")
    up.add_argument("--no-simulators", action="store_true", help="start only the five services")
    up.add_argument("--exit-when-ready", action="store_true", help="stop again once every service is ready")
    up.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for readiness")
    subcommands.add_parser("status", help="health of every service, queue depths and dead letters")
    listing = subcommands.add_parser("commands", help="the scheduler's commands; `commands show ID` for one's history")
    listing.add_argument("action", nargs="*", help="nothing, or: show COMMAND_ID")
    listing.add_argument("--limit", type=int, default=50, help="most commands listed")
    runs = subcommands.add_parser("plans", help="the optimizer's runs; `plans show RUN_ID` for one run's plan")
    runs.add_argument("action", nargs="*", help="nothing, or: show RUN_ID")
    runs.add_argument("--limit", type=int, default=20, help="most runs listed")
    subcommands.add_parser("asyncapi", help="print the AsyncAPI 3 description (docs/asyncapi.yaml)")
    subcommands.add_parser("keys", help="print anon, authenticated, service_role and grid_operator API keys")
    plan = subcommands.add_parser("plan", help="solve a bess-arbitrage-scenario/1 file, write its result file")
    plan.add_argument("scenario", help="the scenario file (bench/scenarios/*.json)")
    plan.add_argument("--out", help="where to write the result (default: standard output)")
    plan.add_argument("--repetitions", type=int, default=10, help="timed solves after one warm-up (default 10)")
    simulate = subcommands.add_parser("sim", help="run a simulator")
    simulate.add_argument("kind", choices=["battery", "charger", "meter", "upstream"])
    simulate.add_argument("options", nargs=argparse.REMAINDER, help="options of the simulator (see --help)")
    arguments = parser.parse_args(argv)
    if arguments.command == "asyncapi":
        from gridloop_cli import asyncapi

        print(asyncapi.render(), end="")
        raise SystemExit(0)
    if arguments.command == "plan":
        raise SystemExit(_plan(arguments.scenario, arguments.out, arguments.repetitions))
    environment = development_environment()
    if arguments.command == "migrate":
        raise SystemExit(_migrate(environment))
    if arguments.command == "status":
        raise SystemExit(_status(environment))
    if arguments.command == "commands":
        raise SystemExit(_commands(environment, arguments.action, arguments.limit))
    if arguments.command == "plans":
        raise SystemExit(_plans(environment, arguments.action, arguments.limit))
    if arguments.command == "keys":
        raise SystemExit(_keys(environment))
    if arguments.command == "sim":
        raise SystemExit(_simulate(arguments.kind, arguments.options))
    code = _migrate(environment)
    if code != 0:
        raise SystemExit(code)
    if not arguments.no_simulators:
        _register_simulated_devices(environment)
    supervisor = stack.Supervisor(environment=environment, with_simulators=not arguments.no_simulators)
    raise SystemExit(
        asyncio.run(supervisor.run(ready_timeout_s=arguments.ready_timeout, exit_when_ready=arguments.exit_when_ready))
    )


if __name__ == "__main__":
    main()
