"""Supabase-style API keys: HS256 JWTs whose role claim is anon, authenticated, service_role or grid_operator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import jwt

from gridloop_common.auth import Roles

__all__ = ["ROLES", "make_key"]

# What `gridloop keys` prints a key for: the Flux API's three roles (telemetry-ingest) and the grid operator's
# (the gateway's seed-000 endpoints, docs/design.md §8).
ROLES: Final = (Roles.ANON, Roles.AUTHENTICATED, Roles.SERVICE, Roles.GRID_OPERATOR)


def make_key(*, secret: str, role: str, now: datetime | None = None, valid_days: int = 3650) -> str:
    """A JWT for ``role`` signed with ``secret``, as Supabase issues its anon and service keys."""
    issued = now or datetime.now(tz=UTC)
    claims = {
        "iss": "gridloop",
        "role": role,
        "iat": int(issued.timestamp()),
        "exp": int((issued + timedelta(days=valid_days)).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
