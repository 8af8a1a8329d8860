"""Fan-out: the scheduled function only enqueues the targets; `work` functions poll them.

Past VIFGATE_FANOUT_ABOVE targets, one invocation polling every target stops fitting a minute (and
a fraction of a vCPU). The scheduled function then sends ceil(targets / VIFGATE_TARGETS_PER_MESSAGE)
messages to the SQS FIFO work queue, and the `work` function (batch size 1, reserved concurrency =
the bound on the load at the DirectLink endpoints) runs an ordinary cycle over each message's targets.

"A target whose message is still in flight is not enqueued twice" is kept by SQS itself, at no
ledger cost (a lease item per batch would be two writes per message per period, the very DynamoDB
bill the steady cycle is cut for):
- Within a slot, the MessageDeduplicationId is the slot and the batch: a scheduled invocation
  delivered twice (EventBridge is at least once) enqueues nothing new (dedup window: 5 minutes).
- Across slots, the batches are cut the same way every slot (sorted names, equal sizes), so a
  target keeps its batch and its MessageGroupId while the policy's list of targets is unchanged.
  FIFO hands a group's next message out only once the previous one is deleted (or its visibility
  timeout lapsed: the worker died), so the next slot's message for a target waits, queued, while
  the current one is in flight: never two cycles of one target at once.
- A "schedule" message that waited longer than a period is dropped unpolled when a worker gets it:
  its successor (the next slot's, for the same targets) is already queued behind it. A slow batch
  therefore runs at most one cycle at a time with at most about one message waiting, and a backlog
  (WorkConcurrency too low) sheds old messages instead of growing.
- When the list of targets changes, the batches are cut again and a target may move to another
  group once; if its old message is in flight just then, the two cycles overlap once. The ledger's
  claims keep that from confirming anything twice (as for overlapping pollers), at the cost of one
  extra Describe. An approval's poll-now has a group of its own per target for the same reason: a
  vote never waits behind a batch, and the claim settles who acts.
A message SQS refuses is sent again (after a short pause), then reported and logged by target
name; the next slot enqueues those targets again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .log import logger

VERSION = 1
SEND_BATCH = 10  # SendMessageBatch's entry limit
SEND_TRIES = 3
PAUSE_SECONDS = 0.2  # before the 2nd try; doubled before the 3rd
REASONS = ("schedule", "poll-now")


class BadMessage(ValueError):
    """A work message that is not ours to run; the text names what is wrong (never echoes the body)."""


@dataclass(frozen=True)
class Work:
    targets: list[str]
    reason: str
    slot: datetime
    sent_at: datetime


@dataclass
class EnqueueReport:
    messages: int = 0
    targets: int = 0
    refused: list[str] = field(default_factory=list)  # target names whose message SQS did not take

    def summary(self) -> dict[str, Any]:
        return {"fanned_out": self.targets, "messages": self.messages, "not_enqueued": len(self.refused)}


def batches(names: list[str], per_message: int) -> list[list[str]]:
    """ceil(n / per_message) batches of sorted names, sizes within one of each other; the same list, the same cut.

    Sorted names keep a member account's regions (`<account>-<region>`) together: one role
    assumption per account per worker instead of one per region spread over many workers.
    """
    unique = sorted(set(names))
    count = math.ceil(len(unique) / per_message)
    return [unique[i * len(unique) // count : (i + 1) * len(unique) // count] for i in range(count)]


def slot_of(now: datetime, period_seconds: int) -> datetime:
    stamp = int(now.timestamp()) // period_seconds * period_seconds
    return datetime.fromtimestamp(stamp, UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def body(targets: list[str], reason: str, slot: datetime, now: datetime) -> str:
    return json.dumps(
        {"v": VERSION, "reason": reason, "slot": _iso(slot), "sent_at": _iso(now), "targets": targets},
        separators=(",", ":"),
    )


def _group(index: int, count: int) -> str:
    return f"batch-{index}-of-{count}"


def _dedup(reason: str, slot: datetime, targets: list[str]) -> str:
    return hashlib.sha256(f"{reason}|{_iso(slot)}|{','.join(targets)}".encode()).hexdigest()


def enqueue(
    sqs: Any,
    queue_url: str,
    names: list[str],
    now: datetime,
    period_seconds: int,
    per_message: int,
    *,
    pause: Callable[[float], object] = time.sleep,
) -> EnqueueReport:
    """One message per batch of targets for this schedule slot; what SQS refuses is named in the report."""
    slot = slot_of(now, period_seconds)
    groups = batches(names, per_message)
    entries = {
        str(i): {
            "Id": str(i),
            "MessageBody": body(targets, "schedule", slot, now),
            "MessageGroupId": _group(i, len(groups)),
            "MessageDeduplicationId": _dedup("schedule", slot, targets),
        }
        for i, targets in enumerate(groups)
    }
    report = EnqueueReport(messages=len(entries), targets=sum(len(g) for g in groups))
    refused = _send(sqs, queue_url, entries, pause)
    for entry_id, code in refused.items():
        report.refused += groups[int(entry_id)]
        logger.error(
            "work message not enqueued; its targets wait for the next slot",
            extra={"targets": groups[int(entry_id)], "error": code},
        )
    report.messages -= len(refused)
    report.targets -= sum(len(groups[int(i)]) for i in refused)
    return report


def send_poll_now(sqs: Any, queue_url: str, target: str, now: datetime, request: str) -> None:
    """An approval's "poll this target now" as a work message (raises what SQS raised)."""
    entry = {
        "Id": "0",
        "MessageBody": body([target], "poll-now", now, now),
        # Its own group: a vote must not wait behind the target's batch, and a claim keeps two
        # pollers of one target from acting twice.
        "MessageGroupId": "poll-now-" + hashlib.sha256(target.encode()).hexdigest()[:32],
        "MessageDeduplicationId": hashlib.sha256(f"poll-now|{target}|{request}|{_iso(now)}".encode()).hexdigest(),
    }
    refused = _send(sqs, queue_url, {"0": entry}, time.sleep)
    if refused:
        raise RuntimeError(f"the work queue refused the poll-now message ({refused['0']})")


def _send(
    sqs: Any, queue_url: str, entries: dict[str, dict[str, str]], pause: Callable[[float], object]
) -> dict[str, str]:
    """Send entries 10 at a time, retrying what failed; returns the entry ids still refused, with why."""
    waiting = dict(entries)
    refused: dict[str, str] = {}
    for attempt in range(SEND_TRIES):
        if attempt:  # SendMessageBatch's per-entry failures are not retried by botocore
            pause(PAUSE_SECONDS * 2 ** (attempt - 1))
        refused = {}
        ids = list(waiting)
        for start in range(0, len(ids), SEND_BATCH):
            chunk = [waiting[i] for i in ids[start : start + SEND_BATCH]]
            try:
                answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=chunk)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code") or "ClientError"
                refused |= {entry["Id"]: code for entry in chunk}
                continue
            except BotoCoreError as exc:
                refused |= {entry["Id"]: type(exc).__name__ for entry in chunk}
                continue
            refused |= {f["Id"]: f.get("Code") or "refused" for f in answer.get("Failed", [])}
        if not refused:
            return {}
        waiting = {i: entries[i] for i in refused}
    return refused


def parse(text: object) -> Work:
    """A work message's body, checked; BadMessage names what is wrong."""
    if not isinstance(text, str):
        raise BadMessage("the message body is not text")
    try:
        data = json.loads(text)
    except ValueError:
        raise BadMessage("the message body is not JSON") from None
    if not isinstance(data, dict):
        raise BadMessage("the message body is not a JSON object")
    if data.get("v") != VERSION:
        raise BadMessage(f"unknown message version (expected v={VERSION})")
    reason = data.get("reason")
    if reason not in REASONS:
        raise BadMessage(f"reason: expected one of {', '.join(REASONS)}")
    targets = data.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise BadMessage("targets: expected a non-empty list of target names")
    times = {}
    for key in ("slot", "sent_at"):
        value = data.get(key)
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise BadMessage(f"{key}: expected an ISO 8601 time with its zone")
        times[key] = moment
    return Work(list(dict.fromkeys(targets)), reason, times["slot"], times["sent_at"])


def stale(work: Work, now: datetime, period_seconds: int) -> bool:
    """A schedule message that waited more than a period: the next slot's message for its targets is queued."""
    return work.reason == "schedule" and now - work.sent_at > timedelta(seconds=period_seconds)


def split_known(work: Work, known: set[str]) -> tuple[list[str], list[str]]:
    """The message's targets the policy has, and those it no longer has (removed since the message was sent)."""
    return [t for t in work.targets if t in known], [t for t in work.targets if t not in known]


def wanted(runtime: Any) -> bool:
    """Whether the scheduled function enqueues instead of polling: a work queue, and more targets than the threshold."""
    settings = runtime.settings
    return bool(settings.work_queue) and len(runtime.policy.targets) > settings.fanout_above


def fan_out(runtime: Any, period_seconds: int, *, budget_seconds: float) -> dict:
    """Enqueue every target for the `work` function, then send what the outbox holds with the time left."""
    from . import reconcile

    queued = enqueue(
        runtime.sqs,
        runtime.queue_url(runtime.settings.work_queue),
        [t.name for t in runtime.policy.targets],
        runtime.clock(),
        period_seconds,
        runtime.settings.targets_per_message,
    )
    delivery = reconcile.flush_outbox(runtime, budget_seconds)
    logger.info("targets fanned out", extra=queued.summary())
    sent = {"events_sent": delivery.sent, "events_pending": delivery.pending} if delivery else {}
    return queued.summary() | sent


def run(
    runtime: Any, text: object, period_seconds: int, *, budget_seconds: float, flush_seconds: float
) -> tuple[dict, Any]:
    """One work message: a cycle over its targets (summary, report), or why not (summary, None); the message is done."""
    from . import reconcile

    try:
        work = parse(text)
    except BadMessage as exc:  # retrying the same bytes gives the same answer: drop it, loudly
        logger.error("work message dropped: not a work message", extra={"error": str(exc)})
        return {"dropped": str(exc)}, None
    now = runtime.clock()
    if stale(work, now, period_seconds):
        logger.warning(
            "stale work message skipped; a later slot polls these targets",
            extra={"slot": _iso(work.slot), "sent_at": _iso(work.sent_at), "targets": len(work.targets)},
        )
        return {"skipped": "stale", "slot": _iso(work.slot)}, None
    policy = runtime.policy  # ConfigError here: nothing polled, the invocation fails (and is retried)
    known, unknown = split_known(work, {t.name for t in policy.targets})
    named: dict[str, Any] = {}
    if unknown:  # names are data from a message: quoted, cut short, a few
        shown = ", ".join(repr(n[:64]) for n in unknown[:5])
        logger.warning("work message names targets the policy no longer has", extra={"unknown": shown})
        named = {"unknown_targets": [n[:64] for n in unknown[:5]]}
    if not known:
        return {"skipped": "no known target"} | named, None
    report = reconcile.run_cycle(runtime, targets=known, budget_seconds=budget_seconds, flush_seconds=flush_seconds)
    return report.summary() | {"reason": work.reason} | named, report
