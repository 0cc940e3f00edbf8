"""Content negotiation on ``Accept``, as PostgREST does it: the first acceptable type an endpoint offers, else 406."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from telemetry_ingest.api.postgrest.errors import PostgrestError

__all__ = ["CSV_CONTENT_TYPE", "Media", "negotiate", "negotiate_nulls"]

Media = Literal["json", "singular", "csv", "openapi"]
"""What a response body is: a JSON array, one JSON object (vnd.pgrst.object), CSV, or the OpenAPI document."""

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"

# Media types PostgREST names, by what they produce. ``*/*`` takes the first the endpoint offers; the array
# variant is the default JSON. Parameters (``nulls=stripped``, ``charset``) do not change the choice.
_KNOWN: dict[str, Media] = {
    "application/json": "json",
    "application/vnd.pgrst.array+json": "json",
    "application/vnd.pgrst.array": "json",
    "application/vnd.pgrst.object+json": "singular",
    "application/vnd.pgrst.object": "singular",
    "text/csv": "csv",
    "application/openapi+json": "openapi",
}


def negotiate(accept: str | None, offered: Sequence[Media]) -> Media:
    """The media of the response: the acceptable types in order of preference (``q``, then position), the first
    one ``offered`` produces; no ``Accept`` (or an empty one) means the first offered. PGRST107 (406) otherwise."""
    return negotiate_nulls(accept, offered)[0]


def negotiate_nulls(accept: str | None, offered: Sequence[Media]) -> tuple[Media, bool]:
    """``negotiate``, and whether the chosen type asks for null values to be left out: PostgREST's
    ``application/vnd.pgrst.object+json;nulls=stripped`` (or ``…array+json``), which postgrest-py's
    ``strip_nulls()`` sends."""
    if accept is None or not accept.strip():
        return offered[0], False
    ranked: list[tuple[float, int, str, bool]] = []
    for position, item in enumerate(accept.split(",")):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        if not media_type:
            continue
        quality = 1.0
        stripped = False
        for parameter in parameters:
            name, _, value = (part.strip().lower() for part in parameter.partition("="))
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 1.0
            elif name == "nulls":
                stripped = value == "stripped" and media_type.lower().startswith("application/vnd.pgrst.")
        if quality > 0:
            ranked.append((-quality, position, media_type, stripped))
    for _, _, media_type, stripped in sorted(ranked):
        lowered = media_type.lower()
        if lowered == "*/*":
            return offered[0], False
        media = _KNOWN.get(lowered)
        if media is not None and media in offered:
            return media, stripped
    requested = ", ".join(media_type for _, _, media_type, _ in ranked) or accept.strip()
    raise PostgrestError(406, "PGRST107", f"None of these media types are available: {requested}")
