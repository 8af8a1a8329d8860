"""Approval requests in the ledger (moto): created once with the record, found by id, changed only conditionally."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import boto3
import pytest

from chalicelib import events
from chalicelib.approvals import model
from chalicelib.ledger import APPROVAL_ITEM, ApprovalChanged
from tests.conftest import TABLE

from .conftest import T0, make_record, make_request, outbox_items, raw_items

LATER = T0 + timedelta(minutes=5)


def an_event(request, n: int = 0):
    return events.build(
        "vif.approval_vote",
        target=request.target,
        subject=request.vif_id,
        time=LATER,
        facts=(request.request_id, n),
        account="111122223333",
        region="eu-west-2",
        vif={"virtualInterfaceId": request.vif_id},
        request_id=request.request_id,
        approvals=["alice"],
        min_approvals=request.min_approvals,
        status="approved",
        approver="alice",
        user_id=None,
        channel="cli",
        vote="approve",
        gateway="vgw-11111111",
    )


def opened(ledger, **kw):
    request = make_request(**kw)
    ledger.save(make_record(request), approval=request)
    return request


def test_save_with_approval_creates_the_request_and_its_pointer(ledger):
    request = opened(ledger)
    record = ledger.load("osc-prod").vifs[request.vif_id]
    assert record.approval == request and record.approval.version == 0
    pointer = next(i for i in raw_items() if i["target"]["S"] == APPROVAL_ITEM)
    assert pointer["vif_id"]["S"] == request.request_id
    assert (pointer["vif_target"]["S"], pointer["vif"]["S"], pointer["request_status"]["S"]) == (
        "osc-prod",
        request.vif_id,
        "pending",
    )
    assert ledger.approval(request.request_id) == (request, record)


def test_the_ttl_attribute_is_never_on_a_record_or_a_pointer(ledger):
    """`expires_at` is the table's TTL attribute: on a VIF item DynamoDB would delete the record."""
    ttl = boto3.client("dynamodb").describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at"
    request = opened(ledger)
    ledger.update_approval(
        request,
        model.cast_vote(
            request, approver="alice", user_id=None, channel="cli", vote="approve", gateway=None, now=LATER
        ),
        require_confirming=True,
    )
    for item in raw_items():
        assert "expires_at" not in item, item["target"]


def test_a_second_save_keeps_the_first_request_and_its_votes(ledger):
    request = opened(ledger, min_approvals=2)
    voted = model.cast_vote(
        request, approver="alice", user_id="U1", channel="slack", vote="approve", gateway=None, now=LATER
    )
    ledger.update_approval(request, voted, require_confirming=True)
    record = make_record(request, last_decision="ask", decision_reason="still asking")
    ledger.save(record, approval=make_request(min_approvals=1))  # the next cycle opens "again"
    ledger.save(record)  # and a save without approval erases nothing
    stored, stored_record = ledger.approval(request.request_id)
    assert stored == replace(voted, version=1) and stored_record.decision_reason == "still asking"
    assert [i["request_status"]["S"] for i in raw_items() if i["target"]["S"] == APPROVAL_ITEM] == ["pending"]


def test_save_with_an_approval_of_another_vif_is_refused(ledger):
    request = make_request()
    with pytest.raises(ValueError):
        ledger.save(make_record(make_request(vif_id="dxvif-other")), approval=request)
    assert raw_items() == []


def test_save_with_approval_writes_its_events_in_the_same_transaction(ledger):
    request = make_request()
    ledger.save(make_record(request), [an_event(request)], approval=request)
    assert len(outbox_items()) == 1 and ledger.approval(request.request_id)[0] == request


def test_lookups(ledger):
    first = opened(ledger, vif_id="dxvif-00000001")
    second = opened(ledger, vif_id="dxvif-00000002", now=T0 + timedelta(hours=1))
    decided = model.cast_vote(
        second,
        approver="bob",
        user_id=None,
        channel="link",
        vote="reject",
        gateway=None,
        now=LATER + timedelta(hours=1),
    )
    ledger.update_approval(second, decided, require_confirming=True)
    assert [r.request_id for r, _ in ledger.approvals()] == [first.request_id]
    assert [r.request_id for r, _ in ledger.approvals("rejected")] == [second.request_id]
    assert [r.request_id for r, _ in ledger.approvals(None)] == [first.request_id, second.request_id]
    assert ledger.approvals("expired") == []
    assert ledger.approval_for_vif("dxvif-00000002")[0] == replace(decided, version=1)
    assert ledger.approval_for_vif("dxvif-00000001")[1].vif_id == "dxvif-00000001"
    assert ledger.approval_for_vif("dxvif-99999999") is None
    assert ledger.approval("apr-00000000000000000000") is None


def test_approval_for_vif_prefers_the_pending_request_of_another_target(ledger):
    old = opened(ledger, target="lab", vif_id="dxvif-00000001")
    ledger.update_approval(old, model.expire(old, T0 + timedelta(days=3)), require_confirming=False)
    fresh = opened(ledger, target="osc-prod", vif_id="dxvif-00000001", now=T0 + timedelta(hours=1))
    assert ledger.approval_for_vif("dxvif-00000001")[0].request_id == fresh.request_id


def test_update_approval_moves_the_version_and_the_pointer_with_its_events(ledger):
    request = opened(ledger)
    voted = model.cast_vote(
        request, approver="alice", user_id=None, channel="cli", vote="approve", gateway=None, now=LATER
    )
    ledger.update_approval(request, voted, [an_event(request)], require_confirming=True)
    stored, _ = ledger.approval(request.request_id)
    assert stored == replace(voted, version=1) and stored.status == "approved"
    assert len(outbox_items()) == 1
    assert [i["request_status"]["S"] for i in raw_items() if i["target"]["S"] == APPROVAL_ITEM] == ["approved"]


def vote_on(request):
    return model.cast_vote(
        request, approver="alice", user_id=None, channel="cli", vote="approve", gateway=None, now=LATER
    )


@pytest.mark.parametrize(
    "record_fields, require_confirming",
    [
        ({"state": "pending"}, True),  # the VIF left confirming
        ({"state": "deleted"}, True),
        ({"confirmed_at": "2026-11-22T09:01:00Z"}, True),  # a rule confirmed it meanwhile
        ({"rejected_at": "2026-11-22T09:01:00Z"}, True),
    ],
)
def test_a_vote_on_a_vif_no_longer_confirming_changes_nothing(ledger, record_fields, require_confirming):
    request = make_request()
    ledger.save(make_record(request, **record_fields), approval=request)
    before = raw_items()
    with pytest.raises(ApprovalChanged) as changed:
        ledger.update_approval(request, vote_on(request), [an_event(request)], require_confirming=require_confirming)
    assert raw_items() == before
    assert changed.value.record is not None and changed.value.record.vif_id == request.vif_id


def test_expiry_needs_no_confirming_vif(ledger):
    request = make_request()
    ledger.save(make_record(request, state="pending"), approval=request)
    ledger.update_approval(
        request, model.supersede(request, LATER, "its state is now pending"), require_confirming=False
    )
    assert ledger.approval(request.request_id)[0].status == "superseded"


def test_a_stale_copy_changes_nothing(ledger):
    request = opened(ledger, min_approvals=2)
    ledger.update_approval(request, vote_on(request), require_confirming=True)
    before = raw_items()
    bob = model.cast_vote(request, approver="bob", user_id=None, channel="cli", vote="approve", gateway=None, now=LATER)
    with pytest.raises(ApprovalChanged):
        ledger.update_approval(request, bob, [an_event(request, 2)], require_confirming=True)  # alice's vote is lost
    assert raw_items() == before


def test_update_approval_refuses_to_swap_requests(ledger):
    request = opened(ledger)
    with pytest.raises(ValueError):
        ledger.update_approval(
            request, replace(vote_on(request), request_id="apr-00000000000000000000"), require_confirming=True
        )


def test_a_request_replaced_on_its_item_is_not_found_by_its_old_pointer(ledger):
    """A pointer whose VIF item holds another request (a later spell) names nothing."""
    request = opened(ledger)
    client = boto3.client("dynamodb")
    client.update_item(
        TableName=TABLE,
        Key={"target": {"S": "osc-prod"}, "vif_id": {"S": request.vif_id}},
        UpdateExpression="REMOVE approval, approval_version",
    )
    assert ledger.approval(request.request_id) is None and ledger.approvals() == []
    assert ledger.load("osc-prod").vifs[request.vif_id].approval is None
