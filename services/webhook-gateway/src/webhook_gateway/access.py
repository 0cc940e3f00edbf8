"""Who may call the operator endpoints: an API key (docs/design.md §6) whose role is service_role or grid_operator.

The key is verified by ``gridloop_common.auth`` exactly as the Flux API verifies it; it is sent as
``Authorization: Bearer <key>`` or ``apikey: <key>`` (Supabase's two ways). Every key sent is checked,
and the Bearer one decides the role when both are there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gridloop_common.auth import Roles, TokenRefused, TokenVerifier, bearer_token
from gridloop_common.clock import Clock

__all__ = ["OPERATOR_ROLES", "AccessDenied", "OperatorAccess"]

OPERATOR_ROLES: Final = (Roles.SERVICE, Roles.GRID_OPERATOR)


class AccessDenied(Exception):
    """401 (no key, or an invalid one) or 403 (a valid key of another role), with the answer's fields."""

    def __init__(self, status: int, error: str, message: str, *, challenge: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        # WWW-Authenticate of a 401, as RFC 6750 words it.
        self.challenge = challenge


def _invalid(message: str) -> AccessDenied:
    escaped = message.replace("\\", "\\\\").replace('"', '\\"')
    return AccessDenied(
        401, "invalid_token", message, challenge=f'Bearer error="invalid_token", error_description="{escaped}"'
    )


class OperatorAccess:
    """Checks the key of an operator request; ``check`` returns its claims or raises AccessDenied."""

    def __init__(self, secret: str, *, clock: Clock) -> None:
        self._verifier = TokenVerifier(secret, clock=clock)

    def check(self, headers: Mapping[str, str]) -> Mapping[str, Any]:
        """The claims of the request's key; ``headers`` are lower-case names (as ASGI and Starlette give them)."""
        try:
            bearer = bearer_token(headers.get("authorization"))
        except TokenRefused as refused:
            raise _invalid(refused.message) from refused
        apikey = headers.get("apikey") or None
        if bearer is None and apikey is None:
            raise AccessDenied(
                401,
                "unauthorized",
                "an API key is required: send Authorization: Bearer <key> or apikey: <key> (`gridloop keys`)",
                challenge="Bearer",
            )
        claims: Mapping[str, Any] = {}
        for token in (apikey, bearer):  # the Bearer key last: it decides the role
            if token is not None:
                try:
                    claims = self._verifier.claims(token)
                except TokenRefused as refused:
                    raise _invalid(refused.message) from refused
        role = claims.get("role")
        if role not in OPERATOR_ROLES:
            shown = "a key without a role" if role is None else f"role {repr(role)[:100]}"
            allowed = " or ".join(OPERATOR_ROLES)
            raise AccessDenied(403, "forbidden", f"{shown} may not call the operator endpoints; they take {allowed}")
        return claims
