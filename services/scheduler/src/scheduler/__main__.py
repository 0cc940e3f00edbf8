"""Entry point of gridloop-scheduler: `gridloop-scheduler` runs it, `gridloop-scheduler migrate` migrates."""

from __future__ import annotations

import sys

from gridloop_common.lifecycle import run_service
from gridloop_common.settings import load_settings
from scheduler import app
from scheduler.settings import SchedulerSettings

PROGRAM = "gridloop-scheduler"


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    settings = load_settings(SchedulerSettings, program=PROGRAM)
    if arguments[:1] == ["migrate"]:
        run_service(lambda: app.migrate(settings), program=PROGRAM)
        return
    if arguments:
        print(f"usage: {PROGRAM} [migrate]", file=sys.stderr)
        raise SystemExit(2)
    run_service(lambda: app.run(settings), program=PROGRAM, shutdown_deadline_s=20.0)


if __name__ == "__main__":
    main()
