"""httpx's optional dependency that keeps each request cheap is installed (ingest upload, gateway poll, CLI)."""

from __future__ import annotations

import sys

import httpcore._synchronization


async def test_httpcore_resolves_its_async_library_through_an_installed_sniffio() -> None:
    # Without sniffio, httpcore's `import sniffio` fails afresh on every lock it creates and searches
    # sys.path each time (it was a third of the scheduler's CPU per acknowledgement when it used httpx).
    sys.modules.pop("sniffio", None)
    assert httpcore._synchronization.current_async_library() == "asyncio"
    assert "sniffio" in sys.modules
