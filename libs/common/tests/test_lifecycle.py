"""run_service: what the imports built is frozen out of the cycle collector's walks before the service runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_start_up_heap_is_frozen_before_the_main_coroutine_runs() -> None:
    script = textwrap.dedent(
        """
        import gc
        from gridloop_common.lifecycle import run_service

        async def main():
            print(gc.get_freeze_count(), len(gc.get_objects()))

        print(gc.get_freeze_count())
        run_service(main, program="freeze-check")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, during = result.stdout.split("\n", 1)
    frozen, still_walked = (int(number) for number in during.split())
    assert int(before) == 0
    # The imports (uvloop, pydantic, the logging setup) left thousands of objects; the collector now walks only
    # what the service makes after start-up.
    assert frozen > 5_000
    assert still_walked < frozen
