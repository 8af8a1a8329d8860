"""Sends the outbox to the SQS FIFO events queue: in order per VIF, at least once, never lost.

An event leaves the outbox only after SQS accepted it. Its MessageDeduplicationId is the event's
deterministic id, so a resend (after a failure, or by a second poller) is dropped by SQS.

An event SQS will never take (too large for the queue, content it refuses, or refused MAX_TRIES
times) is parked: it stays in the outbox, marked with why, and holds back only the later events
of its own group (VIF) until an operator releases or drops it (`vifgate outbox`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .ledger import Ledger, OutboxItem
from .log import logger

BATCH = 10  # SendMessageBatch's entry limit
# SendMessageBatch's total payload limit as long documented (AWS allows up to 1 MiB since 2025, but a
# queue may still be set lower). A larger event goes alone, and SQS's answer says whether it fits.
BATCH_BYTES = 262_144
MAX_TRIES = 5  # refusals (across cycles) before an event that SQS keeps refusing is parked
# Whole-call refusals caused by what the batch holds, not by the queue: the batch is split to find
# the entry at fault. Refused alone, or refused per entry with these codes, the event is parked:
# the same bytes get the same answer every cycle.
CONTENT_ERRORS = frozenset({"BatchRequestTooLong", "InvalidParameterValue", "InvalidMessageContents"})
_QUERY_PREFIX = "AWS.SimpleQueueService."
# Characters SQS refuses in a message (#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF).
# JSON escapes control characters already; U+FFFE and U+FFFF may sit raw in a string (a VIF name).
_NOT_FOR_SQS = "[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"


@cache
def _not_for_sqs() -> re.Pattern[str]:
    """Compiled on first need (about 9 ms): not on every cold start of the poll function."""
    return re.compile(_NOT_FOR_SQS)


@dataclass
class FlushReport:
    sent: int = 0
    failed: int = 0  # refused, or not tried because the queue could not be reached
    pending: int = 0  # what the outbox still holds after the flush (parked events and those behind them included)
    parked: int = 0  # of which parked, waiting for an operator


@dataclass(frozen=True)
class _Message:
    item: OutboxItem
    entry: dict[str, Any]
    size: int  # as SQS counts it: the body and each attribute's name, type and value, in bytes

    @classmethod
    def of(cls, item: OutboxItem) -> _Message:
        body = sqs_safe(item.body)
        attributes = {"type": {"DataType": "String", "StringValue": item.type}}
        entry = {
            "MessageBody": body,
            "MessageGroupId": item.group,
            "MessageDeduplicationId": item.event_id,
            "MessageAttributes": attributes,
        }
        size = len(body.encode()) + sum(
            len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
            for name, a in attributes.items()
        )
        return cls(item, entry, size)


@dataclass(frozen=True)
class _Refusal:
    message: _Message
    code: str
    sender_fault: bool
    alone: bool = False  # refused as a batch of one: nothing else in the call can be at fault

    @property
    def permanent(self) -> bool:
        return self.code in CONTENT_ERRORS and (self.sender_fault or self.alone)


@dataclass
class _Result:
    accepted: list[_Message] = field(default_factory=list)
    refused: list[_Refusal] = field(default_factory=list)
    untried: list[_Message] = field(default_factory=list)  # the queue could not be reached

    def __add__(self, other: _Result) -> _Result:
        return _Result(self.accepted + other.accepted, self.refused + other.refused, self.untried + other.untried)


def message_size(item: OutboxItem) -> int:
    """The event's size as SQS counts it, in bytes."""
    return _Message.of(item).size


def sqs_safe(body: str) -> str:
    """The body with characters SQS refuses written as JSON escapes: the same JSON, sendable."""
    if body.isascii():  # nearly every event: nothing SQS could refuse
        return body
    return _not_for_sqs().sub(lambda m: f"\\u{ord(m.group()):04x}", body)


def flush(
    ledger: Ledger, sqs, queue_url: str, limit: int = 1000, out_of_time: Callable[[], bool] | None = None
) -> FlushReport:
    """Send what the outbox holds, oldest first, until it is empty or time is out; a VIF whose event fails waits.

    The outbox is read `limit` sendable events at a time (what is held in memory at once), and read
    on while `out_of_time()` (asked before each batch) is false. Parked events and those held behind
    them are counted but not sent. The report's `pending` is the whole backlog left: counted from
    what was read, plus, when time ran out first, the rest of the outbox (its parked marks only).
    """
    report = FlushReport()
    blocked: set[str] = set()  # groups with a parked or failed event: sending their later ones would break order
    scan = ledger.iter_events()
    read = deleted = 0
    unreachable = False
    while True:
        sendable: list[_Message] = []
        for item in scan:
            read += 1
            if item.parked_reason:
                report.parked += 1
                blocked.add(item.group)
            elif item.group not in blocked:
                sendable.append(_Message.of(item))
                if len(sendable) == limit:
                    break
        if not sendable:  # the outbox is read to its end
            break
        waiting = sendable
        while waiting and not unreachable and not (out_of_time and out_of_time()):
            batch, later = next_batch(waiting)
            result = _deliver(sqs, queue_url, batch)
            deleted += ledger.delete_events([m.item.sort_key for m in result.accepted])
            report.sent += len(result.accepted)
            report.failed += len(result.refused) + len(result.untried)
            for refusal in result.refused:
                report.parked += _refused(ledger, refusal)
            unreachable = bool(result.untried)  # the queue is unreachable: everything waits for the next cycle
            blocked |= {r.message.item.group for r in result.refused}
            waiting = [m for m in later if m.item.group not in blocked]
        if waiting or unreachable:  # stopped early: what was not read yet is counted, not sent
            rest, rest_parked = scan.rest_counts()
            read += rest
            report.parked += rest_parked
            break
    report.pending = read - deleted
    return report


def next_batch(waiting: list[_Message]) -> tuple[list[_Message], list[_Message]]:
    """The next SendMessageBatch (at most BATCH entries and BATCH_BYTES) and what waits after it.

    One event per group per batch, and always the group's oldest: a failure inside a batch cannot
    let a later event of the same VIF overtake it. An event larger than BATCH_BYTES goes alone.
    """
    batch: list[_Message] = []
    later: list[_Message] = []
    seen: set[str] = set()
    size = 0
    for message in waiting:
        fits = len(batch) < BATCH and (not batch or size + message.size <= BATCH_BYTES)
        if fits and message.item.group not in seen:
            batch.append(message)
            size += message.size
        else:
            later.append(message)
        seen.add(message.item.group)  # a group whose oldest waits must not send a newer one now
    return batch, later


def _deliver(sqs, queue_url: str, batch: list[_Message]) -> _Result:
    """Send one batch; a batch refused for what it holds is split in halves until the culprit stands alone."""
    entries = [dict(m.entry, Id=str(i)) for i, m in enumerate(batch)]
    try:
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except ClientError as exc:
        code = _code(exc.response.get("Error", {}))
        if code not in CONTENT_ERRORS:
            logger.warning("events queue unreachable; events stay in the outbox", extra={"error": str(exc)})
            return _Result(untried=batch)
        if len(batch) == 1:
            return _Result(refused=[_Refusal(batch[0], code, sender_fault=True, alone=True)])
        logger.info(
            "SQS refused a batch for what it holds; sending it in halves",
            extra={"code": code, "entries": len(batch), "bytes": sum(m.size for m in batch)},
        )
        half = len(batch) // 2
        first = _deliver(sqs, queue_url, batch[:half])
        if first.untried:
            return first + _Result(untried=batch[half:])
        return first + _deliver(sqs, queue_url, batch[half:])
    except BotoCoreError as exc:
        logger.warning("events queue unreachable; events stay in the outbox", extra={"error": str(exc)})
        return _Result(untried=batch)
    refused = []
    for failed in answer.get("Failed", []):
        refused.append(_Refusal(batch[int(failed["Id"])], _code(failed), bool(failed.get("SenderFault"))))
        logger.warning(
            "event refused by SQS; it stays in the outbox",
            extra={
                "event_id": batch[int(failed["Id"])].item.event_id,
                "code": failed.get("Code"),
                "sender_fault": failed.get("SenderFault"),
                "error": str(failed.get("Message", ""))[:300],
            },
        )
    return _Result(accepted=[batch[int(ok["Id"])] for ok in answer.get("Successful", [])], refused=refused)


def _refused(ledger: Ledger, refusal: _Refusal) -> int:
    """Count the refusal on the event; park it when it can never be sent. 1 if parked now."""
    item, tries = refusal.message.item, refusal.message.item.tries + 1
    reason = None
    if refusal.permanent:
        size = f"{refusal.message.size:,} bytes"
        reason = f"{refusal.code}: SQS refuses this message ({size}{', sent alone' if refusal.alone else ''})"
    elif tries >= MAX_TRIES:
        reason = f"refused {tries} times (last: {refusal.code})"
    ledger.refuse_event(item, refusal.code, parked_reason=reason)
    if reason is None:
        return 0
    # Once, when it happens; later cycles only count it. Never the body: it may be large.
    logger.error(
        "event parked: it stays in the outbox and holds back its group's later events until released",
        extra={
            "event_id": item.event_id,
            "type": item.type,
            "group": item.group,
            "reason": reason,
            "tries": tries,
            "size_bytes": refusal.message.size,
        },
    )
    return 1


def _code(error: Mapping[str, object]) -> str:
    """SQS's error code, the same whether it came over the JSON or the query protocol."""
    code = str(error.get("QueryErrorCode") or error.get("Code") or "Unknown")
    return code.removeprefix(_QUERY_PREFIX)
