"""Sample events of every kind, and sending them to one destination (`vifgate notify-test DESTINATION`).

The samples are built with the same builder as the poller's events, so they render exactly as real
ones do; their data is plainly fake (account 111111111111, target `sample-target`, VIF `sample-vif`,
request ids of zeros) so nobody in the room mistakes them for a VIF to act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from .. import events
from ..events import CloudEvent
from ..models import VirtualInterface
from .notifier import DeliveryError

SAMPLE_ACCOUNT = "111111111111"
SAMPLE_TARGET = "sample-target"
SAMPLE_REGION = "eu-west-2"
SAMPLE_RULE = "sample-rule"
SAMPLE_GATEWAY = "vgw-00000000"
SAMPLE_REQUEST = "apr-00000000000000000000"  # the shape the messages accept; no such request exists
SAMPLE_APPROVERS = ["sample-alice", "sample-bob"]

_VIF = {
    "virtualInterfaceId": "dxvif-00000000",
    "virtualInterfaceName": "sample-vif",
    "vlan": 100,
    "asn": 65000,
    "connectionId": "dxcon-00000000",
    "location": "SAMPLE1",
    "ownerAccount": SAMPLE_ACCOUNT,
    "virtualInterfaceState": "confirming",
    "virtualInterfaceType": "private",
}


class UnknownDestination(ValueError):
    """The destination named is not in the policy's chat section; the text lists the ones that are."""


@dataclass(frozen=True)
class SampleResult:
    """One sample's fate: sent, or the delivery error's text (never a secret: DeliveryError's contract)."""

    event_type: str
    subscribed: bool  # the destination's `events` globs take this kind (real events of other kinds never go there)
    sent: bool
    error: str | None = None


def sample_events(now: datetime | None = None) -> list[CloudEvent]:
    """One event of every type the chat messages render, in events.EVENT_TYPES order."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    first_seen = now - timedelta(days=6, hours=1)  # 23 h left: under the sample 24 h expiry warning
    deadline = first_seen + timedelta(days=7)
    dates = {"deadline": deadline, "deadline_certain": True, "first_seen_at": first_seen}
    request = {"request_id": SAMPLE_REQUEST, "min_approvals": 2}
    by_type: dict[str, dict[str, Any]] = {
        "vif.discovered": {"state": "confirming"},
        "vif.state_changed": {"from": "pending", "to": "available", "vif": {"virtualInterfaceState": "available"}},
        "vif.confirmed": {
            "by": "rule",
            "rule": SAMPLE_RULE,
            "gateway": SAMPLE_GATEWAY,
            "vif": {"virtualInterfaceState": "pending", "virtualGatewayId": SAMPLE_GATEWAY},
        },
        "vif.rejected": {
            "by": "rule",
            "rule": SAMPLE_RULE,
            "reason": f"vlan 100 is on connection dxcon-00000000, which rule {SAMPLE_RULE} rejects",
            "vif": {"virtualInterfaceState": "deleted"},
        },
        "vif.approval_requested": {
            "reason": f"account {SAMPLE_ACCOUNT} matches no confirm rule; default_action is ask",
            "approvers": SAMPLE_APPROVERS,
            "gateways": [SAMPLE_GATEWAY],
            "expires_at": deadline - timedelta(hours=1),
            **request,
            **dates,
        },
        "vif.approval_vote": {
            "approvals": SAMPLE_APPROVERS[:1],
            "status": "pending",
            "approver": SAMPLE_APPROVERS[0],
            "user_id": None,
            "channel": "link",
            "vote": "approve",
            "gateway": SAMPLE_GATEWAY,
            **request,
        },
        "vif.approval_expired": {
            "approvals": [],
            "status": "expired",
            "expires_at": now - timedelta(minutes=5),
            **request,
            **dates,
        },
        "vif.approval_superseded": {
            "approvals": SAMPLE_APPROVERS[:1],
            "status": "superseded",
            "why": "its state is now pending (confirmed outside VIF Gatekeeper)",
            **request,
        },
        "vif.expiry_warning": {
            "threshold_hours": 24,
            "hours_left": round((deadline - now).total_seconds() / 3600, 2),
            **dates,
        },
        "vif.expired": {"how": "state", "vif": {"virtualInterfaceState": "expired"}, **dates},
        "vif.disappeared": {"last_state": "available"},
        "vif.reappeared": {"state": "available", "last_state": "available", "gone_at": now - timedelta(hours=2)},
        "vif.stuck_pending": {"confirmed_at": now - timedelta(hours=3), "pending_minutes": 180},
        "target.failed": {"code": "AuthFailure", "message": "sample: the access key was refused (not a real failure)"},
        "target.recovered": {"failed_since": now - timedelta(minutes=42)},
    }
    missing = set(events.EVENT_TYPES) - set(by_type)
    if missing:  # a new event type needs a sample here, or notify-test would silently skip it
        raise RuntimeError(f"no sample for event types: {', '.join(sorted(missing))}")
    return [_build(type_name, by_type[type_name], now) for type_name in events.EVENT_TYPES]


def _build(type_name: str, data: dict[str, Any], now: datetime) -> CloudEvent:
    if type_name.startswith("target."):
        return events.build(
            type_name, target=SAMPLE_TARGET, subject=SAMPLE_TARGET, time=now, region=SAMPLE_REGION, **data
        )
    data = dict(data)
    vif = VirtualInterface.model_validate({**_VIF, **data.pop("vif", {})})
    common = events.vif_fields(SAMPLE_TARGET, vif, {}, SAMPLE_REGION)
    return events.build(type_name, target=SAMPLE_TARGET, subject=vif.id, time=now, **common, **data)


def send_samples(runtime, destination_name: str) -> list[SampleResult]:
    """Send one sample of every event kind to the configured destination `destination_name`.

    Every kind is sent, also those the destination's `events` filter leaves out (`subscribed` says
    which), so people see every format. A failed post is reported in its result and the next sample
    is still tried. Raises UnknownDestination (listing the configured names) for an unknown name,
    and ConfigError when the policy is invalid. The ledger is not touched: samples are never
    marked delivered and no approval request is created.
    """
    notifier = runtime.notifier
    by_name = {d.name: d for d in notifier.destinations}
    destination = by_name.get(destination_name)
    if destination is None:
        configured = ", ".join(sorted(by_name)) or "none (the policy has no chat.destinations)"
        shown = repr(destination_name[:64])
        raise UnknownDestination(f"no chat destination named {shown} in the policy; configured: {configured}")
    results = []
    for event in sample_events(runtime.clock()):
        subscribed = any(fnmatchcase(event.type, glob) for glob in destination.events)
        try:
            notifier.send(event, destination)
        except DeliveryError as error:
            results.append(SampleResult(event.type, subscribed, False, str(error)))
            continue
        results.append(SampleResult(event.type, subscribed, True))
    return results
