"""Pure: fold one sighting of a VIF into its ledger record and name the events it causes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import events
from .approvals import model
from .config import Policy
from .ledger import EXPIRY, VifRecord, iso, parse_iso
from .models import CONFIRMING, VirtualInterface

if TYPE_CHECKING:
    from .approvals.model import ApprovalRequest
    from .policy import Ask

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
        event = self.build(type_name, now, vif, facts, **data)
        if event is not None:
            self.events.append(event)
            self.emitted.append(event)

    def build(self, type_name: str, now: datetime, vif: VirtualInterface | None, facts: tuple = (), **data) -> Any:
        """An event of this VIF, not queued with the record (its write is another one); None without a queue."""
        if not self.publishing:  # no events queue configured: the ledger still records everything
            return None
        e = self.entry
        return events.build(
            type_name,
            target=e.target,
            subject=e.vif_id,
            time=now,
            facts=facts,
            **events.vif_fields(e.target, vif, e.snapshot, self.region),
            **data,
        )

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


def deciders(request: ApprovalRequest) -> tuple[tuple[str, ...], str | None]:
    """Who decided an approved or rejected request (names, in voting order) and where the deciding vote was cast."""
    verdict = "reject" if request.status == "rejected" else "approve"
    deciding = next((v for v in reversed(request.votes) if v.vote == verdict), None)
    channel = deciding.channel if deciding else None
    if verdict == "reject":  # a veto: the one who rejected decided it, whoever approved before
        return ((deciding.approver,) if deciding else ()), channel
    return tuple(request.approvals), channel


def decided_by(request: ApprovalRequest) -> str:
    """How people decided, in words: "approved by alice, bob via slack"."""
    names, channel = deciders(request)
    verb = "rejected" if request.status == "rejected" else "approved"
    who = ", ".join(names) or "nobody"
    return f"{verb} by {who} via {channel}" if channel else f"{verb} by {who}"


def _approver_fields(request: ApprovalRequest | None) -> dict[str, Any]:
    if request is None:
        return {}
    names, channel = deciders(request)
    return {
        "by": "approver",
        "approver": ", ".join(names),
        "approvers": list(names),
        "channel": channel,
        "request_id": request.request_id,
    }


def confirmed(
    sighting: Sighting,
    vif: VirtualInterface,
    now: datetime,
    rule: str | None,
    gateway: str,
    approval: ApprovalRequest | None = None,
) -> None:
    """Record a confirm and its event; `vif` is the VIF as the confirm left it (pending, on `gateway`).

    With `approval`, people decided it: the event names them, the channel and the request.
    """
    sighting.entry.confirmed_at = iso(now)
    sighting.entry.gateway = gateway
    fields: dict[str, Any] = {"by": "rule", "rule": rule, "gateway": gateway}
    fields.update(_approver_fields(approval))
    sighting.emit("vif.confirmed", now, vif, **fields)


def rejected(
    sighting: Sighting,
    vif: VirtualInterface,
    now: datetime,
    rule: str | None,
    reason: str,
    approval: ApprovalRequest | None = None,
) -> None:
    """Record a reject (a rule's, the default action's when no rule matched, or people's) and its event."""
    sighting.entry.rejected_at = iso(now)
    fields: dict[str, Any] = {"by": "rule" if rule else "default_action", "rule": rule, "reason": reason}
    fields.update(_approver_fields(approval))
    sighting.emit("vif.rejected", now, vif, **fields)


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
    # A claim that carried out people's decision credits them: the request says who and how.
    request = entry.approval
    if claim.verb == "confirm" and gateway and vif.state in CONFIRMED_STATES and vif.virtual_gateway_id == gateway:
        approved = request if request and request.status == "approved" and request.gateway == gateway else None
        confirmed(sighting, vif, now, approved.rule if approved else entry.rule, gateway, approved)
        return "confirmed"
    if claim.verb == "reject" and vif.state == REJECTED_STATE:
        refused = request if request and request.status == "rejected" else None
        reason = decided_by(refused) if refused else entry.decision_reason or "rejected by the gatekeeper"
        rejected(sighting, vif, now, refused.rule if refused else entry.rule, reason, refused)
        return "rejected"
    return None


# --- approval requests: asked for once, then expired or superseded unless people decide first ---------------


def approval_requested(
    sighting: Sighting, vif: VirtualInterface, now: datetime, decision: Ask, request: ApprovalRequest | None
) -> None:
    """Ask people: notify-only without `request`; with one, the event names it and who may answer.

    The request id is among the event's facts, so the ask that opens a request is not taken for
    (and dropped by FIFO deduplication as) an earlier notify-only ask of the same VIF.
    """
    entry = sighting.entry
    if entry.approval_requested_at is None:
        entry.approval_requested_at = iso(now)
    fields: dict[str, Any] = {}
    facts: tuple = ()
    if request is not None:
        entry.approval = request
        facts = (request.request_id,)
        fields = {
            "request_id": request.request_id,
            "approvers": list(request.approvers),
            "min_approvals": request.min_approvals,
            "gateways": list(request.gateways),
            "expires_at": request.expires_at,
        }
    sighting.emit(
        "vif.approval_requested",
        now,
        vif,
        facts=facts,
        reason=decision.reason,
        rule=decision.rule,
        **fields,
        **sighting.deadline_fields(),
    )


@dataclass(frozen=True)
class ApprovalChange:
    """A pending request's next version and its event (None without a queue): one conditional ledger write."""

    before: ApprovalRequest
    after: ApprovalRequest
    event: Any


def status_fields(request: ApprovalRequest) -> dict[str, Any]:
    """What every approval event says of its request's standing."""
    return {
        "request_id": request.request_id,
        "approvals": list(request.approvals),
        "min_approvals": request.min_approvals,
        "status": request.status,
    }


def approval_followup(
    sighting: Sighting, vif: VirtualInterface | None, now: datetime, decided: str | None = None
) -> ApprovalChange | None:
    """A pending request whose VIF went another way is superseded; one past its time expires.

    `vif` is None when the VIF is no longer listed; `decided` says how a rule settled it this cycle
    ("confirmed by rule partner-prod"), or that the policy no longer asks. Approved or rejected
    requests are left as they are: their carrying out is on record as vif.confirmed / vif.rejected.
    """
    request = sighting.entry.approval
    if request is None or request.status != "pending":
        return None
    why = decided
    if why is None:
        expired = model.expire(request, now)
        if expired is not None:
            event = sighting.build(
                "vif.approval_expired",
                now,
                vif,
                facts=(request.request_id,),
                expires_at=expired.expires_at,
                **status_fields(expired),
                **sighting.deadline_fields(),
            )
            return ApprovalChange(request, expired, event)
        if vif is None:
            why = "gone: no longer listed"
        elif vif.state != CONFIRMING:
            why = f"state now {vif.state}"
    if why is None:
        return None
    after = model.supersede(request, now, why)
    if after is None:
        return None
    event = sighting.build(
        "vif.approval_superseded", now, vif, facts=(request.request_id,), why=why, **status_fields(after)
    )
    return ApprovalChange(request, after, event)
