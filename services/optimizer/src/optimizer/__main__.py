"""Entry point of gridloop-optimizer: `gridloop-optimizer` runs it, `gridloop-optimizer migrate` migrates,
`gridloop-optimizer plan SCENARIO` solves one scenario file (plan_command.py)."""

from __future__ import annotations

import sys

from gridloop_common.lifecycle import run_service
from gridloop_common.settings import load_settings
from optimizer import app, plan_command
from optimizer.settings import OptimizerSettings

PROGRAM = "gridloop-optimizer"


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    settings = load_settings(OptimizerSettings, program=PROGRAM)
    if arguments[:1] == ["migrate"]:
        run_service(lambda: app.migrate(settings), program=PROGRAM)
        return
    if arguments[:1] == ["plan"]:
        raise SystemExit(plan_command.run(arguments[1:], time_limit_s=settings.optimizer_time_limit_s, program=PROGRAM))
    if arguments:
        print(f"usage: {PROGRAM} [migrate | plan SCENARIO [--out RESULT]]", file=sys.stderr)
        raise SystemExit(2)
    run_service(lambda: app.run(settings), program=PROGRAM, shutdown_deadline_s=20.0)


if __name__ == "__main__":
    main()
