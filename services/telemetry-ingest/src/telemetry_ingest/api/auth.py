"""Supabase-style API keys: HS256 JWTs from `apikey` / `Authorization: Bearer` mapped to a database role."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt

from gridloop_common.clock import Clock, SystemClock
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
ROLES = ("anon", "authenticated", "service_role")
ANONYMOUS_ROLE = "anon"
# PostgREST allows 30 s of clock skew on exp, nbf and iat.
CLOCK_SKEW_SECONDS = 30
ALGORITHM = "HS256"
# Tokens whose signature was verified, kept so that a client's next request skips the HMAC and PyJWT's key
# checks (measured: 115 us for a request's apikey and Bearer, 4 us remembered), as PostgREST caches JWTs.
# Only the signature is remembered: the time claims and the role are checked on every request.
VERIFIED_TOKENS_KEPT = 1024


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


def _is_number(value: object) -> bool:
    # JSON decoders take NaN and Infinity: an `exp` of NaN compares false with every time and would never expire.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Authenticator:
    """Validates API keys exactly as PostgREST validates JWTs, with Supabase's key-required gateway rule."""

    def __init__(self, secret: str, *, clock: Clock | None = None, verified_kept: int = VERIFIED_TOKENS_KEPT) -> None:
        self._secret = secret
        self._clock: Clock = clock or SystemClock()
        self._verified_kept = verified_kept
        # token -> its claims (read-only: every identity of the token shares them), least recently used first
        self._verified: OrderedDict[str, Mapping[str, Any]] = OrderedDict()

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
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None  # another scheme (Basic...) carries no JWT; PostgREST ignores it too
        token = token.strip()
        if not token:
            raise _invalid("Empty JWT is sent in Authorization header")
        return token

    def identify(self, token: str) -> Identity:
        """Validate one token (signature, algorithm, exp/nbf/iat with skew, role) and return its identity."""
        claims = self._verified.get(token)
        if claims is None:
            claims = MappingProxyType(self._verified_claims(token))
            self._verified[token] = claims
            if len(self._verified) > self._verified_kept:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
        self._check_time_claims(claims)
        return Identity(self._role(claims), token, claims)

    def _verified_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token whose form, algorithm and signature are right; AuthenticationError otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _invalid(f"Expected 3 parts in JWT; got {len(parts)}")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise _invalid("JWT couldn't be decoded", details=str(error)) from error
        if header.get("alg") != ALGORITHM:
            raise _invalid("Wrong or unsupported encoding algorithm", details=f"Expected {ALGORITHM}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                # Time claims are checked below with PostgREST's skew and messages; aud is not configured,
                # so (as in PostgREST without jwt-aud) any audience is accepted.
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "require": [],
                },
            )
        except jwt.InvalidSignatureError as error:
            raise _invalid("JWT cryptographic operation failed") from error
        except jwt.PyJWTError as error:
            raise _invalid("JWT couldn't be decoded", details=str(error)) from error
        return claims

    def _check_time_claims(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.now().timestamp()
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise _invalid(f"The JWT '{name}' claim must be a number", code="PGRST303")
        if "exp" in claims and now > claims["exp"] + CLOCK_SKEW_SECONDS:
            raise _invalid("JWT expired", code="PGRST303")
        if "nbf" in claims and now < claims["nbf"] - CLOCK_SKEW_SECONDS:
            raise _invalid("JWT not yet valid", code="PGRST303")
        if "iat" in claims and now < claims["iat"] - CLOCK_SKEW_SECONDS:
            raise _invalid("JWT issued at future", code="PGRST303")
        audience = claims.get("aud")
        if audience is not None and not (
            isinstance(audience, str) or (isinstance(audience, list) and all(isinstance(a, str) for a in audience))
        ):
            raise _invalid("The JWT 'aud' claim must be a string or an array of strings", code="PGRST303")

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


def issue_key(
    secret: str, role: str, *, lifetime_seconds: float | None = None, clock: Clock | None = None, **claims: Any
) -> str:
    """An API key for ``role`` signed with ``secret``, as `gridloop keys` and the tests mint them."""
    issued_at = (clock or SystemClock()).now().timestamp()
    payload: dict[str, Any] = {"role": role, "iss": "gridloop", "iat": int(issued_at), **claims}
    if lifetime_seconds is not None:
        payload["exp"] = int(issued_at + lifetime_seconds)
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
