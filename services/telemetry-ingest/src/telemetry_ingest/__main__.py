"""Entry point of gridloop-ingest: `gridloop-ingest` runs it, `gridloop-ingest migrate` migrates.

`gridloop-ingest reorder` rewrites every closed day of readings in device order at once and exits.
"""

from __future__ import annotations

import sys

from gridloop_common.lifecycle import run_service
from gridloop_common.settings import load_settings
from telemetry_ingest import app
from telemetry_ingest.settings import IngestSettings

PROGRAM = "gridloop-ingest"


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    settings = load_settings(IngestSettings, program=PROGRAM)
    if arguments[:1] == ["migrate"]:
        run_service(lambda: app.migrate(settings), program=PROGRAM)
        return
    if arguments[:1] == ["reorder"]:
        run_service(lambda: app.reorder(settings), program=PROGRAM)
        return
    if arguments:
        print(f"usage: {PROGRAM} [migrate | reorder]", file=sys.stderr)
        raise SystemExit(2)
    run_service(lambda: app.run(settings), program=PROGRAM, shutdown_deadline_s=20.0)


if __name__ == "__main__":
    main()
