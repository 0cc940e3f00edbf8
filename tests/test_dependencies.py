"""Every workspace member declares exactly the third-party packages its source imports."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(
    path.parent for path in ROOT.glob("*/*/pyproject.toml") if path.parent.parent.name in ("libs", "services", "tools")
)
WORKSPACE_PACKAGES = {
    "gridloop_common",
    "gridloop_simulators",
    "gridloop_cli",
    "webhook_gateway",
    "scheduler",
    "optimizer",
    "telemetry_ingest",
    "device_agent",
}
# Imported through another declared package (pamqp is the wire layer aio-pika and aiormq ship with).
PROVIDED_BY = {"pamqp": "aio-pika"}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").split("[")[0]


def _imported_top_level(member: Path) -> set[str]:
    found: set[str] = set()
    for source in (member / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize("member", MEMBERS, ids=lambda path: str(path.relative_to(ROOT)))
def test_member_declares_what_it_imports(member: Path) -> None:
    project = tomllib.loads((member / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {
        _normalise(requirement.split(">")[0].split("=")[0].split("<")[0].strip())
        for requirement in project["dependencies"]
    }
    distributions = metadata.packages_distributions()
    own = (member / "src").iterdir().__next__().name
    missing = []
    for module in sorted(_imported_top_level(member) - {own}):
        if module in WORKSPACE_PACKAGES:
            needed = {_normalise(module.replace("_", "-"))}
            needed = {"gridloop-common"} if module == "gridloop_common" else needed
            needed = {"gridloop-simulators"} if module == "gridloop_simulators" else needed
        elif module in PROVIDED_BY:
            needed = {PROVIDED_BY[module]}
        else:
            needed = {_normalise(name) for name in distributions.get(module, [module])}
        if not needed & declared:
            missing.append(f"{module} (from {sorted(needed)})")
    assert missing == [], f"{member.relative_to(ROOT)}/pyproject.toml does not declare: {missing}"
