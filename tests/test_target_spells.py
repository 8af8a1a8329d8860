"""A target's failing spell in the ledger: target.failed once per spell, a count of failed cycles, two pollers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import boto3

from chalicelib import events
from chalicelib.ledger import Ledger, iso
from tests.conftest import TABLE

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def ledger() -> Ledger:
    return Ledger(boto3.client("dynamodb"), TABLE)


def failed_event(target: str, at: datetime):
    return events.build(
        "target.failed",
        target=target,
        subject=target,
        time=at,
        facts=(iso(at),),
        region="eu-west-2",
        code="Throttling",
        message="throttled",
    )


def recovered_event(target: str):
    def build(since: str):
        return events.build(
            "target.recovered",
            target=target,
            subject=target,
            time=T0,
            facts=(since,),
            region="eu-west-2",
            failed_since=since,
        )

    return build


def outbox_types() -> list[str]:
    return [item.type for item in ledger().pending_events()]


def test_each_failed_cycle_counts_and_the_spell_is_announced_once(aws):
    counts = []
    for n in range(3):
        at = T0 + timedelta(minutes=n)
        failing = ledger().mark_failing("osc-lab", at, lambda at=at: failed_event("osc-lab", at))
        counts.append((len(failing.events), failing.cycles))
    assert counts == [(1, 1), (0, 2), (0, 3)]
    status = ledger().load("osc-lab")
    assert status.failing_since == T0 and status.failed_cycles == 3
    assert outbox_types() == ["target.failed"]


def test_answering_ends_the_count_with_the_spell(aws):
    ledger().mark_failing("osc-lab", T0, lambda: failed_event("osc-lab", T0))
    ledger().mark_failing("osc-lab", T0 + timedelta(minutes=1), lambda: failed_event("osc-lab", T0))
    produced = ledger().mark_polled("osc-lab", T0 + timedelta(minutes=2), iso(T0), recovered_event("osc-lab"))
    assert [e.type for e in produced] == ["target.recovered"]
    status = ledger().load("osc-lab")
    assert status.failing_since is None and status.failed_cycles == 0
    again = ledger().mark_failing("osc-lab", T0 + timedelta(minutes=3), lambda: failed_event("osc-lab", T0))
    assert (len(again.events), again.cycles) == (1, 1)


def test_two_pollers_failing_at_once_start_one_spell_and_count_every_cycle(aws):
    per_poller, start = 8, threading.Barrier(2)
    results: list = []

    def poller(n: int) -> None:
        mine = Ledger(boto3.client("dynamodb"), TABLE)  # each poller its own client, as two Lambdas
        start.wait()
        for i in range(per_poller):
            at = T0 + timedelta(seconds=10 * i + n)
            results.append(mine.mark_failing("osc-lab", at, lambda at=at: failed_event("osc-lab", at)))

    threads = [threading.Thread(target=poller, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(len(r.events) for r in results) == 1, "target.failed said once per spell"
    assert sorted(r.cycles for r in results) == list(range(1, 2 * per_poller + 1)), "every cycle counted once"
    assert ledger().load("osc-lab").failed_cycles == 2 * per_poller
    assert outbox_types() == ["target.failed"]


def test_a_spell_ended_by_another_poller_between_the_writes_starts_a_new_one(aws, monkeypatch):
    """Poller A's start is refused (a spell runs); B's answer ends it; A's count must not outlive it."""
    ledger().mark_failing("osc-lab", T0, lambda: failed_event("osc-lab", T0))
    a = ledger()
    update_item = a.client.update_item
    interfered = []

    def b_answers_first(**update):
        counting = "ADD failed_cycles" in update["UpdateExpression"] and "SET" not in update["UpdateExpression"]
        if counting and not interfered:
            interfered.append(True)
            ledger().mark_polled("osc-lab", T0 + timedelta(minutes=1), iso(T0), recovered_event("osc-lab"))
        return update_item(**update)

    monkeypatch.setattr(a.client, "update_item", b_answers_first)
    later = T0 + timedelta(minutes=2)
    failing = a.mark_failing("osc-lab", later, lambda: failed_event("osc-lab", later))
    assert interfered and [e.type for e in failing.events] == ["target.failed"] and failing.cycles == 1
    status = ledger().load("osc-lab")
    assert status.failing_since == later and status.failed_cycles == 1
    assert outbox_types() == ["target.failed", "target.recovered", "target.failed"]


def test_a_cycle_answering_while_another_fails_leaves_count_and_spell_together(aws):
    """Whatever the order of two pollers' writes, failed_cycles exists exactly when failing_since does."""
    for n in range(20):
        barrier = threading.Barrier(2)
        at = T0 + timedelta(minutes=n)

        def fail(at=at, barrier=barrier) -> None:
            barrier.wait()
            Ledger(boto3.client("dynamodb"), TABLE).mark_failing("osc-lab", at, lambda: failed_event("osc-lab", at))

        def answer(at=at, barrier=barrier) -> None:
            mine = Ledger(boto3.client("dynamodb"), TABLE)
            since = mine.load("osc-lab").failing_since
            barrier.wait()
            mine.mark_polled("osc-lab", at, iso(since) if since else None, recovered_event("osc-lab"))

        threads = [threading.Thread(target=fail), threading.Thread(target=answer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        status = ledger().load("osc-lab")
        assert (status.failing_since is None) == (status.failed_cycles == 0), n
    types = outbox_types()
    assert types.count("target.failed") - types.count("target.recovered") in (0, 1), "spells start and end in pairs"
