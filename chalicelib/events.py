"""The queue's contract: one CloudEvents 1.0 envelope per state transition, one model per type.

`vifgate schema` prints the JSON Schema of every type (docs/events.schema.json holds a copy).
Event ids are derived from what happened, so the same transition seen by two pollers, or sent
twice, carries the same id and SQS FIFO deduplication drops the copy.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from .models import VirtualInterface

SPEC_VERSION = "1.0"
SOURCE_PREFIX = "/vif-gatekeeper"


class _Model(BaseModel):
    # Validators are built on a model's first use, not at import: an idle poll cycle builds no event,
    # and the poll function's cold start skips the ~30 models (see bench/coldstart.py).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)


class VifData(_Model):
    """What every vif.* event carries: where, whose, and the VIF as last seen (no authKey)."""

    target: str
    account: str | None = Field(description="the VIF's ownerAccount")
    region: str | None
    vif: dict[str, Any] = Field(description="DescribeVirtualInterfaces fields of the VIF, authKey removed")


class DeadlineFields(_Model):
    deadline: datetime | None = Field(description="first seen in confirming + 7 days")
    deadline_certain: bool = Field(description="false when the VIF was already waiting at the first poll")
    first_seen_at: datetime


class Discovered(VifData):
    state: str


class StateChanged(VifData):
    from_state: str = Field(alias="from")
    to_state: str = Field(alias="to")


Channel = Literal["slack", "mattermost", "link", "cli"]


class Decided(_Model):
    """Who decided, when people did: the approvers' config names, in voting order, and where they voted."""

    approver: str | None = Field(default=None, description="the approvers' names joined by ', ' (by = approver)")
    approvers: list[str] = Field(default_factory=list, description="config names of the approvers, in voting order")
    channel: Channel | None = Field(default=None, description="where the deciding vote was cast")
    request_id: str | None = Field(default=None, description="the approval request carried out")


class Confirmed(VifData, Decided):
    by: Literal["rule", "approver"]
    rule: str | None = None
    gateway: str


class Rejected(VifData, Decided):
    by: Literal["rule", "default_action", "approver"]
    rule: str | None = None
    reason: str


class ApprovalRequested(VifData, DeadlineFields):
    reason: str
    rule: str | None = None
    # Absent when nobody may approve from chat (no approvers configured): the ask is notify-only.
    request_id: str | None = Field(default=None, description="the approval request people answer")
    approvers: list[str] = Field(default_factory=list, description="config names of who may decide")
    min_approvals: int | None = Field(default=None, description="distinct approvals needed to confirm")
    gateways: list[str] = Field(default_factory=list, description="the gateways an approver may choose from")
    expires_at: datetime | None = Field(default=None, description="when the request lapses (never after the deadline)")


class ApprovalData(VifData):
    request_id: str
    approvals: list[str] = Field(description="config names of who approved so far")
    min_approvals: int
    status: Literal["pending", "approved", "rejected", "expired", "superseded"] = Field(
        description="the request's status after this event"
    )


class ApprovalVote(ApprovalData):
    approver: str = Field(description="config name of who voted")
    user_id: str | None = Field(description="the chat user id behind the vote (Slack or Mattermost), if any")
    channel: Channel
    vote: Literal["approve", "reject"]
    gateway: str | None = Field(description="the gateway chosen with an approve")


class ApprovalExpired(ApprovalData, DeadlineFields):
    expires_at: datetime


class ApprovalSuperseded(ApprovalData):
    why: str = Field(description="how the VIF left the request's hands, e.g. its state is now pending")


class ExpiryWarning(VifData, DeadlineFields):
    threshold_hours: float = Field(description="the configured alert this warning answers, e.g. 24")
    hours_left: float


class Expired(VifData, DeadlineFields):
    how: Literal["state", "disappeared"] = Field(
        description=(
            "state: the cloud reports `expired` (OUTSCALE); disappeared: no longer listed while confirming (AWS)"
        )
    )


class Disappeared(VifData):
    last_state: str


class Reappeared(VifData):
    state: str
    last_state: str = Field(description="the state recorded before it went missing")
    gone_at: datetime = Field(description="when vif.disappeared was sent")


class StuckPending(VifData):
    confirmed_at: datetime
    pending_minutes: float


class TargetData(_Model):
    target: str
    region: str | None


class TargetFailed(TargetData):
    code: str
    message: str


class TargetRecovered(TargetData):
    failed_since: datetime


DATA_TYPES: dict[str, type[_Model]] = {
    "vif.discovered": Discovered,
    "vif.state_changed": StateChanged,
    "vif.confirmed": Confirmed,
    "vif.rejected": Rejected,
    "vif.approval_requested": ApprovalRequested,
    "vif.approval_vote": ApprovalVote,
    "vif.approval_expired": ApprovalExpired,
    "vif.approval_superseded": ApprovalSuperseded,
    "vif.expiry_warning": ExpiryWarning,
    "vif.expired": Expired,
    "vif.disappeared": Disappeared,
    "vif.reappeared": Reappeared,
    "vif.stuck_pending": StuckPending,
    "target.failed": TargetFailed,
    "target.recovered": TargetRecovered,
}
EVENT_TYPES = tuple(DATA_TYPES)


class _Envelope(_Model):
    """The CloudEvents attributes every type shares; each type narrows `type` and `data`."""

    specversion: Literal["1.0"] = "1.0"
    type: str
    id: str = Field(min_length=16, description="deterministic: the same transition always has the same id")
    source: str = Field(description="URI-reference: /vif-gatekeeper/<target>")
    time: datetime
    subject: str = Field(description="the VIF id, or the target name for target.* events")
    datacontenttype: Literal["application/json"] = "application/json"
    data: Any


def _envelope(type_name: str, data_type: type[_Model]) -> type[_Envelope]:
    name = "".join(part.title() for part in type_name.replace("_", ".").split(".")) + "Event"
    return create_model(
        name,
        __base__=_Envelope,
        __doc__=f"CloudEvent of type {type_name}",
        type=(cast(Any, Literal[type_name]), ...),
        data=(data_type, ...),
    )


@cache
def envelopes() -> dict[str, type[_Envelope]]:
    """One envelope model per event type, made on first need."""
    return {name: _envelope(name, data) for name, data in DATA_TYPES.items()}


@cache
def _union() -> Any:
    """Every envelope, discriminated on `type`."""
    return Annotated[Union[tuple(envelopes().values())], Field(discriminator="type")]  # noqa: UP007


@cache
def _adapter() -> TypeAdapter:
    """Parses any event and gives the JSON Schema of them all."""
    return TypeAdapter(_union())


if TYPE_CHECKING:  # the union is built from DATA_TYPES on first need; to a type checker it is an envelope
    type CloudEvent = _Envelope
    ENVELOPES: dict[str, type[_Envelope]]


def __getattr__(name: str) -> Any:
    """`CloudEvent` (the union) and `ENVELOPES`, built when first asked for (PEP 562)."""
    if name == "ENVELOPES":
        return envelopes()
    if name == "CloudEvent":
        return _union()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def event_id(type_name: str, subject: str, *facts: object) -> str:
    """Same transition, same id: a hash of the type, the subject and what distinguishes it."""
    text = "|".join([type_name, subject, *map(str, facts)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def build(type_name: str, *, target: str, subject: str, time: datetime, facts: tuple = (), **data: Any) -> _Envelope:
    """A validated event; `facts` are what makes this transition unique beside type and subject."""
    envelope = envelopes()[type_name]
    return envelope(
        id=event_id(type_name, target, subject, *facts),
        source=f"{SOURCE_PREFIX}/{target}",
        time=time,
        subject=subject,
        type=type_name,
        data={"target": target, **data},
    )


def vif_fields(target: str, vif: VirtualInterface | None, snapshot: dict[str, Any], region: str | None) -> dict:
    """The common data of vif.* events, from the live VIF or, when it is gone, its last snapshot."""
    current = vif.snapshot() if vif is not None else dict(snapshot)
    current.pop("authKey", None)  # a snapshot never has it; this keeps it so if one ever did
    return {"account": current.get("ownerAccount"), "region": region, "vif": current}


def parse(body: str | bytes | dict) -> _Envelope:
    """An event from the queue; ValidationError names the bad field."""
    if isinstance(body, dict):
        return _adapter().validate_python(body)
    return _adapter().validate_json(body)


def to_json(event: _Envelope) -> str:
    return event.model_dump_json(by_alias=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every event type (a discriminated union on `type`)."""
    schema = _adapter().json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "VIF Gatekeeper events (CloudEvents 1.0)"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
