"""Per-tier token buckets (docs/design.md §5: anon 60/min burst 100, authenticated 300/500, service_role 1000/2000)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from jwt.exceptions import DecodeError
from jwt.utils import base64url_decode

from gridloop_common.clock import Clock, SystemClock
from telemetry_ingest.api.auth import Identity
from telemetry_ingest.api.postgrest import PostgrestError

__all__ = ["TIERS", "Decision", "RateLimiter", "Tier", "bucket_key", "rate_limited"]


@dataclass(frozen=True)
class Tier:
    """A sustained rate per minute and the burst a full bucket allows."""

    per_minute: int
    burst: int

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


TIERS: Mapping[str, Tier] = {
    "anon": Tier(per_minute=60, burst=100),
    "authenticated": Tier(per_minute=300, burst=500),
    "service_role": Tier(per_minute=1000, burst=2000),
}


@dataclass(frozen=True)
class Decision:
    """The outcome of one request against its bucket, and the headers that report it.

    ``limit`` is the bucket's capacity (the tier's burst) and ``remaining`` the whole tokens left in it, so the
    two describe the same bucket and ``remaining`` never exceeds ``limit``; ``per_minute`` is the refill rate.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_at: int
    retry_after: int | None
    per_minute: int = 0

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-*` for every response; `Retry-After` as well when refused."""
        values = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if self.retry_after is not None:
            values["Retry-After"] = str(self.retry_after)
        return values


@dataclass
class _Bucket:
    tokens: float
    updated: float


def bucket_key(*, role: str, identity: Identity | None, client_address: str) -> str:
    """Which bucket a request draws from (within its role's tier).

    Anon, and a request whose key was refused, draw on their client address's bucket: every browser shares the
    anon key. ``client_address`` is the resolved one (uvicorn takes it from X-Forwarded-For only for the
    trusted proxies it is told of), never a header the client chose. Another role draws on its subject's
    bucket (the token's ``sub``), so a user's tokens share one; a token without ``sub`` is keyed by its decoded
    signature, not by its text, which base64url lets a client vary (a ``=`` appended, unused low bits) without
    changing the signature. Both by digest, so that no key material is kept in memory.
    """
    if role == "anon" or identity is None:
        return f"address:{client_address}"
    subject = identity.claims.get("sub")
    if isinstance(subject, str) and subject:
        return "subject:" + hashlib.sha256(subject.encode()).hexdigest()[:32]
    return "signature:" + hashlib.sha256(_signature(identity.token)).hexdigest()[:32]


def _signature(token: str) -> bytes:
    """The decoded signature of a verified token, decoded as PyJWT decoded it when it checked the signature."""
    encoded = token.rpartition(".")[2]
    try:
        return base64url_decode(encoded)
    except (DecodeError, ValueError):  # not reached for a verified token; keyed by the text all the same
        return encoded.encode()


def rate_limited(decision: Decision) -> PostgrestError:
    """The 429 body, in PostgREST's four keys; the code is Supabase Auth's for the same condition."""
    return PostgrestError(
        429,
        "over_request_rate_limit",
        f"Rate limit exceeded: {decision.per_minute} requests per minute (burst {decision.limit})",
        details=f"Retry after {decision.retry_after} seconds",
        hint="Slow down, or use a key of a higher tier.",
    )


class RateLimiter:
    """Token buckets keyed by (tier, key): refilled at the tier's rate, at most its burst, one token a request.

    ``X-RateLimit-Limit`` is the bucket's capacity (the tier's burst), ``-Remaining`` the whole tokens left in
    it, ``-Reset`` the Unix time at which the bucket is full again: all three describe the one bucket, so
    Remaining never exceeds Limit (Flux's documented example shows the per-minute rate as the limit, but then a full
    bucket's Remaining, the burst, was above it). Time comes from
    ``clock``'s wall clock (Reset is a Unix time), so tests control it. Not shared between replicas: each
    replica limits on its own, so N replicas admit up to N times the rate.
    """

    def __init__(
        self,
        tiers: Mapping[str, Tier] = TIERS,
        *,
        clock: Clock | None = None,
        max_buckets: int = 100_000,
    ) -> None:
        self._tiers = dict(tiers)
        self._clock: Clock = clock or SystemClock()
        self._max_buckets = max_buckets
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def take(self, tier_name: str, key: str) -> Decision:
        """Spend one token of ``key``'s bucket in ``tier_name`` if it has one; never blocks."""
        tier = self._tiers[tier_name]
        now = self._clock.now().timestamp()
        bucket = self._buckets.get((tier_name, key))
        if bucket is None:
            self._prune(now)
            bucket = self._buckets[(tier_name, key)] = _Bucket(float(tier.burst), now)
        elapsed = max(now - bucket.updated, 0.0)  # a clock stepping back must not drain the bucket
        bucket.tokens = min(float(tier.burst), bucket.tokens + elapsed * tier.per_second)
        bucket.updated = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        retry_after = None if allowed else max(1, math.ceil((1.0 - bucket.tokens) / tier.per_second))
        return Decision(
            allowed=allowed,
            limit=tier.burst,
            remaining=int(bucket.tokens),
            reset_at=math.ceil(now + (tier.burst - bucket.tokens) / tier.per_second),
            retry_after=retry_after,
            per_minute=tier.per_minute,
        )

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket; drop those first, then the idlest, so
        # memory stays bounded however many clients (addresses) come and go.
        if len(self._buckets) < self._max_buckets:
            return
        for bucket_id, bucket in list(self._buckets.items()):
            tier = self._tiers[bucket_id[0]]
            if bucket.tokens + (now - bucket.updated) * tier.per_second >= tier.burst:
                del self._buckets[bucket_id]
        if len(self._buckets) >= self._max_buckets:
            idlest = sorted(self._buckets, key=lambda bucket_id: self._buckets[bucket_id].updated)
            for bucket_id in idlest[: len(idlest) // 2 + 1]:
                del self._buckets[bucket_id]
