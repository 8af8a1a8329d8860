"""The DirectLink sandbox over real HTTP: boto3, the AWS CLI and raw signed requests against it."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.request import Request

import pytest
from botocore.exceptions import ClientError

from sandbox import ApiError, DirectLinkSandbox, Faults, SandboxClock

from .conftest import CUSTOMER, JSON_11, PARTNER, REGION, START, STRANGER, Account, World, admin, raw_call, send

SEVEN_DAYS = timedelta(days=7)


def ids(answer: dict[str, Any]) -> list[str]:
    return [vif["virtualInterfaceId"] for vif in answer["virtualInterfaces"]]


def state_of(world: World, account: Account, vif_id: str) -> str:
    (vif,) = world.client(account).describe_virtual_interfaces(virtualInterfaceId=vif_id)["virtualInterfaces"]
    return vif["virtualInterfaceState"]


def client_error(call: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """Run a boto3 call that must fail; returns botocore's parsed error response."""
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return raised.value.response


# ---- protocol -----------------------------------------------------------------------------------


def test_boto3_speaks_json_1_1_with_overture_target_and_sigv4(world: World) -> None:
    # botocore's model lists smithy-rpc-v2-cbor first; the sandbox (and OUTSCALE) only speak JSON 1.1.
    world.client(CUSTOMER).describe_virtual_interfaces()

    headers = world.sb.last_request_headers
    assert headers["content-type"] == JSON_11
    assert headers["x-amz-target"] == "OvertureService.DescribeVirtualInterfaces"
    scope = f"{headers['x-amz-date'][:8]}/{REGION}/directconnect/aws4_request"
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={CUSTOMER.access_key}/{scope}, ")
    assert "Signature=" in headers["authorization"]
    assert world.sb.calls == [("DescribeVirtualInterfaces", CUSTOMER.account_id)]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code", "message_part"),
    [
        ({"content_type": "application/json"}, 400, "SerializationException", "Content-Type"),
        ({"target": "OvertureService.DescribeEverything"}, 400, "UnknownOperationException", "DescribeEverything"),
        ({"body": b"{not json"}, 400, "SerializationException", "not valid JSON"),
        ({"body": b"[1, 2]"}, 400, "SerializationException", "JSON object"),
        ({"method": "GET"}, 405, "MethodNotAllowed", "POST"),
        ({"path": "/DescribeVirtualInterfaces"}, 404, "NotFound", "/DescribeVirtualInterfaces"),
    ],
)
def test_malformed_requests_get_aws_json_errors(
    world: World, request_kwargs: dict[str, Any], status: int, code: str, message_part: str
) -> None:
    kwargs = {"body": {}, "target": "OvertureService.DescribeVirtualInterfaces"} | request_kwargs
    answer = raw_call(world.sb.url, kwargs.pop("body"), **kwargs)

    assert (answer.status, answer.body["__type"]) == (status, code)
    assert message_part in answer.body["message"]
    assert answer.headers["x-amzn-errortype"] == code
    assert answer.headers["x-amzn-requestid"]


def test_success_carries_request_id_in_body_and_header(world: World) -> None:
    answer = raw_call(world.sb.url, {}, target="OvertureService.DescribeLocations")

    assert answer.status == 200
    assert answer.body["locations"] == [{"locationCode": "PAR1", "locationName": "Equinix PA3, Paris"}]
    assert answer.body["requestId"] == answer.headers["x-amzn-requestid"]


def test_server_binds_loopback_only(world: World) -> None:
    assert world.sb.url.startswith("http://127.0.0.1:")
    host, port = world.sb.server_address
    assert host == "127.0.0.1"
    assert world.sb.url == f"http://127.0.0.1:{port}"
    assert port != 0


def test_stop_frees_the_port_and_context_manager_serves() -> None:
    with DirectLinkSandbox() as sb:
        _, port = sb.server_address
        assert admin(sb.url, "/_sandbox/health").body["ok"] is True
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


# ---- auth ---------------------------------------------------------------------------------------


def test_unknown_access_key_is_unrecognized(world: World) -> None:
    intruder = Account("000000000000", "AKIDUNKNOWN000000000", "whatever-secret-123")
    error = client_error(world.client(intruder).describe_virtual_interfaces)

    assert error["Error"]["Code"] == "UnrecognizedClientException"
    assert error["Error"]["Message"] == "The security token included in the request is invalid."
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert world.sb.calls == []


def test_wrong_secret_fails_the_signature_and_never_echoes_a_secret(world: World) -> None:
    forger = CUSTOMER._replace(secret_key="forged-secret-0123456789")
    error = client_error(world.client(forger).describe_virtual_interfaces)
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("InvalidSignatureException", 403)

    raw = raw_call(world.sb.url, {}, target="OvertureService.DescribeVirtualInterfaces", account=forger)
    assert raw.body["__type"] == "InvalidSignatureException"
    for secret in (forger.secret_key, CUSTOMER.secret_key):
        assert secret not in raw.text
        assert secret not in json.dumps(raw.headers)
    assert world.sb.calls == []


def test_tampered_body_fails_the_signature(world: World) -> None:
    vif_id = world.allocate()
    signed = json.dumps({"virtualInterfaceId": "dxvif-00000000", "virtualGatewayId": world.gateway_id}).encode()
    answer = raw_call(
        world.sb.url,
        {"virtualInterfaceId": vif_id, "virtualGatewayId": world.gateway_id},
        target="OvertureService.ConfirmPrivateVirtualInterface",
        sign_body=signed,
    )

    assert (answer.status, answer.body["__type"]) == (403, "InvalidSignatureException")
    assert world.sb.vif(vif_id)["virtualInterfaceState"] == "confirming"


def test_missing_authorization_and_wrong_region(world: World) -> None:
    bare = send(
        Request(
            world.sb.url + "/",
            data=b"{}",
            headers={"Content-Type": JSON_11, "X-Amz-Target": "OvertureService.DescribeLocations"},
            method="POST",
        )
    )
    assert (bare.status, bare.body["__type"]) == (403, "MissingAuthenticationTokenException")

    error = client_error(world.client(CUSTOMER, region="us-east-2").describe_locations)
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert "eu-west-2" in error["Error"]["Message"]


# ---- visibility ---------------------------------------------------------------------------------


def test_each_account_sees_only_its_own_and_its_connections_vifs(world: World) -> None:
    mine = [world.allocate("prod-a", 101), world.allocate("prod-b", 102)]
    other = world.sb.allocate(world.connection_id, "555566667777", "other-customer", 103, 65002)["virtualInterfaceId"]

    assert ids(world.client(CUSTOMER).describe_virtual_interfaces()) == mine
    assert ids(world.client(PARTNER).describe_virtual_interfaces()) == [*mine, other]
    assert ids(world.client(STRANGER).describe_virtual_interfaces()) == []
    assert ids(world.client(PARTNER).describe_virtual_interfaces(connectionId=world.connection_id)) == [*mine, other]

    error = client_error(world.client(STRANGER).describe_virtual_interfaces, virtualInterfaceId=mine[0])
    assert error["Error"]["Message"] == f"Virtual interface {mine[0]} does not exist"

    # The customer sees the partner's connection because it carries the customer's VIFs.
    (connection,) = world.client(CUSTOMER).describe_connections()["connections"]
    assert (connection["connectionId"], connection["ownerAccount"]) == (world.connection_id, PARTNER.account_id)
    assert world.client(STRANGER).describe_connections()["connections"] == []
    assert world.client(CUSTOMER).describe_virtual_gateways()["virtualGateways"] == [
        {"virtualGatewayId": world.gateway_id, "virtualGatewayState": "available"}
    ]
    assert world.client(PARTNER).describe_virtual_gateways()["virtualGateways"] == []


def test_outscale_vif_has_every_seed_field_with_aws_only_ones_null(world: World) -> None:
    vif_id = world.sb.allocate(
        world.connection_id,
        CUSTOMER.account_id,
        "prod-a",
        101,
        65001,
        auth_key="bgp-md5-given",
        amazon_address="172.16.0.1/30",
        customer_address="172.16.0.2/30",
    )["virtualInterfaceId"]
    raw = raw_call(world.sb.url, {"virtualInterfaceId": vif_id}, target="OvertureService.DescribeVirtualInterfaces")

    (vif,) = raw.body["virtualInterfaces"]
    assert vif == {
        "ownerAccount": CUSTOMER.account_id,
        "virtualInterfaceId": vif_id,
        "location": "PAR1",
        "connectionId": world.connection_id,
        "virtualInterfaceType": "private",
        "virtualInterfaceName": "prod-a",
        "vlan": 101,
        "asn": 65001,
        "authKey": "bgp-md5-given",
        "amazonAddress": "172.16.0.1/30",
        "customerAddress": "172.16.0.2/30",
        "virtualInterfaceState": "confirming",
        "virtualGatewayId": None,
        "addressFamily": None,
        "amazonSideAsn": None,
        "bgpPeers": None,
        "customerRouterConfig": None,
        "directConnectGatewayId": None,
        "routeFilterPrefixes": None,
    }
    assert "nextToken" not in raw.body


def test_aws_vif_fills_aws_fields_and_generates_an_auth_key(make_world: Callable[..., World]) -> None:
    world = make_world(flavor="aws")
    vif_id = world.allocate(asn=4200000000)  # 4-byte ASNs are fine on AWS

    (vif,) = world.client(CUSTOMER).describe_virtual_interfaces()["virtualInterfaces"]
    assert vif["virtualInterfaceId"] == vif_id
    assert (vif["addressFamily"], vif["amazonSideAsn"], vif["routeFilterPrefixes"]) == ("ipv4", 64512, [])
    assert len(vif["authKey"]) == 24
    (peer,) = vif["bgpPeers"]
    assert (peer["authKey"], peer["asn"], peer["bgpPeerState"]) == (vif["authKey"], 4200000000, "pending")
    assert vif["amazonAddress"].startswith("169.254.") and vif["amazonAddress"].endswith("/29")


# ---- lifecycle ----------------------------------------------------------------------------------


def test_confirm_then_pending_until_pending_seconds_then_available(world: World) -> None:
    customer = world.client(CUSTOMER)
    allocated = world.client(PARTNER).allocate_private_virtual_interface(
        connectionId=world.connection_id,
        ownerAccount=CUSTOMER.account_id,
        newPrivateVirtualInterfaceAllocation={"virtualInterfaceName": "prod-a", "vlan": 101, "asn": 65001},
    )
    vif_id = allocated["virtualInterfaceId"]
    assert allocated["virtualInterfaceState"] == "confirming"

    answer = customer.confirm_private_virtual_interface(virtualInterfaceId=vif_id, virtualGatewayId=world.gateway_id)
    assert answer["virtualInterfaceState"] == "pending"
    assert world.sb.confirm_count(vif_id) == 1
    assert world.sb.vif(vif_id)["virtualGatewayId"] == world.gateway_id

    world.clock.advance(timedelta(seconds=59))
    assert state_of(world, CUSTOMER, vif_id) == "pending"
    world.clock.advance(timedelta(seconds=1))
    assert state_of(world, CUSTOMER, vif_id) == "available"

    assert customer.delete_virtual_interface(virtualInterfaceId=vif_id)["virtualInterfaceState"] == "deleting"
    world.clock.advance(timedelta(seconds=59))
    assert state_of(world, PARTNER, vif_id) == "deleting"
    world.clock.advance(timedelta(seconds=1))
    assert state_of(world, PARTNER, vif_id) == "deleted"


def test_owner_deleting_a_confirming_vif_rejects_it_and_frees_the_vlan(world: World) -> None:
    vif_id = world.allocate(vlan=101)

    answer = world.client(CUSTOMER).delete_virtual_interface(virtualInterfaceId=vif_id)

    assert answer["virtualInterfaceState"] == "rejected"
    assert state_of(world, PARTNER, vif_id) == "rejected"
    assert world.allocate(name="again", vlan=101) != vif_id


def test_connection_owner_withdrawing_a_confirming_vif_deletes_it(world: World) -> None:
    vif_id = world.allocate()

    assert (
        world.client(PARTNER).delete_virtual_interface(virtualInterfaceId=vif_id)["virtualInterfaceState"] == "deleting"
    )


def test_create_private_vif_is_owned_by_the_caller_and_becomes_available(world: World) -> None:
    partner_gateway = world.sb.add_gateway(PARTNER.account_id)
    created = world.client(PARTNER).create_private_virtual_interface(
        connectionId=world.connection_id,
        newPrivateVirtualInterface={
            "virtualInterfaceName": "own",
            "vlan": 300,
            "asn": 65010,
            "virtualGatewayId": partner_gateway,
        },
    )

    assert (created["ownerAccount"], created["virtualInterfaceState"]) == (PARTNER.account_id, "pending")
    world.clock.advance(timedelta(seconds=60))
    assert state_of(world, PARTNER, created["virtualInterfaceId"]) == "available"
    assert ids(world.client(CUSTOMER).describe_virtual_interfaces()) == []


def test_outscale_unconfirmed_vif_expires_after_seven_days(world: World) -> None:
    vif_id = world.allocate()

    world.clock.advance(SEVEN_DAYS - timedelta(seconds=1))
    assert state_of(world, CUSTOMER, vif_id) == "confirming"
    world.clock.advance(timedelta(seconds=1))
    assert state_of(world, CUSTOMER, vif_id) == "expired"
    error = client_error(
        world.client(CUSTOMER).confirm_private_virtual_interface,
        virtualInterfaceId=vif_id,
        virtualGatewayId=world.gateway_id,
    )
    assert "is in state expired" in error["Error"]["Message"]


def test_aws_unconfirmed_vif_disappears_after_seven_days(make_world: Callable[..., World]) -> None:
    world = make_world(flavor="aws")
    vif_id = world.allocate()
    confirmed = world.allocate(name="prod-b", vlan=102)
    world.client(CUSTOMER).confirm_private_virtual_interface(
        virtualInterfaceId=confirmed, virtualGatewayId=world.gateway_id
    )

    world.clock.advance(SEVEN_DAYS)

    assert ids(world.client(CUSTOMER).describe_virtual_interfaces()) == [confirmed]
    assert ids(world.client(PARTNER).describe_virtual_interfaces()) == [confirmed]
    error = client_error(world.client(CUSTOMER).describe_virtual_interfaces, virtualInterfaceId=vif_id)
    assert error["Error"]["Message"] == f"Virtual interface {vif_id} does not exist"
    with pytest.raises(KeyError):
        world.sb.vif(vif_id)


def test_outscale_dry_run_confirm_validates_but_changes_nothing(world: World) -> None:
    vif_id = world.allocate()
    body = {"virtualInterfaceId": vif_id, "virtualGatewayId": world.gateway_id, "dryRun": True}

    answer = raw_call(world.sb.url, body, target="OvertureService.ConfirmPrivateVirtualInterface")
    assert (answer.status, answer.body) == (
        400,
        {"__type": "DryRunOperation", "message": "Request would have succeeded, but DryRun flag is set."},
    )
    assert world.sb.vif(vif_id)["virtualInterfaceState"] == "confirming"
    assert world.sb.confirm_count(vif_id) == 0

    bad = raw_call(
        world.sb.url,
        body | {"virtualGatewayId": "vgw-00000000"},
        target="OvertureService.ConfirmPrivateVirtualInterface",
    )
    assert bad.body["message"] == "Virtual gateway vgw-00000000 does not exist"


# ---- errors -------------------------------------------------------------------------------------


AUTH_KEY = "bgp-md5-secret-777"
Call = tuple[str, dict[str, Any]]


def _confirm(vif_id: str, gateway_id: str) -> Call:
    return "confirm_private_virtual_interface", {"virtualInterfaceId": vif_id, "virtualGatewayId": gateway_id}


def _allocate(world: World, owner: Account = CUSTOMER, **overrides: Any) -> Call:
    allocation = {"virtualInterfaceName": "prod-b", "vlan": 102, "asn": 65001, "authKey": AUTH_KEY} | overrides
    return "allocate_private_virtual_interface", {
        "connectionId": world.connection_id,
        "ownerAccount": owner.account_id,
        "newPrivateVirtualInterfaceAllocation": allocation,
    }


# Each case gets the world and a confirming VIF (vlan 101, authKey AUTH_KEY) owned by CUSTOMER.
ERROR_CASES: dict[str, Callable[[World, str], tuple[Account, Call, str]]] = {
    "unknown vif": lambda w, v: (
        CUSTOMER,
        _confirm("dxvif-00000000", w.gateway_id),
        "Virtual interface dxvif-00000000 does not exist",
    ),
    "confirm by wrong account": lambda w, v: (
        PARTNER,
        _confirm(v, w.gateway_id),
        f"Account {PARTNER.account_id} is not the owner of virtual interface {v}",
    ),
    "unknown gateway": lambda w, v: (
        CUSTOMER,
        _confirm(v, "vgw-00000000"),
        "Virtual gateway vgw-00000000 does not exist",
    ),
    "gateway of another account": lambda w, v: (
        CUSTOMER,
        _confirm(v, w.sb.add_gateway(PARTNER.account_id, gateway_id="vgw-0000abcd")),
        "Virtual gateway vgw-0000abcd does not exist",
    ),
    "pending gateway": lambda w, v: (
        CUSTOMER,
        _confirm(v, w.sb.add_gateway(CUSTOMER.account_id, "pending", "vgw-0000beef")),
        "Virtual gateway vgw-0000beef is pending, not available",
    ),
    "bad vlan": lambda w, v: (PARTNER, _allocate(w, vlan=5000), "VLAN 5000 is out of range 2..4094"),
    "duplicate vlan": lambda w, v: (
        PARTNER,
        _allocate(w, vlan=101),
        f"VLAN 101 is already in use on connection {w.connection_id}",
    ),
    "bad asn": lambda w, v: (PARTNER, _allocate(w, asn=70000), "ASN 70000 is out of range 64512..65534"),
    "cidr pair in two subnets": lambda w, v: (
        PARTNER,
        _allocate(w, amazonAddress="172.16.0.1/30", customerAddress="172.16.1.2/30"),
        "amazonAddress 172.16.0.1/30 and customerAddress 172.16.1.2/30 are not in the same subnet",
    ),
    "address without prefix": lambda w, v: (
        PARTNER,
        _allocate(w, amazonAddress="172.16.0.1", customerAddress="172.16.0.2/30"),
        "amazonAddress 172.16.0.1 must include a network prefix, e.g. 172.16.0.1/30",
    ),
    "one address alone": lambda w, v: (
        PARTNER,
        _allocate(w, amazonAddress="172.16.0.1/30"),
        "amazonAddress and customerAddress must be given together",
    ),
    "allocate on someone else's connection": lambda w, v: (
        CUSTOMER,
        _allocate(w, owner=STRANGER),
        f"Account {CUSTOMER.account_id} is not the owner of connection {w.connection_id}",
    ),
    "delete by a stranger": lambda w, v: (
        STRANGER,
        ("delete_virtual_interface", {"virtualInterfaceId": v}),
        f"Virtual interface {v} does not exist",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_api_errors_reach_botocore_with_their_message(world: World, case: str) -> None:
    vif_id = world.allocate(vlan=101, auth_key=AUTH_KEY)
    account, (operation, kwargs), message = ERROR_CASES[case](world, vif_id)

    error = client_error(getattr(world.client(account), operation), **kwargs)

    assert error["Error"] == {"Code": "DirectConnectClientException", "Message": message}
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert AUTH_KEY not in json.dumps(error, default=str)
    assert world.sb.vif(vif_id)["virtualInterfaceState"] == "confirming"
    assert len(world.sb.vifs()) == 1


def test_confirming_twice_is_a_wrong_state_error(world: World) -> None:
    vif_id = world.allocate()
    customer = world.client(CUSTOMER)
    customer.confirm_private_virtual_interface(virtualInterfaceId=vif_id, virtualGatewayId=world.gateway_id)

    error = client_error(
        customer.confirm_private_virtual_interface, virtualInterfaceId=vif_id, virtualGatewayId=world.gateway_id
    )

    assert error["Error"] == {
        "Code": "DirectConnectClientException",
        "Message": f"Virtual interface {vif_id} is in state pending; only a confirming interface can be confirmed",
    }
    assert world.sb.confirm_count(vif_id) == 1


def test_python_allocate_validates_like_the_api(world: World) -> None:
    with pytest.raises(ApiError, match=r"VLAN 1 is out of range 2\.\.4094"):
        world.allocate(vlan=1)
    assert world.sb.vifs() == []


# ---- pagination ---------------------------------------------------------------------------------


def _allocate_many(world: World, count: int) -> list[str]:
    return [world.allocate(name=f"vif-{vlan}", vlan=vlan) for vlan in range(2, 2 + count)]


def test_aws_pages_with_next_token(make_world: Callable[..., World]) -> None:
    world = make_world(flavor="aws")
    expected = _allocate_many(world, 250)
    customer = world.client(CUSTOMER)

    pages: list[list[str]] = []
    kwargs: dict[str, Any] = {"maxResults": 100}
    while True:
        answer = customer.describe_virtual_interfaces(**kwargs)
        pages.append(ids(answer))
        if "nextToken" not in answer:
            break
        kwargs["nextToken"] = answer["nextToken"]

    assert [len(page) for page in pages] == [100, 100, 50]
    assert [vif_id for page in pages for vif_id in page] == expected
    assert len(ids(customer.describe_virtual_interfaces(maxResults=1000))) == 100  # AWS caps a page at 100

    error = client_error(customer.describe_virtual_interfaces, nextToken="garbage!")
    assert error["Error"] == {"Code": "DirectConnectClientException", "Message": "The nextToken is invalid"}


def test_aws_default_page_size_comes_from_the_sandbox(make_world: Callable[..., World]) -> None:
    world = make_world(flavor="aws", page_size=2)
    _allocate_many(world, 3)

    answer = world.client(CUSTOMER).describe_virtual_interfaces()

    assert len(answer["virtualInterfaces"]) == 2
    assert "nextToken" in answer


def test_outscale_ignores_max_results_and_never_pages(world: World) -> None:
    expected = _allocate_many(world, 250)

    answer = world.client(CUSTOMER).describe_virtual_interfaces(maxResults=100)

    assert ids(answer) == expected
    assert "nextToken" not in answer


# ---- faults -------------------------------------------------------------------------------------


def test_throttling_is_retried_by_standard_mode_without_double_effects(make_world: Callable[..., World]) -> None:
    # Seed 1 throttles the 1st, 3rd and 5th requests at rate 0.5 (two draws per request).
    world = make_world(faults=Faults(throttle_rate=0.5), seed=1)
    vif_id = world.allocate()
    customer = world.client(CUSTOMER, retries=9)

    customer.confirm_private_virtual_interface(virtualInterfaceId=vif_id, virtualGatewayId=world.gateway_id)
    for _ in range(3):
        assert ids(customer.describe_virtual_interfaces()) == [vif_id]

    assert world.sb.fault_counts == {"throttled": 3, "failed": 0}
    assert len(world.sb.calls) == 4 + 3  # every attempt passed auth, throttled or not
    assert world.sb.confirm_count(vif_id) == 1


def test_server_errors_exhaust_retries_and_change_nothing(make_world: Callable[..., World]) -> None:
    world = make_world(faults=Faults(error_rate=1.0))
    vif_id = world.allocate()

    error = client_error(
        world.client(CUSTOMER, retries=2).confirm_private_virtual_interface,
        virtualInterfaceId=vif_id,
        virtualGatewayId=world.gateway_id,
    )

    assert error["Error"] == {"Code": "DirectConnectServerException", "Message": "Internal error (injected by sandbox)"}
    assert (error["ResponseMetadata"]["HTTPStatusCode"], error["ResponseMetadata"]["RetryAttempts"]) == (500, 2)
    assert world.sb.fault_counts == {"throttled": 0, "failed": 3}
    assert world.sb.calls == [("ConfirmPrivateVirtualInterface", CUSTOMER.account_id)] * 3
    assert world.sb.vif(vif_id)["virtualInterfaceState"] == "confirming"
    assert world.sb.confirm_count(vif_id) == 0


def test_latency_is_injected(world: World) -> None:
    world.sb.set_faults(latency_ms=150)
    started = time.monotonic()
    world.client(CUSTOMER).describe_locations()
    assert time.monotonic() - started >= 0.15
    assert world.sb.faults == Faults(latency_ms=150)


def test_admin_endpoint_sets_faults_and_clock(world: World) -> None:
    url = world.sb.url
    health = admin(url, "/_sandbox/health").body
    assert health == {"ok": True, "now": START.isoformat()}

    assert admin(url, "/_sandbox/faults", {"throttleRate": 1.0}).body == {
        "throttleRate": 1.0,
        "errorRate": 0.0,
        "latencyMs": 0,
    }
    assert world.sb.faults.throttle_rate == 1.0
    error = client_error(world.client(CUSTOMER).describe_locations)
    assert error["Error"] == {"Code": "ThrottlingException", "Message": "Rate exceeded"}
    admin(url, "/_sandbox/faults", {"throttleRate": 0})

    assert admin(url, "/_sandbox/clock", {"advanceSeconds": 3600}).body == {
        "now": (START + timedelta(hours=1)).isoformat()
    }
    later = datetime(2030, 1, 1, tzinfo=UTC)
    assert admin(url, "/_sandbox/clock", {"set": later.isoformat()}).body == {"now": later.isoformat()}
    assert world.clock.now() == later
    # What `vifgate` reads when VIFGATE_CLOCK points here: the sandbox's time, not the wall clock's.
    assert admin(url, "/_sandbox/clock").body == {"now": later.isoformat()}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/_sandbox/faults", {"throttleRate": 2}, "throttleRate"),
        ("/_sandbox/faults", {"latencyMs": "fast"}, "latencyMs"),
        ("/_sandbox/faults", {"errorRatio": 0.1}, "errorRatio"),
        ("/_sandbox/clock", {"advanceSeconds": -5}, "advanceSeconds"),
        ("/_sandbox/clock", {"set": "2030-01-01T00:00:00"}, "set"),
        ("/_sandbox/clock", {}, "advanceSeconds"),
    ],
)
def test_admin_rejects_bad_bodies_naming_the_field(world: World, path: str, body: dict[str, Any], field: str) -> None:
    answer = admin(world.sb.url, path, body)

    assert answer.status == 400
    assert field in answer.body["message"]
    assert world.sb.faults == Faults()
    assert world.clock.now() == START


# ---- the AWS CLI --------------------------------------------------------------------------------


def _aws_cli(world: World, *args: str, tmp_path: Path) -> Any:
    config = tmp_path / "aws-config"
    config.write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env |= {
        "AWS_ACCESS_KEY_ID": CUSTOMER.access_key,
        "AWS_SECRET_ACCESS_KEY": CUSTOMER.secret_key,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(config),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    command = [
        str(Path(sys.executable).parent / "aws"),
        "directconnect",
        *args,
        "--endpoint-url",
        world.sb.url,
        "--region",
        REGION,
        "--output",
        "json",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_aws_cli_describes_and_confirms_unchanged(world: World, tmp_path: Path) -> None:
    vif_ids = [world.allocate("prod-a", 101), world.allocate("prod-b", 102)]

    described = _aws_cli(world, "describe-virtual-interfaces", tmp_path=tmp_path)
    assert ids(described) == vif_ids

    confirmed = _aws_cli(
        world,
        "confirm-private-virtual-interface",
        "--virtual-interface-id",
        vif_ids[0],
        "--virtual-gateway-id",
        world.gateway_id,
        tmp_path=tmp_path,
    )
    assert confirmed == {"virtualInterfaceState": "pending"}
    assert world.sb.confirm_count(vif_ids[0]) == 1
    assert [op for op, _ in world.sb.calls] == ["DescribeVirtualInterfaces", "ConfirmPrivateVirtualInterface"]


# ---- the clock ----------------------------------------------------------------------------------


def test_clock_is_utc_aware_callable_and_rejects_naive_times() -> None:
    clock = SandboxClock(START)
    assert clock() == START
    assert clock.advance(timedelta(minutes=5)) == START + timedelta(minutes=5)
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        SandboxClock(datetime(2030, 1, 1))
    assert SandboxClock().now().tzinfo is not None
