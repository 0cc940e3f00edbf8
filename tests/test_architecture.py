"""Architecture rules: services never import each other, the shared library imports no service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_dumping_ground_modules() -> None:
    offenders = [
        path.relative_to(ROOT)
        for pattern in ("utils*.py", "helpers*.py")
        for folder in ("libs", "services", "tools")
        for path in (ROOT / folder).rglob(pattern)
    ]
    assert offenders == []
