"""Generic webhook: the CloudEvent itself (structured mode), signed so receivers can trust it.

Receivers check `X-VifGate-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
verify(); the timestamp bounds replays to the tolerance, and the event id (deterministic) lets a
receiver drop a copy it has already handled.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from .. import events
from ..events import CloudEvent

CONTENT_TYPE = "application/cloudevents+json"
TIMESTAMP_HEADER = "X-VifGate-Timestamp"
SIGNATURE_HEADER = "X-VifGate-Signature"
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v1=[0-9a-f]{64}")


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int | str, body: str | bytes) -> str:
    """The X-VifGate-Signature value for this body sent at this unix time."""
    mac = hmac.new(_bytes(secret), f"{timestamp}.".encode() + _bytes(body), hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str | bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    body: str | bytes,
    now: float,
    tolerance_seconds: float = 300,
) -> bool:
    """True only for a well-formed signature by `secret` over this body, timestamped within tolerance of `now`."""
    if not isinstance(timestamp_header, str) or not isinstance(signature_header, str):
        return False
    if not _TIMESTAMP.fullmatch(timestamp_header) or not _SIGNATURE.fullmatch(signature_header):
        return False
    if abs(now - int(timestamp_header)) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp_header, body), signature_header)


def request(event: CloudEvent, secret: str, now: float) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the POST, signed at unix time `now`."""
    body = events.to_json(event).encode()
    timestamp = str(int(now))
    return body, {
        "Content-Type": CONTENT_TYPE,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
