"""The rules of a vote, as tables: who may vote, how many approvals, vetoes, gateways, expiry, decided requests."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from chalicelib.approvals import model
from chalicelib.approvals.model import Refused, cast_vote, expire, supersede

from .conftest import T0, make_request

LATER = T0 + timedelta(minutes=5)
G1, G2 = "vgw-11111111", "vgw-22222222"


def vote(request, approver, what="approve", gateway=None, *, now=LATER, channel="slack"):
    return cast_vote(
        request, approver=approver, user_id="U0ALICE", channel=channel, vote=what, gateway=gateway, now=now
    )


def test_request_id_is_deterministic_and_per_spell():
    assert model.request_id("prod", "dxvif-1", "s1") == model.request_id("prod", "dxvif-1", "s1")
    assert model.request_id("prod", "dxvif-1", "s1") != model.request_id("prod", "dxvif-1", "s2")
    assert model.request_id("prod", "dxvif-1", "s1") != model.request_id("test", "dxvif-1", "s1")
    rid = model.request_id("prod", "dxvif-1", "s1")
    assert rid.startswith("apr-") and len(rid) == 24 and int(rid[4:], 16) >= 0


@pytest.mark.parametrize(
    "deadline, expected",
    [
        (T0 + timedelta(days=2), "2026-11-24T09:00:00Z"),  # the VIF's deadline
        (T0 + timedelta(days=30), "2026-11-29T09:00:00Z"),  # never later than 7 days
        (None, "2026-11-29T09:00:00Z"),  # no deadline known: 7 days
    ],
)
def test_new_request_expires_at_the_deadline_never_later(deadline, expected):
    request = model.new_request(
        target="prod",
        vif_id="dxvif-1",
        spell="s",
        now=T0,
        deadline=model._iso(deadline) if deadline else None,
        gateways=[G1],
        approvers=["bob", "alice", "bob"],
        min_approvals=2,
        rule="r",
    )
    assert request.expires_at == expected
    assert request.approvers == ("bob", "alice") and request.status == "pending" and request.version == 0


@pytest.mark.parametrize("approvers, min_approvals", [((), 1), (("alice",), 2), (("alice",), 0)])
def test_new_request_refuses_impossible_counts(approvers, min_approvals):
    with pytest.raises(ValueError):
        make_request(approvers=approvers, min_approvals=min_approvals)


@pytest.mark.parametrize(
    "approver, what, status, reason",
    [
        ("alice", "approve", "approved", None),
        ("carol", "reject", "rejected", None),
        ("mallory", "approve", 403, "mallory may not decide on this request"),
        ("mallory", "reject", 403, "mallory may not decide on this request"),
        ("alice", "delete", 400, "unknown vote 'delete': approve or reject"),
        ("alice", "", 400, "unknown vote '': approve or reject"),
    ],
)
def test_who_may_vote(approver, what, status, reason):
    request = make_request()
    if reason is None:
        after = vote(request, approver, what)
        assert after.status == status and after.decided_at == "2026-11-22T09:05:00Z"
        assert after.trail[-1].who == approver and after.trail[-1].outcome == status
    else:
        with pytest.raises(Refused) as refused:
            vote(request, approver, what)
        assert (refused.value.status, str(refused.value)) == (status, reason)


def test_min_approvals_two_needs_two_distinct_people():
    request = make_request(min_approvals=2)
    one = vote(request, "alice")
    assert one.status == "pending" and one.decided_at is None
    assert one.approvals == ("alice",) and one.progress() == "approved by alice, 1 of 2"
    assert one.trail[-1].outcome == "pending (1 of 2)"
    with pytest.raises(Refused) as again:
        vote(one, "alice")
    assert (again.value.status, again.value.reason) == (409, "alice already voted on this request (approve)")
    with pytest.raises(Refused) as turned:  # one vote per person: an approve cannot become a veto later
        vote(one, "alice", "reject")
    assert (turned.value.status, turned.value.reason) == (409, "alice already voted on this request (approve)")
    two = vote(one, "bob")
    assert two.status == "approved" and two.approvals == ("alice", "bob")
    assert two.progress() == "approved by alice and bob"
    assert [t.outcome for t in two.trail] == ["pending (1 of 2)", "approved"]


def test_reject_is_a_veto_even_after_approvals():
    request = vote(make_request(min_approvals=3), "alice")
    after = vote(request, "bob", "reject")
    assert after.status == "rejected" and after.progress() == "rejected by bob"
    assert after.gateway == G1  # what alice chose stays on record
    assert [v.vote for v in after.votes] == ["approve", "reject"] and after.votes[-1].gateway is None


@pytest.mark.parametrize(
    "gateways, chosen_before, asked, expected",
    [
        ((G1,), None, None, G1),  # exactly one: implied
        ((G1,), None, G1, G1),
        ((G1, G2), None, G2, G2),  # chosen
        ((G1, G2), G1, None, G1),  # the first approve fixed it; a later one may name none
        ((G1, G2), G1, G1, G1),
        ((G1, G2), G1, G2, (409, "alice chose vgw-11111111; approve with that gateway or none")),
        ((G1, G2), None, None, (400, "choose a gateway to confirm with: vgw-11111111, vgw-22222222")),
        (
            (G1,),
            None,
            "vgw-99999999",
            (400, "vgw-99999999 is not a gateway of this request (choose from vgw-11111111)"),
        ),
        ((), None, None, (409, model.NO_GATEWAY)),
        ((), None, G1, (409, model.NO_GATEWAY)),
    ],
)
def test_gateway_choice(gateways, chosen_before, asked, expected):
    request = make_request(gateways=gateways, min_approvals=2)
    if chosen_before:
        request = vote(request, "alice", gateway=chosen_before)
    if isinstance(expected, tuple):
        with pytest.raises(Refused) as refused:
            vote(request, "bob", gateway=asked)
        assert (refused.value.status, refused.value.reason) == expected
    else:
        after = vote(request, "bob", gateway=asked)
        assert after.gateway == expected and after.votes[-1].gateway == expected


def test_reject_needs_no_gateway():
    after = vote(make_request(gateways=()), "alice", "reject", gateway="vgw-99999999")
    assert after.status == "rejected" and after.gateway is None


@pytest.mark.parametrize("offset", [timedelta(days=2), timedelta(days=2, seconds=1), timedelta(days=9)])
def test_a_vote_at_or_after_expiry_is_410(offset):
    with pytest.raises(Refused) as refused:
        vote(make_request(), "alice", now=T0 + offset)
    assert (refused.value.status, refused.value.reason) == (410, "the approval request expired at 2026-11-24T09:00:00Z")


def test_a_vote_a_second_before_expiry_counts():
    assert vote(make_request(), "alice", now=T0 + timedelta(days=2, seconds=-1)).status == "approved"


def decided(how):
    request = make_request(min_approvals=2)
    if how == "approved":
        return vote(vote(request, "alice"), "bob", now=LATER + timedelta(minutes=1))
    if how == "rejected":
        return vote(request, "carol", "reject")
    if how == "expired":
        return expire(request, T0 + timedelta(days=3))
    return supersede(request, LATER, "its state is now pending")


@pytest.mark.parametrize(
    "how, status, reason",
    [
        ("approved", 409, "already approved by alice and bob at 2026-11-22T09:06:00Z"),
        ("rejected", 409, "already rejected by carol at 2026-11-22T09:05:00Z"),
        ("expired", 410, "the approval request expired at 2026-11-24T09:00:00Z"),
        ("superseded", 409, "no longer open: superseded: its state is now pending"),
    ],
)
@pytest.mark.parametrize("what", ["approve", "reject"])
def test_a_decided_request_takes_no_vote_and_names_who_decided(how, status, reason, what):
    with pytest.raises(Refused) as refused:
        vote(decided(how), "carol", what, now=LATER + timedelta(minutes=2))
    assert (refused.value.status, refused.value.reason) == (status, reason)


def test_expire_only_when_due_and_pending():
    request = make_request()
    assert expire(request, T0 + timedelta(days=2, seconds=-1)) is None
    gone = expire(request, T0 + timedelta(days=2))
    assert gone is not None and gone.status == "expired" and gone.trail[-1].what == "expire"
    assert expire(gone, T0 + timedelta(days=5)) is None
    assert expire(vote(request, "alice"), T0 + timedelta(days=5)) is None


def test_supersede_only_when_pending():
    request = make_request()
    gone = supersede(request, LATER, "it was confirmed by hand")
    assert (
        gone is not None and gone.status == "superseded" and gone.progress() == "superseded: it was confirmed by hand"
    )
    assert supersede(gone, LATER, "again") is None
    assert supersede(vote(request, "alice", "reject"), LATER, "x") is None


def test_item_round_trip_through_dynamodb_types():
    request = vote(vote(make_request(min_approvals=2, gateways=(G1, G2)), "alice", gateway=G2), "bob", channel="link")
    item = request.to_item()
    stored = TypeSerializer().serialize(item)  # no floats, nothing DynamoDB cannot hold
    assert "M" in stored
    back = model.ApprovalRequest.from_item(TypeDeserializer().deserialize(stored), Decimal(7))
    assert back == replace(request, version=7)
    assert isinstance(back.min_approvals, int) and back.votes[1].channel == "link"


def test_refused_carries_status_and_reason():
    exc = Refused(409, "alice already approved")
    assert (exc.status, exc.reason, str(exc)) == (409, "alice already approved", "alice already approved")
