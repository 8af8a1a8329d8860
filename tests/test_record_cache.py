"""The record cache: an idle cycle reads one small item per target; any write anywhere makes the next cycle Query.

A warm poller keeps each target's records with the `records_version` it read just before its Query
(ledger.records.RecordCache). Each test runs cycles on one Runtime, as a warm Lambda does, and changes
the ledger from elsewhere (another poller, a vote through the api's code) in between.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib import reconcile
from chalicelib.approvals import service
from chalicelib.config import parse_policy
from chalicelib.ledger import Ledger, RecordCache
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from tests.approvals import routes_world as rw
from tests.conftest import TABLE


class CountingClient:
    """Counts the calls made through a boto3 client, by operation; `hook(name, kwargs)` runs before each."""

    def __init__(self, client):
        self._client, self.calls = client, Counter()
        self.hook = None

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] += 1
            if self.hook is not None:
                self.hook(name, kwargs)
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def warm(aws, directlink):
    """One Runtime for every cycle, as a warm Lambda keeps it: its ledger has the record cache."""
    dynamodb = CountingClient(boto3.client("dynamodb"))
    settings = Settings(config_source="test", table_name=TABLE)
    runtime = Runtime(settings, policy=parse_policy(rw.CONFIG), clock=directlink.clock, dynamodb=dynamodb)

    def run():
        dynamodb.calls.clear()
        directlink.clock.advance(timedelta(minutes=1))
        return reconcile.run_cycle(runtime)

    run.runtime, run.dynamodb = runtime, dynamodb
    return run


def other_poller() -> Ledger:
    """Another Lambda's ledger (the api function's, or another poller's): no cache of its own."""
    return Ledger(boto3.client("dynamodb"), TABLE)


def record_queries(client: CountingClient) -> list[str]:
    """The targets whose records each Query of the cycle read (the outbox's has no target)."""
    read: list[str] = []

    def hook(name, kwargs):
        if name == "query" and kwargs.get("KeyConditionExpression") == "target = :t":
            read.append(kwargs["ExpressionAttributeValues"][":t"]["S"])

    client.hook = hook
    return read


def test_an_idle_cycle_reads_the_target_items_at_once_and_no_records(warm):
    read = record_queries(warm.dynamodb)
    first = warm()
    assert sorted(read) == sorted(scenario.TARGETS)
    for _ in range(3):  # writes (confirmed VIFs turn available) bump versions: those cycles read again
        warm()
    read.clear()
    idle = warm()
    assert warm.dynamodb.calls["batch_get_item"] == 1 and warm.dynamodb.calls["get_item"] == 0, "one read for all"
    assert read == [], "no target's records were Queried"
    assert not any(n for op, n in warm.dynamodb.calls.items() if op in ("update_item", "transact_write_items"))
    assert idle.counts() == {"none": 2, "ask": 3}, idle.counts()  # the two confirmed earlier; three asked
    assert warm.runtime.ledger.cache.hits >= len(scenario.TARGETS)
    assert first.counts() == {"confirmed": 2, "ask": 3}


def test_a_vote_through_the_api_is_carried_out_at_the_next_warm_cycle(warm, directlink):
    warm()
    warm()
    warm()  # idle: every target's records come from the cache
    ledger = other_poller()
    request, _ = ledger.approval_for_vif(directlink.world.vif_ids["prod-legacy"])
    service.record_vote(
        ledger,
        warm.runtime.policy,
        request.request_id,
        approver="alice",
        user_id=rw.ALICE["slack"],
        channel="slack",
        vote="approve",
        gateway=None,
        clock=directlink.clock.now,
        publishing=True,
    )
    report = warm()
    assert {o.virtualInterfaceName: o.action for o in report.outcomes}["prod-legacy"] == "confirmed"
    assert directlink.confirm_count(directlink.world.vif_ids["prod-legacy"]) == 1


def test_a_write_between_the_version_read_and_the_query_is_read_again_next_cycle(warm, directlink):
    """The version is read before the Query: a write landing in between leaves the copy's version old."""
    warm()
    warm()
    vif = directlink.world.vif_ids["prod-legacy"]

    def another_poller_writes(reason: str) -> None:
        record = other_poller().load("osc-prod").vifs[vif]
        record.decision_reason = reason
        other_poller().save(record)

    another_poller_writes("first")  # osc-prod's copy is stale: this cycle reads its version, then Queries
    fired = []

    def between(name, kwargs):
        target = kwargs.get("ExpressionAttributeValues", {}).get(":t", {}).get("S")
        if name == "query" and target == "osc-prod" and not fired:
            fired.append(True)
            another_poller_writes("second")  # lands after the version was read, before the Query

    warm.dynamodb.hook = between
    warm()
    assert fired
    assert warm.runtime.ledger.cache.get("osc-prod", _version("osc-prod")) is None, "kept under the older version"
    read = record_queries(warm.dynamodb)
    warm()
    assert "osc-prod" in read, "so the next cycle Queried osc-prod again"
    assert warm.runtime.ledger.cache.get("osc-prod", _version("osc-prod")) is not None, "now kept as it is"


def _version(target: str) -> str:
    item = boto3.client("dynamodb").get_item(
        TableName=TABLE, Key={"target": {"S": target}, "vif_id": {"S": "#target"}}, ConsistentRead=True
    )["Item"]
    return item["records_version"]["N"]


def one_cycle(directlink) -> None:
    settings = Settings(config_source="test", table_name=TABLE)
    reconcile.run_cycle(Runtime(settings, policy=parse_policy(rw.CONFIG), clock=directlink.clock))


def test_each_kind_of_record_write_bumps_the_version(aws, directlink):
    warm_ledger = Ledger(boto3.client("dynamodb"), TABLE, cache=RecordCache(10))
    one_cycle(directlink)
    vif = directlink.world.vif_ids["prod-legacy"]
    now = directlink.clock.now()

    def version() -> str:
        return _version("osc-prod")

    writes = {
        "save": lambda: other_poller().save(other_poller().load("osc-prod").vifs[vif]),
        "claim": lambda: other_poller().claim("osc-prod", vif, "cycle-1", now),
        "mark_called": lambda: other_poller().mark_called("osc-prod", vif, "cycle-1", now),
        "release": lambda: other_poller().release("osc-prod", vif, "cycle-1"),
    }
    for name, write in writes.items():
        warm_ledger.load("osc-prod")
        before = version()
        write()
        assert int(version()) > int(before), f"{name} did not bump the version"
        assert warm_ledger.cache.get("osc-prod", before) is not None  # the copy is there, under the old version
        warm_ledger.load("osc-prod")
        assert warm_ledger.cache.get("osc-prod", version()) is not None, name


def test_the_cache_keeps_at_most_its_targets_and_rereads_after_max_age():
    now = [0.0]
    cache = RecordCache(2, max_age=300, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        cache.put(name, "1", {})
    assert cache.get("a", "1") is None and cache.get("b", "1") == {} and cache.get("c", "1") == {}
    assert cache.get("b", "2") is None, "another version is a miss"
    now[0] = 301
    assert cache.get("b", "1") is None, "older than max_age: read again"


def test_a_failed_bump_is_logged_and_the_write_stands(aws, directlink, caplog, monkeypatch):
    one_cycle(directlink)
    vif = directlink.world.vif_ids["prod-legacy"]
    ledger = other_poller()
    real = ledger.client
    failing = CountingClient(real)

    def refuse(*args, **kwargs):
        if "ADD records_version" in kwargs.get("UpdateExpression", ""):
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "x"}}, "UpdateItem"
            )
        return real.update_item(*args, **kwargs)

    monkeypatch.setattr(failing, "update_item", refuse, raising=False)
    ledger.client = failing
    record = ledger.load("osc-prod").vifs[vif]
    record.decision_reason = "kept"
    ledger.save(record)
    assert other_poller().load("osc-prod").vifs[vif].decision_reason == "kept"
    assert "records version not bumped" in caplog.text


# --- an older sighting never goes over a newer one (found by the fault soak, seed 7) ------------------


def test_a_confirm_recorded_after_another_poller_saw_the_vif_move_on_keeps_the_newer_state(aws, directlink):
    """Poller A confirms; poller B lists the VIF `pending` and records it; A's record lands last.

    A's confirmed_at, decision and event are written; the state stays B's `pending` (newer), so the
    next cycle does not announce confirming -> available, skipping pending.
    """
    from dataclasses import replace

    from chalicelib import events
    from chalicelib.ledger import iso

    one_cycle(directlink)
    vif = directlink.world.vif_ids["prod-legacy"]
    seen = other_poller().load("osc-prod").vifs[vif]
    assert seen.state == "confirming"
    now = directlink.clock.now()
    later = iso(now + timedelta(seconds=30))
    b_saw = replace(
        seen, state="pending", state_since=later, snapshot={**seen.snapshot, "virtualInterfaceState": "pending"}
    )
    other_poller().save(b_saw)
    a_confirmed = replace(seen, confirmed_at=iso(now), last_decision="confirmed", decision_reason="approved")
    fields = events.vif_fields("osc-prod", None, seen.snapshot, "eu-west-2")
    event = events.build(
        "vif.confirmed",
        target="osc-prod",
        subject=vif,
        time=now,
        facts=("t",),
        by="rule",
        gateway="vgw-11111111",
        **fields,
    )
    other_poller().save(a_confirmed, [event])
    stored = other_poller().load("osc-prod").vifs[vif]
    assert (stored.state, stored.state_since) == ("pending", later), "the newer sighting stands"
    assert stored.snapshot["virtualInterfaceState"] == "pending"
    assert stored.confirmed_at == iso(now) and stored.last_decision == "confirmed", "the confirm is recorded"
    outbox = boto3.client("dynamodb").query(
        TableName=TABLE, KeyConditionExpression="target = :t", ExpressionAttributeValues={":t": {"S": "#outbox"}}
    )["Items"]
    assert any(event.id in item["body"]["S"] for item in outbox), "its event is in the outbox"


class Unprocessed:
    """A DynamoDB client whose BatchGetItem leaves some keys unprocessed every time (throttled)."""

    def __init__(self, client, stubborn: set[str]):
        self._client, self.stubborn, self.calls = client, stubborn, 0

    def batch_get_item(self, RequestItems):
        self.calls += 1
        ((table, request),) = RequestItems.items()
        keys = [k for k in request["Keys"] if k["target"]["S"] not in self.stubborn]
        left = [k for k in request["Keys"] if k["target"]["S"] in self.stubborn]
        answer = self._client.batch_get_item(RequestItems={table: {**request, "Keys": keys}}) if keys else {}
        return {
            "Responses": answer.get("Responses", {table: []}),
            "UnprocessedKeys": {table: {**request, "Keys": left}},
        }


def test_target_items_reads_100_a_call_and_leaves_out_what_stays_unprocessed(aws, directlink, monkeypatch):
    one_cycle(directlink)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    client = Unprocessed(boto3.client("dynamodb"), {"osc-lab"})
    items = Ledger(client, TABLE).target_items(["osc-prod", "osc-lab", "never-polled"])
    assert set(items) == {"osc-prod", "never-polled"}, "osc-lab reads its own item in load()"
    assert items["never-polled"] == {} and "records_version" in items["osc-prod"]
    assert client.calls == 5, "retried, then given up"
    many = Ledger(boto3.client("dynamodb"), TABLE).target_items([f"t{i}" for i in range(250)])
    assert len(many) == 250
