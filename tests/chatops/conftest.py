"""A scripted HTTP receiver on 127.0.0.1, and events built the way the poller builds them."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chalicelib import events
from chalicelib.models import VirtualInterface

NOW = datetime(2026, 11, 24, 4, 30, tzinfo=UTC)
FIRST_SEEN = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)  # 4d 4h 30m after NOW
AUTH_KEY = "bgp-md5-0xDEADBEEF-never-shown"

RAW_VIF = {
    "virtualInterfaceId": "dxvif-fgh12345", "virtualInterfaceName": "prod-par-1", "vlan": 120, "asn": 65000,
    "connectionId": "dxcon-fg5678gh", "location": "PAR1", "ownerAccount": "111122223333",
    "virtualInterfaceState": "confirming", "virtualInterfaceType": "private", "virtualGatewayId": "vgw-12345678",
    "authKey": AUTH_KEY,
}


def vif_event(type_name: str, vif: dict | None = None, *, time_: datetime = NOW, **data) -> events._Envelope:
    """A vif.* event whose data comes from events.vif_fields, as the poller's does."""
    parsed = VirtualInterface.model_validate({**RAW_VIF, **(vif or {})})
    common = events.vif_fields("osc-par", parsed, {}, "eu-west-2")
    return events.build(type_name, target="osc-par", subject=parsed.id, time=time_, **common, **data)


def target_event(type_name: str, **data) -> events._Envelope:
    return events.build(type_name, target="osc-par", subject="osc-par", time=NOW, region="eu-west-2", **data)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    path: str
    headers: HTTPMessage  # case-insensitive, as HTTP headers are
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out has hung up: the late answer's broken pipe is expected


class Receiver:
    """Records every POST; answers from a script, then with `default` once the script runs out."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: deque[Answer] = deque()
        self.default = Answer()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(Request(self.path, self.headers, body))
                answer = receiver.script.popleft() if receiver.script else receiver.default
                time.sleep(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def answer(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def bodies(self) -> str:
        return "\n".join(r.body.decode() for r in self.requests)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib and slack_sdk honour proxy variables; the tests talk to 127.0.0.1 directly."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
