"""Pure: fold one sighting of a VIF into its ledger record and name the events it causes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from . import events
from .config import Policy
from .ledger import EXPIRY, VifRecord, iso, parse_iso
from .models import CONFIRMING, VirtualInterface

# A VIF first seen in `confirming` is known to be at most one poll old only if the previous poll
# was recent; after a longer gap (or at the first poll) its deadline may be earlier than we think.
CERTAINTY_WINDOW = timedelta(minutes=15)
# How close to a certain deadline a vanished `confirming` VIF counts as expired rather than withdrawn.
EXPIRY_MARGIN = timedelta(hours=1)


def _copy(record: VifRecord) -> VifRecord:
    return replace(record, alerts_sent=list(record.alerts_sent), snapshot=dict(record.snapshot))


class Sighting:
    """The record and the events of one VIF in one cycle; `changed` says whether to write."""

    def __init__(self, before: VifRecord | None, entry: VifRecord, region: str | None, publishing: bool = True):
        self.before, self.entry, self.region, self.publishing = before, entry, region, publishing
        self.events: list = []  # not yet written to the ledger
        self.emitted: list = []  # everything this sighting caused, for the cycle's report

    def written(self) -> None:
        """The ledger now holds entry and events: later changes are measured from here."""
        self.before = _copy(self.entry)
        self.events = []

    @property
    def changed(self) -> bool:
        return bool(self.events) or self.entry != self.before

    def emit(self, type_name: str, now: datetime, vif: VirtualInterface | None, facts: tuple = (), **data) -> None:
        if not self.publishing:  # no events queue configured: the ledger still records everything
            return
        e = self.entry
        event = events.build(
            type_name,
            target=e.target,
            subject=e.vif_id,
            time=now,
            facts=facts,
            **events.vif_fields(e.target, vif, e.snapshot, self.region),
            **data,
        )
        self.events.append(event)
        self.emitted.append(event)

    def deadline_fields(self) -> dict:
        e = self.entry
        return {"deadline": e.deadline, "deadline_certain": e.deadline_certain, "first_seen_at": e.first_seen_at}


def observe(
    before: VifRecord | None,
    target: str,
    vif: VirtualInterface,
    now: datetime,
    last_polled_at: datetime | None,
    region: str | None,
    publishing: bool = True,
) -> Sighting:
    """New VIF, state change, expiry by state: the record after this sighting, and its events."""
    if before is None:
        entry = VifRecord(target=target, vif_id=vif.id, first_seen_at=iso(now), state=vif.state, state_since=iso(now))
        if vif.state == CONFIRMING:
            # No creation time in the API: the deadline counts from our first sighting, and is
            # certain only if the previous poll of this target was recent enough.
            entry.deadline = iso(now + EXPIRY)
            entry.deadline_certain = last_polled_at is not None and now - last_polled_at <= CERTAINTY_WINDOW
    else:
        entry = _copy(before)
    entry.gone_at = None
    if before is None or before.gone_at is not None:
        entry.seen_since = iso(now)  # a new sighting spell: a later disappearance names this one
    entry.snapshot = vif.snapshot()
    sighting = Sighting(before, entry, region, publishing)

    if before is None:
        sighting.emit("vif.discovered", now, vif, state=vif.state)
        return sighting
    if before.gone_at is not None:
        # Listed again after a gap (a page that lied, an API outage, a restore): say so, or people
        # who were told it was gone never learn it is back.
        sighting.emit(
            "vif.reappeared",
            now,
            vif,
            facts=(before.gone_at,),
            state=vif.state,
            last_state=before.state,
            gone_at=before.gone_at,
        )
    if before.state != vif.state:
        entry.state, entry.state_since = vif.state, iso(now)
        # The id comes from the previous state's start, not from `now`: two pollers seeing the same
        # change name it the same, and FIFO deduplication keeps one.
        sighting.emit(
            "vif.state_changed",
            now,
            vif,
            facts=(before.state, vif.state, before.state_since),
            **{"from": before.state, "to": vif.state},
        )
        if vif.state == "expired":
            sighting.emit("vif.expired", now, vif, how="state", **sighting.deadline_fields())
    return sighting


def disappeared(before: VifRecord, now: datetime, region: str | None, publishing: bool = True) -> Sighting:
    """A VIF no longer listed. On AWS a `confirming` VIF that expires simply vanishes.

    Vanishing well before a certain deadline is a withdrawal (or a deletion), not an expiry.
    """
    entry = replace(_copy(before), gone_at=iso(now))
    sighting = Sighting(before, entry, region, publishing)
    # The id names the sighting spell this ends: a VIF that comes back and goes again is a new event,
    # not a copy FIFO deduplication would drop. Records from before spells were kept start at first_seen_at.
    spell = (before.seen_since or before.first_seen_at,)
    sighting.emit("vif.disappeared", now, None, facts=spell, last_state=before.state)
    deadline = parse_iso(before.deadline)
    near_deadline = deadline is None or not before.deadline_certain or now >= deadline - EXPIRY_MARGIN
    if before.state == CONFIRMING and near_deadline:
        sighting.emit("vif.expired", now, None, facts=spell, how="disappeared", **sighting.deadline_fields())
    return sighting


def _label(threshold: timedelta) -> str:
    return f"{int(threshold.total_seconds())}s"


def expiry_warning(sighting: Sighting, vif: VirtualInterface, now: datetime, policy: Policy) -> None:
    """At most one warning per cycle: the nearest threshold passed and not yet warned."""
    entry = sighting.entry
    deadline = parse_iso(entry.deadline)
    if vif.state != CONFIRMING or deadline is None:
        return
    left = deadline - now
    passed = [t for t in policy.expiry_alerts if left <= t and _label(t) not in entry.alerts_sent]
    if not passed or left <= timedelta(0):
        return
    nearest = min(passed)
    # A missed cycle can pass several thresholds at once: warn with the nearest, mark them all.
    entry.alerts_sent = entry.alerts_sent + [_label(t) for t in passed]
    sighting.emit(
        "vif.expiry_warning",
        now,
        vif,
        facts=(_label(nearest),),
        threshold_hours=nearest.total_seconds() / 3600,
        hours_left=round(left.total_seconds() / 3600, 2),
        **sighting.deadline_fields(),
    )


def stuck_pending(sighting: Sighting, vif: VirtualInterface, now: datetime, policy: Policy) -> None:
    """Confirmed but still not `available` after policy.stuck_pending_after: say so once."""
    entry = sighting.entry
    if vif.state != "pending" or entry.stuck_reported_at:
        return
    since = parse_iso(entry.confirmed_at) or parse_iso(entry.state_since) or now
    if now - since >= policy.stuck_pending_after:
        entry.stuck_reported_at = iso(now)
        sighting.emit(
            "vif.stuck_pending",
            now,
            vif,
            confirmed_at=since,
            pending_minutes=round((now - since).total_seconds() / 60, 1),
        )


def confirmed(sighting: Sighting, vif: VirtualInterface, now: datetime, rule: str | None, gateway: str) -> None:
    """Record a confirm and its event; `vif` is the VIF as the confirm left it (pending, on `gateway`)."""
    sighting.entry.confirmed_at = iso(now)
    sighting.entry.gateway = gateway
    sighting.emit("vif.confirmed", now, vif, by="rule", rule=rule, gateway=gateway)


def rejected(sighting: Sighting, vif: VirtualInterface, now: datetime, rule: str | None, reason: str) -> None:
    """Record a reject (a rule's, or the default action's when no rule matched) and its event."""
    sighting.entry.rejected_at = iso(now)
    sighting.emit("vif.rejected", now, vif, by="rule" if rule else "default_action", rule=rule, reason=reason)


# What a VIF looks like once a confirm took effect: on its gateway and past `confirming` (AWS shows a
# confirmed VIF whose BGP session is not up yet as `down`, one under test as `testing`).
CONFIRMED_STATES = ("pending", "available", "down", "testing", "verifying")
# An owner's delete of a `confirming` VIF leaves it `rejected`; `deleting`/`deleted` are the allocator's.
REJECTED_STATE = "rejected"


def settle_claim(sighting: Sighting, vif: VirtualInterface, now: datetime) -> str | None:
    """A claimed confirm (or reject) that worked but was never recorded: record it now, with its event.

    The poller that made the call died, or lost the answer and could not read the VIF back. The
    claim says what it meant to do; the VIF says whether it happened. Returns the action recorded.
    """
    entry, claim = sighting.entry, sighting.entry.claim
    # Only a claim whose call was made may have acted: one that never reached the API (or was made
    # by a release before claims said so) must not credit a person's confirm to a rule.
    if claim is None or claim.called_at is None or entry.confirmed_at or entry.rejected_at:
        return None
    gateway = claim.gateway
    if claim.verb == "confirm" and gateway and vif.state in CONFIRMED_STATES and vif.virtual_gateway_id == gateway:
        confirmed(sighting, vif, now, entry.rule, gateway)
        return "confirmed"
    if claim.verb == "reject" and vif.state == REJECTED_STATE:
        rejected(sighting, vif, now, entry.rule, entry.decision_reason or "rejected by the gatekeeper")
        return "rejected"
    return None
