"""The notifier Lambda: events from the SQS FIFO queue, formatted for people, posted to chat.

Partial batch failures are real: a record that cannot be delivered *yet* (429 past its wait, 5xx,
network) fails, and the FIFO processor fails every record after it so no VIF's messages overtake
each other; SQS redelivers them. A destination that will never accept the message (404, 410,
bad secret) does not block the queue: the event goes to the dead-letter queue with a log line
that says which destination and why. Each (event, destination) is delivered once: the ledger
remembers deliveries, so a redelivered batch does not post twice to the rooms that already got it.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import ValidationError

from . import events
from .chatops import Undeliverable
from .log import logger
from .metrics import BatchTally
from .runtime import Runtime

# Below this much time left, records are handed back to SQS rather than started (a post can
# wait up to 10 s for Retry-After and take 5 s more).
TIME_RESERVE_MS = 20_000


class OutOfTime(Exception):
    """Not started: too little of the invocation's time is left; SQS delivers the record again."""


def handle_batch(event: dict[str, Any], context, runtime: Runtime, tally: BatchTally | None = None) -> dict[str, list]:
    """The Lambda's answer: {"batchItemFailures": [...]}, read by SQS (ReportBatchItemFailures).

    A failure holds back the rest of its own VIF's messages only (skip_group_on_error): one VIF's
    chat trouble does not hold up, or send to the DLQ, the others. `tally` counts what was done.
    """
    tally = tally if tally is not None else BatchTally()
    processor = SqsFifoPartialProcessor(skip_group_on_error=True)
    # Every record failing (chat down, out of time) is still an answer for SQS, not a crash.
    processor.raise_on_entire_batch_failure = False

    def record_handler(record: SQSRecord) -> None:
        if context is not None and context.get_remaining_time_in_millis() < TIME_RESERVE_MS:
            raise OutOfTime(record.message_id)
        deliver(record, runtime, tally)

    answer = process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
    failures = list(answer.get("batchItemFailures", []))
    tally.retried += len(failures)  # handed back to SQS: delivered again later (or, after maxReceiveCount, the DLQ)
    return {"batchItemFailures": failures}


def deliver(record: SQSRecord, runtime: Runtime, tally: BatchTally | None = None) -> None:
    """Post one event to every destination that wants it; RetryLater propagates (record fails)."""
    tally = tally if tally is not None else BatchTally()
    try:
        event = events.parse(record.body)
    except (ValidationError, ValueError) as exc:
        # A message that is not one of our events will never parse: retrying it would only block
        # its FIFO group. It goes to the dead-letter queue for a person to look at.
        _dead_letter(
            runtime,
            record,
            "(none)",
            f"not a VIF Gatekeeper event: {_first_error(exc)}",
            group=record.attributes.message_group_id or "unparseable",
            dedup=record.message_id,
        )
        tally.dead_lettered += 1
        return
    notifier = runtime.notifier
    for destination in notifier.destinations_for(event):
        if runtime.ledger.delivered(event.id, destination.name):
            continue
        try:
            notifier.send(event, destination)
            outcome = "sent"
            tally.delivered += 1
        except Undeliverable as exc:
            _dead_letter(
                runtime,
                record,
                destination.name,
                str(exc),
                group=event.subject,
                dedup=f"{event.id}-{destination.name}"[:128],
            )
            outcome = "dead-lettered"
            tally.dead_lettered += 1
        runtime.ledger.mark_delivered(event.id, destination.name, runtime.clock(), outcome)


def _dead_letter(runtime: Runtime, record: SQSRecord, destination: str, why: str, *, group: str, dedup: str) -> None:
    logger.error(
        "chat delivery given up: message moved to the dead-letter queue",
        extra={"destination": destination, "reason": why, "message_id": record.message_id},
    )
    if runtime.settings.dead_letter_queue is None:
        raise RuntimeError(f"cannot deliver to {destination} ({why}) and VIFGATE_EVENTS_DLQ is not set")
    runtime.sqs.send_message(
        QueueUrl=runtime.queue_url(runtime.settings.dead_letter_queue),
        MessageBody=record.body,
        MessageGroupId=group,
        MessageDeduplicationId=dedup,
        MessageAttributes={
            "destination": {"DataType": "String", "StringValue": destination},
            "reason": {"DataType": "String", "StringValue": why[:1000]},
        },
    )


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        return f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
    return json.dumps(str(exc))[:200]
