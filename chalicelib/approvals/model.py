"""An approval request and the rules of a vote: pure, no I/O (the ledger stores it, the service writes it).

A request is created once per VIF (per spell in `confirming`) when the cycle first decides `ask`
with approvers. It stays `pending` until one allowed approver rejects it (a veto), enough distinct
approvers approve it, it expires, or the VIF leaves `confirming` some other way (superseded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

STATUSES = ("pending", "approved", "rejected", "expired", "superseded")
VOTES = ("approve", "reject")
# Without a known deadline a request still lapses: a forgotten request must not stay answerable forever.
DEFAULT_EXPIRY = timedelta(days=7)
NO_GATEWAY = "no available gateway to confirm with; confirm by hand or add one to the rule"
# Mattermost does not sign its requests: the user id of a click is whatever the body says, so whoever
# holds a button's token can claim to be any approver. Such a vote carries the weight of one person
# at most: one per request, and a veto only where one approval would decide too (min_approvals 1).
UNVERIFIED_CHANNELS = ("mattermost",)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _names(names: Iterable[str]) -> str:
    """alice / alice and bob / alice, bob and carol."""
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


class Refused(Exception):
    """A vote (or a request for one) that changes nothing; `status` is the HTTP status a route answers."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Vote:
    approver: str
    user_id: str | None
    channel: str
    vote: str  # approve | reject
    gateway: str | None
    at: str


@dataclass(frozen=True)
class TrailEntry:
    """One line of the audit trail: who did what, where, and what the request became."""

    at: str
    who: str  # an approver's config name, or "poller" for expiry and supersession
    user_id: str | None
    channel: str | None
    what: str  # approve | reject | expire | supersede
    gateway: str | None
    outcome: str  # e.g. "pending (1 of 2)", "approved", "superseded: its state is now pending"


@dataclass(frozen=True)
class ApprovalRequest:
    request_id: str
    target: str
    vif_id: str
    created_at: str
    expires_at: str
    gateways: tuple[str, ...]
    approvers: tuple[str, ...]
    min_approvals: int
    rule: str | None
    status: str = "pending"
    gateway: str | None = None
    votes: tuple[Vote, ...] = ()
    trail: tuple[TrailEntry, ...] = ()
    # The ledger's approval_version when this copy was read: an update is conditional on it.
    version: int = 0
    decided_at: str | None = None

    @property
    def approvals(self) -> tuple[str, ...]:
        """Names that approved, in voting order."""
        return tuple(v.approver for v in self.votes if v.vote == "approve")

    @property
    def rejected_by(self) -> str | None:
        return next((v.approver for v in self.votes if v.vote == "reject"), None)

    def progress(self) -> str:
        """Where the request stands, in words for chat: "approved by alice, 1 of 2"."""
        if self.status == "pending":
            if not self.approvals:
                return f"waiting for approval, 0 of {self.min_approvals}"
            return f"approved by {_names(self.approvals)}, {len(self.approvals)} of {self.min_approvals}"
        if self.status == "approved":
            return f"approved by {_names(self.approvals)}"
        if self.status == "rejected":
            return f"rejected by {self.rejected_by}"
        if self.status == "expired":
            return f"expired at {self.expires_at}"
        last = self.trail[-1].outcome if self.trail else "superseded"
        return last

    def to_item(self) -> dict[str, Any]:
        """Plain values for the ledger's DynamoDB map (strings, ints, lists, None; no floats)."""
        return {
            "request_id": self.request_id,
            "target": self.target,
            "vif_id": self.vif_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "gateways": list(self.gateways),
            "approvers": list(self.approvers),
            "min_approvals": int(self.min_approvals),
            "rule": self.rule,
            "status": self.status,
            "gateway": self.gateway,
            "votes": [dict(vars(v)) for v in self.votes],
            "trail": [dict(vars(t)) for t in self.trail],
            "decided_at": self.decided_at,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any], version: int = 0) -> ApprovalRequest:
        """The request from its stored map (numbers may come back as Decimal); `version` from approval_version."""
        return cls(
            request_id=item["request_id"],
            target=item["target"],
            vif_id=item["vif_id"],
            created_at=item["created_at"],
            expires_at=item["expires_at"],
            gateways=tuple(item.get("gateways") or ()),
            approvers=tuple(item.get("approvers") or ()),
            min_approvals=int(item["min_approvals"]),
            rule=item.get("rule"),
            status=item.get("status", "pending"),
            gateway=item.get("gateway"),
            votes=tuple(Vote(**v) for v in item.get("votes") or ()),
            trail=tuple(TrailEntry(**t) for t in item.get("trail") or ()),
            version=int(version),
            decided_at=item.get("decided_at"),
        )


def request_id(target: str, vif_id: str, spell: str, replaces: str | None = None) -> str:
    """Deterministic: the same VIF in the same spell of `confirming` always gets the same request.

    A request opened in place of a closed one (`replaces`) gets another id, the same for every poller.
    """
    seed = f"{target}|{vif_id}|{spell}" + (f"|{replaces}" if replaces else "")
    return "apr-" + hashlib.sha256(seed.encode()).hexdigest()[:20]


def new_request(
    *,
    target: str,
    vif_id: str,
    spell: str,
    now: datetime,
    deadline: str | None,
    gateways: Iterable[str],
    approvers: Iterable[str],
    min_approvals: int,
    rule: str | None,
    replaces: ApprovalRequest | None = None,
) -> ApprovalRequest:
    """A pending request; it expires at the VIF's deadline (never later), or after 7 days without one.

    `replaces`: the closed request this one takes the place of in the VIF's item (its version follows on).
    """
    approvers = tuple(dict.fromkeys(approvers))
    if not approvers:
        raise ValueError("an approval request needs at least one approver")
    if not 1 <= min_approvals <= len(approvers):
        raise ValueError(f"min_approvals {min_approvals} must be from 1 to the {len(approvers)} approvers")
    expires = now + DEFAULT_EXPIRY
    if deadline:
        expires = min(expires, _parse(deadline))
    return ApprovalRequest(
        request_id=request_id(target, vif_id, spell, replaces.request_id if replaces else None),
        target=target,
        vif_id=vif_id,
        created_at=_iso(now),
        expires_at=_iso(expires),
        gateways=tuple(dict.fromkeys(gateways)),
        approvers=approvers,
        min_approvals=min_approvals,
        rule=rule,
        version=replaces.version + 1 if replaces else 0,
    )


def differs(request: ApprovalRequest, approvers: Iterable[str], min_approvals: int, rule: str | None) -> str | None:
    """How the policy's ask of now differs from the one the request was opened for; None when it does not."""
    now_approvers = tuple(dict.fromkeys(approvers))
    if set(now_approvers) != set(request.approvers):
        return f"the policy changed: approvers are now {_names(now_approvers) or 'nobody'}"
    if min_approvals != request.min_approvals:
        return f"the policy changed: {min_approvals} approvals are now needed, not {request.min_approvals}"
    if rule != request.rule:
        return f"the policy changed: rule {rule or 'default_action'} asks now, not {request.rule or 'default_action'}"
    return None


def reopens(request: ApprovalRequest, spell: str | None) -> bool:
    """Whether a closed request gives way to a new one: superseded, or expired in an earlier spell of the VIF."""
    if request.status == "superseded":
        return True
    return request.status == "expired" and spell is not None and _parse(spell) > _parse(request.created_at)


def _closed(request: ApprovalRequest) -> Refused:
    """Why a request that is no longer pending takes no vote, naming who or what decided it."""
    if request.status == "expired":
        return Refused(410, f"the approval request expired at {request.expires_at}")
    when = f" at {request.decided_at}" if request.decided_at else ""
    if request.status == "approved":
        return Refused(409, f"already approved by {_names(request.approvals)}{when}")
    if request.status == "rejected":
        return Refused(409, f"already rejected by {request.rejected_by}{when}")
    return Refused(409, f"no longer open: {request.progress()}")


def _chosen_gateway(request: ApprovalRequest, gateway: str | None) -> str:
    if not request.gateways:
        raise Refused(409, NO_GATEWAY)
    if gateway is not None and gateway not in request.gateways:
        raise Refused(400, f"{gateway} is not a gateway of this request (choose from {', '.join(request.gateways)})")
    if request.gateway is not None:
        if gateway is not None and gateway != request.gateway:
            first = request.approvals[0] if request.approvals else "an earlier approver"
            raise Refused(409, f"{first} chose {request.gateway}; approve with that gateway or none")
        return request.gateway
    if gateway is not None:
        return gateway
    if len(request.gateways) == 1:
        return request.gateways[0]
    raise Refused(400, f"choose a gateway to confirm with: {', '.join(request.gateways)}")


def cast_vote(
    request: ApprovalRequest,
    *,
    approver: str,
    user_id: str | None,
    channel: str,
    vote: str,
    gateway: str | None,
    now: datetime,
) -> ApprovalRequest:
    """The request after one vote; Refused (with its HTTP status) when the vote may not count."""
    if vote not in VOTES:
        raise Refused(400, f"unknown vote {vote!r}: approve or reject")
    if approver not in request.approvers:
        raise Refused(403, f"{approver} may not decide on this request")
    if request.status != "pending":
        raise _closed(request)
    if now >= _parse(request.expires_at):
        raise Refused(410, f"the approval request expired at {request.expires_at}")
    # One vote per person, whichever way: a link opened twice, or a replayed click, cannot add a
    # second one, and an approve cannot be turned into a veto after others counted on it.
    earlier = next((v for v in request.votes if v.approver == approver), None)
    if earlier is not None:
        raise Refused(409, f"{approver} already voted on this request ({earlier.vote})")
    if channel in UNVERIFIED_CHANNELS:
        _unverified(request, channel, vote)
    at = _iso(now)
    if vote == "reject":
        chosen = None
        status = "rejected"
    else:
        chosen = _chosen_gateway(request, gateway)
        count = len(request.approvals) + 1
        status = "approved" if count >= request.min_approvals else "pending"
    cast = Vote(approver=approver, user_id=user_id, channel=channel, vote=vote, gateway=chosen, at=at)
    votes = (*request.votes, cast)
    outcome = status if status != "pending" else f"pending ({len(request.approvals) + 1} of {request.min_approvals})"
    entry = TrailEntry(
        at=at, who=approver, user_id=user_id, channel=channel, what=vote, gateway=chosen, outcome=outcome
    )
    return replace(
        request,
        status=status,
        gateway=chosen if vote == "approve" else request.gateway,
        votes=votes,
        trail=(*request.trail, entry),
        decided_at=at if status != "pending" else None,
    )


def _unverified(request: ApprovalRequest, channel: str, vote: str) -> None:
    """Refuse what a click that names no verified person may not do (see UNVERIFIED_CHANNELS)."""
    other = next((v for v in request.votes if v.channel in UNVERIFIED_CHANNELS), None)
    if other is not None:
        raise Refused(
            409,
            f"{other.approver} already voted from {other.channel.capitalize()}; a request counts one vote from "
            "Mattermost, the others come from Slack, a signed link or the CLI",
        )
    if vote == "reject" and request.min_approvals > 1:
        raise Refused(
            403,
            f"a request that needs {request.min_approvals} approvals cannot be rejected from "
            f"{channel.capitalize()}; reject it from Slack, your signed link or the CLI",
        )


def expire(request: ApprovalRequest, now: datetime) -> ApprovalRequest | None:
    """The request marked expired once now ≥ its expires_at; None when it is not due or not pending."""
    if request.status != "pending" or now < _parse(request.expires_at):
        return None
    at = _iso(now)
    entry = TrailEntry(at=at, who="poller", user_id=None, channel=None, what="expire", gateway=None, outcome="expired")
    return replace(request, status="expired", trail=(*request.trail, entry), decided_at=at)


def supersede(
    request: ApprovalRequest, now: datetime, why: str, *, decided: bool = False, who: str = "poller"
) -> ApprovalRequest | None:
    """The request set aside because the VIF left its hands (`why` says how); None when it is not pending.

    With `decided`, an approved or rejected request not yet carried out is set aside too (the policy changed).
    """
    if request.status not in (("pending", "approved", "rejected") if decided else ("pending",)):
        return None
    at = _iso(now)
    entry = TrailEntry(
        at=at, who=who, user_id=None, channel=None, what="supersede", gateway=None, outcome=f"superseded: {why}"
    )
    return replace(request, status="superseded", trail=(*request.trail, entry), decided_at=at)
