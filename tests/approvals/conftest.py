"""Fixtures the approvals tests share: a signing key, a clock-free request factory, a moto-backed ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest

from chalicelib.approvals import model
from chalicelib.ledger import OUTBOX, Ledger, VifRecord
from tests.conftest import TABLE

SIGNING_KEY = "k" * 16 + "0123456789abcdef-test-only"  # 42 characters: long enough for tokens.WeakKey
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def make_request(
    *,
    approvers: tuple[str, ...] = ("alice", "bob", "carol"),
    min_approvals: int = 1,
    gateways: tuple[str, ...] = ("vgw-11111111",),
    now: datetime = T0,
    deadline: datetime | None = None,
    target: str = "osc-prod",
    vif_id: str = "dxvif-ffab0001",
) -> model.ApprovalRequest:
    """A pending request created at `now`; its deadline defaults to two days later."""
    deadline = deadline or now + timedelta(days=2)
    return model.new_request(
        target=target,
        vif_id=vif_id,
        spell=model._iso(now),
        now=now,
        deadline=model._iso(deadline),
        gateways=gateways,
        approvers=approvers,
        min_approvals=min_approvals,
        rule="partner-ask",
    )


def make_record(request: model.ApprovalRequest, *, state: str = "confirming", **fields) -> VifRecord:
    """The VIF record an approval request belongs to, as the cycle would have saved it."""
    values = {
        "target": request.target,
        "vif_id": request.vif_id,
        "first_seen_at": request.created_at,
        "state": state,
        "state_since": request.created_at,
        "deadline": request.expires_at,
        "deadline_certain": True,
        "last_decision": "ask",
        "approval_requested_at": request.created_at,
        "seen_since": request.created_at,
        "snapshot": {
            "virtualInterfaceId": request.vif_id,
            "virtualInterfaceName": "partner-prod-120",
            "ownerAccount": "111122223333",
            "connectionId": "dxcon-ffab0001",
            "vlan": 120,
            "asn": 65010,
            "virtualInterfaceState": state,
        },
    } | fields
    return VifRecord(**values)


def raw_items() -> list[dict]:
    """Every item of the ledger table, sorted: a refused write must leave this exactly as it was."""
    items = boto3.client("dynamodb").scan(TableName=TABLE, ConsistentRead=True)["Items"]
    return sorted(items, key=lambda i: (i["target"]["S"], i["vif_id"]["S"]))


def outbox_items() -> list[dict]:
    return [i for i in raw_items() if i["target"]["S"] == OUTBOX]


@pytest.fixture
def signing_key() -> str:
    return SIGNING_KEY


@pytest.fixture
def ledger(aws) -> Ledger:
    """The provisioned moto table behind a Ledger."""
    return Ledger(boto3.client("dynamodb"), TABLE)
