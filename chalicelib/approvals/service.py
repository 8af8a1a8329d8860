"""Record one person's vote: read the request, apply the rules, write it back conditionally with its event.

This is all the API function does with a vote. Carrying out a decided request (confirm or delete)
is the poller's work, through the same claim → API → record path as a rule's decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .. import events
from ..config import Policy
from ..ledger import ApprovalChanged, Ledger, VifRecord
from ..models import CONFIRMING
from .model import ApprovalRequest, Refused, _names, cast_vote

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


def _still_confirming(record: VifRecord) -> None:
    """Refuse (409) a vote on a VIF that no longer waits for a decision, naming where it is."""
    if record.confirmed_at:
        raise Refused(409, f"{record.vif_id} is no longer confirming: it was confirmed at {record.confirmed_at}")
    if record.rejected_at:
        raise Refused(409, f"{record.vif_id} is no longer confirming: it was rejected at {record.rejected_at}")
    if record.gone_at or record.state != CONFIRMING:
        state = "gone" if record.gone_at else record.state
        raise Refused(409, f"{record.vif_id} is no longer confirming: its state is {state}")


def _region(policy: Policy, target: str) -> str | None:
    return next((t.region for t in policy.targets if t.name == target), None)


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
        _still_confirming(record)
        produced = [_vote_event(policy, record, after, now)] if publishing else []
        try:
            ledger.update_approval(request, after, produced, require_confirming=True)
        except ApprovalChanged:
            time.sleep(0.02 * attempt)  # let the other writer finish; the next read sees what it wrote
            continue
        written = ApprovalRequest.from_item(after.to_item(), request.version + 1)
        return VoteResult(written, record, written.status != "pending", summary(written))
    raise Refused(409, "the approval request kept changing while the vote was recorded; try again")


def _vote_event(policy: Policy, record: VifRecord, after: ApprovalRequest, now: datetime) -> events.CloudEvent:
    cast = after.votes[-1]
    return events.build(
        "vif.approval_vote",
        target=after.target,
        subject=after.vif_id,
        time=now,
        # One event per vote: each person votes once on a request (model.cast_vote).
        facts=(after.request_id, cast.approver, cast.vote),
        **events.vif_fields(after.target, None, record.snapshot, _region(policy, after.target)),
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
