"""Key verification shared by telemetry-ingest and the gateway (the PostgREST wording is tested in ingest)."""

from datetime import UTC, datetime

import jwt
import pytest

from gridloop_common.auth import Roles, TokenRefused, TokenVerifier, bearer_token, issue_key
from gridloop_common.testing import FakeClock

SECRET = "unit-test-secret-of-gridloop-keys-0123456789"
NOW = 1_800_000_000.0


def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, clock=FakeClock(datetime.fromtimestamp(NOW, tz=UTC)))


def test_an_issued_key_verifies_with_its_role_and_expiry() -> None:
    clock = FakeClock(datetime.fromtimestamp(NOW, tz=UTC))
    key = issue_key(SECRET, Roles.GRID_OPERATOR, lifetime_seconds=60, clock=clock)

    claims = TokenVerifier(SECRET, clock=clock).claims(key)
    assert dict(claims) == {"role": "grid_operator", "iss": "gridloop", "iat": int(NOW), "exp": int(NOW) + 60}


@pytest.mark.parametrize(
    ("token", "message", "claim"),
    [
        ("a.b", "Expected 3 parts in JWT; got 2", False),
        ("a.b.c", "JWT couldn't be decoded", False),
        (
            jwt.encode({"role": "anon"}, "another-secret-of-thirty-two-characters", algorithm="HS256"),
            "JWT cryptographic operation failed",
            False,
        ),
        (jwt.encode({"role": "anon"}, None, algorithm="none"), "Wrong or unsupported encoding algorithm", False),
        (jwt.encode({"role": "anon", "exp": NOW - 31}, SECRET, algorithm="HS256"), "JWT expired", True),
        (jwt.encode({"role": "anon", "nbf": NOW + 31}, SECRET, algorithm="HS256"), "JWT not yet valid", True),
        (
            jwt.encode({"role": "anon", "exp": "soon"}, SECRET, algorithm="HS256"),
            "The JWT 'exp' claim must be a number",
            True,
        ),
    ],
)
def test_refused_tokens_say_why(token: str, message: str, claim: bool) -> None:
    with pytest.raises(TokenRefused) as refused:
        verifier().claims(token)
    assert (refused.value.message, refused.value.claim) == (message, claim)


@pytest.mark.parametrize(
    ("header", "token"), [(None, None), ("Basic abc", None), ("Bearer x.y.z", "x.y.z"), ("bearer  x.y.z ", "x.y.z")]
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_an_empty_bearer_token_is_refused() -> None:
    with pytest.raises(TokenRefused, match="Empty JWT"):
        bearer_token("Bearer ")
