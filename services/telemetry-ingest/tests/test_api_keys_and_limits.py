"""API keys (JWT validation as PostgREST does it) and the per-tier token buckets, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from gridloop_common.testing import FakeClock
from telemetry_ingest.api.auth import AuthenticationError, Authenticator, Identity, issue_key
from telemetry_ingest.api.rate_limits import TIERS, RateLimiter, Tier, bucket_key, rate_limited

SECRET = "unit-test-secret-of-the-flux-api-0123456789"
NOW = 1_800_000_000.0


def authenticator() -> Authenticator:
    return Authenticator(SECRET, clock=clock_at_now())


def token(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.parametrize(
    ("headers", "role"),
    [
        ({"apikey": token({"role": "anon"})}, "anon"),
        ({"Authorization": f"Bearer {token({'role': 'service_role'})}"}, "service_role"),
        # A signed-in user's token next to the project's anon key: the bearer decides the role.
        (
            {"apikey": token({"role": "anon"}), "authorization": f"bearer {token({'role': 'authenticated'})}"},
            "authenticated",
        ),
        # Another scheme carries no JWT; the apikey decides.
        ({"apikey": token({"role": "anon"}), "Authorization": "Basic dXNlcjpwYXNz"}, "anon"),
        ({"apikey": token({"role": "anon", "exp": NOW - 29})}, "anon"),  # within the 30 s skew
        ({"apikey": token({"role": "anon", "aud": "anything"})}, "anon"),  # no audience configured
    ],
)
def test_accepted_keys(headers: dict[str, str], role: str) -> None:
    assert authenticator().authenticate(headers).role == role


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({}, "PGRST302", "No API key found in request"),
        ({"Authorization": "Bearer"}, "PGRST301", "Empty JWT is sent in Authorization header"),
        ({"apikey": "a.b"}, "PGRST301", "Expected 3 parts in JWT; got 2"),
        ({"apikey": "a.b.c.d"}, "PGRST301", "Expected 3 parts in JWT; got 4"),
        ({"apikey": "a.b.c"}, "PGRST301", "JWT couldn't be decoded"),
        ({"apikey": token({"role": "anon"}, secret="x" * 40)}, "PGRST301", "JWT cryptographic operation failed"),
        (
            {"apikey": jwt.encode({"role": "anon"}, None, algorithm="none")},
            "PGRST301",
            "Wrong or unsupported encoding algorithm",
        ),
        ({"apikey": token({"role": "anon", "exp": NOW - 31})}, "PGRST303", "JWT expired"),
        ({"apikey": token({"role": "anon", "nbf": NOW + 31})}, "PGRST303", "JWT not yet valid"),
        ({"apikey": token({"role": "anon", "iat": NOW + 31})}, "PGRST303", "JWT issued at future"),
        ({"apikey": token({"role": "anon", "exp": True})}, "PGRST303", "The JWT 'exp' claim must be a number"),
        # JSON decoders take NaN: an exp of NaN compares false with every time, so it would never expire.
        ({"apikey": token({"role": "anon", "exp": float("nan")})}, "PGRST303", "The JWT 'exp' claim must be a number"),
        ({"apikey": token({"role": "anon", "exp": float("inf")})}, "PGRST303", "The JWT 'exp' claim must be a number"),
        (
            {"apikey": token({"role": "anon", "aud": 5})},
            "PGRST303",
            "The JWT 'aud' claim must be a string or an array of strings",
        ),
        ({"apikey": token({"sub": "someone"})}, "PGRST302", "Anonymous access is disabled"),
        ({"apikey": token({"role": "postgres"})}, "PGRST303", "JWT role is not allowed"),
        ({"apikey": token({"role": ["anon"]})}, "PGRST303", "JWT role is not allowed"),
        # Every key sent is checked, even when the bearer decides the role.
        (
            {"apikey": "x.y.z", "Authorization": f"Bearer {token({'role': 'anon'})}"},
            "PGRST301",
            "JWT couldn't be decoded",
        ),
    ],
)
def test_refused_keys(headers: dict[str, str], code: str, message: str) -> None:
    with pytest.raises(AuthenticationError) as refused:
        authenticator().authenticate(headers)
    assert (refused.value.status, refused.value.code, refused.value.message) == (401, code, message)
    if code == "PGRST302":
        assert refused.value.challenge == "Bearer"
    else:
        assert refused.value.challenge == f'Bearer error="invalid_token", error_description="{message}"'


def test_issued_keys_carry_their_role_and_the_apikey_parameter_counts() -> None:
    key = issue_key(SECRET, "service_role")
    identity = Authenticator(SECRET).authenticate({}, apikey_parameter=key)
    assert (identity.role, identity.anonymous, identity.token) == ("service_role", False, key)
    assert Authenticator(SECRET).authenticate({"apikey": issue_key(SECRET, "anon")}).anonymous


def clock_at_now() -> FakeClock:
    return FakeClock(datetime.fromtimestamp(NOW, tz=UTC))


@pytest.fixture(name="decoded")
def decoded_fixture(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature PyJWT checks, in order."""
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(encoded: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(encoded)
        return real_decode(encoded, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    return decoded


def test_a_verified_token_is_not_verified_again_but_its_time_claims_are_checked_every_time(decoded: list[str]) -> None:
    clock = clock_at_now()
    keys = Authenticator(SECRET, clock=clock)
    key = token({"role": "authenticated", "exp": NOW + 60})
    first = keys.authenticate({"apikey": key, "Authorization": f"Bearer {key}"})
    second = keys.identify(key)

    assert decoded == [key]  # one signature check for three uses
    assert (first.role, second.role) == ("authenticated", "authenticated")
    assert dict(second.claims) == {"role": "authenticated", "exp": NOW + 60}
    clock.advance(91)  # past exp and the 30 s skew
    with pytest.raises(AuthenticationError) as refused:
        keys.identify(key)
    assert (refused.value.code, refused.value.message) == ("PGRST303", "JWT expired")


def test_a_refused_token_is_not_remembered_and_a_forged_one_is_not_taken_for_a_verified_one() -> None:
    keys = authenticator()
    good = token({"role": "anon"})
    keys.identify(good)
    header, _, signature = good.split(".")
    forged_payload = token({"role": "service_role"}).split(".")[1]

    for attempt in range(2):
        with pytest.raises(AuthenticationError) as refused:
            keys.identify(f"{header}.{forged_payload}.{signature}")
        assert refused.value.message == "JWT cryptographic operation failed", attempt
    assert keys.identify(good).role == "anon"


def test_remembered_tokens_are_bounded_least_recently_used_first(decoded: list[str]) -> None:
    keys = Authenticator(SECRET, clock=clock_at_now(), verified_kept=2)
    first, second, third = (token({"role": "anon", "jti": str(number)}) for number in range(3))
    keys.identify(first)
    keys.identify(second)
    keys.identify(first)  # used again: second is now the least recently used
    keys.identify(third)  # evicts second
    keys.identify(first)
    keys.identify(second)

    assert decoded == [first, second, third, second]


def test_the_seed_tiers() -> None:
    assert dict(TIERS) == {
        "anon": Tier(60, 100),
        "authenticated": Tier(300, 500),
        "service_role": Tier(1000, 2000),
    }


def test_burst_then_refusal_then_refill_at_the_tier_rate() -> None:
    clock = clock_at_now()
    limiter = RateLimiter(clock=clock)
    decisions = [limiter.take("anon", "address:10.0.0.1") for _ in range(100)]
    assert all(decision.allowed for decision in decisions)
    assert [decision.remaining for decision in decisions[:3]] == [99, 98, 97]
    assert decisions[-1].headers() == {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(NOW) + 100),
    }
    refused = limiter.take("anon", "address:10.0.0.1")
    assert (refused.allowed, refused.retry_after, refused.headers()["Retry-After"]) == (False, 1, "1")
    assert limiter.take("anon", "address:10.0.0.2").allowed  # another address, another bucket
    clock.advance(0.5)
    assert limiter.take("anon", "address:10.0.0.1").retry_after == 1
    clock.advance(0.5)
    assert limiter.take("anon", "address:10.0.0.1").allowed
    clock.advance(30)  # 30 s at 60/min: 30 requests
    assert sum(limiter.take("anon", "address:10.0.0.1").allowed for _ in range(40)) == 30


def test_service_role_allows_its_burst_and_refills_at_1000_per_minute() -> None:
    clock = clock_at_now()
    limiter = RateLimiter(clock=clock)
    assert sum(limiter.take("service_role", "key:a").allowed for _ in range(2100)) == 2000
    clock.advance(6)  # 1000/min: 100 in 6 s
    assert sum(limiter.take("service_role", "key:a").allowed for _ in range(150)) == 100


def test_a_clock_stepping_back_does_not_drain_or_fill() -> None:
    clock = clock_at_now()
    limiter = RateLimiter(clock=clock)
    limiter.take("authenticated", "key:b")
    clock.set(clock.now() - timedelta(seconds=1000))
    decision = limiter.take("authenticated", "key:b")
    assert (decision.allowed, decision.remaining) == (True, 498)


def test_buckets_stay_bounded() -> None:
    clock = clock_at_now()
    limiter = RateLimiter(clock=clock, max_buckets=10)
    for address in range(50):
        limiter.take("anon", f"address:{address}")
        clock.advance(0.01)
    assert len(limiter._buckets) <= 10


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_remaining_never_exceeds_limit(tier: str) -> None:
    # Probe finding L3: the limit was the per-minute rate while remaining counted the burst's tokens.
    clock = clock_at_now()
    limiter = RateLimiter(clock=clock)
    decisions = [limiter.take(tier, "key:a") for _ in range(TIERS[tier].burst + 1)]
    clock.advance(3600)
    decisions.append(limiter.take(tier, "key:a"))
    assert all(decision.remaining <= decision.limit for decision in decisions)
    assert (decisions[0].limit, decisions[0].remaining) == (TIERS[tier].burst, TIERS[tier].burst - 1)
    assert (decisions[-2].allowed, decisions[-2].remaining) == (False, 0)
    assert str(TIERS[tier].per_minute) in rate_limited(decisions[-2]).message


def _identity(token: str) -> Identity:
    return authenticator().identify(token)


def test_bucket_keys() -> None:
    anon = _identity(token({"role": "anon"}))
    assert bucket_key(role="anon", identity=anon, client_address="1.2.3.4") == "address:1.2.3.4"
    assert bucket_key(role="anon", identity=None, client_address="1.2.3.4") == "address:1.2.3.4"
    assert bucket_key(role="anon", identity=anon, client_address="1.2.3.5") != "address:1.2.3.4"
    keyed = bucket_key(role="authenticated", identity=_identity(token({"role": "authenticated"})), client_address="")
    assert keyed.startswith("signature:")


def test_a_token_draws_on_its_subjects_bucket_whatever_its_spelling() -> None:
    # Probe finding L3: the same token with "=" appended to its signature was accepted and got a fresh bucket.
    plain = token({"role": "service_role", "iat": 1})
    padded = plain + "="
    assert _identity(padded).role == "service_role"  # PyJWT accepts it: the decoded signature is the same
    keys = {bucket_key(role="service_role", identity=_identity(text), client_address="x") for text in (plain, padded)}
    assert len(keys) == 1
    other = token({"role": "service_role", "iat": 2})
    assert bucket_key(role="service_role", identity=_identity(other), client_address="x") not in keys
    # Tokens of one subject share its bucket; another subject has its own. No key material is in a key.
    first, second = (token({"role": "authenticated", "sub": "user-1", "iat": iat}) for iat in (1, 2))
    subject_keys = {
        bucket_key(role="authenticated", identity=_identity(text), client_address="x") for text in (first, second)
    }
    assert len(subject_keys) == 1
    (subject_key,) = subject_keys
    assert "user-1" not in subject_key
    third = token({"role": "authenticated", "sub": "user-2"})
    assert bucket_key(role="authenticated", identity=_identity(third), client_address="x") != subject_key
