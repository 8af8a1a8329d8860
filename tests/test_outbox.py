"""The outbox never stalls: batches fit SQS's limits, an event SQS will never take is parked and holds
back only its own VIF, the backlog is counted, and `vifgate outbox` shows and frees what waits."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from datetime import UTC, datetime

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given
from hypothesis import strategies as st

from chalicelib import events, publish, reconcile
from chalicelib.cli import main
from chalicelib.ledger import Ledger, OutboxItem, _outbox_item
from chalicelib.publish import BATCH, BATCH_BYTES, MAX_TRIES, flush, next_batch
from sandbox.local import create_queues
from tests.conftest import REGION, TABLE
from tests.test_events import DLQ, QUEUE, drain, runtime_for

SQS_CHARACTERS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
KIB = 1024


@pytest.fixture
def queue(aws):
    return create_queues(boto3.client("sqs"), QUEUE, DLQ)


@pytest.fixture
def ledger(aws) -> Ledger:
    return Ledger(boto3.client("dynamodb"), TABLE)


def sqs_error(code: str, message: str) -> ClientError:
    """What botocore raises for an SQS refusal over the JSON protocol (the query code beside the JSON one)."""
    error = {"Code": f"AWS.SimpleQueueService.{code}", "QueryErrorCode": code, "Message": message, "Type": "Sender"}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}, "SendMessageBatch")


def size_of(entry: dict) -> int:
    attributes = entry.get("MessageAttributes", {})
    return len(entry["MessageBody"].encode()) + sum(
        len(k.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode()) for k, a in attributes.items()
    )


class StrictSqs:
    """moto's SQS behind the limits real SQS enforces and moto 5 does not: moto allows 1 MiB per batch
    and checks no characters. Here: 10 entries, `batch_bytes` per call (BatchRequestTooLong), the
    queue's MaximumMessageSize per message, and SQS's character set (both refused per entry)."""

    def __init__(self, client, batch_bytes: int = 262_144, message_bytes: int = 262_144):
        self._client, self.batch_bytes, self.message_bytes = client, batch_bytes, message_bytes
        self.calls: list[list[str]] = []  # the group of each entry, per call
        self.call_bytes: list[int] = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def send_message_batch(self, QueueUrl, Entries):
        self.calls.append([e["MessageGroupId"] for e in Entries])
        total = sum(size_of(e) for e in Entries)
        self.call_bytes.append(total)
        if len(Entries) > 10:
            raise sqs_error(
                "TooManyEntriesInBatchRequest", f"Maximum number of entries per request are 10. ({len(Entries)})"
            )
        if total > self.batch_bytes:
            raise sqs_error("BatchRequestTooLong", f"Batch requests cannot be longer than {self.batch_bytes} bytes.")
        keep, failed = [], []
        for entry in Entries:
            if size_of(entry) > self.message_bytes:
                reason = f"Message must be shorter than {self.message_bytes} bytes."
                failed.append(
                    {"Id": entry["Id"], "SenderFault": True, "Code": "InvalidParameterValue", "Message": reason}
                )
            elif SQS_CHARACTERS.search(entry["MessageBody"]):
                reason = "Invalid binary character was found in the message body."
                failed.append(
                    {"Id": entry["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": reason}
                )
            else:
                keep.append(entry)
        answer = self._client.send_message_batch(QueueUrl=QueueUrl, Entries=keep) if keep else {}
        return {"Successful": answer.get("Successful", []), "Failed": failed + answer.get("Failed", [])}


class RefusingSqs:
    """moto's SQS, except that the entries of `groups` are refused (SQS's own fault unless told otherwise)."""

    def __init__(self, client, groups: set[str], code: str = "InternalError", sender_fault: bool = False):
        self._client, self.groups, self.code, self.sender_fault = client, groups, code, sender_fault
        self.down = False

    def __getattr__(self, name):
        return getattr(self._client, name)

    def send_message_batch(self, QueueUrl, Entries):
        if self.down:
            raise EndpointConnectionError(endpoint_url=QueueUrl)
        keep = [e for e in Entries if e["MessageGroupId"] not in self.groups]
        failed = [
            {"Id": e["Id"], "SenderFault": self.sender_fault, "Code": self.code, "Message": "injected"}
            for e in Entries
            if e["MessageGroupId"] in self.groups
        ]
        answer = self._client.send_message_batch(QueueUrl=QueueUrl, Entries=keep) if keep else {}
        return {"Successful": answer.get("Successful", []), "Failed": failed}


def put(ledger: Ledger, vif: str, n: int, name_bytes: int = 20, name: str | None = None) -> events.CloudEvent:
    """One vif.discovered event of `vif` in the outbox; its VIF name (partner-chosen) sets its size."""
    event = events.build(
        "vif.discovered",
        target="osc-prod",
        subject=vif,
        time=datetime.now(UTC),
        facts=(n,),
        account="111122223333",
        region=REGION,
        vif={"virtualInterfaceId": vif, "virtualInterfaceName": name or "n" * name_bytes},
        state="confirming",
    )
    ledger.client.put_item(TableName=TABLE, Item=_outbox_item(event))
    return event


def arrived(queue_url: str) -> dict[str, list[str]]:
    by_vif: dict[str, list[str]] = {}
    for event in drain(queue_url):
        by_vif.setdefault(event["subject"], []).append(event["id"])
    return by_vif


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- batches fit SQS's limits -------------------------------------------------------------------------


def test_ten_events_over_256_kib_in_all_are_sent_in_batches_that_fit(ledger, queue):
    """Before: one SendMessageBatch of 10 x 40 KiB, refused as BatchRequestTooLong, every cycle (0 sent, for ever)."""
    sent = [put(ledger, f"dxvif-{i:08x}", i, name_bytes=40 * KIB) for i in range(10)]
    sqs = StrictSqs(boto3.client("sqs"))
    report = flush(ledger, sqs, queue)
    assert (report.sent, report.failed, report.pending, report.parked) == (10, 0, 0, 0)
    assert max(sqs.call_bytes) <= BATCH_BYTES and len(sqs.calls) == 2
    assert sorted(arrived(queue)) == sorted(e.subject for e in sent)


def test_a_batch_sqs_calls_too_long_is_split_in_halves_not_taken_for_an_unreachable_queue(ledger, queue):
    """A queue whose limit is lower than ours: the refused batch is sent again in halves, in the same flush."""
    for i in range(8):
        put(ledger, f"dxvif-{i:08x}", i, name_bytes=20 * KIB)
    sqs = StrictSqs(boto3.client("sqs"), batch_bytes=100 * KIB)
    report = flush(ledger, sqs, queue)
    assert (report.sent, report.failed, report.pending, report.parked) == (8, 0, 0, 0)
    assert [len(c) for c in sqs.calls] == [8, 4, 4], "refused whole, then two halves that fit"
    assert ledger.pending_events() == []


# --- an event SQS will never take is parked, and holds back only its own VIF --------------------------


def test_an_oversized_event_parks_holds_back_only_its_vif_and_goes_in_order_after_release(
    ledger, queue, capsys, caplog
):
    a, b = "dxvif-aaaaaaaa", "dxvif-bbbbbbbb"
    a1 = put(ledger, a, 1, name_bytes=300 * KIB)  # a partner-chosen name makes it larger than the queue takes
    b1, a2, b2, a3 = put(ledger, b, 1), put(ledger, a, 2), put(ledger, b, 2), put(ledger, a, 3)
    sqs = StrictSqs(boto3.client("sqs"), batch_bytes=1024 * KIB)

    with caplog.at_level(logging.INFO, logger="vif-gatekeeper"):
        first = flush(ledger, sqs, queue)
    assert (first.sent, first.failed, first.pending, first.parked) == (2, 1, 3, 1)
    assert arrived(queue) == {b: [b1.id, b2.id]}, "B's events went in the same flush, in order"
    parked, *held = ledger.pending_events()
    assert parked.event_id == a1.id and parked.tries == 1 and parked.last_error == "InvalidParameterValue"
    assert parked.parked_reason.startswith("InvalidParameterValue: SQS refuses this message (")
    assert [h.event_id for h in held] == [a2.id, a3.id] and all(h.tries == 0 for h in held), "never tried"
    said = [r for r in caplog.records if r.getMessage().startswith("event parked")]
    assert len(said) == 1 and (said[0].event_id, said[0].type, said[0].group) == (a1.id, "vif.discovered", a)
    assert "nnnnnnnn" not in caplog.text, "the body is never logged"

    caplog.clear()
    calls = len(sqs.calls)
    with caplog.at_level(logging.INFO, logger="vif-gatekeeper"):
        again = flush(ledger, sqs, queue)
    assert (again.sent, again.failed, again.pending, again.parked) == (0, 0, 3, 1)
    assert len(sqs.calls) == calls, "nothing of A is tried while its oldest event is parked"
    assert not [r for r in caplog.records if r.getMessage().startswith("event parked")], "logged once"

    sqs.message_bytes = 1024 * KIB  # the operator raised the queue's MaximumMessageSize
    code, out, err = run(capsys, "outbox", "--table", TABLE, "--release", a1.id[:10])
    assert code == 0, err
    assert f"released: event {a1.id} (vif.discovered, group {a}" in out
    assert "then the 2 event(s) held behind it, in order" in out
    after = flush(ledger, sqs, queue)
    assert (after.sent, after.failed, after.pending, after.parked) == (3, 0, 0, 0)
    assert arrived(queue) == {a: [a1.id, a2.id, a3.id]}, "A's events in their order"


def test_moto_refuses_a_message_over_the_queue_size_the_batch_is_split_and_only_that_event_parks(ledger, queue):
    """moto enforces MaximumMessageSize by refusing the whole call (InvalidParameterValue): before, that read
    as 'queue unreachable' and nothing was sent again, ever."""
    sqs = boto3.client("sqs")
    sqs.set_queue_attributes(QueueUrl=queue, Attributes={"MaximumMessageSize": str(150 * KIB)})
    a1 = put(ledger, "dxvif-aaaaaaaa", 1, name_bytes=200 * KIB)
    rest = [put(ledger, f"dxvif-{i:08x}", i) for i in range(3)]
    report = flush(ledger, sqs, queue)
    assert (report.sent, report.parked, report.pending) == (3, 1, 1)
    assert sorted(arrived(queue)) == sorted(e.subject for e in rest)
    [left] = ledger.pending_events()
    assert left.event_id == a1.id and left.parked_reason and left.parked_reason.startswith("InvalidParameterValue")
    assert "sent alone" in left.parked_reason


def test_an_event_sqs_refuses_five_times_is_parked_an_unreachable_queue_counts_no_try(ledger, queue):
    a, b = "dxvif-aaaaaaaa", "dxvif-bbbbbbbb"
    a1, a2 = put(ledger, a, 1), put(ledger, a, 2)
    sqs = RefusingSqs(boto3.client("sqs"), {a})
    tries = []
    for cycle in range(MAX_TRIES + 2):
        sqs.down = cycle == 2
        put(ledger, b, cycle)
        report = flush(ledger, sqs, queue)
        tries.append((ledger.pending_events()[0].tries, report.parked))
    assert tries == [(1, 0), (2, 0), (2, 0), (3, 0), (4, 0), (5, 1), (5, 1)]
    head = ledger.pending_events()[0]
    assert head.event_id == a1.id and head.parked_reason == f"refused {MAX_TRIES} times (last: InternalError)"
    assert len(arrived(queue)[b]) == MAX_TRIES + 2 and a not in arrived(queue)
    assert [i.event_id for i in ledger.pending_events()] == [a1.id, a2.id]


def test_a_content_refusal_by_sqs_parks_at_once(ledger, queue):
    a = "dxvif-aaaaaaaa"
    put(ledger, a, 1)
    report = flush(ledger, RefusingSqs(boto3.client("sqs"), {a}, "InvalidMessageContents", sender_fault=True), queue)
    assert report.parked == 1 and ledger.pending_events()[0].tries == 1


def test_a_vif_name_with_characters_sqs_refuses_is_sent_escaped(ledger, queue):
    """U+FFFE / U+FFFF are valid in JSON, refused by SQS: before, the event was refused every cycle."""
    name = "prod-\uffff-\ufffe-x"
    event = put(ledger, "dxvif-aaaaaaaa", 1, name=name)
    report = flush(ledger, StrictSqs(boto3.client("sqs")), queue)
    assert (report.sent, report.parked) == (1, 0)
    [received] = drain(queue)
    assert received["id"] == event.id and received["data"]["vif"]["virtualInterfaceName"] == name


def test_the_cycle_summary_counts_parked_events_and_the_others_leave(directlink, queue):
    lab = directlink.world.vif_ids["lab-bench"]
    sqs = RefusingSqs(boto3.client("sqs"), {lab}, "InvalidMessageContents", sender_fault=True)
    report = reconcile.run_cycle(runtime_for(directlink, sqs=sqs))
    summary = report.summary()
    held = [e for e in report.events if e.subject == lab]
    assert summary["events_parked"] == 1 and summary["events_pending"] == len(held) == 2
    assert summary["events_sent"] == len(report.events) - len(held)


# --- the backlog, counted cheaply ---------------------------------------------------------------------


class CountingDynamo:
    def __init__(self, client):
        self._client, self.calls = client, Counter()

    def __getattr__(self, name):
        self.calls[name] += 1
        return getattr(self._client, name)


def test_pending_is_the_whole_backlog(ledger, queue):
    """Before: 0 when nothing failed however much was left, and at most `limit` when something did."""
    for i in range(12):
        put(ledger, f"dxvif-{i:08x}", i)
    down = RefusingSqs(boto3.client("sqs"), set())
    down.down = True
    assert flush(ledger, down, queue, limit=5).pending == 12


def put_many(ledger: Ledger, n: int, vifs: int) -> list[str]:
    """`n` events over `vifs` VIFs (round robin, so each VIF's events are spread through the outbox); their ids."""
    ids, requests = [], []
    for i in range(n):
        vif = f"dxvif-{i % vifs:08x}"
        event = events.build(
            "vif.discovered",
            target="osc-prod",
            subject=vif,
            time=datetime.now(UTC),
            facts=(i,),
            account="111122223333",
            region=REGION,
            vif={"virtualInterfaceId": vif},
            state="confirming",
        )
        ids.append(event.id)
        requests.append({"PutRequest": {"Item": _outbox_item(event)}})
    for start in range(0, len(requests), 25):
        ledger.client.batch_write_item(RequestItems={TABLE: requests[start : start + 25]})
    return ids


class AcceptingSqs:
    """SQS that takes every entry and remembers it (moto's FIFO queue slows down quadratically with its depth)."""

    def __init__(self):
        self.by_group: dict[str, list[str]] = {}

    def send_message_batch(self, QueueUrl, Entries):
        assert len(Entries) <= BATCH
        for e in Entries:
            self.by_group.setdefault(e["MessageGroupId"], []).append(e["MessageDeduplicationId"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


def test_a_flush_drains_more_than_a_thousand_events_while_time_remains(ledger):
    """Before: 1,000 events per cycle, the rest left for the next cycles (an onboarding left 12,348 waiting)."""
    ids = put_many(ledger, 2_345, vifs=400)
    sqs = AcceptingSqs()
    report = flush(ledger, sqs, "queue-url")
    assert (report.sent, report.failed, report.pending, report.parked) == (2_345, 0, 0, 0)
    assert ledger.pending_events(limit=10_000) == []
    assert sum(map(len, sqs.by_group.values())) == 2_345
    order = {event_id: n for n, event_id in enumerate(ids)}
    assert all(got == sorted(got, key=order.__getitem__) for got in sqs.by_group.values()), "each VIF in order"


def test_a_flush_out_of_time_past_the_first_thousand_reports_exactly_what_remains(ledger):
    """pending is counted, not capped or guessed: parked events, those behind them and the unread rest."""
    put_many(ledger, 2_345, vifs=400)
    head = ledger.pending_events(limit=1)[0]
    ledger.refuse_event(head, "InvalidMessageContents", parked_reason="test: parked")  # its VIF's later ones wait
    batches = []
    report = flush(ledger, AcceptingSqs(), "queue-url", out_of_time=lambda: batches.append(1) or len(batches) > 150)
    left = ledger.pending_events(limit=10_000)
    assert report.sent == 1_500, "150 batches of 10 went before time ran out, past the first 1,000 read"
    assert report.pending == len(left) == 2_345 - 1_500
    assert report.parked == sum(1 for i in left if i.parked_reason) == 1


def test_a_small_page_size_still_drains_all_and_keeps_each_vifs_order_behind_a_refusal(ledger, queue):
    """`limit` only bounds what is held in memory at once: a refused event still holds back its VIF's later ones."""
    ids = put_many(ledger, 40, vifs=4)
    refused = "dxvif-00000001"
    report = flush(ledger, RefusingSqs(boto3.client("sqs"), {refused}), queue, limit=3)
    assert (report.sent, report.failed, report.pending) == (30, 1, 10)
    assert {i.group for i in ledger.pending_events()} == {refused}
    order = {event_id: n for n, event_id in enumerate(ids)}
    by_vif = arrived(queue)
    assert set(by_vif) == {"dxvif-00000000", "dxvif-00000002", "dxvif-00000003"}
    assert all(got == sorted(got, key=order.__getitem__) and len(got) == 10 for got in by_vif.values())


def test_a_flush_out_of_time_stops_between_batches_and_counts_the_rest(ledger, queue):
    for i in range(25):
        put(ledger, f"dxvif-{i:08x}", i)
    asked = []
    report = flush(ledger, boto3.client("sqs"), queue, out_of_time=lambda: asked.append(1) or len(asked) > 2)
    assert (report.sent, report.failed, report.pending) == (20, 0, 5)


def test_counting_the_backlog_costs_no_extra_read_when_the_outbox_fits_one_flush(aws, queue):
    counting = CountingDynamo(boto3.client("dynamodb"))
    ledger = Ledger(counting, TABLE)
    for i in range(3):
        put(ledger, f"dxvif-{i:08x}", i)
    counting.calls.clear()
    report = flush(ledger, RefusingSqs(boto3.client("sqs"), {"dxvif-00000001"}), queue)
    assert (report.sent, report.pending) == (2, 1)
    assert counting.calls["query"] == 1, "one Query read the outbox and nothing re-read it"


# --- batching keeps each VIF's order (pure) -----------------------------------------------------------


def message(n: int, group: str, size: int) -> publish._Message:
    item = OutboxItem(f"{n:020d}", f"e{n}", group, "vif.discovered", "")
    return publish._Message(item, {}, size)


waiting_lists = st.lists(
    st.tuples(st.sampled_from("abcdefghijkl"), st.integers(min_value=1, max_value=300 * KIB)), max_size=40
).map(lambda rows: [message(n, g, s) for n, (g, s) in enumerate(rows)])


@given(waiting_lists)
def test_next_batch_fits_sqs_and_takes_only_each_groups_oldest(waiting):
    batch, later = next_batch(waiting)
    assert sorted(batch + later, key=lambda m: m.item.sort_key) == waiting, "nothing lost, nothing doubled"
    assert later == [m for m in waiting if m not in batch], "what waits keeps its order"
    assert bool(batch) == bool(waiting)
    assert len(batch) <= BATCH and len({m.item.group for m in batch}) == len(batch)
    assert len(batch) == 1 or sum(m.size for m in batch) <= BATCH_BYTES
    for m in batch:
        assert m is next(w for w in waiting if w.item.group == m.item.group), "no event overtakes its group's oldest"


# --- vifgate outbox -----------------------------------------------------------------------------------


def parked_scene(ledger: Ledger) -> tuple:
    """A parked event of VIF A, one event held behind it, and a pending event of VIF B refused twice."""
    a1, b1, a2 = put(ledger, "dxvif-aaaaaaaa", 1), put(ledger, "dxvif-bbbbbbbb", 1), put(ledger, "dxvif-aaaaaaaa", 2)
    items = {i.event_id: i for i in ledger.pending_events()}
    ledger.refuse_event(items[a1.id], "InvalidParameterValue", parked_reason="InvalidParameterValue: too large")
    ledger.refuse_event(items[b1.id], "InternalError")
    ledger.refuse_event(items[b1.id], "InternalError")
    return a1, b1, a2


def test_outbox_lists_what_waits_and_why(ledger, capsys):
    a1, b1, a2 = parked_scene(ledger)
    code, out, _ = run(capsys, "outbox", "--table", TABLE)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        f"outbox of {TABLE}: 3 event(s): 1 parked, 1 held behind a parked event of their VIF, "
        "1 to be sent by the next poll cycle"
    )
    header = lines[2]
    assert header.split() == ["STATE", "EVENT", "TYPE", "GROUP", "(VIF)", "AGE", "TRIES", "BYTES", "WHY"]
    rows = {line.split()[1]: line for line in lines[3:6]}
    assert rows[a1.id].split()[0] == "parked" and rows[a1.id].endswith("InvalidParameterValue: too large")
    assert rows[a2.id].split()[0] == "held" and rows[a2.id].endswith(f"waits behind {a1.id}")
    assert rows[b1.id].split()[0] == "pending" and rows[b1.id].endswith("last refused: InternalError")
    assert rows[b1.id].split()[5] == "2"
    assert "vifgate outbox --release ID" in out and "--drop ID --confirm-loss" in out

    code, out, _ = run(capsys, "outbox", "--table", TABLE, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["event_id"], r["state"], r["tries"]) for r in rows] == [
        (a1.id, "parked", 1),
        (b1.id, "pending", 2),
        (a2.id, "held", 0),
    ]
    assert rows[0]["group"] == "dxvif-aaaaaaaa" and rows[0]["type"] == "vif.discovered"
    assert rows[2]["held_behind"] == a1.id and rows[0]["size_bytes"] > 0 and rows[0]["age_seconds"] >= 0


def test_an_empty_outbox_says_so(ledger, capsys):
    assert run(capsys, "outbox", "--table", TABLE) == (
        0,
        f"outbox of {TABLE} is empty: SQS has accepted every event\n",
        "",
    )


def test_release_resets_tries_and_an_unknown_id_is_named(ledger, capsys):
    a1, _b1, _a2 = parked_scene(ledger)
    code, _, err = run(capsys, "outbox", "--table", TABLE, "--release", "0123456789abcdef")
    assert code == 2 and err == "vifgate: 0123456789abcdef matches no event in the outbox (see `vifgate outbox`)\n"
    code, _, err = run(capsys, "outbox", "--table", TABLE, "--release", "dxvif-\x1b[31m")
    assert code == 2 and "\x1b" not in err and "dxvif-\\x1b[31m" in err, "what the user typed is shown, not obeyed"
    assert run(capsys, "outbox", "--table", TABLE, "--release", a1.id)[0] == 0
    released = next(i for i in ledger.pending_events() if i.event_id == a1.id)
    assert (released.parked_reason, released.tries, released.last_error) == (None, 0, None)


def test_release_all(ledger, capsys):
    parked_scene(ledger)
    code, out, _ = run(capsys, "outbox", "--table", TABLE, "--release-all")
    assert code == 0 and out.endswith("1 parked event(s) released: the next poll cycle sends them, each VIF in order\n")
    assert not [i for i in ledger.pending_events() if i.parked_reason]


def test_drop_needs_confirm_loss_says_what_it_drops_then_the_vifs_later_events_go(ledger, queue, capsys):
    a1, b1, a2 = parked_scene(ledger)
    code, out, err = run(capsys, "outbox", "--table", TABLE, "--drop", a1.id)
    assert code == 2 and out.startswith(f"would drop: event {a1.id} (vif.discovered, group dxvif-aaaaaaaa")
    assert "add --confirm-loss" in err and len(ledger.pending_events()) == 3, "nothing dropped"
    assert run(capsys, "outbox", "--table", TABLE, "--confirm-loss")[0] == 2

    code, out, _ = run(capsys, "outbox", "--table", TABLE, "--drop", a1.id, "--confirm-loss")
    assert code == 0 and out.startswith(f"dropped: event {a1.id} (vif.discovered, group dxvif-aaaaaaaa")
    assert "parked: InvalidParameterValue: too large" in out
    assert "It will never be sent. The 1 event(s) held behind it go with the next poll cycle." in out
    assert flush(ledger, boto3.client("sqs"), queue).sent == 2
    assert arrived(queue) == {"dxvif-aaaaaaaa": [a2.id], "dxvif-bbbbbbbb": [b1.id]}


def test_outbox_on_a_missing_table_exits_1_and_says_so(aws, capsys):
    code, out, err = run(capsys, "outbox", "--table", "no-such-table")
    assert code == 1 and out == ""
    assert err == "vifgate: ledger table no-such-table does not exist in this account/region\n"
