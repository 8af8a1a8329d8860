"""Fan-out: the scheduled function only enqueues the targets; `work` functions poll them.

Past VIFGATE_FANOUT_ABOVE targets, one invocation polling every target stops fitting a minute (and
a fraction of a vCPU). The scheduled function then sends one message per batch of targets to the
SQS FIFO work queue, and the `work` function (batch size 1, reserved concurrency = the bound on
load at the DirectLink endpoints) runs an ordinary cycle over each message's targets.

Never the same target twice at once, never a batch enqueued twice:
- A target always falls in the same shard (crc32 of its name, modulo the shard count), and a
  shard's messages share one MessageGroupId: FIFO hands a group's next message out only after the
  previous one was deleted, so a target whose message is still in flight is not polled again
  alongside it; its next message waits in the queue.
- The MessageDeduplicationId is the schedule slot and the batch: a scheduled invocation delivered
  twice (EventBridge is at least once) in the same slot enqueues nothing new.
- A "schedule" message whose slot began two periods ago or more is dropped when a worker gets it:
  later slots' messages for the same targets follow, so a slow shard never builds a backlog of stale
  cycles (at most two of its messages wait at a time).
A message SQS refuses is retried, then reported and logged by target name; the next slot enqueues
those targets again. An approval's poll-now is a message of its own ("poll-now") on the same queue.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .log import logger

VERSION = 1
SEND_BATCH = 10  # SendMessageBatch's entry limit
SEND_TRIES = 3
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


def shard_of(name: str, shards: int) -> int:
    return zlib.crc32(name.encode()) % shards


def batches(names: list[str], per_message: int) -> list[list[str]]:
    """Targets grouped by shard, each shard's names sorted; a shard is one message of about `per_message`."""
    shards = max(1, math.ceil(len(names) / per_message))
    grouped: dict[int, list[str]] = defaultdict(list)
    for name in sorted(set(names)):
        grouped[shard_of(name, shards)].append(name)
    return [grouped[shard] for shard in sorted(grouped)]


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


def _group(targets: list[str], shards: int) -> str:
    return f"shard-{shard_of(targets[0], shards)}-of-{shards}"


def _dedup(reason: str, slot: datetime, targets: list[str]) -> str:
    return hashlib.sha256(f"{reason}|{_iso(slot)}|{','.join(targets)}".encode()).hexdigest()


def enqueue(
    sqs: Any, queue_url: str, names: list[str], now: datetime, period_seconds: int, per_message: int
) -> EnqueueReport:
    """One message per shard of targets for this schedule slot; what SQS refuses is named in the report."""
    slot = slot_of(now, period_seconds)
    groups = batches(names, per_message)
    shards = max(1, math.ceil(len(set(names)) / per_message))
    entries = {
        str(i): {
            "Id": str(i),
            "MessageBody": body(targets, "schedule", slot, now),
            "MessageGroupId": _group(targets, shards),
            "MessageDeduplicationId": _dedup("schedule", slot, targets),
        }
        for i, targets in enumerate(groups)
    }
    report = EnqueueReport(messages=len(entries), targets=sum(len(g) for g in groups))
    refused = _send(sqs, queue_url, entries)
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
        # Its own group: a vote must not wait behind the target's shard, and a claim keeps two
        # pollers of one target from acting twice.
        "MessageGroupId": "poll-now-" + hashlib.sha256(target.encode()).hexdigest()[:32],
        "MessageDeduplicationId": hashlib.sha256(f"poll-now|{target}|{request}|{_iso(now)}".encode()).hexdigest(),
    }
    refused = _send(sqs, queue_url, {"0": entry})
    if refused:
        raise RuntimeError(f"the work queue refused the poll-now message ({refused['0']})")


def _send(sqs: Any, queue_url: str, entries: dict[str, dict[str, str]]) -> dict[str, str]:
    """Send entries 10 at a time, retrying what failed; returns the entry ids still refused, with why."""
    waiting = dict(entries)
    refused: dict[str, str] = {}
    for _ in range(SEND_TRIES):
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
    """A schedule message whose next slot has begun: the next message for the same targets is on its way."""
    return work.reason == "schedule" and now - work.slot >= timedelta(seconds=2 * period_seconds)


def split_known(work: Work, known: set[str]) -> tuple[list[str], list[str]]:
    """The message's targets the policy has, and those it no longer has (removed since the message was sent)."""
    return [t for t in work.targets if t in known], [t for t in work.targets if t not in known]


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
            extra={"slot": _iso(work.slot), "targets": len(work.targets)},
        )
        return {"skipped": "stale", "slot": _iso(work.slot)}, None
    policy = runtime.policy  # ConfigError here: nothing polled, the invocation fails (and is retried)
    known, unknown = split_known(work, {t.name for t in policy.targets})
    if unknown:  # names are data from a message: quoted, cut short, a few
        shown = ", ".join(repr(n[:64]) for n in unknown[:5])
        logger.warning("work message names targets the policy no longer has", extra={"unknown": shown})
    if not known:
        return {"skipped": "no known target"}, None
    report = reconcile.run_cycle(runtime, targets=known, budget_seconds=budget_seconds, flush_seconds=flush_seconds)
    return report.summary() | {"reason": work.reason}, report
