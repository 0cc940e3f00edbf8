"""Supabase-style API keys: HS256 JWTs whose role claim is anon or service_role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

__all__ = ["make_key"]


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
