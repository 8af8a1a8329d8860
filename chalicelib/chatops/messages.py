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

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from ..events import CloudEvent

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


@dataclass(frozen=True)
class Action:
    """A link a person follows from the message, e.g. a signed approve or reject URL."""

    label: str
    style: Literal["default", "primary", "danger"]
    url: str


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
    return Message(
        title=parts.title,
        text=parts.text,
        fields=common + parts.fields,
        severity=parts.severity,
        event_type=event.type,
        subject=shown(event.subject),
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


def _shown_value(value: Any) -> Any:
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {key: _shown_value(item) for key, item in value.items()}
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


def _by(data: Any) -> str:
    """Who decided: `rule partner-prod`, `the default action`, or the approver."""
    if data.by == "rule":
        return f"rule {data.rule}" if data.rule else "a rule"
    if data.by == "approver":
        return data.approver or "an approver"
    return "the default action"


def _deciders(data: Any) -> tuple[Field, ...]:
    pairs = (("Rule", getattr(data, "rule", None)), ("Approver", getattr(data, "approver", None)))
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
    return _Parts(
        f"VIF rejected: {_label(data)}",
        f"VIF {_who(data)} was rejected by {_by(data)}: {_sentence(data.reason)}.",
        "warning",
        fields,
    )


def _approval_requested(data: Any, now: datetime) -> _Parts:
    fields = (("Reason", _sentence(data.reason)), *_deciders(data))
    return _Parts(
        f"Approval needed: VIF {_label(data)}",
        f"VIF {_who(data)} waits for confirmation: {_sentence(data.reason)}. {_capital(_deadline_clause(data, now))}.",
        "warning",
        fields + _deadline_fields(data, now),
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


_RENDERERS: dict[str, Callable[[Any, datetime], _Parts]] = {
    "vif.discovered": _discovered,
    "vif.state_changed": _state_changed,
    "vif.confirmed": _confirmed,
    "vif.rejected": _rejected,
    "vif.approval_requested": _approval_requested,
    "vif.expiry_warning": _expiry_warning,
    "vif.expired": _expired,
    "vif.disappeared": _disappeared,
    "vif.reappeared": _reappeared,
    "vif.stuck_pending": _stuck_pending,
    "target.failed": _target_failed,
    "target.recovered": _target_recovered,
}
