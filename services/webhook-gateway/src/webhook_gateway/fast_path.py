"""The webhook envelope validated straight from its bytes: the gateway's fast path beside the reference one.

The reference path is ``load_document`` (the strict JSON loader every intake uses) then
``forwarding.parse_event``: two passes over the body and Python objects in between. Almost every delivery
is a valid UTF-8 envelope, which pydantic can validate from the bytes in one pass; that is all this module
does, and it declines (None) everything else, so the reference path alone answers every error (400, 422,
ignored) and every unusual body. ``tests/test_fast_path.py`` holds the two paths to the same result
(docs/architecture.md, "Fast paths").
"""

from __future__ import annotations

from pydantic import ValidationError

from gridloop_common.contracts import UpstreamEvent
from gridloop_common.contracts.documents import may_hold_refused_values

__all__ = ["parse_envelope"]


def parse_envelope(raw: bytes) -> UpstreamEvent | None:
    """The envelope validated straight from the JSON bytes, or None when it is not a valid one.

    Valid UTF-8 JSON gives the same event as ``load_document`` then ``forwarding.parse_event`` (duplicate
    keys: the last wins in both); anything else, including every error case and any body that might hold
    a value ``load_document`` refuses (pydantic reads NaN, \\u0000 and 1e400 anywhere), is left to that path.
    """
    if may_hold_refused_values(raw):
        return None
    try:
        event = UpstreamEvent.model_validate_json(raw)
        event.command()
    except ValidationError:
        return None
    return event
