"""Generated DirectLink answers through real botocore parsing: one reconcile cycle each, never an unsafe call.

A stub endpoint on 127.0.0.1 speaks the AWS JSON 1.1 protocol (X-Amz-Target, application/x-amz-json-1.1)
and serves, per example, a DescribeVirtualInterfaces and a DescribeVirtualGateways answer built from a
trusted VIF and a gateway by dropping fields, nulling them, giving them odd types (numbers as strings,
lists where objects belong, unicode, huge strings, nested junk), unknown or near-miss states, extra
fields, and duplicate ids. One cycle of the real poller (moto ledger and events queue) runs per
example. It may fail the target; it must not crash, and it must never Confirm or Delete a VIF no
served item shows exactly `confirming`, nor Confirm one the allowlist does not trust, nor Confirm
with a gateway not served as `available`. Examples: VIFGATE_FUZZ_EXAMPLES (default 40).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from chalicelib import reconcile
from chalicelib.config import parse_policy
from chalicelib.ledger import create_table
from chalicelib.log import logger
from chalicelib.runtime import Runtime, Settings
from sandbox import SandboxClock
from sandbox.local import create_queues
from tests.conftest import REGION, TABLE

EXAMPLES = int(os.environ.get("VIFGATE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

ACCOUNT, OTHER_ACCOUNT = "111122223333", "999988887777"
CONNECTION, GATEWAY = "dxcon-trusted1", "vgw-0a1b2c3d"
VLANS = (100, 199)
EVENTS_QUEUE, EVENTS_DLQ = "vifgate-fuzz-events.fifo", "vifgate-fuzz-events-dlq.fifo"
AUTH_KEY = "fuzz-bgp-md5-key-never-logged"


def policy_text(url: str) -> str:
    return f"""\
targets:
  - {{name: fuzz, provider: aws, region: {REGION}, account_id: "{ACCOUNT}", endpoint_url: "{url}"}}
rules:
  - {{name: trust, accounts: ["{ACCOUNT}"], connections: [{CONNECTION}], vlan: {{min: {VLANS[0]}, max: {VLANS[1]}}},
     vif_name: "prod-*", gateway: {GATEWAY}, action: confirm}}
  - {{name: bad, accounts: ["{ACCOUNT}"], vif_name: "bad-*", action: reject}}
default_action: ask
"""


# --- a stub endpoint answering from the current example ------------------------------------------


@dataclass
class Stub:
    vifs: bytes = b'{"virtualInterfaces": []}'
    gateways: bytes = b'{"virtualGateways": []}'
    calls: list[tuple[str, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, operation: str, params: dict) -> tuple[int, bytes]:
        with self.lock:
            self.calls.append((operation, params))
        if operation == "DescribeVirtualInterfaces":
            return 200, self.vifs
        if operation == "DescribeVirtualGateways":
            return 200, self.gateways
        if operation == "ConfirmPrivateVirtualInterface":
            return 200, b'{"virtualInterfaceState": "pending"}'
        if operation == "DeleteVirtualInterface":
            return 200, b'{"virtualInterfaceState": "rejected"}'
        return 400, json.dumps({"__type": "UnknownOperationException", "message": operation}).encode()


def serve(stub: Stub) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            operation = self.headers.get("X-Amz-Target", "").partition(".")[2]
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                params = {}
            status, answer = stub.answer(operation, params if isinstance(params, dict) else {})
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(answer)))
            self.send_header("x-amzn-RequestId", "fuzz")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


@dataclass
class World:
    stub: Stub
    runtime: Runtime


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    stub = Stub()
    server = serve(stub)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("AWS_", "VIFGATE_")):
                mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        with mock_aws():
            create_table(boto3.client("dynamodb"), TABLE)
            create_queues(boto3.client("sqs"), EVENTS_QUEUE, EVENTS_DLQ)
            clock = SandboxClock(datetime(2026, 12, 1, 9, tzinfo=UTC))
            runtime = Runtime(
                Settings(config_source="answers-fuzz", table_name=TABLE, events_queue=EVENTS_QUEUE),
                policy=parse_policy(policy_text(url), "answers-fuzz"),
                clock=clock,
            )
            try:
                yield World(stub, runtime)
            finally:
                server.shutdown()
                server.server_close()


GOOD_GATEWAY = {"virtualGatewayId": GATEWAY, "virtualGatewayState": "available"}
GOOD_GATEWAYS = json.dumps({"virtualGateways": [GOOD_GATEWAY]}).encode()

# --- strategies ------------------------------------------------------------------------------------

TRUSTED = {
    "virtualInterfaceId": "dxvif-fuzz0001",
    "virtualInterfaceState": "confirming",
    "ownerAccount": ACCOUNT,
    "connectionId": CONNECTION,
    "virtualInterfaceName": "prod-app",
    "virtualInterfaceType": "private",
    "vlan": 150,
    "asn": 65001,
    "authKey": AUTH_KEY,
    "location": "PAR1",
    "virtualGatewayId": None,
    "amazonAddress": None,
    "customerAddress": None,
    "bgpPeers": None,
    "routeFilterPrefixes": None,
}
STATES = [
    "confirming",
    "pending",
    "available",
    "verifying",
    "down",
    "testing",
    "unknown",
    "expired",
    "rejected",
    "deleting",
    "deleted",
    "Confirming",
    "CONFIRMING",
    "confirming ",
    " confirming",
    "confirming\u0000",
    "confirm",
    "confirmíng",
    "",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["150", "65001", ACCOUNT, CONNECTION, "prod-x", "1e3", "true", "null", "confirming"]),
    st.integers(1000, 5000).map(lambda n: "x" * n),  # a huge string
)
junk = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8
)
ids = st.one_of(
    st.sampled_from(["dxvif-fuzz0001", "dxvif-fuzz0002", "dxvif-fuzz0003"]),  # few: duplicates are common
    st.text(max_size=20),
    junk,
)
odd_values = {
    "virtualInterfaceId": ids,
    "virtualInterfaceState": st.sampled_from(STATES) | junk,
    "ownerAccount": st.sampled_from([ACCOUNT, OTHER_ACCOUNT, int(ACCOUNT), " " + ACCOUNT, ACCOUNT + "0"]) | junk,
    "connectionId": st.sampled_from([CONNECTION, "dxcon-other001", CONNECTION.upper(), [CONNECTION]]) | junk,
    "virtualInterfaceName": st.sampled_from(["prod-db", "bad-lab", "Prod-app", "prod", "bad-", "prod-\u202e"]) | junk,
    "vlan": st.sampled_from([99, 100, 199, 200, "150", 150.0, True, [150], {"v": 150}]) | st.integers() | junk,
    "asn": st.sampled_from([65001, "65001", None]) | junk,
    "asnLong": st.sampled_from([65001, 4200000000, "65001"]) | junk,
    "virtualGatewayId": st.sampled_from([GATEWAY, "vgw-other000"]) | junk,
    "authKey": junk,
}


@st.composite
def vif_items(draw) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(junk)  # not an object at all
    item = dict(TRUSTED)
    if draw(st.booleans()):
        item["virtualInterfaceName"] = draw(st.sampled_from(["prod-app", "bad-lab"]))
    plain = draw(st.integers(0, 2)) == 0  # a third stay as served by a sane endpoint: the calls get reached
    for name in [] if plain else draw(st.lists(st.sampled_from(sorted(odd_values)), max_size=3, unique=True)):
        how = draw(st.integers(0, 3))
        if how == 0:
            item.pop(name, None)
        elif how == 1:
            item[name] = None
        else:
            item[name] = draw(odd_values[name])
    if not plain:
        item.update(draw(st.dictionaries(st.text(max_size=12), junk, max_size=3)))  # extra fields, even odd keys
    return item


@st.composite
def vif_answers(draw) -> bytes:
    items = draw(st.lists(vif_items(), max_size=6))
    if items and draw(st.booleans()):  # the same id twice, in another state
        twin = items[0] if isinstance(items[0], dict) else dict(TRUSTED)
        items.append(dict(twin, virtualInterfaceState=draw(st.sampled_from(STATES))))
    kind = draw(st.integers(0, 9))
    document: Any = {"virtualInterfaces": items}
    if kind == 7:
        document = {"virtualInterfaces": items, "nextToken": draw(junk)}
    elif kind == 8:
        document = draw(junk)
    elif kind == 9:
        document = {"virtualInterfaces": draw(junk)}
    return json.dumps(document).encode()


@st.composite
def gateway_answers(draw) -> bytes:
    good = GOOD_GATEWAY
    items: list[Any] = [dict(GOOD_GATEWAY)] if draw(st.booleans()) else []  # often usable: confirms get reached
    for _ in range(draw(st.integers(0, 3))):
        item: Any = dict(good)
        how = draw(st.integers(0, 4))
        if how == 1:
            item["virtualGatewayState"] = draw(
                st.sampled_from(["pending", "Available", "available ", "deleted"]) | junk
            )
        elif how == 2:
            item["virtualGatewayId"] = draw(st.sampled_from(["vgw-other000", GATEWAY.upper()]) | junk)
        elif how == 3:
            item = draw(junk)
        elif how == 4:
            item.update(draw(st.dictionaries(st.text(max_size=8), junk, max_size=2)))
        items.append(item)
    if draw(st.integers(0, 9)) == 0:
        return json.dumps(draw(junk)).encode()
    return json.dumps({"virtualGateways": items}).encode()


# --- the property ----------------------------------------------------------------------------------


def served_items(body: bytes) -> list[dict]:
    try:
        document = json.loads(body)
    except ValueError:
        return []
    items = document.get("virtualInterfaces") if isinstance(document, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def confirmable(item: dict, vif_id: str) -> bool:
    """Necessary for a confirm: the served item says exactly this about itself."""
    vlan = item.get("vlan")
    name = item.get("virtualInterfaceName")
    return (
        item.get("virtualInterfaceId") == vif_id
        and item.get("virtualInterfaceState") == "confirming"
        and item.get("ownerAccount") == ACCOUNT
        and item.get("connectionId") == CONNECTION
        and type(vlan) is int
        and VLANS[0] <= vlan <= VLANS[1]
        and isinstance(name, str)
        and fnmatchcase(name, "prod-*")
    )


def deletable(item: dict, vif_id: str) -> bool:
    name = item.get("virtualInterfaceName")
    return (
        item.get("virtualInterfaceId") == vif_id
        and item.get("virtualInterfaceState") == "confirming"
        and item.get("ownerAccount") == ACCOUNT
        and isinstance(name, str)
        and fnmatchcase(name, "bad-*")
    )


def available_gateway_served(body: bytes, gateway: str) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    items = document.get("virtualGateways") if isinstance(document, dict) else None
    return isinstance(items, list) and any(
        isinstance(g, dict) and g.get("virtualGatewayId") == gateway and g.get("virtualGatewayState") == "available"
        for g in items
    )


def test_no_answer_makes_the_poller_crash_or_act_on_a_vif_it_must_not(world, capsys):
    logger.setLevel("CRITICAL")  # odd items are logged by design; thousands of lines tell nothing here
    reached: Counter[str] = Counter()  # examples that made each call: shown with -s, so a reader sees it is not vacuous

    @FUZZ
    @given(vifs=vif_answers(), gateways=gateway_answers())
    @example(vifs=json.dumps({"virtualInterfaces": [TRUSTED]}).encode(), gateways=GOOD_GATEWAYS)
    def run(vifs, gateways):
        stub = world.stub
        # Fresh ids per example: the ledger remembers what earlier examples confirmed (and then claims refuse).
        reached["examples"] += 1
        vifs = vifs.replace(b"dxvif-fuzz", f"dxvif-{reached['examples']:04x}".encode())
        stub.vifs, stub.gateways = vifs, gateways
        with stub.lock:
            stub.calls.clear()
        report = reconcile.run_cycle(world.runtime, budget_seconds=30)  # a target error is fine; an exception is not
        assert {f.code for f in report.failures} <= KNOWN_FAILURES, report.failures
        served = served_items(vifs)
        for operation, params in list(stub.calls):
            vif_id = params.get("virtualInterfaceId")
            if operation == "ConfirmPrivateVirtualInterface":
                assert any(confirmable(i, vif_id) for i in served), (vif_id, vifs[:2000])
                assert params.get("virtualGatewayId") == GATEWAY
                assert available_gateway_served(gateways, GATEWAY), gateways[:500]
            elif operation == "DeleteVirtualInterface":
                assert any(deletable(i, vif_id) for i in served), (vif_id, vifs[:2000])
            else:
                assert operation in ("DescribeVirtualInterfaces", "DescribeVirtualGateways"), operation
        assert AUTH_KEY not in json.dumps(report.summary())
        for action in report.counts():
            reached[action] += 1
        for operation in {op for op, _ in stub.calls}:
            reached[operation] += 1

    run()
    assert AUTH_KEY not in capsys.readouterr().err
    with capsys.disabled():
        print(f"\nanswers fuzz: {dict(reached)}")


# A failed target names what went wrong; anything else (a bug) is reported under its exception type.
KNOWN_FAILURES = {"MalformedAnswer", "PaginationLoop", "TooManyPages", "DirectConnectClientException"}


def test_a_plain_trusted_vif_is_confirmed_so_the_property_is_not_vacuous(world):
    """The same stub and cycle do confirm a trusted VIF, and delete one the reject rule names."""
    stub = world.stub
    trusted = dict(TRUSTED, virtualInterfaceId="dxvif-plain001")
    rejected = dict(TRUSTED, virtualInterfaceId="dxvif-plain002", virtualInterfaceName="bad-lab")
    stub.vifs = json.dumps({"virtualInterfaces": [trusted, rejected]}).encode()
    stub.gateways = json.dumps(
        {"virtualGateways": [{"virtualGatewayId": GATEWAY, "virtualGatewayState": "available"}]}
    ).encode()
    stub.calls.clear()
    report = reconcile.run_cycle(world.runtime, budget_seconds=30)
    assert report.ok, report.failures
    calls = [(op, p.get("virtualInterfaceId")) for op, p in stub.calls]
    assert ("ConfirmPrivateVirtualInterface", "dxvif-plain001") in calls
    assert ("DeleteVirtualInterface", "dxvif-plain002") in calls
