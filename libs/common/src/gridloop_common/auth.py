"""API keys as Supabase issues them: HS256 JWTs signed with GRIDLOOP_JWT_SECRET, verified as PostgREST does.

One verifier for every service that takes these keys (the Flux API of telemetry-ingest, the operator
endpoints of the gateway): form, algorithm and signature, then the time claims with PostgREST's 30 s
skew. What a role may do, and how a refusal is worded to the client, is each service's business:
``TokenRefused`` says what is wrong with a token and whether it was the time claims (``claim``) or the
token itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import jwt

from gridloop_common.clock import Clock, SystemClock

__all__ = [
    "ALGORITHM",
    "CLOCK_SKEW_SECONDS",
    "MINIMUM_SECRET_LENGTH",
    "VERIFIED_TOKENS_KEPT",
    "Roles",
    "TokenRefused",
    "TokenVerifier",
    "bearer_token",
    "issue_key",
]

ALGORITHM: Final = "HS256"
# PostgREST allows 30 s of clock skew on exp, nbf and iat.
CLOCK_SKEW_SECONDS: Final = 30
# An HS256 secret shorter than this is guessable offline from one key; every service refuses it at start-up.
MINIMUM_SECRET_LENGTH: Final = 32
# Tokens whose signature was verified, kept so that a client's next request skips the HMAC and PyJWT's key
# checks (measured: 115 us for a request's apikey and Bearer, 4 us remembered), as PostgREST caches JWTs.
# Only the signature is remembered: the time claims (and the role, by the caller) are checked every time.
VERIFIED_TOKENS_KEPT: Final = 1024


class Roles:
    """The ``role`` claims gridloop issues keys for (`gridloop keys`)."""

    ANON: Final = "anon"
    AUTHENTICATED: Final = "authenticated"
    SERVICE: Final = "service_role"
    # A grid operator: the seed-000 endpoints of the gateway (docs/design.md §8), no database role.
    GRID_OPERATOR: Final = "grid_operator"


class TokenRefused(Exception):
    """A token that is not a valid key; ``claim`` is True when its time or audience claims are what is wrong."""

    def __init__(self, message: str, *, details: str | None = None, claim: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.claim = claim


def _is_number(value: object) -> bool:
    # JSON decoders take NaN and Infinity: an `exp` of NaN compares false with every time and would never expire.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without one or for another scheme (Basic...)."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme carries no JWT; PostgREST ignores it too
    token = token.strip()
    if not token:
        raise TokenRefused("Empty JWT is sent in Authorization header")
    return token


class TokenVerifier:
    """Verifies keys signed with one secret; remembers the last ``verified_kept`` signatures it checked."""

    def __init__(self, secret: str, *, clock: Clock | None = None, verified_kept: int = VERIFIED_TOKENS_KEPT) -> None:
        self._secret = secret
        self._clock: Clock = clock or SystemClock()
        self._verified_kept = verified_kept
        # token -> its claims (read-only: every caller shares them), least recently used first
        self._verified: OrderedDict[str, Mapping[str, Any]] = OrderedDict()

    def claims(self, token: str) -> Mapping[str, Any]:
        """The claims of a valid token (signature, algorithm, exp/nbf/iat with skew, aud's type); else TokenRefused."""
        claims = self._verified.get(token)
        if claims is None:
            claims = MappingProxyType(self._verified_claims(token))
            self._verified[token] = claims
            if len(self._verified) > self._verified_kept:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
        self._check_time_claims(claims)
        return claims

    def _verified_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token whose form, algorithm and signature are right; TokenRefused otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRefused(f"Expected 3 parts in JWT; got {len(parts)}")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenRefused("JWT couldn't be decoded", details=str(error)) from error
        if header.get("alg") != ALGORITHM:
            raise TokenRefused("Wrong or unsupported encoding algorithm", details=f"Expected {ALGORITHM}")
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
            raise TokenRefused("JWT cryptographic operation failed") from error
        except jwt.PyJWTError as error:
            raise TokenRefused("JWT couldn't be decoded", details=str(error)) from error
        return claims

    def _check_time_claims(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.now().timestamp()
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise TokenRefused(f"The JWT '{name}' claim must be a number", claim=True)
        if "exp" in claims and now > claims["exp"] + CLOCK_SKEW_SECONDS:
            raise TokenRefused("JWT expired", claim=True)
        if "nbf" in claims and now < claims["nbf"] - CLOCK_SKEW_SECONDS:
            raise TokenRefused("JWT not yet valid", claim=True)
        if "iat" in claims and now < claims["iat"] - CLOCK_SKEW_SECONDS:
            raise TokenRefused("JWT issued at future", claim=True)
        audience = claims.get("aud")
        if audience is not None and not (
            isinstance(audience, str) or (isinstance(audience, list) and all(isinstance(a, str) for a in audience))
        ):
            raise TokenRefused("The JWT 'aud' claim must be a string or an array of strings", claim=True)


def issue_key(
    secret: str, role: str, *, lifetime_seconds: float | None = None, clock: Clock | None = None, **claims: Any
) -> str:
    """A key for ``role`` signed with ``secret``, as `gridloop keys` and the tests mint them."""
    issued_at = (clock or SystemClock()).now().timestamp()
    payload: dict[str, Any] = {"role": role, "iss": "gridloop", "iat": int(issued_at), **claims}
    if lifetime_seconds is not None:
        payload["exp"] = int(issued_at + lifetime_seconds)
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
