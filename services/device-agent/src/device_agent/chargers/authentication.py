"""OCPP security profile 1: HTTP Basic auth, the charge point's identity as the user, its password checked
against the SHA-256 the registry stores (never the password itself)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["basic_credentials", "password_matches"]


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic …`` header; None when absent or malformed."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    if not separator:
        return None
    return user, password


def password_matches(password: str, password_sha256: str) -> bool:
    """Whether ``password`` hashes to the stored hex digest; constant-time, so timing tells nothing."""
    digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
    return hmac.compare_digest(digest.encode("ascii"), password_sha256.lower().encode("ascii"))
