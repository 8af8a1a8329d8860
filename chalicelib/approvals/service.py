"""Record one person's vote: read the request, apply the rules, write it back conditionally with its event.

This is all the API function does with a vote. Carrying out a decided request (confirm or delete)
is the poller's work, through the same claim → API → record path as a rule's decision.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from .. import events, organizations, transitions
from ..config import Policy
from ..ledger import ApprovalChanged, Ledger, VifRecord, parse_iso
from ..models import CONFIRMING, VirtualGateway, VirtualInterface
from ..policy import Ask, Decision, decide, matching_rule
from .model import ApprovalRequest, Refused, _names, cast_vote, differs, supersede

ATTEMPTS = 6  # the first try and five retries when another vote (or the poller) wrote in between


@dataclass(frozen=True)
class VoteResult:
    request: ApprovalRequest  # as written, with its new version
    record: VifRecord
    decided: bool  # the vote ended the request (approved or rejected): the poller is to act now
    summary: str  # for the person who voted, e.g. "approved by alice, 1 of 2"


def summary(request: ApprovalRequest) -> str:
    """What a vote led to, in words for chat and the CLI."""
    if request.status == "approved":
        return f"approved by {_names(request.approvals)}: confirming with {request.gateway} now"
    if request.status == "rejected":
        return f"rejected by {request.rejected_by}: deleting it now"
    return request.progress()


class PolicyChanged(Refused):
    """The request was asked under another policy: it is superseded, and the poller opens a new one."""

    def __init__(self, request: ApprovalRequest, why: str):
        super().__init__(409, f"{why}; this request is superseded and a new one is being sent")
        self.request = request


def stale(request: ApprovalRequest, decision: Decision) -> str | None:
    """Why `request` no longer stands for what the policy asks now (`decision`); None when it still does."""
    if not isinstance(decision, Ask):
        return f"the policy changed: it no longer asks about this VIF ({decision.reason})"
    return differs(request, decision.approvers, decision.min_approvals, decision.rule)


def current_decision(policy: Policy, record: VifRecord) -> Decision:
    """What the policy decides now about the VIF as last listed, whatever its gateways' state.

    A confirm rule's gateway is taken as available: the question is whether the policy asks people,
    and who, not whether a confirm could be made this minute.
    """
    policy = organizations.for_target(policy, record.target)  # the api function does not list accounts
    target = next((t for t in policy.targets if t.name == record.target), None)
    try:
        vif = VirtualInterface.model_validate({**record.snapshot, "virtualInterfaceState": CONFIRMING})
    except ValidationError:
        vif = VirtualInterface(virtualInterfaceId=record.vif_id, virtualInterfaceState=CONFIRMING)
    rule = matching_rule(vif, policy, target)
    gateways: dict[str, VirtualGateway] = {}
    if rule is not None and rule.action == "confirm" and rule.gateway:
        gateways = {rule.gateway: VirtualGateway(virtualGatewayId=rule.gateway, virtualGatewayState="available")}
    return decide(vif, gateways, policy, target)


def _still_confirming(record: VifRecord, now: datetime | None = None) -> None:
    """Refuse (409) a vote on a VIF that no longer waits for a decision, naming where it is."""
    if record.confirmed_at:
        raise Refused(409, f"{record.vif_id} is no longer confirming: it was confirmed at {record.confirmed_at}")
    if record.rejected_at:
        raise Refused(409, f"{record.vif_id} is no longer confirming: it was rejected at {record.rejected_at}")
    if record.gone_at or record.state != CONFIRMING:
        state = "gone" if record.gone_at else record.state
        raise Refused(409, f"{record.vif_id} is no longer confirming: its state is {state}")
    claim = record.claim
    until = parse_iso(claim.until) if claim else None
    if claim is not None and now is not None and until is not None and until > now:
        # A rule's confirm or delete is under way (the vote's write refuses it too, by the same claim).
        doing = {"confirm": "confirming", "reject": "rejecting"}.get(claim.verb or "", "acting on")
        rule = f"rule {record.rule}" if record.rule else "the gatekeeper"
        raise Refused(409, f"{record.vif_id} is being decided now: {rule} is {doing} it; your vote was not counted")


def region_of(policy: Policy, target: str) -> str | None:
    found = next((t for t in policy.targets if t.name == target), None) or organizations.target_named(policy, target)
    return found.region if found else None


def record_vote(
    ledger: Ledger,
    policy: Policy,
    request_id: str,
    *,
    approver: str,
    user_id: str | None,
    channel: str,
    vote: str,
    gateway: str | None,
    clock: Callable[[], datetime],
    publishing: bool,
) -> VoteResult:
    """Count one vote, once; Refused (with the HTTP status to answer) when it may not count.

    The write is conditional on the request's version and on the VIF still confirming: two
    votes at once are applied one after the other (the second re-reads and is judged on what
    the first left), and a vote never lands after the VIF was decided some other way.
    """
    for attempt in range(ATTEMPTS):
        found = ledger.approval(request_id)
        if found is None:
            raise Refused(404, "no such approval request")
        request, record = found
        now = clock()
        after = cast_vote(
            request, approver=approver, user_id=user_id, channel=channel, vote=vote, gateway=gateway, now=now
        )
        _still_confirming(record, now)
        why = stale(request, current_decision(policy, record))
        if why is not None:
            _set_aside(ledger, policy, record, request, why, now, publishing)
            raise PolicyChanged(request, why)
        produced = [_vote_event(policy, record, after, now)] if publishing else []
        try:
            ledger.update_approval(request, after, produced, require_confirming=True, now=now)
        except ApprovalChanged:
            time.sleep(0.02 * attempt)  # let the other writer finish; the next read sees what it wrote
            continue
        written = ApprovalRequest.from_item(after.to_item(), request.version + 1)
        return VoteResult(written, record, written.status != "pending", summary(written))
    raise Refused(409, "the approval request kept changing while the vote was recorded; try again")


def _set_aside(
    ledger: Ledger,
    policy: Policy,
    record: VifRecord,
    request: ApprovalRequest,
    why: str,
    now: datetime,
    publishing: bool,
) -> None:
    """Supersede a request the policy no longer stands behind, with its event; a concurrent write wins."""
    after = supersede(request, now, why, who="gatekeeper")
    if after is None:
        return
    produced = []
    if publishing:
        produced.append(
            events.build(
                "vif.approval_superseded",
                target=after.target,
                subject=after.vif_id,
                time=now,
                facts=(after.request_id,),
                **events.vif_fields(after.target, None, record.snapshot, region_of(policy, after.target)),
                why=why,
                **transitions.status_fields(after),
            )
        )
    # A vote or the poller wrote first: the next cycle looks at the request again.
    with contextlib.suppress(ApprovalChanged):
        ledger.update_approval(request, after, produced, require_confirming=False)


def _vote_event(policy: Policy, record: VifRecord, after: ApprovalRequest, now: datetime) -> events.CloudEvent:
    cast = after.votes[-1]
    return events.build(
        "vif.approval_vote",
        target=after.target,
        subject=after.vif_id,
        time=now,
        # One event per vote: each person votes once on a request (model.cast_vote).
        facts=(after.request_id, cast.approver, cast.vote),
        **events.vif_fields(after.target, None, record.snapshot, region_of(policy, after.target)),
        request_id=after.request_id,
        approvals=list(after.approvals),
        min_approvals=after.min_approvals,
        status=after.status,
        approver=cast.approver,
        user_id=cast.user_id,
        channel=cast.channel,
        vote=cast.vote,
        gateway=cast.gateway,
    )
