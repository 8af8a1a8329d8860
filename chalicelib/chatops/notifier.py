"""Delivery: which destinations want an event, and one post to each within a bounded wait.

send() returns when the destination took the message, raises RetryLater when a later try may work
(rate limited past the wait budget, 5xx, timeout, no connection) and Undeliverable when no try
will (4xx, a secret that cannot be read or is malformed). Neither the exceptions nor the log line
hold a webhook URL, a token or a signing secret.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import partial
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from slack_sdk.errors import SlackClientError

from ..approvals import tokens
from ..config import Destination, SecretRef
from ..events import CloudEvent
from ..log import logger
from . import http, mattermost, slack, teams, webhook
from .http import Reply
from .links import ApprovalLinks, Signer
from .messages import Message, render

SLACK_API_URL = slack.API_URL
_JSON = {"Content-Type": "application/json"}
_VISIBLE = re.compile(r"[!-~]+")  # printable ASCII without spaces: URLs and tokens
# Slack Web API errors that say "not now" rather than "never".
_SLACK_TRANSIENT = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}

Post = Callable[[], Reply]


class DeliveryError(Exception):
    """A message not delivered; the text names the destination and why, never its secrets."""

    def __init__(self, destination: Destination, reason: str, status: int | None = None):
        self.destination = destination.name
        self.kind = destination.kind
        self.reason = reason
        self.status = status
        super().__init__(f"{destination.name} ({destination.kind}): {reason}")


class SecretUnavailable(Exception):
    """Raised by a resolver when the secret store fails for now (throttling, 5xx, network)."""


class RetryLater(DeliveryError):
    """A later try may work: rate limited past the wait budget, 5xx, timeout, no connection."""


class Undeliverable(DeliveryError):
    """No try will work until someone fixes the destination or its secret."""


class Notifier:
    """Formats events and posts them to the chat destinations that want them."""

    def __init__(
        self,
        destinations: list[Destination],
        resolve: Callable[[SecretRef], str],
        *,
        max_wait_seconds: float = 10.0,
        timeout_seconds: float = 5.0,
        slack_api_url: str = SLACK_API_URL,
        sleep: Callable[[float], None] = time.sleep,
        approvals: ApprovalLinks | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.destinations = list(destinations)
        self.resolve = resolve
        self.max_wait_seconds = max_wait_seconds
        self.timeout_seconds = timeout_seconds
        self.slack_api_url = slack_api_url
        self.sleep = sleep
        # Without it (no base_url or signing_key), approval requests say how to decide from the CLI.
        self.approvals = approvals
        self.clock = clock

    def destinations_for(self, event: CloudEvent) -> list[Destination]:
        """The destinations with a glob (`vif.*`, `target.failed`, `*`) matching the event's type."""
        return [d for d in self.destinations if any(fnmatchcase(event.type, glob) for glob in d.events)]

    def send(self, event: CloudEvent, destination: Destination) -> None:
        """Deliver `event` to `destination`, or raise RetryLater / Undeliverable; logs one line either way."""
        line = {
            "destination": destination.name,
            "kind": destination.kind,
            "event_type": event.type,
            "subject": event.subject,
        }
        try:
            reply, attempts = self._deliver(event, destination)
        except DeliveryError as error:
            log = logger.error if isinstance(error, Undeliverable) else logger.warning
            log(
                "not delivered",
                extra={**line, "status": error.status, "outcome": type(error).__name__, "reason": error.reason},
            )
            raise
        logger.info("delivered", extra={**line, "status": reply.status, "attempts": attempts})

    def _deliver(self, event: CloudEvent, destination: Destination) -> tuple[Reply, int]:
        post = self._poster(event, destination)
        waited, attempts = 0.0, 0
        while True:
            attempts += 1
            reply = _attempt(post, destination)
            if reply.ok:
                return reply, attempts
            if not reply.rate_limited:
                raise _refused(destination, reply)
            wait = _retry_after(reply.retry_after)
            if waited + wait > self.max_wait_seconds:
                raise RetryLater(
                    destination,
                    f"rate limited ({_status(reply)}); Retry-After {wait:g}s would pass "
                    f"the {self.max_wait_seconds:g}s wait budget",
                    reply.status,
                )
            self.sleep(wait)
            waited += wait

    def _poster(self, event: CloudEvent, destination: Destination) -> Post:
        """One attempt, ready to repeat; the secrets are read once, here."""
        timeout = self.timeout_seconds
        if destination.kind == "webhook":
            url, signing = self._url(destination), self._signer(destination)
            # Signed at each attempt: a retry after a Retry-After wait carries a fresh timestamp.
            return lambda: http.reply(url, *webhook.request(event, signing, time.time()), timeout=timeout)
        message = render(event)
        body = self._body(message, destination)
        if destination.token is not None and destination.channel:  # config requires the channel with a token
            token = self._token(destination)
            return partial(
                slack.post_message, token, destination.channel, body, api_url=self.slack_api_url, timeout=timeout
            )
        url = self._url(destination)
        if destination.kind == "slack":
            return partial(slack.post_webhook, url, body, timeout=timeout)
        return partial(http.reply, url, json.dumps(body).encode(), _JSON, timeout=timeout)

    def _body(self, message: Message, destination: Destination) -> dict[str, Any]:
        """The chat kind's payload; an open approval request gets that kind's way to answer it."""
        signer = self._approval_signer(destination) if message.decision is not None else None
        try:
            if destination.kind == "slack":
                return slack.payload(message, buttons=signer is not None and signer.links.slack)
            if destination.kind == "mattermost":
                return mattermost.payload(message, signer)
            return teams.payload(message, signer, self.clock())
        except ValueError as error:  # tokens.WeakKey, or a name the tokens cannot carry
            # The message still goes out, with its CLI line: a person can decide, just not from here.
            weak = isinstance(error, tokens.WeakKey)
            logger.warning(
                "approval buttons left out: "
                + ("the approvals signing_key is too short" if weak else "the request cannot be signed"),
                extra={"destination": destination.name, "kind": destination.kind, "error_type": type(error).__name__},
            )
            return self._body(replace(message, decision=None), destination)

    def _approval_signer(self, destination: Destination) -> Signer | None:
        """The approvals key, read for this message; None (no buttons) when it is not configured or unreadable."""
        if self.approvals is None:
            return None
        try:
            return self.approvals.signer()
        except SecretUnavailable as error:  # the store is throttling or down: the buttons are worth a retry
            raise RetryLater(destination, f"cannot read the approvals signing_key right now ({error})") from None
        except Exception as error:  # missing or denied: retrying will not help; the CLI line still works
            logger.warning(
                "approval buttons left out: cannot read the approvals signing_key",
                extra={"destination": destination.name, "kind": destination.kind, "error_type": type(error).__name__},
            )
            return None

    def _secret(self, destination: Destination, field: str) -> str:
        try:
            value = self.resolve(getattr(destination, field))
        except SecretUnavailable as error:  # the store is throttling or down: a later try can work
            raise RetryLater(destination, f"cannot read its {field} secret right now ({error})") from None
        except Exception as error:  # missing, denied, malformed: retrying this event will not fix it
            raise Undeliverable(destination, f"cannot read its {field} secret ({type(error).__name__})") from None
        if not isinstance(value, str) or not value.strip():
            raise Undeliverable(destination, f"its {field} secret is empty or not text")
        return value

    def _token(self, destination: Destination) -> str:
        # Surrounding whitespace is a paste or `echo >` leftover; inside a token it is a broken secret.
        token = self._secret(destination, "token").strip()
        if not _VISIBLE.fullmatch(token):
            raise Undeliverable(destination, "its token secret is malformed")
        return token

    def _signer(self, destination: Destination) -> webhook.Webhook:
        try:
            return webhook.signer(self._secret(destination, "signing_secret"))
        except webhook.InvalidSecret as error:  # says what is wrong with it, never what it is
            raise Undeliverable(destination, f"its signing_secret secret {error}") from None

    def _url(self, destination: Destination) -> str:
        url = self._secret(destination, "url").strip()
        try:
            parts = urlsplit(url)
            # .port raises ValueError for a port out of range or not a number
            usable = (
                parts.scheme in ("http", "https")
                and bool(parts.hostname)
                and parts.port != 0
                and bool(_VISIBLE.fullmatch(url))
            )
        except ValueError:
            usable = False
        if not usable:
            raise Undeliverable(destination, "its url secret is not an http(s) URL")
        return url


def _attempt(post: Post, destination: Destination) -> Reply:
    """One try. Errors lose their text (`from None`): an invalid-URL error quotes the secret URL."""
    try:
        return post()
    except (OSError, HTTPException) as error:  # refused, reset, DNS, timeouts (URLError is an OSError)
        raise RetryLater(destination, f"no answer ({_cause(error)})") from None
    except (ValueError, SlackClientError) as error:
        raise Undeliverable(destination, f"the request cannot be made ({type(error).__name__})") from None


def _cause(error: BaseException) -> str:
    """`ConnectionRefusedError`, `TimeoutError`...: the class behind urllib's URLError wrapper."""
    reason = getattr(error, "reason", None)
    return type(reason if isinstance(reason, BaseException) else error).__name__


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds; 1 when absent, unreadable (an HTTP date) or 0, so each retry costs budget."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        return 1.0
    return seconds if seconds >= 1 else 1.0


def _status(reply: Reply) -> str:
    return f"HTTP {reply.status}" + (f" {reply.code}" if reply.code else "")


def _refused(destination: Destination, reply: Reply) -> DeliveryError:
    """5xx, 408 and Slack's transient errors may pass; any other refusal needs a person."""
    if reply.status >= 500 or reply.status == 408 or reply.code in _SLACK_TRANSIENT:
        return RetryLater(destination, f"{_status(reply)}, try again later", reply.status)
    return Undeliverable(destination, f"refused with {_status(reply)}", reply.status)
