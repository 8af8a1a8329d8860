"""Ask the poller to act on one target now: a decided vote is carried out in seconds, not at the next cycle.

The API function holds no DirectLink rights; it only invokes the poll function asynchronously with
an EventBridge-shaped event naming the target. If that fails, nothing is lost: the next scheduled
cycle finds the decided request and carries it out.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from ..log import logger

POLL_NOW_SOURCE = "vifgate.approvals"
POLL_NOW_DETAIL_TYPE = "vifgate.poll-now"


def poll_now_event(targets: list[str], now: datetime) -> dict[str, Any]:
    """The poll function's event for "poll these targets now"; Chalice parses a schedule's event as a
    CloudWatchEvent, which needs every EventBridge key."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": POLL_NOW_DETAIL_TYPE,
        "source": POLL_NOW_SOURCE,
        "account": "",
        "time": now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "region": "",
        "resources": [],
        "detail": {"targets": list(targets)},
    }


class Trigger(Protocol):
    def poll_now(self, target: str) -> bool:
        """True when the poller was asked; False (logged) when not: the schedule is the fallback."""
        ...


class LambdaTrigger:
    """Invokes the poll function asynchronously (InvocationType=Event): the route never waits for DirectLink."""

    def __init__(self, client: Any, function_name: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.client = client
        self.function_name = function_name
        self.clock = clock

    def poll_now(self, target: str) -> bool:
        payload = json.dumps(poll_now_event([target], self.clock())).encode()
        try:
            answer = self.client.invoke(FunctionName=self.function_name, InvocationType="Event", Payload=payload)
        except ClientError as exc:
            # Only the error code: a message may quote the request, and logs carry no more than needed.
            self._failed(target, exc.response.get("Error", {}).get("Code") or "ClientError")
            return False
        except BotoCoreError as exc:
            self._failed(target, type(exc).__name__)
            return False
        status = answer.get("StatusCode")
        if status != 202:  # an asynchronous invoke is accepted with 202 and nothing else
            self._failed(target, f"status {status}")
            return False
        logger.info("poll-now triggered", extra={"target": target, "function": self.function_name})
        return True

    def _failed(self, target: str, error: str) -> None:
        logger.error(
            "poll-now trigger failed; the next scheduled cycle carries the decision out",
            extra={"target": target, "function": self.function_name, "error": error},
        )


class QueueTrigger:
    """Sends a poll-now message to the fan-out's work queue: the `work` function polls that target next."""

    def __init__(self, queue: Callable[[], tuple[Any, str]], clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.queue = queue  # (SQS client, queue URL), looked up on first use
        self.clock = clock

    def poll_now(self, target: str) -> bool:
        from .. import fanout

        try:
            sqs, url = self.queue()
            fanout.send_poll_now(sqs, url, target, self.clock(), uuid.uuid4().hex)
        except ClientError as exc:
            self._failed(target, exc.response.get("Error", {}).get("Code") or "ClientError")
            return False
        except (BotoCoreError, RuntimeError) as exc:
            self._failed(target, type(exc).__name__)
            return False
        logger.info("poll-now queued", extra={"target": target})
        return True

    def _failed(self, target: str, error: str) -> None:
        logger.error(
            "poll-now not queued; the next scheduled cycle carries the decision out",
            extra={"target": target, "error": error},
        )


class LocalTrigger:
    """Runs `run(target)` on a daemon thread (sandbox, demo, tests): the caller answers without waiting."""

    def __init__(self, run: Callable[[str], object]):
        self.run = run

    def poll_now(self, target: str) -> bool:
        def work() -> None:
            try:
                self.run(target)
            except Exception as exc:  # a thread's exception would vanish; say it, the schedule retries
                logger.error("local poll-now failed", extra={"target": target, "error_type": type(exc).__name__})

        threading.Thread(target=work, name=f"poll-now-{target}", daemon=True).start()
        return True
