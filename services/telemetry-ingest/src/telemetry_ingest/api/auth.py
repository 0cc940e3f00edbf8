"""Supabase-style API keys: HS256 JWTs from `apikey` / `Authorization: Bearer` mapped to a database role.

The token itself is verified by ``gridloop_common.auth`` (shared with the gateway); this module adds
Supabase's key-required rule, the roles a request may become here, and PostgREST's error codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gridloop_common.auth import (
    CLOCK_SKEW_SECONDS,
    VERIFIED_TOKENS_KEPT,
    Roles,
    TokenRefused,
    TokenVerifier,
    bearer_token,
    issue_key,
)
from gridloop_common.clock import Clock
from telemetry_ingest.api.postgrest import PostgrestError

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "ROLES",
    "AuthenticationError",
    "Authenticator",
    "Identity",
    "issue_key",
]

# The only database roles a request may become. The service logs in as the tables' owner (often a
# superuser in development), so an arbitrary `role` claim must never reach SET ROLE.
ROLES = (Roles.ANON, Roles.AUTHENTICATED, Roles.SERVICE)
ANONYMOUS_ROLE = Roles.ANON


class AuthenticationError(PostgrestError):
    """A 401 with the `WWW-Authenticate` challenge PostgREST sends alongside it."""

    def __init__(
        self, code: str, message: str, *, details: str | None = None, hint: str | None = None, invalid_token: bool
    ) -> None:
        super().__init__(401, code, message, details=details, hint=hint)
        # PostgREST: a bad token gets `error="invalid_token"` with the message; a missing one only `Bearer`.
        escaped = message.replace("\\", "\\\\").replace('"', '\\"')
        self.challenge = f'Bearer error="invalid_token", error_description="{escaped}"' if invalid_token else "Bearer"


@dataclass(frozen=True)
class Identity:
    """Who a request runs as: the database role, the token's claims and the token itself."""

    role: str
    token: str
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def anonymous(self) -> bool:
        """True for the anon role: PostgREST then answers a permission error with 401, not 403."""
        return self.role == ANONYMOUS_ROLE


def _invalid(message: str, *, code: str = "PGRST301", details: str | None = None) -> AuthenticationError:
    return AuthenticationError(code, message, details=details, invalid_token=True)


def _missing_key() -> AuthenticationError:
    # Supabase's gateway words this error; the body keeps PostgREST's four keys and its "JWT required" code.
    return AuthenticationError(
        "PGRST302",
        "No API key found in request",
        hint="No `apikey` request header or url param was found.",
        invalid_token=False,
    )


class Authenticator:
    """Validates API keys exactly as PostgREST validates JWTs, with Supabase's key-required gateway rule."""

    def __init__(self, secret: str, *, clock: Clock | None = None, verified_kept: int = VERIFIED_TOKENS_KEPT) -> None:
        self._verifier = TokenVerifier(secret, clock=clock, verified_kept=verified_kept)

    def authenticate(self, headers: Mapping[str, str], apikey_parameter: str | None = None) -> Identity:
        """The identity of a request, or ``AuthenticationError`` (401).

        The role comes from ``Authorization: Bearer`` when present (a signed-in user's token next to
        the project's anon key), otherwise from ``apikey`` (header or query parameter); every token
        sent is validated. A request with neither is refused: anonymous means the anon key.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        apikey = lowered.get("apikey") or apikey_parameter or None
        bearer = self._bearer_token(lowered.get("authorization"))
        if apikey is None and bearer is None:
            raise _missing_key()
        apikey_identity = self.identify(apikey) if apikey is not None else None
        if bearer is not None:
            return self.identify(bearer)
        assert apikey_identity is not None
        return apikey_identity

    @staticmethod
    def _bearer_token(header: str | None) -> str | None:
        try:
            return bearer_token(header)
        except TokenRefused as refused:
            raise _invalid(refused.message) from refused

    def identify(self, token: str) -> Identity:
        """Validate one token (signature, algorithm, exp/nbf/iat with skew, role) and return its identity."""
        try:
            claims = self._verifier.claims(token)
        except TokenRefused as refused:
            code = "PGRST303" if refused.claim else "PGRST301"
            raise _invalid(refused.message, code=code, details=refused.details) from refused
        return Identity(self._role(claims), token, claims)

    @staticmethod
    def _role(claims: Mapping[str, Any]) -> str:
        role = claims.get("role")
        if role is None:
            # PostgREST runs a JWT without a role as the anonymous role; this API has none apart from the
            # anon key itself (Supabase's gateway), so such a token is anonymous access, which is disabled.
            raise AuthenticationError(
                "PGRST302",
                "Anonymous access is disabled",
                details="The JWT has no 'role' claim",
                invalid_token=False,
            )
        if role not in ROLES:
            raise _invalid(
                "JWT role is not allowed",
                code="PGRST303",
                details=f"The 'role' claim must be one of {', '.join(ROLES)}",
            )
        return str(role)
