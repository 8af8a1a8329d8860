"""What people read: one event in plain words, the same for every chat kind (pure, no I/O).

A message says what happened, which VIF, why, and by when, in words a tired on-call engineer
reads at a glance. Each renderer (slack, mattermost, teams) turns it into its own markup.

A Message is plain text and nothing else: this module writes no markup of its own, so a renderer
treats every string of it as data and escapes all of it, in one place, before adding its own
formatting around it. Strings from outside (VIF names, connection ids, locations and states the
API returns, reasons, approvers, error texts) are made one printable line of bounded length here,
once, before any sentence is written.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from ..events import CloudEvent
from ..policy import PAUSED

Severity = Literal["info", "success", "warning", "danger"]
Field = tuple[str, str]

# Under a day left, an expiry warning is an emergency rather than a reminder.
URGENT = timedelta(hours=24)
# One value from outside, as shown: enough for any real name, id or error text; a 500 KB name
# must not push the deadline out of a message or the message past a chat's limits.
VALUE_MAX = 256
# Control characters (a newline would start a Markdown block), format characters (bidi overrides
# that reverse what is read, zero-width characters that hide what is there), lone surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Cs"})
_BREAKS = frozenset({"Zl", "Zp"})
# The ids the gatekeeper writes and approvals.tokens signs: nothing else goes into a button or an option.
REQUEST_ID = re.compile(r"apr-[0-9a-f]{20}")
GATEWAY_ID = re.compile(r"vgw-[0-9a-f]{8}(?:[0-9a-f]{9})?")
# A VIF id is `dxvif-` and 8 characters; it is written twice in the CLI line, which must stay one field.
VIF_ID_MAX = 64
APPROVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # config.Name
# Without a deadline, a request lives a week (the model's rule); used only if an event lacks expires_at.
REQUEST_LIFE = timedelta(days=7)


@dataclass(frozen=True)
class Action:
    """A link a person follows from the message, e.g. a signed approve or reject URL."""

    label: str
    style: Literal["default", "primary", "danger"]
    url: str


@dataclass(frozen=True)
class Decision:
    """An approval request people can answer from the message.

    The ids are the gatekeeper's own (checked against REQUEST_ID and GATEWAY_ID): they are what buttons
    carry. Names are config names of approvers, used as shown text and in per-approver links.
    """

    request_id: str
    vif_id: str
    approvers: tuple[str, ...]
    min_approvals: int
    gateways: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class Message:
    """One event, formatted for people; `text` is the plain fallback of one or two sentences."""

    title: str
    text: str
    fields: tuple[Field, ...]
    severity: Severity
    event_type: str
    subject: str
    actions: tuple[Action, ...] = ()
    # Set while an approval request is open: each chat kind adds its own way to answer it.
    decision: Decision | None = None


@dataclass(frozen=True)
class _Parts:
    title: str
    text: str
    severity: Severity
    fields: tuple[Field, ...] = ()


def render(event: CloudEvent) -> Message:
    """The message people see for `event`."""
    data = _shown_data(event.data)
    parts = _RENDERERS[event.type](data, event.time)
    common = _vif_fields(data) if event.type.startswith("vif.") else ()
    # From the event as sent: only names and ids of the shapes the gatekeeper writes go into buttons.
    decision = _decision(event.data, event.time) if event.type == "vif.approval_requested" else None
    return Message(
        title=parts.title,
        text=parts.text,
        fields=common + parts.fields + (decision_fields(decision) if decision else ()),
        severity=parts.severity,
        event_type=event.type,
        subject=shown(event.subject),
        decision=decision,
    )


# --- text from outside -------------------------------------------------------------------------


def shown(text: str, limit: int = VALUE_MAX) -> str:
    """`text` as one printable line of at most `limit` characters: hidden characters dropped, spaces collapsed."""
    # Cut before the character walk: what lies past a few limits' worth is never shown anyway.
    head = text[: limit * 4]
    spaced = "".join(
        " " if char.isspace() or unicodedata.category(char) in _BREAKS else char
        for char in head
        if char.isspace() or unicodedata.category(char) not in _HIDDEN
    )
    line = " ".join(spaced.split())
    return line if len(line) <= limit and head == text else line[: limit - 1] + "…"


def _request_id(text: str | None) -> bool:
    return text is not None and REQUEST_ID.fullmatch(text) is not None


def _gateway_id(text: str | None) -> bool:
    return text is not None and GATEWAY_ID.fullmatch(text) is not None


def _shown_value(value: Any) -> Any:
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {key: _shown_value(item) for key, item in value.items()}
    if isinstance(value, list):  # approvers, approvals, gateways
        return [_shown_value(item) for item in value]
    return value


def _shown_data(data: BaseModel) -> Any:
    """The event's data with every string in it (the VIF snapshot included) passed through shown()."""
    return data.model_copy(update={name: _shown_value(getattr(data, name)) for name in type(data).model_fields})


# --- words and times ---------------------------------------------------------------------------


def at(moment: datetime) -> str:
    """`2026-11-28 09:00 UTC`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def span(delta: timedelta) -> str:
    """A duration in its two largest units, rounded down: `2d 4h`, `5h 30m`, `45m`."""
    minutes = int(abs(delta).total_seconds() // 60)
    if minutes == 0:
        return "under 1m"
    days, rest = divmod(minutes, 24 * 60)
    units = [(days, "d"), *zip(divmod(rest, 60), "hm", strict=True)]
    first = next(i for i, (n, _) in enumerate(units) if n)
    return " ".join(f"{n}{unit}" for n, unit in units[first : first + 2] if n)


def relative(delta: timedelta) -> str:
    """`in 2d 4h`, `3h ago`, or `now`."""
    if abs(delta) < timedelta(minutes=1):
        return "now"
    return f"in {span(delta)}" if delta > timedelta(0) else f"{span(delta)} ago"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    # Reasons come from rules and people; some end with a period, the message adds its own.
    return text.strip().rstrip(".")


# --- the VIF -----------------------------------------------------------------------------------


def _label(data: Any) -> str:
    """The VIF's name, or its id when it has none."""
    return data.vif.get("virtualInterfaceName") or data.vif.get("virtualInterfaceId", "?")


def _who(data: Any) -> str:
    """`prod-par-1 (dxvif-fg5678gh)`, or the id alone."""
    vif_id = data.vif.get("virtualInterfaceId", "?")
    name = data.vif.get("virtualInterfaceName")
    return f"{name} ({vif_id})" if name else vif_id


def _target(data: Any) -> str:
    return f"{data.target} ({data.region})" if data.region else data.target


def _vif_fields(data: Any) -> tuple[Field, ...]:
    vif = data.vif
    asn = vif.get("asnLong", vif.get("asn"))  # AWS reports 4-byte ASNs in asnLong only
    pairs = [
        ("VIF", vif.get("virtualInterfaceName")),
        ("VIF id", vif.get("virtualInterfaceId")),
        ("VLAN", vif.get("vlan")),
        ("ASN", asn),
        ("Connection", vif.get("connectionId")),
        ("Location", vif.get("location")),
        ("Account", data.account or vif.get("ownerAccount")),
        ("Target", _target(data)),
        ("State", vif.get("virtualInterfaceState")),
    ]
    return tuple((label, str(value)) for label, value in pairs if value not in (None, ""))


# --- deadlines ---------------------------------------------------------------------------------


def _deadline(data: Any, now: datetime) -> str:
    """When it expires, and how sure we are: a VIF already waiting at the first poll started earlier."""
    if data.deadline is None:
        return "no deadline known"
    if data.deadline_certain:
        return f"expires at {at(data.deadline)} ({relative(data.deadline - now)})"
    return f"first seen at {at(data.first_seen_at)}; it expires at the latest at {at(data.deadline)}, possibly earlier"


def _deadline_clause(data: Any, now: datetime) -> str:
    """The deadline as the end of a sentence about the VIF: `it expires at ...`."""
    if data.deadline is None:
        return "its deadline is unknown"
    return f"it {_deadline(data, now)}" if data.deadline_certain else f"it was {_deadline(data, now)}"


def _time_left(data: Any, now: datetime) -> Field:
    left = data.deadline - now
    if left <= timedelta(0):
        return ("Time left", "none, the deadline has passed")
    return ("Time left", span(left) if data.deadline_certain else f"at most {span(left)}")


def _deadline_fields(data: Any, now: datetime) -> tuple[Field, ...]:
    if data.deadline is None:
        return (("Deadline", _deadline(data, now)),)
    return (("Deadline", _deadline(data, now)), _time_left(data, now))


# --- one function per event type ---------------------------------------------------------------


def _discovered(data: Any, now: datetime) -> _Parts:
    owner = f", owned by account {data.account}" if data.account else ""
    return _Parts(
        f"New VIF {_label(data)}",
        f"VIF {_who(data)} appeared on target {data.target} in state {data.state}{owner}.",
        "info",
    )


_GOOD_STATES = {"available"}
_BAD_STATES = {"down", "deleting", "deleted", "rejected", "expired", "unknown"}


def _state_changed(data: Any, now: datetime) -> _Parts:
    to = data.to_state
    severity: Severity = "success" if to in _GOOD_STATES else "warning" if to in _BAD_STATES else "info"
    return _Parts(
        f"VIF {_label(data)}: {data.from_state} → {to}",
        f"VIF {_who(data)} went from {data.from_state} to {to}.",
        severity,
    )


CHANNELS = {"slack": "Slack", "mattermost": "Mattermost", "link": "a signed link", "cli": "the CLI"}


def names(people: list[str] | tuple[str, ...], word: str = "and") -> str:
    """`alice`, `alice and bob`, `alice, bob and carol`; past one value's length, `alice, bob and 7 more`."""
    shown_ = list(people[:1])
    for person in people[1:]:
        if sum(map(len, shown_)) + len(person) > VALUE_MAX:
            break
        shown_.append(person)
    rest = len(people) - len(shown_)
    if rest:
        return f"{', '.join(shown_)} {word} {rest} more"
    return f" {word} ".join(shown_) if len(shown_) <= 2 else f"{', '.join(shown_[:-1])} {word} {shown_[-1]}"


def _approvers(data: Any) -> str | None:
    """The people who decided, from the list when the event has one, else the joined `approver`."""
    return names(data.approvers) if getattr(data, "approvers", None) else getattr(data, "approver", None)


def _by(data: Any) -> str:
    """Who decided: `rule partner-prod`, `the default action`, or the approvers and where they voted."""
    if data.by == "rule":
        return f"rule {data.rule}" if data.rule else "a rule"
    if data.by == "approver":
        via = f" via {CHANNELS[data.channel]}" if data.channel else ""
        return (_approvers(data) or "an approver") + via
    return "the default action"


def _deciders(data: Any) -> tuple[Field, ...]:
    several = len(getattr(data, "approvers", None) or ()) > 1
    channel = getattr(data, "channel", None)
    pairs = (
        ("Rule", getattr(data, "rule", None)),
        ("Approvers" if several else "Approver", _approvers(data)),
        ("Voted via", CHANNELS[channel] if channel else None),
        ("Request", getattr(data, "request_id", None)),
    )
    return tuple((label, value) for label, value in pairs if value)


def _confirmed(data: Any, now: datetime) -> _Parts:
    fields = (*_deciders(data), ("Gateway", data.gateway))
    return _Parts(
        f"VIF confirmed: {_label(data)}",
        f"VIF {_who(data)} was confirmed by {_by(data)} and attached to {data.gateway}.",
        "success",
        fields,
    )


def _rejected(data: Any, now: datetime) -> _Parts:
    fields = (("Reason", _sentence(data.reason)), *_deciders(data))
    # A person's reject needs no reason after it: the poller's reason only says again who and how.
    why = "" if data.by == "approver" else f": {_sentence(data.reason)}"
    return _Parts(
        f"VIF rejected: {_label(data)}",
        f"VIF {_who(data)} was rejected by {_by(data)}{why}.",
        "warning",
        fields,
    )


def _approval_requested(data: Any, now: datetime) -> _Parts:
    # Who may decide and the request id come with the decision (decision_fields): nobody has decided yet.
    fields: tuple[Field, ...] = (("Reason", _sentence(data.reason)), *((("Rule", data.rule),) if data.rule else ()))
    paused = isinstance(data.reason, str) and data.reason.startswith(PAUSED)
    if paused:  # the emergency stop is on: say so where people look first, the title
        fields = (("Auto-confirm", "PAUSED: no VIF is confirmed without a person until auto_confirm is true"), *fields)
    return _Parts(
        f"Approval needed{' (auto-confirm paused)' if paused else ''}: VIF {_label(data)}",
        f"VIF {_who(data)} waits for confirmation: {_sentence(data.reason)}. {_capital(_deadline_clause(data, now))}.",
        "warning",
        fields + _deadline_fields(data, now),
    )


def _decision(data: Any, now: datetime) -> Decision | None:
    """The open request an approval_requested event names (its data as sent), if people can answer it."""
    vif_id = data.vif.get("virtualInterfaceId")
    if not _request_id(data.request_id) or not isinstance(vif_id, str):
        return None  # notify-only: nobody may approve from chat
    return Decision(
        request_id=data.request_id,
        vif_id=shown(vif_id, VIF_ID_MAX),
        approvers=_config_names(data.approvers),
        min_approvals=data.min_approvals or 1,
        gateways=tuple(g for g in data.gateways if _gateway_id(g)),
        expires_at=data.expires_at or (data.deadline if data.deadline else now + REQUEST_LIFE),
    )


def _config_names(people: Any) -> tuple[str, ...]:
    """Approver names as the config writes them; anything else can neither vote nor get a link."""
    return tuple(name for name in people if isinstance(name, str) and APPROVER_NAME.fullmatch(name))


def decision_fields(decision: Decision) -> tuple[Field, ...]:
    """Who may decide, how many approvals it needs and until when, the gateways, and the CLI that decides."""
    needed = f"{decision.min_approvals} approval{'' if decision.min_approvals == 1 else 's'}"
    who = names(decision.approvers, "or") if decision.approvers else "nobody"
    gateways = decision.gateways
    if not gateways:
        gateway: Field = ("Gateway", "none available to confirm with: confirm by hand, or add one to the rule")
    elif len(gateways) == 1:
        gateway = ("Gateway", gateways[0])
    else:
        gateway = ("Gateways", names(gateways, "or"))
    choose = " --gateway ID" if len(gateways) > 1 else ""
    return (
        ("Who decides", f"{who}; {needed} needed by {at(decision.expires_at)}"),
        gateway,
        ("Request", decision.request_id),
        (
            "From a terminal",
            f"vifgate approve {decision.vif_id}{choose} --as NAME, or vifgate reject {decision.vif_id} --as NAME",
        ),
    )


def _expiry_warning(data: Any, now: datetime) -> _Parts:
    left = data.deadline - now if data.deadline else timedelta(hours=data.hours_left)
    within = span(left) if data.deadline_certain else f"at most {span(left)}"
    return _Parts(
        f"VIF {_label(data)} expires in {within}",
        f"VIF {_who(data)} still waits for confirmation: {_deadline_clause(data, now)}. "
        "Confirm it before then, or the partner must create it again.",
        "danger" if left <= URGENT else "warning",
        _deadline_fields(data, now),
    )


def _expired(data: Any, now: datetime) -> _Parts:
    how = "has expired" if data.how == "state" else "is no longer listed: it expired"
    deadline = (
        "unknown"
        if data.deadline is None
        else at(data.deadline) + ("" if data.deadline_certain else " (at the latest)")
    )
    return _Parts(
        f"VIF expired: {_label(data)}",
        f"VIF {_who(data)} was never confirmed and {how}. The partner must create it again.",
        "danger",
        (("First seen", at(data.first_seen_at)), ("Deadline", deadline)),
    )


def _reappeared(data: Any, now: datetime) -> _Parts:
    return _Parts(
        f"VIF back: {_label(data)}",
        f"VIF {_who(data)} is listed again on target {data.target} in state {data.state}, after it was "
        f"reported gone at {at(data.gone_at)} (its last state then was {data.last_state}).",
        "warning",
        (("Reported gone", at(data.gone_at)), ("Last state", data.last_state)),
    )


def _disappeared(data: Any, now: datetime) -> _Parts:
    return _Parts(
        f"VIF gone: {_label(data)}",
        f"VIF {_who(data)} is no longer listed on target {data.target}; its last state was {data.last_state}.",
        "warning",
    )


def _stuck_pending(data: Any, now: datetime) -> _Parts:
    pending = span(timedelta(minutes=data.pending_minutes))
    return _Parts(
        f"VIF stuck in pending: {_label(data)}",
        f"VIF {_who(data)} was confirmed at {at(data.confirmed_at)} and is still pending after "
        f"{pending}. Check the virtual gateway and the partner's side.",
        "warning",
        (("Confirmed at", at(data.confirmed_at)), ("Pending for", pending)),
    )


def _target_failed(data: Any, now: datetime) -> _Parts:
    return _Parts(
        f"Polling failed: {data.target}",
        f"Polling target {_target(data)} failed with {data.code}: {_sentence(data.message)}. "
        "Its VIFs are not watched until it recovers.",
        "danger",
        (("Target", data.target), ("Region", data.region or "-"), ("Code", data.code), ("Message", data.message)),
    )


def _target_recovered(data: Any, now: datetime) -> _Parts:
    down = span(now - data.failed_since)
    return _Parts(
        f"Polling recovered: {data.target}",
        f"Polling target {_target(data)} works again after failing for {down}.",
        "success",
        (
            ("Target", data.target),
            ("Region", data.region or "-"),
            ("Failing since", at(data.failed_since)),
            ("Down for", down),
        ),
    )


def _count(approvals: int, needed: int) -> str:
    """`1 of 2 approvals`."""
    return f"{approvals} of {needed} approval{'' if needed == 1 else 's'}"


def _so_far(data: Any, none: str = "") -> str:
    """What the request had when it ended: ` (approved by alice, 1 of 2 approvals)`, or `none`."""
    if not data.approvals:
        return none
    return f" (approved by {names(data.approvals)}, {_count(len(data.approvals), data.min_approvals)})"


def _request_fields(data: Any) -> tuple[Field, ...]:
    approvals = names(data.approvals) if data.approvals else "none"
    return (
        ("Approvals", f"{approvals} ({len(data.approvals)} of {data.min_approvals})"),
        ("Request", data.request_id),
    )


def _approval_vote(data: Any, now: datetime) -> _Parts:
    via = CHANNELS[data.channel]
    done = len(data.approvals)
    if data.vote == "reject":
        return _Parts(
            f"{data.approver} rejected VIF {_label(data)}",
            f"VIF {_who(data)} was rejected by {data.approver} via {via}; deleting it now.",
            "warning",
            (("Rejected by", data.approver), ("Voted via", via), ("Request", data.request_id)),
        )
    if data.status == "approved":
        gateway = f" with {data.gateway}" if data.gateway else ""
        next_step = f"confirming it{gateway} now"
    else:
        missing = max(data.min_approvals - done, 1)
        next_step = f"waiting for {missing} more"
    fields = (*_request_fields(data), ("Voted via", via))
    return _Parts(
        f"{data.approver} approved VIF {_label(data)} ({done} of {data.min_approvals})",
        f"VIF {_who(data)} was approved by {data.approver} via {via} ({_count(done, data.min_approvals)}); "
        f"{next_step}.",
        "success" if data.status == "approved" else "info",
        fields + ((("Gateway", data.gateway),) if data.gateway else ()),
    )


def _approval_expired(data: Any, now: datetime) -> _Parts:
    # The request never outlives the VIF's deadline; before that a person can still confirm in the console.
    still = (
        f" It can still be confirmed by hand: {_deadline_clause(data, now)}."
        if data.deadline is not None and data.deadline > now
        else ""
    )
    return _Parts(
        f"Approval request expired: VIF {_label(data)}",
        f"VIF {_who(data)} got no decision in time: its approval request expired at {at(data.expires_at)}"
        f"{_so_far(data, ' with no approval')}.{still}",
        "danger",
        (("Request expired", at(data.expires_at)), *_request_fields(data), *_deadline_fields(data, now)),
    )


def _approval_superseded(data: Any, now: datetime) -> _Parts:
    return _Parts(
        f"Approval no longer needed: VIF {_label(data)}",
        f"VIF {_who(data)} no longer needs an approval: {_sentence(data.why)}{_so_far(data)}.",
        "info",
        (("Why", _sentence(data.why)), *_request_fields(data)),
    )


_RENDERERS: dict[str, Callable[[Any, datetime], _Parts]] = {
    "vif.discovered": _discovered,
    "vif.state_changed": _state_changed,
    "vif.confirmed": _confirmed,
    "vif.rejected": _rejected,
    "vif.approval_requested": _approval_requested,
    "vif.approval_vote": _approval_vote,
    "vif.approval_expired": _approval_expired,
    "vif.approval_superseded": _approval_superseded,
    "vif.expiry_warning": _expiry_warning,
    "vif.expired": _expired,
    "vif.disappeared": _disappeared,
    "vif.reappeared": _reappeared,
    "vif.stuck_pending": _stuck_pending,
    "target.failed": _target_failed,
    "target.recovered": _target_recovered,
}


# --- the answer to a vote, for the message people clicked --------------------------------------

_STATUS_TITLES = {
    "pending": "Approval needed",
    "approved": "Approved",
    "rejected": "Rejected",
    "expired": "Approval request expired",
    "superseded": "Approval no longer needed",
}
_STATUS_SEVERITY: dict[str, Severity] = {
    "pending": "warning",
    "approved": "success",
    "rejected": "warning",
    "expired": "danger",
    "superseded": "info",
}


@dataclass(frozen=True)
class _Where:
    """The VIF as the common fields want it, from a ledger snapshot."""

    vif: dict[str, Any]
    target: str
    region: str | None
    account: str | None


def _instant(value: str | datetime) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def approval_status(
    request: Any, snapshot: dict[str, Any], target: str, region: str | None, now: datetime, *, note: str | None = None
) -> Message:
    """The request as it stands, for replacing the message people answered: title, the VIF, and one progress line.

    `request` is an approvals.model.ApprovalRequest; `note` is a last word from the caller, e.g. that the
    next scheduled cycle carries the decision out. Buttons stay (`decision`) only while it is pending.
    """
    vif = _shown_value({k: v for k, v in snapshot.items() if k != "authKey"})
    # A region name is short (eu-west-2): a long one must not push the target out of its field.
    where = _Where(vif, shown(target), shown(region, 64) if region else None, vif.get("ownerAccount"))
    status = request.status if request.status in _STATUS_TITLES else "pending"
    approvals = tuple(shown(name) for name in request.approvals)
    approvers = _config_names(request.approvers)
    needed = request.min_approvals
    expires_at = _instant(request.expires_at)
    line = _progress(request, status, approvals, needed, expires_at)
    if note:
        line += f" · {_sentence(shown(note))}"
    decision = None
    if status == "pending" and _request_id(request.request_id):
        decision = Decision(
            request_id=request.request_id,
            vif_id=shown(request.vif_id, VIF_ID_MAX),
            approvers=approvers,
            min_approvals=needed,
            gateways=tuple(g for g in request.gateways if _gateway_id(g)),
            expires_at=expires_at,
        )
    done = names(approvals) if approvals else "none"
    fields: tuple[Field, ...] = (("Approvals", f"{done} ({len(approvals)} of {needed})"),)
    if decision is not None:
        fields += decision_fields(decision)
    else:
        fields += (("Request", shown(request.request_id)),)
        if request.gateway:
            fields += (("Gateway", shown(request.gateway)),)
    return Message(
        title=f"{_STATUS_TITLES[status]}: VIF {_label(where)}",
        text=line,
        fields=_vif_fields(where) + fields,
        severity=_STATUS_SEVERITY[status],
        event_type="vif.approval_requested",
        subject=shown(request.vif_id),
        decision=decision,
    )


def _progress(request: Any, status: str, approvals: tuple[str, ...], needed: int, expires_at: datetime) -> str:
    """`Approved by alice (1 of 2) · waiting for 1 more`, `Rejected by bob · deleting it now`, ..."""
    so_far = f"Approved by {names(approvals)} ({len(approvals)} of {needed})" if approvals else ""
    if status == "approved":
        gateway = request.gateway or (request.gateways[0] if len(request.gateways) == 1 else None)
        return f"Approved by {names(approvals)} · confirming " + (f"with {shown(gateway)} now" if gateway else "now")
    if status == "rejected":
        rejecter = next((v.approver for v in request.votes if v.vote == "reject"), None)
        return f"Rejected by {shown(rejecter) if rejecter else 'an approver'} · deleting it now"
    if status == "expired":
        return f"Expired at {at(expires_at)} without a decision" + (f" · {so_far}" if so_far else "")
    if status == "superseded":
        # The trail's last supersede says why: "superseded: its state is now pending".
        outcome = next((e.outcome for e in reversed(request.trail) if e.what == "supersede"), "")
        why = outcome.removeprefix("superseded").lstrip(": ")
        ended = f"No longer needed: {_sentence(shown(why))}" if why else "No longer needed"
        return ended + (f" · {so_far}" if so_far else "")
    if so_far:
        return f"{so_far} · waiting for {max(needed - len(approvals), 1)} more"
    who = names(tuple(shown(a) for a in request.approvers), "or") or "nobody"
    return f"Waiting for {needed} approval{'' if needed == 1 else 's'} from {who}, until {at(expires_at)}"
