"""Signed, expiring tokens: a per-approver link (a bearer credential) and a Mattermost action context.

A token is `base64url(body).base64url(HMAC-SHA256(key, domain + body))`, without padding. The
domain differs per kind, so a link token never verifies as an action token or the other way round.
The body is `|`-separated plain fields ending in the expiry (unix seconds); the signature is checked
before anything in the body is believed, and the expiry only after the signature. Errors never
repeat the token or the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MIN_KEY_LENGTH = 32
MAX_TOKEN_LENGTH = 512  # far above what mint_* makes; anything longer is not ours
_DOMAINS = {"link": b"vifgate.approvals.link.v1\x00", "action": b"vifgate.approvals.action.v1\x00"}
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_REQUEST = re.compile(r"apr-[0-9a-f]{20}")
_APPROVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_GATEWAY = re.compile(r"vgw-[0-9a-f]{8}([0-9a-f]{9})?")
_ACTIONS = {"approve": "a", "reject": "r"}
_ACTION_NAMES = {v: k for k, v in _ACTIONS.items()}


class WeakKey(ValueError):
    """The signing key is too short to sign anything a person can be held to."""

    def __init__(self) -> None:
        super().__init__(f"approvals.signing_key is shorter than {MIN_KEY_LENGTH} characters; use a longer random one")


class TokenError(Exception):
    """A token that does not grant anything: 401 forged, malformed or of the wrong kind; 410 expired."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class LinkGrant:
    request_id: str
    approver: str
    expires_at: datetime


@dataclass(frozen=True)
class ActionGrant:
    request_id: str
    action: str  # approve | reject
    gateway: str | None
    expires_at: datetime


def _key(key: str) -> bytes:
    if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
        raise WeakKey()
    return key.encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # one spelling per token: no second string for the same grant
        raise ValueError("not canonical base64url")
    return data


def _mac(key: bytes, kind: str, body: bytes) -> bytes:
    return hmac.new(key, _DOMAINS[kind] + body, hashlib.sha256).digest()


def _seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    return int(moment.timestamp())


def _mint(key: str, kind: str, fields: list[str], expires_at: datetime) -> str:
    body = "|".join([*fields, str(_seconds(expires_at))]).encode()
    return f"{_b64(body)}.{_b64(_mac(_key(key), kind, body))}"


def _verify(key: str, kind: str, token: object, now: datetime, count: int) -> tuple[list[str], datetime]:
    """The body's fields and expiry of a genuine, unexpired token of this kind; TokenError otherwise."""
    secret = _key(key)
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise TokenError(401, "the token is missing or malformed")
    body_text, dot, mac_text = token.partition(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        raise TokenError(401, "the token is malformed") from None
    if not dot or not hmac.compare_digest(mac, _mac(secret, kind, body)):
        # A forged token, one signed with another key, and a token of the other kind all land here.
        raise TokenError(401, f"the token is not a valid {kind} token")
    try:
        fields = body.decode("ascii").split("|")
        if len(fields) != count + 1 or not fields[-1].isdigit():
            raise ValueError("bad fields")
        expires_at = datetime.fromtimestamp(int(fields[-1]), UTC)
    except (ValueError, OverflowError, OSError):
        # Signed by us yet unreadable: only a key shared with another format could do that.
        raise TokenError(401, f"the {kind} token is malformed") from None
    if now >= expires_at:
        raise TokenError(410, f"the {kind} expired at {expires_at.isoformat().replace('+00:00', 'Z')}")
    return fields[:-1], expires_at


def mint_link(key: str, request_id: str, approver: str, expires_at: datetime) -> str:
    """A link token that lets `approver` (and whoever holds the link) decide on one request until expires_at."""
    if not _REQUEST.fullmatch(request_id) or not _APPROVER.fullmatch(approver):
        raise ValueError("a link names a request id (apr-…) and an approver name")
    return _mint(key, "link", [request_id, approver], expires_at)


def read_link(key: str, token: str, now: datetime) -> LinkGrant:
    (request_id, approver), expires_at = _verify(key, "link", token, now, 2)
    if not _REQUEST.fullmatch(request_id) or not _APPROVER.fullmatch(approver):
        raise TokenError(401, "the link token is malformed")
    return LinkGrant(request_id, approver, expires_at)


def mint_action(key: str, request_id: str, action: str, gateway: str | None, expires_at: datetime) -> str:
    """An action token for a chat button: this request, this action (and gateway), until expires_at."""
    if not _REQUEST.fullmatch(request_id) or action not in _ACTIONS:
        raise ValueError("an action names a request id (apr-…) and approve or reject")
    if gateway is not None and not _GATEWAY.fullmatch(gateway):
        raise ValueError("an action's gateway is a vgw- id")
    return _mint(key, "action", [request_id, _ACTIONS[action], gateway or ""], expires_at)


def read_action(key: str, token: str, now: datetime) -> ActionGrant:
    (request_id, action, gateway), expires_at = _verify(key, "action", token, now, 3)
    if (
        not _REQUEST.fullmatch(request_id)
        or action not in _ACTION_NAMES
        or (gateway and not _GATEWAY.fullmatch(gateway))
    ):
        raise TokenError(401, "the action token is malformed")
    return ActionGrant(request_id, _ACTION_NAMES[action], gateway or None, expires_at)


def link_expiry(now: datetime, request_expires_at: datetime, ttl: timedelta) -> datetime:
    """A link lives ttl, never past its request's expiry."""
    return min(now + ttl, request_expires_at)
