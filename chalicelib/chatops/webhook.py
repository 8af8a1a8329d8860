"""Generic webhook: the CloudEvent itself (structured mode), signed the Standard Webhooks way.

Headers (https://www.standardwebhooks.com): `webhook-id` is the event id (deterministic, so the
same on every retry and from every poller: receivers dedup on it), `webhook-timestamp` the unix
time of this attempt, `webhook-signature` `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
Receivers verify with any Standard Webhooks library, e.g. `standardwebhooks.Webhook(secret).verify`.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from .. import events
from ..events import CloudEvent

CONTENT_TYPE = "application/cloudevents+json"
SECRET_PREFIX = "whsec_"
# The specification's bounds for a symmetric key: at least 24 bytes, at most 64.
KEY_MIN, KEY_MAX = 24, 64
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class InvalidSecret(ValueError):
    """A signing secret that is not `whsec_<base64 of 24 to 64 bytes>`; the text never quotes it."""


def signer(secret: str) -> Webhook:
    """The signer for a `whsec_<base64>` secret, or InvalidSecret saying what is wrong with it."""
    # standardwebhooks itself takes any string: it drops non-base64 characters and a missing prefix
    # silently, so a pasted password would sign with bytes no receiver was given. Check first.
    secret = secret.strip()
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"does not start with {SECRET_PREFIX!r} (a Standard Webhooks secret is whsec_<base64>)")
    encoded = secret.removeprefix(SECRET_PREFIX)
    if not _BASE64.fullmatch(encoded):
        raise InvalidSecret(f"is not base64 after {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise InvalidSecret(f"is not base64 after {SECRET_PREFIX!r}") from None
    if not KEY_MIN <= len(key) <= KEY_MAX:
        raise InvalidSecret(f"holds a {len(key)}-byte key; Standard Webhooks keys are {KEY_MIN} to {KEY_MAX} bytes")
    return Webhook(key)


def sign(signing: Webhook, webhook_id: str, body: str, now: float) -> dict[str, str]:
    """The three Standard Webhooks headers for `body` sent at unix time `now`."""
    timestamp = datetime.fromtimestamp(int(now), tz=UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signing.sign(msg_id=webhook_id, timestamp=timestamp, data=body),
    }


def request(event: CloudEvent, signing: Webhook | str, now: float) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the POST, signed at unix time `now`; the webhook id is the event id."""
    if isinstance(signing, str):
        signing = signer(signing)
    body = events.to_json(event)
    return body.encode(), {"Content-Type": CONTENT_TYPE, **sign(signing, event.id, body, now)}
