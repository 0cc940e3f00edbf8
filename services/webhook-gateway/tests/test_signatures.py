"""Standard Webhooks verification: the reference vector, interoperability, rotation and every refusal."""

from __future__ import annotations

import base64
import hmac
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks

from webhook_gateway.signatures import (
    InvalidSignature,
    MalformedHeader,
    MissingHeaders,
    SignatureError,
    TimestampOutOfRange,
    sign,
    verify,
)

# The cross-language vector every Standard Webhooks library checks.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OLD_SECRET = "whsec_" + base64.b64encode(b"old-secret-0123456789abcdef").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"new-secret-0123456789abcdef").decode()
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
BODY = json.dumps(
    {"event_type": "command.created", "event_object": {"id": "x"}, "timestamp": "2025-01-15T12:00:00.000Z"}
).encode()


def signed_headers(
    *, secret: str = NEW_SECRET, webhook_id: str = "msg_1", at: datetime = NOW, body: bytes = BODY
) -> dict[str, str]:
    timestamp = int(at.timestamp())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret=secret, webhook_id=webhook_id, timestamp=timestamp, body=body),
    }


def test_reference_vector_is_reproduced_and_accepted() -> None:
    signature = sign(secret=VECTOR_SECRET, webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY)
    assert signature == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP), "webhook-signature": signature}
    now = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    assert verify(headers=headers, body=VECTOR_BODY, secrets=[VECTOR_SECRET], now=now) == VECTOR_ID


def test_sign_accepts_an_aware_datetime() -> None:
    at = datetime.fromtimestamp(VECTOR_TIMESTAMP + 0.9, UTC)  # sub-second part is truncated
    signature = sign(secret=VECTOR_SECRET, webhook_id=VECTOR_ID, timestamp=at, body=VECTOR_BODY)
    assert signature == VECTOR_SIGNATURE


def test_the_library_as_sender_is_accepted() -> None:
    sender = standardwebhooks.Webhook(NEW_SECRET)
    body = BODY.decode()
    header = sender.sign(msg_id="msg_library", timestamp=NOW, data=body)
    headers = {
        "Webhook-Id": "msg_library",
        "Webhook-Timestamp": str(int(NOW.timestamp())),
        "Webhook-Signature": header,
    }
    assert verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW) == "msg_library"


def test_the_library_as_verifier_accepts_our_signature() -> None:
    # The library reads the real clock, so sign at the real time.
    now = datetime.now(UTC)
    headers = signed_headers(at=now, webhook_id="msg_ours")
    assert standardwebhooks.Webhook(NEW_SECRET).verify(BODY, headers) == json.loads(BODY)


def test_agrees_with_the_library_on_random_inputs() -> None:
    generator = random.Random(20250115)
    for _ in range(300):
        secret = "whsec_" + base64.b64encode(generator.randbytes(generator.randint(24, 64))).decode()
        webhook_id = "msg_" + "".join(generator.choices("abcdefXYZ0123456789_-", k=generator.randint(1, 40)))
        timestamp = generator.randint(0, 4_000_000_000)
        body = generator.randbytes(generator.randint(0, 300)).hex().encode()
        library_signature = standardwebhooks.Webhook(secret).sign(
            msg_id=webhook_id, timestamp=datetime.fromtimestamp(timestamp, UTC), data=body.decode()
        )
        assert sign(secret=secret, webhook_id=webhook_id, timestamp=timestamp, body=body) == library_signature


def test_header_names_are_case_insensitive() -> None:
    headers = {name.upper(): value for name, value in signed_headers().items()}
    assert verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW) == "msg_1"


def test_a_secret_without_the_prefix_or_padding_is_accepted() -> None:
    bare = NEW_SECRET.removeprefix("whsec_").rstrip("=")
    assert verify(headers=signed_headers(), body=BODY, secrets=[bare], now=NOW) == "msg_1"


@pytest.mark.parametrize("signing_secret", [OLD_SECRET, NEW_SECRET])
def test_rotation_accepts_either_active_secret(signing_secret: str) -> None:
    headers = signed_headers(secret=signing_secret)
    assert verify(headers=headers, body=BODY, secrets=[OLD_SECRET, NEW_SECRET], now=NOW) == "msg_1"


def test_rotation_sender_signing_with_both_secrets() -> None:
    old = signed_headers(secret=OLD_SECRET)["webhook-signature"]
    headers = signed_headers(secret=NEW_SECRET)
    headers["webhook-signature"] = f"{old} {headers['webhook-signature']}"
    assert verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW) == "msg_1"


def test_a_retired_secret_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        verify(headers=signed_headers(secret=OLD_SECRET), body=BODY, secrets=[NEW_SECRET], now=NOW)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_named(header: str) -> None:
    headers = signed_headers()
    del headers[header]
    with pytest.raises(MissingHeaders) as caught:
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)
    assert caught.value.missing == (header,)
    assert header in str(caught.value)
    assert caught.value.http_status == 400


def test_empty_headers_count_as_missing() -> None:
    headers = {"webhook-id": "", "webhook-timestamp": " ", "webhook-signature": ""}
    with pytest.raises(MissingHeaders) as caught:
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)
    assert caught.value.missing == ("webhook-id", "webhook-timestamp", "webhook-signature")


@pytest.mark.parametrize("timestamp", ["hello", "1.5", "1e20", "-1", " 1736942400", "0x10", "١٢٣"])
def test_a_non_integer_timestamp_is_malformed(timestamp: str) -> None:
    headers = signed_headers()
    headers["webhook-timestamp"] = timestamp
    with pytest.raises(MalformedHeader) as caught:
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)
    assert caught.value.header == "webhook-timestamp"
    assert caught.value.http_status == 400


@pytest.mark.parametrize("webhook_id", ["msg.1", "msg 1", "x" * 257, "msg_é"])
def test_an_unsafe_webhook_id_is_malformed(webhook_id: str) -> None:
    headers = signed_headers()
    headers["webhook-id"] = webhook_id
    with pytest.raises(MalformedHeader) as caught:
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)
    assert caught.value.header == "webhook-id"


@pytest.mark.parametrize(("offset_s", "direction"), [(-301, "past"), (301, "future")])
def test_a_timestamp_beyond_the_tolerance_is_refused(offset_s: int, direction: str) -> None:
    headers = signed_headers(at=NOW + timedelta(seconds=offset_s))
    with pytest.raises(TimestampOutOfRange) as caught:
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)
    assert caught.value.skew_s == offset_s
    assert direction in str(caught.value)
    assert caught.value.http_status == 401


@pytest.mark.parametrize("offset_s", [-300, -299, 299, 300])
def test_a_timestamp_within_the_tolerance_is_accepted(offset_s: int) -> None:
    headers = signed_headers(at=NOW + timedelta(seconds=offset_s))
    assert verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW) == "msg_1"


def test_the_timestamp_is_checked_before_the_signature() -> None:
    headers = signed_headers(at=NOW - timedelta(hours=1))
    headers["webhook-signature"] = "v1,AAAA"
    with pytest.raises(TimestampOutOfRange):
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)


def test_a_custom_tolerance_applies() -> None:
    headers = signed_headers(at=NOW - timedelta(seconds=30))
    with pytest.raises(TimestampOutOfRange):
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW, tolerance_s=10)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(InvalidSignature) as caught:
        verify(headers=signed_headers(secret=OLD_SECRET), body=BODY, secrets=[NEW_SECRET], now=NOW)
    assert caught.value.http_status == 401
    assert "raw body" in str(caught.value)


def test_a_tampered_body_is_refused() -> None:
    tampered = bytearray(BODY)
    tampered[10] ^= 0x01
    with pytest.raises(InvalidSignature):
        verify(headers=signed_headers(), body=bytes(tampered), secrets=[NEW_SECRET], now=NOW)


def test_a_reserialised_body_is_refused() -> None:
    reserialised = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert reserialised != BODY
    with pytest.raises(InvalidSignature):
        verify(headers=signed_headers(), body=reserialised, secrets=[NEW_SECRET], now=NOW)


def test_several_signatures_one_valid_is_accepted() -> None:
    headers = signed_headers()
    valid = headers["webhook-signature"]
    wrong = signed_headers(secret=OLD_SECRET)["webhook-signature"]
    # Unknown versions, an entry with no comma and bad base64 are skipped, never raised.
    headers["webhook-signature"] = f"v2,{valid[3:]} v1a,AAAA nocomma v1,!!notbase64!! {wrong} {valid}"
    assert verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW) == "msg_1"


@pytest.mark.parametrize("signature", ["v2,abc", "v1a,abc", "nocomma", "v1,!!!", "v1,", "v1,QUJD"])
def test_no_readable_v1_entry_is_an_invalid_signature(signature: str) -> None:
    headers = signed_headers()
    headers["webhook-signature"] = signature
    with pytest.raises(InvalidSignature):
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)


def test_many_signature_entries_are_refused_cleanly() -> None:
    headers = signed_headers()
    headers["webhook-signature"] = " ".join(["v1,AAAA"] * 1000 + ["x" * 16384])
    with pytest.raises(InvalidSignature):
        verify(headers=headers, body=BODY, secrets=[NEW_SECRET], now=NOW)


def test_every_error_is_a_signature_error() -> None:
    for error_type in (MissingHeaders, MalformedHeader, TimestampOutOfRange, InvalidSignature):
        assert issubclass(error_type, SignatureError)
    codes = {error_type.code for error_type in (MissingHeaders, MalformedHeader, TimestampOutOfRange, InvalidSignature)}
    assert len(codes) == 4


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(first: bytes, second: bytes) -> bool:
        calls.append((first, second))
        return real_compare(first, second)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # verify looks it up at call time
    headers = signed_headers()
    wrong = signed_headers(secret=OLD_SECRET)["webhook-signature"]
    headers["webhook-signature"] = f"{headers['webhook-signature']} {wrong}"
    assert verify(headers=headers, body=BODY, secrets=[OLD_SECRET, NEW_SECRET], now=NOW) == "msg_1"
    # Every (entry, secret) pair is compared even after a match, so timing says nothing about which.
    assert len(calls) == 4


def test_configuration_errors_are_not_signature_errors() -> None:
    with pytest.raises(ValueError, match="no webhook secret"):
        verify(headers=signed_headers(), body=BODY, secrets=[], now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(headers=signed_headers(), body=BODY, secrets=[NEW_SECRET], now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="whsec_"):
        verify(headers=signed_headers(), body=BODY, secrets=["whsec_not base64!"], now=NOW)


def test_sign_refuses_what_verify_would_refuse() -> None:
    with pytest.raises(ValueError, match="webhook id"):
        sign(secret=NEW_SECRET, webhook_id="msg.1", timestamp=0, body=b"")
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(secret=NEW_SECRET, webhook_id="msg_1", timestamp=NOW.replace(tzinfo=None), body=b"")
