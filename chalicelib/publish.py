"""Sends the outbox to the SQS FIFO events queue: in order per VIF, at least once, never lost.

An event leaves the outbox only after SQS accepted it. Its MessageDeduplicationId is the event's
deterministic id, so a resend (after a failure, or by a second poller) is dropped by SQS.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from .ledger import Ledger, OutboxItem
from .log import logger

BATCH = 10  # SendMessageBatch's limit


@dataclass
class FlushReport:
    sent: int = 0
    failed: int = 0
    pending: int = 0


def flush(ledger: Ledger, sqs, queue_url: str, limit: int = 1000) -> FlushReport:
    """Send what the outbox holds, oldest first; a VIF whose event fails waits for the next cycle."""
    waiting = ledger.pending_events(limit)
    report = FlushReport()
    blocked: set[str] = set()  # groups with a failed event: sending their later ones would break order
    while waiting:
        batch, later, groups = [], [], set()
        for item in waiting:
            # One event per group per batch: a failure inside a batch cannot let a later event
            # of the same VIF overtake it.
            if item.group in groups or len(batch) == BATCH:
                later.append(item)
            else:
                batch.append(item)
                groups.add(item.group)
        accepted, refused = _send(sqs, queue_url, batch)
        if refused is None:  # the queue is unreachable: everything waits for the next cycle
            report.failed += len(batch)
            break
        ledger.delete_events([item.sort_key for item in accepted])
        report.sent += len(accepted)
        report.failed += len(refused)
        blocked |= {item.group for item in refused}
        waiting = [item for item in later if item.group not in blocked]
    report.pending = len(ledger.pending_events(limit)) if report.failed or blocked else 0
    return report


def _send(sqs, queue_url: str, batch: list[OutboxItem]) -> tuple[list[OutboxItem], list[OutboxItem] | None]:
    entries = [
        {
            "Id": str(i),
            "MessageBody": item.body,
            "MessageGroupId": item.group,
            "MessageDeduplicationId": item.event_id,
            "MessageAttributes": {"type": {"DataType": "String", "StringValue": item.type}},
        }
        for i, item in enumerate(batch)
    ]
    try:
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (ClientError, BotoCoreError) as exc:
        logger.warning("events queue unreachable; events stay in the outbox", extra={"error": str(exc)})
        return [], None
    for failed in answer.get("Failed", []):
        logger.warning(
            "event refused by SQS; it stays in the outbox",
            extra={
                "event_id": batch[int(failed["Id"])].event_id,
                "code": failed.get("Code"),
                "sender_fault": failed.get("SenderFault"),
                "error": failed.get("Message"),
            },
        )
    accepted = [batch[int(ok["Id"])] for ok in answer.get("Successful", [])]
    refused = [batch[int(failed["Id"])] for failed in answer.get("Failed", [])]
    return accepted, refused
