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
