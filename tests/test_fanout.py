"""The fan-out: the schedule enqueues batches of targets on the FIFO work queue; `work` polls each batch."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta

import boto3
import chalice.test
import pytest
from botocore.exceptions import ClientError
from chalice.test import Client

from app import app
from chalicelib import fanout
from chalicelib.config import ConfigError
from chalicelib.ledger import Ledger, create_table
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from sandbox.local import create_queues
from tests.test_app import StageTimeoutContext

NOW = datetime(2026, 11, 22, 9, 0, 30, tzinfo=UTC)
WORK = "vifgate-prod-work.fifo"


def work_queue():
    sqs = boto3.client("sqs")
    return sqs, create_queues(sqs, WORK, "vifgate-prod-work-dlq.fifo")


def drain(sqs, url) -> list[dict]:
    """Every message the queue hands out now, deleted as a worker would (FIFO: one per group in flight)."""
    got = []
    while True:
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"])
        messages = answer.get("Messages", [])
        if not messages:
            return got
        for message in messages:
            got.append(json.loads(message["Body"]) | {"group": message["Attributes"]["MessageGroupId"]})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def names(n: int) -> list[str]:
    return [f"acct-{i:04d}-eu-west-2" for i in range(n)]


@pytest.mark.parametrize("count", [1, 9, 10, 11, 999, 1000, 1005])
def test_batches_are_ceil_n_over_per_message_each_target_in_exactly_one(count):
    targets = names(count)
    groups = fanout.batches(targets, 10)
    flat = [t for g in groups for t in g]
    assert sorted(flat) == sorted(targets) and len(flat) == len(set(flat))
    assert len(groups) == math.ceil(count / 10), "one message per 10 targets, not one per hash bucket"
    assert max(map(len, groups)) <= 10 and max(map(len, groups)) - min(map(len, groups)) <= 1, "no worker gets 2x"
    again = fanout.batches(list(reversed(targets)) + targets[:3], 10)
    assert again == groups, "the order of the policy's targets (or a name listed twice) moves no target"


def test_a_thousand_targets_are_enqueued_once_per_slot(aws):
    sqs, url = work_queue()
    first = fanout.enqueue(sqs, url, names(1000), NOW, 60, 10)
    again = fanout.enqueue(sqs, url, names(1000), NOW + timedelta(seconds=20), 60, 10)  # same slot: a duplicate
    assert first.refused == [] and first.targets == 1000 and again.messages == first.messages
    messages = drain(sqs, url)
    assert first.messages == len(messages) == math.ceil(1000 / 10), "the duplicate invocation enqueued nothing new"
    listed = Counter(t for m in messages for t in m["targets"])
    assert set(listed) == set(names(1000)) and set(listed.values()) == {1}
    assert {m["reason"] for m in messages} == {"schedule"} and {m["slot"] for m in messages} == {"2026-11-22T09:00:00Z"}
    assert len({m["group"] for m in messages}) == len(messages), "one group per shard"
    fanout.enqueue(sqs, url, names(1000), NOW + timedelta(minutes=1), 60, 10)
    assert len(drain(sqs, url)) == first.messages, "the next slot enqueues again"


class Refusing:
    """SQS that refuses the first `times` entries it sees per call, or every call with `error`."""

    def __init__(self, sqs, times: int = 0, error: str | None = None):
        self.sqs, self.times, self.error, self.calls = sqs, times, error, 0

    def send_message_batch(self, QueueUrl, Entries):
        self.calls += 1
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "SendMessageBatch")
        refused, kept = Entries[: self.times], Entries[self.times :]
        self.times = 0
        answer = self.sqs.send_message_batch(QueueUrl=QueueUrl, Entries=kept) if kept else {}
        return answer | {"Failed": [{"Id": e["Id"], "Code": "InternalError", "SenderFault": False} for e in refused]}


def test_refused_entries_are_sent_again_and_what_stays_refused_is_named(aws, caplog):
    sqs, url = work_queue()
    flaky, pauses = Refusing(sqs, times=3), []
    report = fanout.enqueue(flaky, url, names(40), NOW, 60, 10, pause=pauses.append)
    assert report.refused == [] and report.messages == 4 and len(drain(sqs, url)) == 4
    assert flaky.calls == 2 and len(pauses) == 1, "only the refused entries are sent again, after a pause"
    down, pauses = Refusing(sqs, error="AWS.SimpleQueueService.NonExistentQueue"), []
    report = fanout.enqueue(down, url, names(40), NOW, 60, 10, pause=pauses.append)
    assert sorted(report.refused) == sorted(names(40)) and report.messages == 0 and report.targets == 0
    assert down.calls == fanout.SEND_TRIES * math.ceil(len(fanout.batches(names(40), 10)) / 10)
    assert len(pauses) == fanout.SEND_TRIES - 1 and sum(pauses) < 2, "the retries fit a scheduled invocation"
    logged = [r for r in caplog.records if r.getMessage().startswith("work message not enqueued")]
    assert sorted(t for r in logged for t in r.targets) == sorted(names(40)), "each refused target is named"


@pytest.mark.parametrize(
    "text, why",
    [
        (None, "not text"),
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"v": 2}', "version"),
        ('{"v": 1, "reason": "rm -rf"}', "reason"),
        ('{"v": 1, "reason": "schedule", "targets": []}', "targets"),
        ('{"v": 1, "reason": "schedule", "targets": ["a", 3]}', "targets"),
        ('{"v": 1, "reason": "schedule", "targets": ["a"], "slot": "yesterday", "sent_at": "x"}', "slot"),
        ('{"v": 1, "reason": "schedule", "targets": ["a"], "slot": "2026-11-22T09:00:00", "sent_at": "x"}', "slot"),
    ],
)
def test_a_malformed_message_is_refused_with_what_is_wrong(text, why):
    with pytest.raises(fanout.BadMessage, match=why):
        fanout.parse(text)


@pytest.fixture
def prod_stage(aws, directlink, monkeypatch):
    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)
    create_table(boto3.client("dynamodb"), "vifgate-prod-ledger")
    create_queues(boto3.client("sqs"), "vifgate-prod-events.fifo", "vifgate-prod-events-dlq.fifo")
    boto3.client("ssm").put_parameter(
        Name="/vifgate/prod/config", Value=scenario.CONFIG, Type="SecureString", Overwrite=True
    )
    return directlink


def invoke_work(bodies: list[str]) -> dict:
    with Client(app, stage_name="prod") as client:
        event = client.events.generate_sqs_event(queue_name=WORK, message_bodies=bodies)
        return client.lambda_.invoke("work", event).payload


def accounts_called(sb) -> set[str]:
    return {account for _op, account in sb.calls}


def test_the_scheduled_function_only_enqueues_past_the_threshold(prod_stage, monkeypatch):
    sb = prod_stage
    sqs, url = work_queue()
    monkeypatch.setenv("VIFGATE_FANOUT_ABOVE", "2")  # the scenario's 3 targets are past it
    with Client(app, stage_name="prod") as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        summary = client.lambda_.invoke("poll", event).payload
    assert summary["fanned_out"] == 3 and summary["not_enqueued"] == 0, summary
    assert accounts_called(sb) == set(), "the scheduled function polled nothing itself"
    assert sorted(t for m in drain(sqs, url) for t in m["targets"]) == sorted(scenario.TARGETS)


def test_at_or_below_the_threshold_the_scheduled_function_polls_itself(prod_stage):
    sqs, url = work_queue()
    with Client(app, stage_name="prod") as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        summary = client.lambda_.invoke("poll", event).payload
    assert sorted(summary["targets_ok"]) == sorted(scenario.TARGETS)
    assert drain(sqs, url) == []


def test_the_worker_polls_exactly_its_message_targets_and_records_them(prod_stage):
    sb = prod_stage
    body = fanout.body(["osc-lab", "osc-staging"], "schedule", sb.clock.now(), sb.clock.now())
    summary = invoke_work([body])
    assert sorted(summary["targets_ok"]) == ["osc-lab", "osc-staging"] and summary["reason"] == "schedule"
    assert accounts_called(sb) == {scenario.LAB, scenario.STAGING}
    ledger = Ledger(boto3.client("dynamodb"), "vifgate-prod-ledger")
    assert ledger.load("osc-lab").vifs and not ledger.load("osc-prod").vifs


def test_a_schedule_message_is_stale_once_its_successor_is_due():
    slot = fanout.slot_of(NOW, 60)

    def work(reason: str, age: int) -> fanout.Work:
        return fanout.parse(fanout.body(["a"], reason, slot, NOW - timedelta(seconds=age)))

    assert not fanout.stale(work("schedule", 59), NOW, 60), "sent less than a period ago: its successor is not due"
    assert fanout.stale(work("schedule", 61), NOW, 60), "older than a period: the next slot's message is queued"
    assert not fanout.stale(work("poll-now", 3600), NOW, 60), "a vote's poll-now has no successor"


def test_the_worker_drops_a_malformed_or_stale_message_without_polling(prod_stage, caplog):
    sb = prod_stage
    dropped = invoke_work(["{not json"])
    assert "not JSON" in dropped["dropped"] and dropped["batchItemFailures"] == [], "deleted, never retried"
    assert "work message dropped" in caplog.text
    old = sb.clock.now() - timedelta(minutes=2)
    assert invoke_work([fanout.body(["osc-lab"], "schedule", old, old)])["skipped"] == "stale"
    poll_now = fanout.body(["osc-lab"], "poll-now", old, old)  # a vote's poll-now is never stale
    assert invoke_work([poll_now])["targets_ok"] == ["osc-lab"]
    assert invoke_work([fanout.body(["osc-gone"], "schedule", sb.clock.now(), sb.clock.now())]) == {
        "skipped": "no known target",
        "unknown_targets": ["osc-gone"],
        "batchItemFailures": [],
    }
    assert accounts_called(sb) == {scenario.LAB}


def test_the_worker_names_unknown_targets_and_still_polls_the_known_ones(prod_stage, caplog):
    sb = prod_stage
    body = fanout.body(["osc-gone", "osc-lab"], "schedule", sb.clock.now(), sb.clock.now())
    summary = invoke_work([body])
    assert summary["targets_ok"] == ["osc-lab"] and summary["unknown_targets"] == ["osc-gone"]
    assert summary["batchItemFailures"] == []
    assert accounts_called(sb) == {scenario.LAB}
    assert [r.unknown for r in caplog.records if hasattr(r, "unknown")] == ["'osc-gone'"]


def test_an_invalid_policy_fails_the_work_invocation_so_the_message_is_retried(prod_stage):
    sb = prod_stage
    boto3.client("ssm").put_parameter(
        Name="/vifgate/prod/config", Value="targets: [", Type="SecureString", Overwrite=True
    )
    with pytest.raises(ConfigError):
        invoke_work([fanout.body(["osc-lab"], "schedule", sb.clock.now(), sb.clock.now())])
    assert sb.calls == [], "nothing polled"


def test_a_vote_queues_a_poll_now_for_its_target(aws):
    sqs, url = work_queue()
    runtime = Runtime(Settings(config_source="test", work_queue=WORK), sqs=sqs, clock=lambda: NOW)
    assert runtime.trigger.poll_now("osc-lab") is True
    assert runtime.trigger.poll_now("osc-lab") is True  # a second vote: a second poll-now, not deduplicated away
    messages = drain(sqs, url)
    assert [(m["reason"], m["targets"]) for m in messages] == [("poll-now", ["osc-lab"])] * 2
    down = Runtime(Settings(config_source="test", work_queue="no-such-queue.fifo"), sqs=sqs, clock=lambda: NOW)
    assert down.trigger.poll_now("osc-lab") is False, "a missing queue is a logged failure, never an exception"


def emf_blobs(err: str) -> list[dict]:
    return [line for line in map(json.loads, (x for x in err.splitlines() if x.startswith("{"))) if "_aws" in line]


def test_a_fan_out_and_a_dropped_message_each_flush_one_metric_blob(prod_stage, monkeypatch, capsys):
    work_queue()
    monkeypatch.setenv("VIFGATE_FANOUT_ABOVE", "2")
    with Client(app, stage_name="prod") as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        client.lambda_.invoke("poll", event)
    invoke_work(["{not json"])
    out = capsys.readouterr()
    blobs = emf_blobs(out.out + out.err)
    assert [blob["CyclesCompleted"] for blob in blobs] == [[0.0], [0.0]], "one non-empty blob per invocation"
    assert "No application metrics to publish" not in out.out + out.err
