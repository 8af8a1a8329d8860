"""Events: each transition once, in order per VIF, nothing lost when SQS fails; expiry warnings on the clock."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from chalicelib import events, reconcile
from chalicelib.config import parse_policy
from chalicelib.ledger import Ledger
from chalicelib.runtime import Runtime, Settings
from sandbox import DirectLinkSandbox, scenario
from sandbox.local import create_queues
from tests.conftest import REGION, TABLE

QUEUE, DLQ = "vifgate-test-events.fifo", "vifgate-test-events-dlq.fifo"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def queue(aws):
    return create_queues(boto3.client("sqs"), QUEUE, DLQ)


def runtime_for(sb: DirectLinkSandbox, sqs=None, config: str = scenario.CONFIG, workers: int = 8) -> Runtime:
    settings = Settings(config_source="test", table_name=TABLE, events_queue=QUEUE, max_workers=workers)
    return Runtime(settings, policy=parse_policy(config), clock=sb.clock, sqs=sqs)


def drain(queue_url: str) -> list[dict]:
    """Everything on the queue, in delivery order, as parsed CloudEvents."""
    sqs, received = boto3.client("sqs"), []
    while batch := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"]
    ).get("Messages", []):
        for message in batch:
            event = json.loads(message["Body"])
            assert message["Attributes"]["MessageGroupId"] == event["subject"]
            received.append(event)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return received


def of_type(report, type_name: str) -> list:
    return [e for e in report.events if e.type == type_name]


def test_first_cycle_events(directlink, queue):
    report = reconcile.run_cycle(runtime_for(directlink))
    assert Counter(e.type for e in report.events) == {
        "vif.discovered": 5,
        "vif.confirmed": 2,
        "vif.approval_requested": 3,
    }
    assert report.delivery.sent == 10 and report.delivery.pending == 0
    received = drain(queue)
    assert sorted(e["id"] for e in received) == sorted(e.id for e in report.events)
    confirmed = next(e for e in received if e["type"] == "vif.confirmed")
    assert confirmed["specversion"] == "1.0" and confirmed["source"] == "/vif-gatekeeper/osc-prod"
    assert confirmed["subject"] == confirmed["data"]["vif"]["virtualInterfaceId"]
    assert confirmed["data"] | {"vif": None} == {
        "target": "osc-prod",
        "account": scenario.PROD,
        "region": REGION,
        "vif": None,
        "by": "rule",
        "rule": "partner-prod",
        "approver": None,
        "approvers": [],
        "channel": None,
        "request_id": None,
        "gateway": scenario.PROD_GATEWAY,
    }
    asked = next(
        e
        for e in received
        if e["type"] == "vif.approval_requested" and e["data"]["vif"]["virtualInterfaceName"] == "lab-bench"
    )
    assert asked["data"]["reason"] == f"no rule matches account {scenario.LAB}"
    assert asked["data"]["deadline_certain"] is False


def test_no_event_carries_an_auth_key(directlink, queue):
    reconcile.run_cycle(runtime_for(directlink))
    directlink.clock.advance(timedelta(days=4))
    reconcile.run_cycle(runtime_for(directlink))
    bodies = json.dumps(drain(queue))
    assert "authKey" not in bodies
    for vif_id in directlink.world.vif_ids.values():
        assert directlink.vif(vif_id)["authKey"] not in bodies


def test_transitions_are_reported_once(directlink, queue):
    runtime = runtime_for(directlink)
    reconcile.run_cycle(runtime)
    again = reconcile.run_cycle(runtime)  # nothing moved on the clock: the confirmed ones are pending now
    assert Counter(e.type for e in again.events) == {"vif.state_changed": 2}
    assert {(e.data.from_state, e.data.to_state) for e in again.events} == {("confirming", "pending")}
    directlink.clock.advance(timedelta(minutes=2))
    up = reconcile.run_cycle(runtime)
    assert {(e.data.from_state, e.data.to_state) for e in up.events} == {("pending", "available")}
    assert reconcile.run_cycle(runtime).events == []


def test_expiry_warnings_on_the_clock_then_expired(directlink, queue):
    """Allocate after the first poll (certain deadline), then 4d, 5d, 6d20h, 7d+."""
    runtime = runtime_for(directlink)
    reconcile.run_cycle(runtime)
    directlink.clock.advance(timedelta(minutes=1))
    allocated_at = directlink.clock.now()
    late = scenario.allocate_late_arrival(directlink, directlink.world)
    config = scenario.CONFIG.replace("vlan: {min: 100, max: 199}", "vlan: {min: 100, max: 102}")  # ask, not confirm
    runtime = runtime_for(directlink, config=config)
    first = reconcile.run_cycle(runtime)
    [asked] = [e for e in of_type(first, "vif.approval_requested") if e.subject == late]
    assert asked.data.deadline_certain is True and asked.data.deadline == allocated_at + timedelta(days=7)

    def warnings_at(offset: timedelta):
        directlink.clock.set(allocated_at + offset)
        return [e for e in reconcile.run_cycle(runtime).events if e.subject == late]

    at_4d = warnings_at(timedelta(days=4))
    assert [(e.type, e.data.threshold_hours, e.data.hours_left) for e in at_4d] == [("vif.expiry_warning", 72, 72)]
    assert warnings_at(timedelta(days=5)) == []
    at_6d20h = warnings_at(timedelta(days=6, hours=20))  # 24h was missed: only the nearest, 4h, is sent
    assert [(e.type, e.data.threshold_hours, e.data.hours_left) for e in at_6d20h] == [("vif.expiry_warning", 4, 4)]
    assert warnings_at(timedelta(days=6, hours=22)) == []
    expired = warnings_at(timedelta(days=7, minutes=1))
    assert [e.type for e in expired] == ["vif.state_changed", "vif.expired"]
    assert expired[1].data.how == "state" and expired[1].data.deadline_certain is True
    assert warnings_at(timedelta(days=8)) == []
    received = [e for e in drain(queue) if e["subject"] == late]
    assert [e["type"] for e in received] == [
        "vif.discovered",
        "vif.approval_requested",
        "vif.expiry_warning",
        "vif.expiry_warning",
        "vif.state_changed",
        "vif.expired",
    ]


def test_an_aws_vif_that_vanishes_while_confirming_has_expired(aws, clock, queue, monkeypatch):
    sb = DirectLinkSandbox(flavor="aws", region=REGION, clock=clock)
    sb.world = scenario.seed(sb)
    with sb:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DIRECT_CONNECT", sb.url)
        runtime = runtime_for(sb)
        reconcile.run_cycle(runtime)
        clock.advance(timedelta(days=7, minutes=1))  # AWS has no `expired`: the VIF is gone
        report = reconcile.run_cycle(runtime)
    legacy = sb.world.vif_ids["prod-legacy"]
    gone = [e for e in report.events if e.subject == legacy]
    assert [e.type for e in gone] == ["vif.disappeared", "vif.expired"]
    assert gone[0].data.last_state == "confirming" and gone[1].data.how == "disappeared"
    assert gone[1].data.vif["virtualInterfaceName"] == "prod-legacy", "the last snapshot is kept"


def test_stuck_pending_is_reported_once(aws, clock, queue, monkeypatch):
    sb = DirectLinkSandbox(flavor="outscale", region=REGION, clock=clock, pending_seconds=3 * 3600)
    sb.world = scenario.seed(sb)
    with sb:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DIRECT_CONNECT", sb.url)
        runtime = runtime_for(sb)
        reconcile.run_cycle(runtime)
        clock.advance(timedelta(minutes=29))
        assert of_type(reconcile.run_cycle(runtime), "vif.stuck_pending") == []
        clock.advance(timedelta(minutes=2))
        stuck = of_type(reconcile.run_cycle(runtime), "vif.stuck_pending")
        clock.advance(timedelta(minutes=30))
        assert of_type(reconcile.run_cycle(runtime), "vif.stuck_pending") == []
    assert sorted(e.data.vif["virtualInterfaceName"] for e in stuck) == ["prod-app", "prod-db"]
    assert {e.data.pending_minutes for e in stuck} == {31.0}


def test_target_failed_once_then_recovered(directlink, queue):
    runtime = runtime_for(directlink)
    reconcile.run_cycle(runtime)
    directlink.set_faults(error_rate=1.0)
    first = of_type(reconcile.run_cycle(runtime), "target.failed")
    second = of_type(reconcile.run_cycle(runtime), "target.failed")
    directlink.set_faults(error_rate=0.0)
    recovered = of_type(reconcile.run_cycle(runtime), "target.recovered")
    assert sorted(e.subject for e in first) == sorted(scenario.TARGETS) and second == []
    assert first[0].data.code == "DirectConnectServerException"
    assert sorted(e.subject for e in recovered) == sorted(scenario.TARGETS)
    assert {e.data.failed_since for e in recovered} == {first[0].time}


class FlakySqs:
    """The real (moto) SQS client, except that sends fail as scripted: whole calls, or some entries."""

    def __init__(self, client, script: list[str]):
        self._client, self.script, self.injected = client, script, Counter()
        self.mode = "ok"

    def __getattr__(self, name):
        return getattr(self._client, name)

    def send_message_batch(self, QueueUrl, Entries):
        if self.mode == "down":
            self.injected["calls_refused"] += 1
            raise EndpointConnectionError(endpoint_url=QueueUrl)
        if self.mode == "partial":  # SQS accepts every other entry and reports the rest in Failed
            keep, refuse = Entries[::2], Entries[1::2]
            self.injected["entries_refused"] += len(refuse)
            answer = self._client.send_message_batch(QueueUrl=QueueUrl, Entries=keep) if keep else {"Successful": []}
            failed = [
                {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"} for e in refuse
            ]
            return {"Successful": answer.get("Successful", []), "Failed": failed}
        return self._client.send_message_batch(QueueUrl=QueueUrl, Entries=Entries)


def test_nothing_is_lost_when_sqs_fails_for_some_cycles(directlink, queue, capsys):
    sqs = FlakySqs(boto3.client("sqs"), [])
    runtime = runtime_for(directlink, sqs=sqs)
    produced, sent = [], 0
    # Each cycle moves the world on, so every cycle has transitions to report.
    plan = ["down", "down", "partial", "down", "partial", "ok", "partial", "ok", "ok"]
    for cycle, mode in enumerate(plan):
        sqs.mode = mode
        if cycle == 1:
            scenario.allocate_late_arrival(directlink, directlink.world)
        if cycle == 3:
            directlink.set_gateway_state(scenario.STAGING_GATEWAY, "available")
        report = reconcile.run_cycle(runtime)
        produced += report.events
        sent += report.delivery.sent
        directlink.clock.advance(timedelta(days=1, hours=2))

    received = drain(queue)
    ids = Counter(e["id"] for e in received)
    duplicates = sum(n - 1 for n in ids.values())
    assert duplicates == 0
    assert set(ids) == {e.id for e in produced}, "every transition arrived"
    assert Ledger(boto3.client("dynamodb"), TABLE).pending_events() == []
    order = defaultdict(list)
    for e in produced:
        order[e.subject].append(e.id)
    arrived = defaultdict(list)
    for e in received:
        arrived[e["subject"]].append(e["id"])
    assert arrived == order, "in order per VIF"
    with capsys.disabled():
        print(
            f"\n[lost-event test] cycles={len(plan)} injected={dict(sqs.injected)} events={len(produced)} "
            f"sent={sent} received={len(received)} duplicates={duplicates} "
            f"types={dict(Counter(e.type for e in produced))}"
        )


def test_a_resend_after_a_lost_delete_is_dropped_by_deduplication(directlink, queue, monkeypatch):
    runtime = runtime_for(directlink)
    monkeypatch.setattr(Ledger, "delete_events", lambda self, keys: 0)  # the outbox delete never happens
    first = reconcile.run_cycle(runtime)
    second = reconcile.run_cycle(runtime)
    assert second.delivery.sent >= first.delivery.sent == 10, "everything was sent again"
    received = drain(queue)
    assert len(received) == len({e["id"] for e in received}) == len(first.events) + len(second.events)


def test_events_queue_off_means_no_outbox(directlink, aws):
    settings = Settings(config_source="test", table_name=TABLE)
    report = reconcile.run_cycle(Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock))
    assert report.events == [] and report.delivery is None
    assert Ledger(boto3.client("dynamodb"), TABLE).pending_events() == []


def test_the_published_schema_is_current_and_covers_every_type():
    published = (ROOT / "docs/events.schema.json").read_text()
    assert published == events.schema_text(), "run: vifgate schema > docs/events.schema.json"
    mapping = json.loads(published)["discriminator"]["mapping"]
    assert sorted(mapping) == sorted(events.EVENT_TYPES)


def test_event_ids_are_deterministic():
    a = events.event_id("vif.expiry_warning", "t", "dxvif-1", "86400s")
    assert a == events.event_id("vif.expiry_warning", "t", "dxvif-1", "86400s")
    assert a != events.event_id("vif.expiry_warning", "t", "dxvif-1", "14400s")
    assert a != events.event_id("vif.expiry_warning", "u", "dxvif-1", "86400s")
