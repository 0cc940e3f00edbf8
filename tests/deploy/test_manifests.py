"""The deployment files agree with the code: Kubernetes manifests, docker-compose.yml, Dockerfiles, .env.example.

The source of truth is the code: each service's settings class (its ``GRIDLOOP_*`` variables, their
defaults and its port), its pyproject.toml (distribution and console script) and the CLI's list of
services that own migrations. Every check names the file and the service it failed on.

Kubernetes: every YAML document under deploy/k8s is validated against the Kubernetes OpenAPI schemas
bundled with kubernetes-validate (offline, strict: unknown fields fail). Kustomizations are not
Kubernetes objects; they are checked structurally and rendered by ``render`` below, a small model of
the kustomize features these overlays use (it refuses any other feature), so the overlays are
validated as they will be applied. When kubectl is installed, ``render`` is compared with
``kubectl kustomize``.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings

from gridloop_common.contracts import routing
from gridloop_common.messaging.topology import EXCHANGES, QUEUES

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / "services"
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
K8S_README = K8S / "README.md"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
TOOLS_DOCKERFILE = ROOT / "tools" / "Dockerfile"
PRODUCER_SCRIPT = ROOT / "deploy" / "rabbitmq" / "producer-user.sh"

# The dev group requires kubernetes-validate>=1.34, which bundles this version's schemas.
KUBERNETES_VERSION = "1.34.0"
SECRET_NAME = "gridloop-secrets"
PYTHON_IMAGE = "python:3.11-slim"
UV_IMAGE = "ghcr.io/astral-sh/uv:"
# docs/design.md §6: on SIGTERM a service finishes or requeues its work and exits within 20 s.
SHUTDOWN_BUDGET_S = 20
# Services that run two replicas in production; the device agent must stay the only writer to its devices.
PROD_REPLICATED = {"webhook-gateway", "scheduler", "telemetry-ingest"}
SINGLE_WRITER = "device-agent"
# Valid stand-ins for required secrets, used to check that configured values pass the settings classes.
SECRET_STAND_INS = {
    "GRIDLOOP_WEBHOOK_SECRET": "whsec_c3RhbmQtaW4tc2VjcmV0LWZvci10ZXN0cw==",
    "GRIDLOOP_JWT_SECRET": "stand-in-jwt-secret-of-at-least-32-characters",
}


# ---------------------------------------------------------------------------------------------------
# The code's view: services, their settings and their images
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One environment variable of a service."""

    variable: str
    annotation: Any
    default: str | None  # as text; None: required, no default
    default_value: Any
    connection_url: bool  # a broker or database DSN: carries credentials, and its default is 127.0.0.1
    sensitive: bool  # a secret or a connection URL

    def means_default(self, text: str) -> bool:
        """Whether ``text``, read from the environment, gives the default value (so "on" means True)."""
        try:
            return bool(TypeAdapter(self.annotation).validate_python(text) == self.default_value)
        except ValidationError:
            return False


@dataclass(frozen=True)
class Service:
    """One folder under services/."""

    directory: str
    distribution: str
    script: str
    package: str
    settings_class: type[BaseSettings]
    settings: Mapping[str, Setting]
    port_variable: str
    port: int
    # Further ports the service serves besides health and metrics (the device-agent's OCPP central system):
    # (port name, variable, default), from the *_port fields marked json_schema_extra={"published_port": name}.
    extra_ports: tuple[tuple[str, str, int], ...] = ()

    @property
    def all_ports(self) -> list[int]:
        return [self.port, *(number for _, _, number in self.extra_ports)]

    @property
    def dockerfile(self) -> str:
        return f"services/{self.directory}/Dockerfile"


def _settings_of(settings_class: type[BaseSettings]) -> dict[str, Setting]:
    """Every variable a settings class reads: GRIDLOOP_ + field name, recursing into settings fragments."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    found: dict[str, Setting] = {}
    for field_name, field in settings_class.model_fields.items():
        annotation = field.annotation
        if inspect.isclass(annotation) and issubclass(annotation, BaseSettings):
            found.update(_settings_of(annotation))
            continue
        default: str | None = None
        value = None
        if not field.is_required():
            value = field.get_default(call_default_factory=True)
            default = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        connection_url = inspect.isclass(annotation) and "Dsn" in annotation.__name__
        variable = f"{prefix}{field_name}".upper()
        found[variable] = Setting(
            variable=variable,
            annotation=annotation,
            default=default,
            default_value=value,
            connection_url=connection_url,
            sensitive=connection_url or annotation is SecretStr,
        )
    return found


def _service_directories() -> list[str]:
    return sorted(path.name for path in SERVICES_DIR.iterdir() if (path / "pyproject.toml").is_file())


SERVICE_DIRECTORIES = _service_directories()


@cache
def service(directory: str) -> Service:
    project = tomllib.loads((SERVICES_DIR / directory / "pyproject.toml").read_text())["project"]
    scripts = project.get("scripts", {})
    assert len(scripts) == 1, f"services/{directory}/pyproject.toml: expected one console script, got {scripts}"
    [(script, entry_point)] = scripts.items()
    package = entry_point.split(":")[0].split(".")[0]
    module = import_module(f"{package}.settings")
    classes = [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, BaseSettings) and value.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"{module.__file__}: expected one BaseSettings class, found {classes}"
    settings_class = classes[0]
    settings = _settings_of(settings_class)
    prefix = settings_class.model_config.get("env_prefix", "")
    extra_ports: list[tuple[str, str, int]] = []
    ports = []
    for name, field in settings_class.model_fields.items():
        if not name.endswith("_port"):
            continue
        marks = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "published_port" in marks:
            variable = f"{prefix}{name}".upper()
            extra_ports.append((str(marks["published_port"]), variable, int(str(settings[variable].default))))
        else:
            ports.append(name)
    assert len(ports) == 1, f"{module.__file__}: expected one *_port field for health and metrics, found {ports}"
    port_variable = f"{prefix}{ports[0]}".upper()
    port = settings[port_variable].default
    assert port is not None, f"{module.__file__}: {port_variable} has no default"
    return Service(
        directory=directory,
        distribution=project["name"],
        script=script,
        package=package,
        settings_class=settings_class,
        settings=settings,
        port_variable=port_variable,
        port=int(port),
        extra_ports=tuple(extra_ports),
    )


def all_services() -> list[Service]:
    return [service(directory) for directory in SERVICE_DIRECTORIES]


@cache
def all_settings() -> dict[str, Setting]:
    """The union of every service's variables; a name shared by two services must mean the same thing."""
    union: dict[str, Setting] = {}
    for each in all_services():
        for variable, setting in each.settings.items():
            known = union.setdefault(variable, setting)
            assert known.default == setting.default, (
                f"{variable} has default {setting.default!r} in {each.directory} but {known.default!r} elsewhere"
            )
    return union


def _settings_error(settings_class: type[BaseSettings], environment: Mapping[str, str], monkeypatch: Any) -> str:
    """Instantiate a settings class from exactly ``environment``; '' when valid, else the validation error."""
    for variable in all_settings():
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    try:
        settings_class()
    except ValidationError as error:
        return str(error)
    return ""


@dataclass(frozen=True)
class Member:
    """A uv workspace member."""

    path: str  # relative to the root
    distribution: str
    dependencies: tuple[str, ...]


@cache
def workspace_members() -> dict[str, Member]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members: dict[str, Member] = {}
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        for folder in sorted(ROOT.glob(pattern)):
            if (folder / "pyproject.toml").is_file():
                project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
                names = tuple(
                    re.split(r"[\s<>=!~;\[]", dependency, maxsplit=1)[0]
                    for dependency in project.get("dependencies", [])
                )
                members[project["name"]] = Member(str(folder.relative_to(ROOT)), project["name"], names)
    return members


def workspace_closure(distributions: Iterable[str]) -> set[str]:
    """The distributions and every workspace member they depend on, transitively."""
    members = workspace_members()
    pending, seen = list(distributions), set[str]()
    while pending:
        name = pending.pop()
        if name in seen or name not in members:
            continue
        seen.add(name)
        pending.extend(members[name].dependencies)
    return seen


# ---------------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # 0-based index of the FROM it belongs to


def parse_dockerfile(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    logical = ""
    stage = -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, arguments = logical.partition(" ")
        logical = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(arguments.split()), stage))
    return instructions


def exec_form(arguments: str, *, where: str) -> list[str]:
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), (
        f"{where}: {arguments!r} is not in exec form (a JSON array of strings)"
    )
    return value


def uv_syncs(instructions: list[Instruction]) -> list[tuple[int, list[str]]]:
    """(instruction index, arguments) of every `uv sync` RUN."""
    found = []
    for index, instruction in enumerate(instructions):
        if instruction.keyword == "RUN" and "uv sync" in instruction.arguments:
            words = instruction.arguments.split()
            found.append((index, words[words.index("sync") + 1 :]))
    return found


def synced_packages(arguments: list[str]) -> set[str]:
    return {arguments[index + 1] for index, word in enumerate(arguments) if word == "--package"}


def check_image_build(path: Path, distributions: set[str]) -> list[Instruction]:
    """The layering every image shares; returns the instructions of the final stage."""
    where = str(path.relative_to(ROOT))
    instructions = parse_dockerfile(path)
    assert instructions, f"{where} is empty"
    bases = [i.arguments.split()[0] for i in instructions if i.keyword == "FROM"]
    assert bases and all(base == PYTHON_IMAGE for base in bases), f"{where}: every stage must be FROM {PYTHON_IMAGE}"
    uv_copies = [i for i in instructions if i.keyword == "COPY" and f"--from={UV_IMAGE}" in i.arguments]
    assert uv_copies, f"{where}: uv must be copied from the official image ({UV_IMAGE}<version>)"
    for copy_ in uv_copies:
        version = copy_.arguments.split(f"--from={UV_IMAGE}")[1].split()[0]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{where}: pin the uv image to a release, not {version!r}"

    syncs = uv_syncs(instructions)
    assert len(syncs) == 2, f"{where}: expected a dependency-only `uv sync` and a full one, found {len(syncs)}"
    (first_index, first), (second_index, second) = syncs
    for flags, arguments in (
        ({"--frozen", "--no-install-workspace", "--no-dev"}, first),
        ({"--frozen", "--no-dev"}, second),
    ):
        assert flags <= set(arguments), (
            f"{where}: `uv sync {' '.join(arguments)}` lacks {sorted(flags - set(arguments))}"
        )
        assert synced_packages(arguments) == distributions, (
            f"{where}: `uv sync {' '.join(arguments)}` installs {sorted(synced_packages(arguments))}, "
            f"expected --package {sorted(distributions)}"
        )
    assert "--no-install-workspace" not in second, f"{where}: the second `uv sync` must install the workspace packages"

    # The cached layer: before the first sync only pyproject files, uv.lock and .python-version are copied.
    copied_before = [
        source
        for instruction in instructions[:first_index]
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments
        for source in instruction.arguments.split()[:-1]
    ]
    for source in copied_before:
        assert source in {"pyproject.toml", "uv.lock", ".python-version"} or source.endswith("/pyproject.toml"), (
            f"{where}: COPY {source} before the dependency-only `uv sync` defeats its layer cache"
        )
    assert {"pyproject.toml", "uv.lock"} <= set(copied_before), f"{where}: copy pyproject.toml and uv.lock first"
    members = workspace_members()
    missing = {f"{member.path}/pyproject.toml" for member in members.values()} - set(copied_before)
    assert not missing, f"{where}: uv needs every workspace member's pyproject.toml; not copied: {sorted(missing)}"

    copied_sources = {
        source.rstrip("/")
        for instruction in instructions[first_index:second_index]
        if instruction.keyword == "COPY"
        for source in instruction.arguments.split()[:-1]
    }
    for distribution in sorted(workspace_closure(distributions)):
        source = f"{members[distribution].path}/src"
        assert source in copied_sources, f"{where}: {distribution} is built from {source}, which is not copied"

    final_stage = max(i.stage for i in instructions)
    final = [i for i in instructions if i.stage == final_stage]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, f"{where}: the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, (
        f"{where}: USER {users[-1]!r} must be a numeric non-zero UID (Kubernetes runAsNonRoot cannot check a name)"
    )
    return final


def dockerfile_user(path: Path) -> int:
    users = [i.arguments for i in parse_dockerfile(path) if i.keyword == "USER"]
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize("directory", SERVICE_DIRECTORIES)
def test_service_dockerfile(directory: str) -> None:
    each = service(directory)
    path = ROOT / each.dockerfile
    assert path.is_file(), f"{each.dockerfile} is missing"
    final = check_image_build(path, {each.distribution})
    where = each.dockerfile

    exposed = {port for i in final if i.keyword == "EXPOSE" for port in i.arguments.split()}
    assert exposed == {str(port) for port in each.all_ports}, (
        f"{where}: EXPOSE {sorted(exposed)}, expected {each.all_ports} ({each.port_variable} and any extra port)"
    )

    healthchecks = [i.arguments for i in final if i.keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1, f"{where}: expected one HEALTHCHECK"
    assert "/healthz" in healthchecks[0] and str(each.port) in healthchecks[0], (
        f"{where}: HEALTHCHECK must hit /healthz on port {each.port}: {healthchecks[0]}"
    )
    commands = [i.arguments for i in final if i.keyword == "CMD"]
    assert commands, f"{where}: no CMD"
    assert exec_form(commands[-1], where=where) == [each.script], f"{where}: CMD must be [{each.script!r}]"
    assert not [i for i in final if i.keyword == "ENTRYPOINT"], f"{where}: use CMD, so `docker run ... migrate` works"


def test_tools_dockerfile_runs_the_cli_and_every_migration() -> None:
    from gridloop_cli.services import SERVICES

    scripts = {each.script: each.distribution for each in all_services()}
    migrating = set()
    for process in SERVICES:
        if process.migrates:
            assert process.command[0] in scripts, f"gridloop_cli.services: unknown script {process.command[0]}"
            migrating.add(scripts[process.command[0]])
    final = check_image_build(TOOLS_DOCKERFILE, {"gridloop-cli", *migrating})
    entrypoints = [i.arguments for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoints and exec_form(entrypoints[-1], where="tools/Dockerfile") == ["gridloop"], (
        "tools/Dockerfile: ENTRYPOINT must be ['gridloop']"
    )


def test_dockerignore_keeps_secrets_and_environments_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    for needed in (".env", ".git", ".venv", "**/__pycache__", ".gridloop"):
        assert needed in patterns, f".dockerignore must exclude {needed}"
    for needed in ("uv.lock", "pyproject.toml", "*.toml", "src", "**/src", "libs", "services", "tools"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which the images are built from"


# ---------------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict), "docker-compose.yml: no services"
    return document


def compose_service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    value: dict[str, Any] = services[name]
    return value


def compose_environment(definition: Mapping[str, Any]) -> dict[str, str]:
    environment = definition.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<word>[^}]*))?\}")


def interpolate(value: str, *, where: str) -> str:
    """Compose interpolation with nothing set: ${X:-default} gives the default, ${X:?message} a stand-in."""

    def substitute(match: re.Match[str]) -> str:
        name, op, word = match["name"], match["op"], match["word"]
        if op in (":-", "-"):
            return word
        if op in (":?", "?"):
            assert name in SECRET_STAND_INS, f"{where}: ${{{name}:?...}} needs a stand-in in SECRET_STAND_INS"
            return SECRET_STAND_INS[name]
        pytest.fail(f"{where}: ${{{name}}} has no default; use ${{{name}:-default}} or ${{{name}:?message}}")

    return _INTERPOLATION.sub(substitute, value).replace("$$", "$")


def duration_s(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(value))
    assert match and any(match.groups()), f"not a duration: {value!r}"
    return int(match[1] or 0) * 60 + float(match[2] or 0)


def published_ports(definition: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) of every published port."""
    found = []
    for entry in definition.get("ports", []):
        if isinstance(entry, dict):
            found.append((int(entry["published"]), int(entry["target"])))
        else:
            parts = str(entry).split("/")[0].split(":")
            found.append((int(parts[-2]) if len(parts) > 1 else int(parts[-1]), int(parts[-1])))
    return found


def healthcheck_text(definition: Mapping[str, Any]) -> str:
    check = definition.get("healthcheck") or {}
    test = check.get("test")
    if not test or check.get("disable") or test == ["NONE"]:
        return ""
    return " ".join(test) if isinstance(test, list) else str(test)


def dependencies(definition: Mapping[str, Any]) -> dict[str, str]:
    depends_on = definition.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {name: options.get("condition", "service_started") for name, options in depends_on.items()}


@pytest.mark.parametrize("directory", SERVICE_DIRECTORIES)
def test_compose_runs_each_service_as_built_and_configured(directory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    each = service(directory)
    definition = compose_service(directory)
    where = f"docker-compose.yml service {directory!r}"

    build = definition.get("build")
    assert isinstance(build, dict), f"{where}: needs build: {{context: ., dockerfile: {each.dockerfile}}}"
    assert build.get("context") == "." and build.get("dockerfile") == each.dockerfile, (
        f"{where}: build must be context '.' with dockerfile {each.dockerfile}, got {build}"
    )
    for key in ("command", "entrypoint"):
        if key in definition:
            command = definition[key]
            command = command.split() if isinstance(command, str) else command
            assert command[:1] == [each.script], f"{where}: {key} must run {each.script}, got {command}"

    assert published_ports(definition) == [(port, port) for port in each.all_ports], (
        f"{where}: must publish exactly {each.all_ports}, each as itself ({each.port_variable} first), "
        f"got {published_ports(definition)}"
    )

    environment = {
        name: interpolate(value, where=f"{where} {name}") for name, value in compose_environment(definition).items()
    }
    unknown = sorted(name for name in environment if name.startswith("GRIDLOOP_") and name not in each.settings)
    assert not unknown, f"{where}: {unknown} are not settings of {each.settings_class.__name__}"
    if each.port_variable in environment:
        assert environment[each.port_variable] == str(each.port), (
            f"{where}: {each.port_variable}={environment[each.port_variable]} does not match the published port"
        )
    needed = {name for name, setting in each.settings.items() if setting.default is None or setting.connection_url}
    missing = sorted(needed - set(environment))
    assert not missing, f"{where}: must set {missing} (required, or a connection URL whose default is 127.0.0.1)"
    for name, value in environment.items():
        if name.endswith("_URL"):
            host = urlsplit(value).hostname
            assert host in compose()["services"], f"{where}: {name} points at {host!r}, which is not a compose service"
    error = _settings_error(each.settings_class, environment, monkeypatch)
    assert not error, f"{where}: its environment does not pass {each.settings_class.__name__}: {error}"

    env_files = definition.get("env_file") or []
    env_files = [env_files] if isinstance(env_files, str | dict) else env_files
    paths = [entry["path"] if isinstance(entry, dict) else entry for entry in env_files]
    assert ".env" in paths, f"{where}: secrets and overrides come from env_file .env"

    check = healthcheck_text(definition)
    assert check, f"{where}: no healthcheck"
    assert re.search(rf":{each.port}/(healthz|readyz)\b", check), (
        f"{where}: the healthcheck must hit /healthz or /readyz on port {each.port}: {check}"
    )
    grace = duration_s(definition.get("stop_grace_period", "10s"))
    assert grace >= SHUTDOWN_BUDGET_S + 5, f"{where}: stop_grace_period {grace} s < {SHUTDOWN_BUDGET_S + 5} s"

    depends = dependencies(definition)
    assert depends.get("rabbitmq") == "service_healthy", f"{where}: must wait for rabbitmq: service_healthy"
    if "GRIDLOOP_DATABASE_URL" in each.settings:
        assert depends.get("postgres") == "service_healthy", f"{where}: must wait for postgres: service_healthy"
        assert depends.get("migrate") == "service_completed_successfully", (
            f"{where}: must wait for migrate: service_completed_successfully"
        )


def test_compose_infrastructure_migration_and_simulators() -> None:
    services = compose()["services"]
    rabbitmq, postgres = compose_service("rabbitmq"), compose_service("postgres")
    assert str(rabbitmq.get("image", "")).startswith("rabbitmq:3.13-management"), (
        "rabbitmq: use rabbitmq:3.13-management"
    )
    assert str(postgres.get("image", "")).startswith("postgres:16"), "postgres: use postgres:16"
    for name in ("rabbitmq", "postgres"):
        assert healthcheck_text(services[name]), f"docker-compose.yml service {name!r}: no healthcheck"

    migrate = compose_service("migrate")
    assert migrate.get("build", {}).get("dockerfile") == "tools/Dockerfile", "migrate: build it from tools/Dockerfile"
    assert migrate.get("command") == ["migrate"], "migrate: command must be ['migrate'] (gridloop migrate)"
    assert str(migrate.get("restart", "no")) == "no", "migrate: a one-shot service must not restart"
    assert dependencies(migrate).get("postgres") == "service_healthy", (
        "migrate: must wait for postgres: service_healthy"
    )

    for kind, port in (("battery", 5020), ("meter", 5021), ("upstream", 8090)):
        name = f"sim-{kind}"
        simulator = compose_service(name)
        assert simulator.get("build", {}).get("dockerfile") == "tools/Dockerfile", (
            f"{name}: build from tools/Dockerfile"
        )
        command = [str(word) for word in simulator.get("command", [])]
        assert command[:2] == ["sim", kind], f"{name}: command must start with ['sim', {kind!r}], got {command}"
        assert "0.0.0.0" in command, f"{name}: must bind 0.0.0.0 (--host) to be reachable from other containers"
        assert str(port) in command, f"{name}: must listen on {port}"
        assert str(port) in healthcheck_text(simulator), f"{name}: needs a healthcheck on port {port}"


def test_compose_references_are_consistent() -> None:
    services = compose()["services"]
    union = all_settings()
    hosts: dict[int, str] = {}
    for name, definition in services.items():
        where = f"docker-compose.yml service {name!r}"
        environment = compose_environment(definition)
        unknown = sorted(v for v in environment if v.startswith("GRIDLOOP_") and v not in union)
        assert not unknown, f"{where}: {unknown} are not settings of any service"
        build = definition.get("build")
        if isinstance(build, dict):
            assert (ROOT / build.get("context", ".") / build["dockerfile"]).is_file(), f"{where}: no {build}"
        for host, _ in published_ports(definition):
            assert host not in hosts, f"{where}: host port {host} is also published by {hosts[host]!r}"
            hosts[host] = name
        for target, condition in dependencies(definition).items():
            assert target in services, f"{where}: depends on unknown service {target!r}"
            if condition == "service_healthy":
                assert healthcheck_text(services[target]), (
                    f"{where}: waits for {target!r} to be healthy; it has no check"
                )
            if condition == "service_completed_successfully":
                assert str(services[target].get("restart", "no")) == "no", f"{where}: {target!r} must be one-shot"
        dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
        if dockerfile.startswith("services/"):
            assert dockerfile == f"services/{name}/Dockerfile" and name in SERVICE_DIRECTORIES, (
                f"{where}: builds {dockerfile}; a service is named after its folder under services/"
            )


# The queue producer's RabbitMQ user: configure nothing, write gridloop.upstream only, read nothing.
PRODUCER_PERMISSIONS = ("^$", r"^gridloop\.upstream$", "^$")


def test_queue_producers_get_a_user_that_may_only_publish_to_gridloop_upstream() -> None:
    where = relative(PRODUCER_SCRIPT)
    commands = [shlex.split(line) for line in PRODUCER_SCRIPT.read_text().splitlines() if "set_permissions" in line]
    assert len(commands) == 1, f"{where}: expected one set_permissions command, got {commands}"
    [command] = commands
    permissions = tuple(command[-3:])
    assert permissions == PRODUCER_PERMISSIONS, f"{where}: permissions {permissions}, expected {PRODUCER_PERMISSIONS}"
    configure, write, read = (re.compile(permission) for permission in permissions)
    # The broker checks a publish to the default exchange against the name amq.default.
    exchanges = [spec.name for spec in EXCHANGES] + ["amq.default", "amq.topic"]
    assert [name for name in exchanges if write.search(name)] == [routing.UPSTREAM_EXCHANGE], (
        f"{where}: the producer may write to {[name for name in exchanges if write.search(name)]}"
    )
    resources = [*exchanges, *(spec.name for spec in QUEUES)]
    assert not [name for name in resources if configure.search(name) or read.search(name)], (
        f"{where}: the producer may configure or read something"
    )

    producer = compose_service("rabbitmq-producer-user")
    where = "docker-compose.yml service 'rabbitmq-producer-user'"
    assert "producer-user.sh" in " ".join(str(word) for word in producer.get("entrypoint", [])), (
        f"{where}: must run deploy/rabbitmq/producer-user.sh"
    )
    mounts = [str(volume).split(":")[0] for volume in producer.get("volumes", [])]
    assert f"./{relative(PRODUCER_SCRIPT)}" in mounts, f"{where}: must mount {relative(PRODUCER_SCRIPT)}"
    assert dependencies(producer).get("rabbitmq") == "service_healthy", f"{where}: must wait for rabbitmq"
    assert str(producer.get("restart", "no")) == "no", f"{where}: a one-shot service must not restart"

    readme = K8S_README.read_text()
    assert "producer-user.sh" in readme and r"^gridloop\.upstream$" in readme, (
        "deploy/k8s/README.md must tell how to make the producer user and what it may do"
    )


# ---------------------------------------------------------------------------------------------------
# .env.example
# ---------------------------------------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"^(?P<comment>#\s*)?(?P<name>GRIDLOOP_[A-Z0-9_]+)=(?P<value>.*)$")


def test_env_example_lists_exactly_every_setting_with_its_default() -> None:
    union = all_settings()
    lines = ENV_EXAMPLE.read_text().splitlines()
    listed: dict[str, tuple[bool, str]] = {}
    for number, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if not match:
            continue
        name = match["name"]
        where = f".env.example line {number + 1}"
        assert name not in listed, f"{where}: {name} is listed twice"
        listed[name] = (match["comment"] is None, match["value"])
        assert number > 0 and lines[number - 1].startswith("#"), f"{where}: {name} needs a comment line above it"
    missing, extra = sorted(set(union) - set(listed)), sorted(set(listed) - set(union))
    assert not missing, f".env.example lacks {missing}"
    assert not extra, f".env.example lists {extra}, which no service reads"
    for name, (active, value) in listed.items():
        setting = union[name]
        if setting.default is None:
            assert not active, f".env.example: {name} is a required secret; give it as a commented placeholder"
        else:
            assert active and setting.means_default(value), (
                f".env.example: {name}={value!r}, but the default is {setting.default!r}"
            )


# ---------------------------------------------------------------------------------------------------
# Kubernetes: files, kustomizations and a renderer for them
# ---------------------------------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "replicas", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml")) if K8S.is_dir() else []


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in k8s_files() if path.name == "kustomization.yaml")


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_documents(path: Path) -> list[dict[str, Any]]:
    try:
        documents = [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
    except yaml.YAMLError as error:
        problem = str(error)
    else:
        problem = ""
    assert not problem, f"{relative(path)}: not valid YAML: {problem}"
    for document in documents:
        assert isinstance(document, dict), f"{relative(path)}: every document must be a mapping"
    return documents


def load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / "kustomization.yaml"
    assert path.is_file(), f"{relative(directory)} has no kustomization.yaml"
    [document] = load_documents(path)
    return document


def check_kustomization(directory: Path) -> None:
    where = relative(directory / "kustomization.yaml")
    kustomization = load_kustomization(directory)
    assert kustomization.get("apiVersion") == "kustomize.config.k8s.io/v1beta1", f"{where}: wrong apiVersion"
    assert kustomization.get("kind") == "Kustomization", f"{where}: kind must be Kustomization"
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, (
        f"{where}: uses {sorted(unknown)}, which tests/deploy does not model; extend render() before using it"
    )
    resources = kustomization.get("resources", [])
    assert resources and len(resources) == len(set(resources)), f"{where}: resources empty or duplicated"
    for entry in resources:
        path = (directory / entry).resolve()
        assert path.exists(), f"{where}: resource {entry!r} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{where}: {entry!r} is a folder without kustomization.yaml"
            assert path.is_relative_to(K8S), f"{where}: {entry!r} is outside deploy/k8s"
        else:
            assert path.suffix == ".yaml", f"{where}: resource {entry!r} is not a .yaml file"
    for index, patch in enumerate(kustomization.get("patches", [])):
        label = f"{where}: patches[{index}]"
        assert ("patch" in patch) != ("path" in patch), f"{label}: give exactly one of patch / path"
        if "path" in patch:
            assert (directory / patch["path"]).is_file(), f"{label}: {patch['path']!r} does not exist"
        assert set(patch.get("target", {})) <= {"kind", "name"}, f"{label}: target may use kind and name only"
        assert set(patch) <= {"patch", "path", "target"}, f"{label}: unsupported keys {sorted(set(patch))}"
    for image in kustomization.get("images", []):
        assert "name" in image and ({"newName", "newTag", "digest"} & set(image)), f"{where}: bad image rule {image}"
        assert set(image) <= {"name", "newName", "newTag", "digest"}, f"{where}: unsupported image keys {image}"
    for replica in kustomization.get("replicas", []):
        assert set(replica) == {"name", "count"} and isinstance(replica["count"], int), f"{where}: bad {replica}"


def split_image(image: str) -> tuple[str, str, str]:
    """(name, tag, digest)."""
    name, _, digest = image.partition("@")
    if ":" in name.rsplit("/", 1)[-1]:
        name, _, tag = name.rpartition(":")
        return name, tag, digest
    return name, "", digest


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for these manifests: maps merge, lists of named maps merge by name."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(target[key], value) if key in target else copy.deepcopy(value)
        return merged
    named = [item for item in [*(target or []), *(patch or [])] if isinstance(item, dict) and "name" in item]
    if isinstance(target, list) and isinstance(patch, list) and len(named) == len(target) + len(patch):
        by_name = {item["name"]: item for item in target}
        for item in patch:
            by_name[item["name"]] = strategic_merge(by_name[item["name"]], item) if item["name"] in by_name else item
        return list(by_name.values())
    return copy.deepcopy(patch)


def json_patch(document: dict[str, Any], operation: Mapping[str, Any], *, where: str) -> None:
    op, path = operation.get("op"), str(operation.get("path", ""))
    parts = [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]
    parent: Any = document
    for part in parts[:-1]:
        found = isinstance(parent, list) and part.isdigit() and int(part) < len(parent)
        found = found or (isinstance(parent, dict) and part in parent)
        assert found, f"{where}: JSON patch path {path} does not exist (at {part!r})"
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    value = copy.deepcopy(operation.get("value"))
    if op == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif op in ("add", "replace") and isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif op == "add":
            parent.insert(int(last), value)
        else:
            parent[int(last)] = value
    elif op in ("add", "replace"):
        assert op == "add" or last in parent, f"{where}: replace of missing {path}"
        parent[last] = value
    else:
        pytest.fail(f"{where}: JSON patch op {op!r} is not modelled")


def matches(document: Mapping[str, Any], target: Mapping[str, str]) -> bool:
    return all(
        document.get("kind") == value if key == "kind" else document["metadata"].get("name") == value
        for key, value in target.items()
    )


@cache
def _render(directory: Path) -> tuple[str, ...]:
    where = relative(directory / "kustomization.yaml")
    check_kustomization(directory)
    kustomization = load_kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else load_documents(path)

    for index, entry in enumerate(kustomization.get("patches", [])):
        label = f"{where}: patches[{index}]"
        text = entry["patch"] if "patch" in entry else (directory / entry["path"]).read_text()
        body = yaml.safe_load(text)
        if isinstance(body, list):
            assert "target" in entry, f"{label}: a JSON 6902 patch needs a target"
            chosen = [document for document in objects if matches(document, entry["target"])]
            assert chosen, f"{label}: its target matches nothing"
            for document in chosen:
                for operation in body:
                    json_patch(document, operation, where=label)
        else:
            target = entry.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
            positions = [position for position, document in enumerate(objects) if matches(document, target)]
            assert positions, f"{label}: patches {target}, which is not in the resources"
            for position in positions:
                objects[position] = strategic_merge(
                    objects[position], body | {"metadata": objects[position]["metadata"]}
                )

    for rule in kustomization.get("images", []):
        used = False
        for document in objects:
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
                name, tag, digest = split_image(container["image"])
                if name == rule["name"]:
                    used = True
                    name, tag = rule.get("newName", name), str(rule.get("newTag", tag))
                    digest = rule.get("digest", digest)
                    container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        assert used, f"{where}: image rule {rule['name']!r} matches no container"
    for rule in kustomization.get("replicas", []):
        chosen = [d for d in objects if d.get("kind") == "Deployment" and d["metadata"]["name"] == rule["name"]]
        assert chosen, f"{where}: replicas for {rule['name']!r}, which is not a Deployment here"
        for document in chosen:
            document["spec"]["replicas"] = rule["count"]
    if "namespace" in kustomization:
        for document in objects:
            if document.get("kind") not in CLUSTER_SCOPED:
                document["metadata"]["namespace"] = kustomization["namespace"]
    return tuple(json.dumps(document, sort_keys=True) for document in objects)


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k directory`` would apply (for the kustomize features listed above)."""
    return [json.loads(document) for document in _render(directory.resolve())]


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {document["metadata"]["name"]: document for document in objects if document.get("kind") == kind}


def test_deploy_tree_has_base_and_overlays() -> None:
    assert (BASE / "kustomization.yaml").is_file(), "deploy/k8s/base/kustomization.yaml is missing"
    for overlay in ("dev", "prod"):
        assert (OVERLAYS / overlay / "kustomization.yaml").is_file(), f"deploy/k8s/overlays/{overlay} is missing"
    assert K8S_README.is_file(), "deploy/k8s/README.md is missing"
    for directory in SERVICE_DIRECTORIES:
        for name in ("deployment.yaml", "service.yaml", "pdb.yaml", "kustomization.yaml"):
            assert (BASE / directory / name).is_file(), f"deploy/k8s/base/{directory}/{name} is missing"


@pytest.mark.parametrize("path", [p for p in k8s_files() if p.name != "kustomization.yaml"], ids=relative)
def test_manifest_validates_against_kubernetes_schema(path: Path) -> None:
    for document in load_documents(path):
        validate(document, where=relative(path))


def validate(document: dict[str, Any], *, where: str) -> None:
    label = f"{where}: {document.get('kind')}/{document.get('metadata', {}).get('name')}"
    assert document.get("kind") != "Secret", f"{label}: Secrets are never committed; see deploy/k8s/README.md"
    problem = ""
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        problem = f"is not a valid Kubernetes {KUBERNETES_VERSION} object: {path or '(top)'}: {error.message}"
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as error:
        problem = error.message
    assert not problem, f"{label} {problem}"


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=relative)
def test_kustomization_is_well_formed(directory: Path) -> None:
    check_kustomization(directory)
    kustomization = load_kustomization(directory)
    where = relative(directory / "kustomization.yaml")
    if directory.is_relative_to(BASE):
        assert "namespace" not in kustomization, f"{where}: the base is namespace-less; overlays set the namespace"
    if directory.is_relative_to(OVERLAYS):
        assert kustomization.get("namespace"), f"{where}: an overlay must set the namespace"
        bases = [entry for entry in kustomization["resources"] if (directory / entry).is_dir()]
        assert bases, f"{where}: an overlay must build on the base"
        for entry in bases:
            assert (directory / entry).resolve().is_relative_to(BASE.resolve()), (
                f"{where}: {entry!r} is not (part of) deploy/k8s/base"
            )
    if directory == BASE:
        folders = sorted(entry for entry in kustomization["resources"] if (directory / entry).is_dir())
        assert folders == SERVICE_DIRECTORIES, (
            f"{where}: must list one folder per service directory {SERVICE_DIRECTORIES}, lists {folders}"
        )


RENDERED = [BASE, OVERLAYS / "dev", OVERLAYS / "prod"]


@pytest.mark.parametrize("directory", RENDERED, ids=relative)
def test_rendered_objects_are_valid(directory: Path) -> None:
    objects = render(directory)
    names = [(document["kind"], document["metadata"]["name"]) for document in objects]
    assert len(names) == len(set(names)), f"{relative(directory)}: renders duplicate objects"
    for document in objects:
        validate(document, where=f"{relative(directory)} (rendered)")
    namespace = load_kustomization(directory).get("namespace")
    if namespace:
        namespaces = by_kind(objects, "Namespace")
        assert namespace in namespaces, f"{relative(directory)}: renders no Namespace {namespace!r}"


def quantity(value: Any) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    factor = {
        None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }[match[2]]  # fmt: skip
    return float(match[1]) * factor


def pre_stop_seconds(container: Mapping[str, Any], *, where: str) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    assert pre_stop, f"{where}: needs lifecycle.preStop (a pause so endpoints are removed before SIGTERM)"
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    numbers = [float(word) for word in " ".join(command).split() if re.fullmatch(r"\d+(\.\d+)?", word)]
    assert "sleep" in " ".join(command) and numbers, f"{where}: preStop must pause (sleep N), got {pre_stop}"
    return max(numbers)


def probe_port_ok(probe: Mapping[str, Any] | None, path: str, port: Mapping[str, Any]) -> bool:
    http = (probe or {}).get("httpGet", {})
    return http.get("path") == path and http.get("port") in (port.get("name"), port["containerPort"])


def pod_labels(deployment: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"].get("labels", {})
    return labels


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("directory", RENDERED, ids=relative)
def test_every_service_has_a_sound_deployment_service_and_pdb(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(directory)
    deployments, services_, budgets = (
        by_kind(objects, kind) for kind in ("Deployment", "Service", "PodDisruptionBudget")
    )
    config_maps = by_kind(objects, "ConfigMap")
    stray = sorted(set(deployments) - set(SERVICE_DIRECTORIES))
    assert not stray, f"{relative(directory)}: Deployments {stray} match no folder under services/"
    union = all_settings()

    for each in all_services():
        where = f"{relative(directory)} (rendered) {each.directory}"
        assert each.directory in deployments, f"{where}: no Deployment named {each.directory}"
        deployment = deployments[each.directory]
        spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
        labels = pod_labels(deployment)
        assert selects(spec["selector"].get("matchLabels", {}), labels), f"{where}: selector does not match pod labels"

        containers = pod["containers"]
        assert len(containers) == 1, f"{where}: expected one container, found {len(containers)}"
        container = containers[0]
        ports = container.get("ports", [])
        assert [p["containerPort"] for p in ports] == each.all_ports, (
            f"{where}: containerPorts must be {each.all_ports} ({each.port_variable} default first), got {ports}"
        )
        for (name, _, number), declared in zip(each.extra_ports, ports[1:], strict=True):
            assert declared.get("name") == name, f"{where}: containerPort {number} must be named {name}"
        port = ports[0]
        assert probe_port_ok(container.get("livenessProbe"), "/healthz", port), (
            f"{where}: livenessProbe must be httpGet /healthz on port {each.port}"
        )
        assert probe_port_ok(container.get("readinessProbe"), "/readyz", port), (
            f"{where}: readinessProbe must be httpGet /readyz on port {each.port}"
        )
        assert probe_port_ok(container.get("startupProbe"), "/healthz", port), (
            f"{where}: startupProbe must be httpGet /healthz on port {each.port}"
        )

        resources = container.get("resources", {})
        for kind in ("cpu", "memory"):
            request = resources.get("requests", {}).get(kind)
            limit = resources.get("limits", {}).get(kind)
            assert request is not None and limit is not None, f"{where}: needs {kind} requests and limits"
            assert quantity(request) <= quantity(limit), f"{where}: {kind} request {request} exceeds limit {limit}"

        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace >= 25, f"{where}: terminationGracePeriodSeconds {grace} < 25"
        pause = pre_stop_seconds(container, where=where)
        assert pause + SHUTDOWN_BUDGET_S <= grace, (
            f"{where}: preStop {pause} s + {SHUTDOWN_BUDGET_S} s shutdown do not fit in {grace} s grace"
        )

        pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
        assert security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation: false"
        uid = security.get("runAsUser", pod_security.get("runAsUser"))
        assert uid == dockerfile_user(ROOT / each.dockerfile), (
            f"{where}: runAsUser {uid} differs from the USER of {each.dockerfile}"
        )
        name, tag, _ = split_image(container["image"])
        assert name.endswith(f"gridloop/{each.directory}") and tag not in ("", "latest"), (
            f"{where}: image {container['image']!r} must be gridloop/{each.directory} with a pinned tag"
        )

        # Environment: only this service's settings; secrets only from the Secret; the ConfigMap exists.
        environment: dict[str, str] = {}
        from_secret: set[str] = set()
        for variable in container.get("env", []):
            name = variable["name"]
            assert name in each.settings, f"{where}: env {name} is not a setting of {each.settings_class.__name__}"
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                assert reference["name"] == SECRET_NAME, f"{where}: {name} must come from Secret {SECRET_NAME}"
                from_secret.add(name)
                environment[name] = SECRET_STAND_INS.get(name) or each.settings[name].default or ""
            else:
                assert not each.settings[name].sensitive, f"{where}: {name} is sensitive; use a secretKeyRef"
                environment[name] = str(variable.get("value", ""))
        sensitive = {name for name, setting in each.settings.items() if setting.sensitive}
        assert sensitive <= from_secret, f"{where}: {sorted(sensitive - from_secret)} must come from {SECRET_NAME}"
        if each.port_variable in environment:
            assert environment[each.port_variable] == str(each.port), f"{where}: {each.port_variable} != containerPort"
        for source in container.get("envFrom", []):
            assert "configMapRef" in source, f"{where}: envFrom may only use ConfigMaps (secrets by key)"
            config_map = config_maps.get(source["configMapRef"]["name"])
            assert config_map, f"{where}: ConfigMap {source['configMapRef']['name']!r} is not rendered"
            data = config_map.get("data", {})
            stray_keys = sorted(key for key in data if key not in union)
            assert not stray_keys, f"{where}: ConfigMap keys {stray_keys} are not settings of any service"
            secret_keys = sorted(key for key in data if union[key].sensitive)
            assert not secret_keys, f"{where}: ConfigMap holds secrets {secret_keys}; move them to {SECRET_NAME}"
            environment = {key: value for key, value in data.items() if key in each.settings} | environment
        error = _settings_error(each.settings_class, environment, monkeypatch)
        assert not error, f"{where}: the configured environment does not pass {each.settings_class.__name__}: {error}"

        assert each.directory in services_, f"{where}: no Service named {each.directory}"
        service_ = services_[each.directory]
        assert selects(service_["spec"].get("selector", {}), labels), f"{where}: Service selector misses the pods"
        targets = {p.get("name") for p in ports} | set(each.all_ports)
        assert {service_port.get("targetPort", service_port["port"]) for service_port in service_["spec"]["ports"]} == (
            {port.get("name") or each.port, *(name for name, _, _ in each.extra_ports)}
        ), f"{where}: the Service must route to every container port, by name"
        for service_port in service_["spec"]["ports"]:
            assert service_port.get("targetPort", service_port["port"]) in targets, (
                f"{where}: Service targetPort {service_port.get('targetPort')} is not the container port"
            )
        assert each.directory in budgets, f"{where}: no PodDisruptionBudget named {each.directory}"
        budget = budgets[each.directory]["spec"]
        assert "matchExpressions" not in budget["selector"], f"{where}: PDB selector: use matchLabels"
        assert selects(budget["selector"].get("matchLabels", {}), labels), f"{where}: PDB selector misses the pods"


def test_overlays_set_environment_specific_values() -> None:
    prod = by_kind(render(OVERLAYS / "prod"), "Deployment")
    for name in sorted(PROD_REPLICATED):
        assert prod[name]["spec"].get("replicas", 1) >= 2, f"deploy/k8s/overlays/prod: {name} needs 2 replicas"
    for directory in RENDERED:
        deployments = by_kind(render(directory), "Deployment")
        if SINGLE_WRITER in deployments:
            agent = deployments[SINGLE_WRITER]["spec"]
            assert agent.get("replicas", 1) == 1, f"{relative(directory)}: {SINGLE_WRITER} must run one replica"
            assert agent.get("strategy", {}).get("type") == "Recreate", (
                f"{relative(directory)}: {SINGLE_WRITER} must use the Recreate strategy (one writer per device)"
            )
    for overlay in ("dev", "prod"):
        namespace = load_kustomization(OVERLAYS / overlay)["namespace"]
        for document in render(OVERLAYS / overlay):
            if document["kind"] not in CLUSTER_SCOPED:
                assert document["metadata"].get("namespace") == namespace, (
                    f"deploy/k8s/overlays/{overlay}: {document['kind']}/{document['metadata']['name']} is not in "
                    f"namespace {namespace}"
                )


_LOOPBACK = re.compile(r"//(127\.0\.0\.1|localhost)[:/]")


def test_configmap_holds_every_shared_non_secret_setting() -> None:
    """Every setting that is neither a secret nor per pod (host, port) has its place in the ConfigMap."""
    expected = {
        name
        for name, setting in all_settings().items()
        if not setting.sensitive and not name.endswith(("_HOST", "_PORT"))
    }
    for config_map in by_kind(render(BASE), "ConfigMap").values():
        data = config_map.get("data", {})
        where = f"deploy/k8s/base ConfigMap {config_map['metadata']['name']}"
        missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
        assert not missing, f"{where}: lacks {missing} (add them with their defaults from .env.example)"
        assert not extra, f"{where}: holds {extra}, which are secrets, per-pod or read by no service"
        for name, value in data.items():
            setting = all_settings()[name]
            if _LOOPBACK.search(setting.default or ""):  # 127.0.0.1 inside a pod is the pod itself
                assert not _LOOPBACK.search(str(value)), f"{where}: {name}={value} points at the pod itself"
            else:
                assert setting.means_default(str(value)), (
                    f"{where}: {name}={value}; the base holds the defaults (default {setting.default!r}), "
                    "an overlay patches what differs"
                )


def test_readme_tells_how_to_create_every_secret_key() -> None:
    text = K8S_README.read_text()
    keys = set()
    for directory in RENDERED:
        for deployment in by_kind(render(directory), "Deployment").values():
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                for variable in container.get("env", []):
                    reference = variable.get("valueFrom", {}).get("secretKeyRef")
                    if reference:
                        keys.add(reference["key"])
    assert keys, "no Deployment reads the Secret"
    missing = sorted(key for key in keys if f"--from-literal={key}=" not in text)
    assert not missing, f"deploy/k8s/README.md: the `kubectl create secret` command lacks {missing}"
    assert SECRET_NAME in text and "RabbitMQ" in text and "PostgreSQL" in text, (
        "deploy/k8s/README.md must say RabbitMQ and PostgreSQL are not deployed and how to create the Secret"
    )
