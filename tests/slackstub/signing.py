"""Slack request signing (v0): what Slack puts on every request it sends to the bot."""

from __future__ import annotations

import hashlib
import hmac
import time


def _signature(signing_secret: str, body: bytes, timestamp: int) -> str:
    base = b"v0:" + str(timestamp).encode("ascii") + b":" + body
    return "v0=" + hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def sign_request(signing_secret: str, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
    """Headers X-Slack-Request-Timestamp and X-Slack-Signature for `body` (signed byte for byte)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": _signature(signing_secret, body, ts)}


def verify_signature(signing_secret: str, body: bytes, timestamp: str | int, signature: str) -> bool:
    """Inverse of sign_request, for checking that the signing scheme matches slack_sdk's verifier."""
    return hmac.compare_digest(_signature(signing_secret, body, int(timestamp)), signature)
