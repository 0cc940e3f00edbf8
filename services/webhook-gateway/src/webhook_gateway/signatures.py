"""Standard Webhooks signatures: verify an upstream delivery's headers and body, and sign our own."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import ClassVar

__all__ = [
    "ID_HEADER",
    "MINIMUM_SECRET_BYTES",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "InvalidSignature",
    "MalformedHeader",
    "MissingHeaders",
    "SignatureError",
    "TimestampOutOfRange",
    "Verifier",
    "decode_secret",
    "sign",
    "verify",
]

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

SECRET_PREFIX = "whsec_"
# Standard Webhooks asks for 24 to 64 random bytes; a shorter key makes the HMAC guessable offline from
# any one signed delivery.
MINIMUM_SECRET_BYTES = 24
SIGNATURE_VERSION = "v1"
EXPECTED_SIGNATURE_FORMAT = "space-separated 'v1,<base64 HMAC-SHA256 of id.timestamp.body>' entries"

# The id is part of the signed text "id.timestamp.body": a "." in it would let one signature stand for
# several (id, timestamp, body) splits, so the id is restricted to a safe charset, as the spec asks. At most
# 255 characters: the id becomes the AMQP message-id, a short string of at most 255 bytes.
WEBHOOK_ID_PATTERN = re.compile(r"[A-Za-z0-9_\-:+=/]{1,255}")
# Unix seconds as an integer; "1.5", "1e9", "-1" and " 1" are refused rather than guessed at.
TIMESTAMP_PATTERN = re.compile(r"[0-9]{1,20}")
_DIGEST_SIZE = hashlib.sha256().digest_size


class SignatureError(Exception):
    """A webhook delivery failed verification; the message says what the sender should fix.

    Exception tree (every one carries ``code`` for a JSON error body and ``http_status`` as a hint):

        SignatureError
        ├── MissingHeaders        400  webhook-id / webhook-timestamp / webhook-signature absent or empty
        ├── MalformedHeader       400  a header is present but not in the Standard Webhooks format
        ├── TimestampOutOfRange   401  webhook-timestamp too far from our clock (replay window)
        └── InvalidSignature      401  no v1 signature matches any active secret
    """

    code: ClassVar[str] = "signature_error"
    http_status: ClassVar[int] = 401


class MissingHeaders(SignatureError):
    """One or more of the three Standard Webhooks headers is absent or empty."""

    code = "missing_headers"
    http_status = 400

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"missing webhook header(s): {', '.join(self.missing)}; Standard Webhooks deliveries carry "
            f"{ID_HEADER}, {TIMESTAMP_HEADER} (Unix seconds) and {SIGNATURE_HEADER}"
        )


class MalformedHeader(SignatureError):
    """A Standard Webhooks header is present but cannot be read."""

    code = "malformed_header"
    http_status = 400

    def __init__(self, header: str, problem: str) -> None:
        self.header = header
        super().__init__(f"malformed {header} header: {problem}")


class TimestampOutOfRange(SignatureError):
    """The delivery's timestamp is outside the accepted clock skew (too old: a replay; too new: a clock)."""

    code = "timestamp_out_of_range"
    http_status = 401

    def __init__(self, skew_s: int, tolerance_s: int) -> None:
        self.skew_s = skew_s
        self.tolerance_s = tolerance_s
        direction = "in the past" if skew_s < 0 else "in the future"
        super().__init__(
            f"{TIMESTAMP_HEADER} is {abs(skew_s)} s {direction}; accepted skew is ±{tolerance_s} s. "
            f"Sign each attempt with the current time and keep the sender's clock on NTP"
        )


class InvalidSignature(SignatureError):
    """No v1 entry of the signature header matches the body under any active secret."""

    code = "invalid_signature"
    http_status = 401


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the bare base64 form is accepted too).

    Raises ValueError for a non-base64 secret or one shorter than ``MINIMUM_SECRET_BYTES`` decoded: that
    is a configuration error, not the sender's, so it is deliberately not a SignatureError. The message
    never quotes the secret.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    # Senders often strip base64 padding; restore it instead of rejecting a key that is otherwise fine.
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"webhook secret is not {SECRET_PREFIX}<base64>: {error}") from None
    if len(key) < MINIMUM_SECRET_BYTES:
        raise ValueError(
            f"webhook secret decodes to {len(key)} bytes; Standard Webhooks secrets are at least "
            f"{MINIMUM_SECRET_BYTES} random bytes, base64-encoded after {SECRET_PREFIX}"
        )
    return key


def sign(*, secret: str, webhook_id: str, timestamp: int | datetime, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for one delivery attempt.

    ``timestamp`` is the attempt's Unix time in seconds, or an aware datetime (truncated to seconds).
    """
    if not WEBHOOK_ID_PATTERN.fullmatch(webhook_id):
        raise ValueError(f"webhook id {webhook_id!r} must match {WEBHOOK_ID_PATTERN.pattern}")
    seconds = _unix_seconds(timestamp) if isinstance(timestamp, datetime) else timestamp
    if seconds < 0:
        raise ValueError("timestamp must not be before 1970")
    digest = _digest(decode_secret(secret), webhook_id, str(seconds), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(
    *,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    now: datetime,
    tolerance_s: int = 300,
) -> str:
    """Verify one delivery and return its ``webhook-id`` (the idempotency key).

    Checks, in order: the three headers are present and well formed, the timestamp is within
    ``tolerance_s`` of ``now`` either way, and some ``v1`` entry of the signature header matches the
    HMAC-SHA256 of ``id.timestamp.body`` under some secret in ``secrets`` (several during a rotation).
    Header names are matched case-insensitively; unknown signature versions (``v1a``, ``v2``) and
    unreadable entries are skipped, never raised. The body is not parsed.

    Raises a SignatureError subclass for anything the sender got wrong, and ValueError for a
    configuration error (no secrets, a bad secret, a naive ``now``).
    """
    if not secrets:
        raise ValueError("no webhook secret configured")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    verifier = Verifier(secrets, tolerance_s=tolerance_s)
    lowered = {name.lower(): value for name, value in headers.items()}
    return verifier.verify(
        webhook_id=lowered.get(ID_HEADER, ""),
        timestamp_text=lowered.get(TIMESTAMP_HEADER, ""),
        signature_text=lowered.get(SIGNATURE_HEADER, ""),
        body=body,
        now_s=_unix_seconds(now),
    )


class Verifier:
    """``verify`` for a fixed set of secrets, decoded once rather than on every delivery."""

    __slots__ = ("_keys", "_tolerance_s")

    def __init__(self, secrets: Sequence[str], *, tolerance_s: int = 300) -> None:
        if not secrets:
            raise ValueError("no webhook secret configured")
        self._keys = [decode_secret(secret) for secret in secrets]
        self._tolerance_s = tolerance_s

    def verify(self, *, webhook_id: str, timestamp_text: str, signature_text: str, body: bytes, now_s: int) -> str:
        """Verify one delivery from its three header values (empty when absent); returns the webhook id.

        The same checks, in the same order and with the same errors, as the module's ``verify``;
        ``now_s`` is the current Unix time in whole seconds.
        """
        missing = [
            name
            for name, value in (
                (ID_HEADER, webhook_id),
                (TIMESTAMP_HEADER, timestamp_text),
                (SIGNATURE_HEADER, signature_text),
            )
            if not value.strip()
        ]
        if missing:
            raise MissingHeaders(missing)
        if not WEBHOOK_ID_PATTERN.fullmatch(webhook_id):
            raise MalformedHeader(
                ID_HEADER, "expected 1-255 characters of letters, digits and _-:+=/ (no '.' or spaces)"
            )
        if not TIMESTAMP_PATTERN.fullmatch(timestamp_text):
            raise MalformedHeader(TIMESTAMP_HEADER, f"expected integer Unix seconds, got {timestamp_text[:32]!r}")

        tolerance_s = self._tolerance_s
        skew_s = int(timestamp_text) - now_s
        if abs(skew_s) > tolerance_s:
            raise TimestampOutOfRange(skew_s, tolerance_s)

        expected = [_digest(key, webhook_id, timestamp_text, body) for key in self._keys]
        offered = _v1_signatures(signature_text)
        if not offered:
            raise InvalidSignature(f"{SIGNATURE_HEADER} has no readable v1 entry; expected {EXPECTED_SIGNATURE_FORMAT}")
        matched = False
        # Every pair is compared, without stopping at the first match, so timing does not reveal which
        # entry or secret matched.
        for candidate in offered:
            for digest in expected:
                matched |= hmac.compare_digest(candidate, digest)
        if not matched:
            raise InvalidSignature(
                f"no {SIGNATURE_HEADER} entry matches the body under the active secret(s); sign the raw body "
                f"bytes exactly as sent, as '{{{ID_HEADER}}}.{{{TIMESTAMP_HEADER}}}.{{body}}', with the "
                f"endpoint's current {SECRET_PREFIX} secret"
            )
        return webhook_id


def _v1_signatures(signature_text: str) -> list[bytes]:
    """The decoded v1 signatures of the header; other versions and unreadable entries are dropped."""
    signatures = []
    for entry in signature_text.split():
        version, separator, encoded = entry.partition(",")
        if not separator or version != SIGNATURE_VERSION:
            continue
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(decoded) == _DIGEST_SIZE:
            signatures.append(decoded)
    return signatures


def _digest(key: bytes, webhook_id: str, timestamp_text: str, body: bytes) -> bytes:
    signed = b"%s.%s.%s" % (webhook_id.encode("ascii"), timestamp_text.encode("ascii"), body)
    return hmac.digest(key, signed, "sha256")  # one-shot, in C; the same bytes as hmac.new(...).digest()


def _unix_seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return int(moment.timestamp() // 1)
