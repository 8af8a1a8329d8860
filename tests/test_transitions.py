"""Pure transition rules: expiry thresholds (missed cycles included) and deadline certainty."""

from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.config import parse_policy
from chalicelib.ledger import iso
from chalicelib.models import VirtualInterface
from chalicelib.transitions import CERTAINTY_WINDOW, expiry_warning, observe

POLICY = parse_policy(
    "targets: [{name: t, provider: aws, region: eu-west-1, account_id: '111122223333'}]\nexpiry_alerts: [72h, 24h, 4h]"
)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
VIF = VirtualInterface.model_validate(
    {
        "virtualInterfaceId": "dxvif-1",
        "virtualInterfaceState": "confirming",
        "ownerAccount": "111122223333",
        "authKey": "secret",
    }
)


def first_sighting(last_polled_at=T0 - timedelta(minutes=1)):
    return observe(None, "t", VIF, T0, last_polled_at, "eu-west-1")


@pytest.mark.parametrize(
    "last_polled_at, certain",
    [
        (None, False),  # the target's first poll
        (T0 - timedelta(minutes=1), True),
        (T0 - CERTAINTY_WINDOW, True),
        (T0 - CERTAINTY_WINDOW - timedelta(seconds=1), False),  # the poller was away: it may be older
    ],
)
def test_deadline_certainty(last_polled_at, certain):
    entry = first_sighting(last_polled_at).entry
    assert entry.deadline == iso(T0 + timedelta(days=7)) and entry.deadline_certain is certain


@pytest.mark.parametrize(
    "checks, expected",
    [
        # (time left at each cycle) -> threshold warned at each cycle (None = no warning)
        ([timedelta(hours=100)], [None]),
        ([timedelta(hours=72)], [72]),
        ([timedelta(hours=71), timedelta(hours=70)], [72, None]),
        ([timedelta(hours=80), timedelta(hours=20), timedelta(hours=3)], [None, 24, 4]),
        ([timedelta(hours=23)], [24]),  # 72h and 24h passed at once: the nearest
        ([timedelta(hours=3, minutes=59)], [4]),  # all three at once
        ([timedelta(hours=50), timedelta(hours=2)], [72, 4]),  # 24h skipped by a missed cycle
        ([timedelta(0)], [None]),  # past the deadline: expired is the next news
    ],
)
def test_each_threshold_is_warned_once_and_missed_ones_collapse_to_the_nearest(checks, expected):
    sighting = first_sighting()
    deadline = T0 + timedelta(days=7)
    warned = []
    for left in checks:
        sighting.events.clear()
        expiry_warning(sighting, VIF, deadline - left, POLICY)
        warned.append(sighting.events[0].data.threshold_hours if sighting.events else None)
    assert warned == expected


def test_no_warning_without_a_deadline_or_outside_confirming():
    sighting = first_sighting()
    sighting.entry.deadline = None
    expiry_warning(sighting, VIF, T0 + timedelta(days=6), POLICY)
    pending = VIF.model_copy(update={"virtual_interface_state": "pending"})
    other = first_sighting()
    expiry_warning(other, pending, T0 + timedelta(days=6), POLICY)
    assert [e for e in sighting.events if e.type == "vif.expiry_warning"] == []
    assert [e for e in other.events if e.type == "vif.expiry_warning"] == []


def test_a_state_change_has_the_same_id_whoever_sees_it_and_when():
    before = first_sighting().entry
    moved = VIF.model_copy(update={"virtual_interface_state": "pending"})
    a = observe(before, "t", moved, T0 + timedelta(minutes=1), T0, "eu-west-1").events
    b = observe(before, "t", moved, T0 + timedelta(minutes=3), T0, "eu-west-1").events
    assert [e.type for e in a] == ["vif.state_changed"] and a[0].id == b[0].id


@pytest.mark.parametrize(
    "gone_after, certain, expired",
    [
        (timedelta(days=1), True, False),  # withdrawn long before its deadline
        (timedelta(days=7) - timedelta(minutes=30), True, True),
        (timedelta(days=1), False, True),  # the deadline was a guess: it may have expired
    ],
)
def test_a_vanished_confirming_vif_is_expired_only_near_its_deadline(gone_after, certain, expired):
    from chalicelib.transitions import disappeared

    entry = first_sighting().entry
    entry.deadline_certain = certain
    types = [e.type for e in disappeared(entry, T0 + gone_after, "eu-west-1").events]
    assert types == (["vif.disappeared", "vif.expired"] if expired else ["vif.disappeared"])


# --- approvals: who decided, a claim settled for people, a pending request expired or superseded ----------

GATEWAY = "vgw-12345678"


def request(min_approvals: int = 1, gateways: tuple[str, ...] = (GATEWAY,)):
    from chalicelib.approvals import model

    return model.new_request(
        target="t",
        vif_id="dxvif-1",
        spell=iso(T0),
        now=T0,
        deadline=iso(T0 + timedelta(days=7)),
        gateways=gateways,
        approvers=("alice", "bob", "carol"),
        min_approvals=min_approvals,
        rule="legacy",
    )


def of_type(sighting, type_name: str) -> list:
    return [e for e in sighting.events if e.type == type_name]


def voted(req, *votes: tuple[str, str, str]):
    from chalicelib.approvals import model

    for i, (who, choice, channel) in enumerate(votes):
        req = model.cast_vote(
            req, approver=who, user_id=None, channel=channel, vote=choice, gateway=None, now=T0 + timedelta(hours=i + 1)
        )
    return req


def test_a_confirm_people_decided_names_them_the_deciding_channel_and_the_request():
    from chalicelib.transitions import confirmed

    approved = voted(request(min_approvals=2), ("bob", "approve", "slack"), ("alice", "approve", "link"))
    sighting = first_sighting()
    confirmed(sighting, VIF, T0, approved.rule, GATEWAY, approved)
    [event] = of_type(sighting, "vif.confirmed")
    assert (event.data.by, event.data.approver, event.data.approvers) == ("approver", "bob, alice", ["bob", "alice"])
    assert event.data.channel == "link" and event.data.request_id == approved.request_id
    assert event.data.rule == "legacy" and event.data.gateway == GATEWAY


def test_a_veto_names_who_rejected_not_who_approved_before():
    from chalicelib.transitions import decided_by, rejected

    # (from Mattermost a two-approval request takes no reject: its clicks name no verified person)
    vetoed = voted(request(min_approvals=2), ("alice", "approve", "mattermost"), ("carol", "reject", "slack"))
    sighting = first_sighting()
    rejected(sighting, VIF, T0, vetoed.rule, decided_by(vetoed), vetoed)
    [event] = of_type(sighting, "vif.rejected")
    assert event.data.by == "approver" and event.data.approvers == ["carol"]
    assert event.data.reason == "rejected by carol via slack" and event.data.channel == "slack"


def test_a_rule_confirm_names_no_approver():
    from chalicelib.transitions import confirmed

    sighting = first_sighting()
    confirmed(sighting, VIF, T0, "partner-prod", GATEWAY)
    [event] = of_type(sighting, "vif.confirmed")
    assert event.data.by == "rule" and event.data.approver is None and event.data.approvers == []


@pytest.mark.parametrize("approved_gateway, credited", [(GATEWAY, True), (None, False)])
def test_a_settled_claim_credits_the_approvers_whose_request_it_carried_out(approved_gateway, credited):
    from chalicelib.ledger import Claim
    from chalicelib.transitions import settle_claim

    entry = first_sighting().entry
    entry.rule = "legacy"
    if approved_gateway:
        entry.approval = voted(request(), ("alice", "approve", "cli"))
    entry.claim = Claim(
        by="c1", until=iso(T0 + timedelta(minutes=5)), verb="confirm", gateway=GATEWAY, called_at=iso(T0)
    )
    pending = VIF.model_copy(update={"virtual_interface_state": "pending", "virtual_gateway_id": GATEWAY})
    sighting = observe(entry, "t", pending, T0 + timedelta(minutes=1), T0, "eu-west-1")
    assert settle_claim(sighting, pending, T0 + timedelta(minutes=1)) == "confirmed"
    [event] = [e for e in sighting.events if e.type == "vif.confirmed"]
    assert (event.data.by, event.data.approver) == (("approver", "alice") if credited else ("rule", None))


def test_the_ask_that_opens_a_request_has_another_id_than_a_notify_only_ask():
    from chalicelib.policy import Ask
    from chalicelib.transitions import approval_requested

    ask = Ask(reason="rule legacy asks a person to decide", rule="legacy", approvers=("alice",))
    notify_only, with_request = first_sighting(), first_sighting()
    approval_requested(notify_only, VIF, T0, ask, None)
    approval_requested(with_request, VIF, T0, ask, request())
    [a], [b] = (
        [e for e in notify_only.events if e.type == "vif.approval_requested"],
        [e for e in with_request.events if e.type == "vif.approval_requested"],
    )
    assert a.id != b.id and a.data.request_id is None and b.data.request_id == request().request_id
    assert b.data.gateways == [GATEWAY] and b.data.approvers == ["alice", "bob", "carol"]
    assert with_request.entry.approval == request() and with_request.entry.approval_requested_at == iso(T0)


@pytest.mark.parametrize(
    "state, decided, at, expected",
    [
        ("confirming", None, T0 + timedelta(days=1), None),  # still waiting for people
        ("confirming", None, T0 + timedelta(days=7), ("vif.approval_expired", "expired", None)),
        ("pending", None, T0 + timedelta(days=1), ("vif.approval_superseded", "superseded", "state now pending")),
        (None, None, T0 + timedelta(days=1), ("vif.approval_superseded", "superseded", "gone: no longer listed")),
        (
            "confirming",
            "confirmed by rule partner-prod",
            T0 + timedelta(days=1),
            ("vif.approval_superseded", "superseded", "confirmed by rule partner-prod"),
        ),
        # a rule that settled it wins over a request past its time
        (
            "confirming",
            "rejected by default_action",
            T0 + timedelta(days=8),
            ("vif.approval_superseded", "superseded", "rejected by default_action"),
        ),
    ],
)
def test_a_pending_request_expires_or_is_superseded(state, decided, at, expected):
    from chalicelib.transitions import approval_followup

    sighting = first_sighting()
    sighting.entry.approval = request()
    vif = None if state is None else VIF.model_copy(update={"virtual_interface_state": state})
    change = approval_followup(sighting, vif, at, decided)
    if expected is None:
        assert change is None
        return
    type_name, status, why = expected
    assert change.before == request() and change.after.status == status
    assert change.event.type == type_name and change.event.data.status == status
    assert change.event.data.request_id == request().request_id
    assert getattr(change.event.data, "why", None) == why
    assert of_type(sighting, type_name) == [], "written by its own conditional update, not with the record"


def test_a_decided_request_is_left_as_it_is():
    from chalicelib.transitions import approval_followup

    sighting = first_sighting()
    sighting.entry.approval = voted(request(), ("alice", "approve", "slack"))
    pending = VIF.model_copy(update={"virtual_interface_state": "pending"})
    assert approval_followup(sighting, pending, T0 + timedelta(days=8), "confirmed by rule x") is None
