"""Events built the way the poller builds them, and the scripted HTTP receiver they are sent to."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest

from chalicelib import events
from chalicelib.models import VirtualInterface
from tests.http_receiver import Answer, Receiver, Request  # noqa: F401  (the tests import them from here)

NOW = datetime(2026, 11, 24, 4, 30, tzinfo=UTC)
FIRST_SEEN = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)  # 4d 4h 30m after NOW
AUTH_KEY = "bgp-md5-0xDEADBEEF-never-shown"

RAW_VIF = {
    "virtualInterfaceId": "dxvif-fgh12345",
    "virtualInterfaceName": "prod-par-1",
    "vlan": 120,
    "asn": 65000,
    "connectionId": "dxcon-fg5678gh",
    "location": "PAR1",
    "ownerAccount": "111122223333",
    "virtualInterfaceState": "confirming",
    "virtualInterfaceType": "private",
    "virtualGatewayId": "vgw-12345678",
    "authKey": AUTH_KEY,
}


def vif_event(type_name: str, vif: dict | None = None, *, time_: datetime = NOW, **data) -> events._Envelope:
    """A vif.* event whose data comes from events.vif_fields, as the poller's does."""
    parsed = VirtualInterface.model_validate({**RAW_VIF, **(vif or {})})
    common = events.vif_fields("osc-par", parsed, {}, "eu-west-2")
    return events.build(type_name, target="osc-par", subject=parsed.id, time=time_, **common, **data)


def teams_facts(card: dict) -> list[tuple[str, str]]:
    """The (label, value) rows of a Teams card, read back from their literal TextRuns."""
    rows = [b for b in card["body"] if b["type"] == "ColumnSet"]
    return [tuple(col["items"][0]["inlines"][0]["text"] for col in row["columns"]) for row in rows]


def target_event(type_name: str, **data) -> events._Envelope:
    return events.build(type_name, target="osc-par", subject="osc-par", time=NOW, region="eu-west-2", **data)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib and slack_sdk honour proxy variables; the tests talk to 127.0.0.1 directly."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
