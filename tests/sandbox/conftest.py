"""Fixtures for the sandbox wire tests: a running sandbox with three accounts and real boto3 clients."""

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from sandbox import DirectLinkSandbox, Faults, SandboxClock

REGION = "eu-west-2"
JSON_11 = "application/x-amz-json-1.1"
START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


class Account(NamedTuple):
    account_id: str
    access_key: str
    secret_key: str


PARTNER = Account("111122223333", "AKIDPARTNER0000000001", "partner-secret-9f3b1c77e2")  # owns the connection
CUSTOMER = Account("444455556666", "AKIDCUSTOMER000000001", "customer-secret-27ad4e90b1")  # receives hosted VIFs
STRANGER = Account("999988887777", "AKIDSTRANGER000000001", "stranger-secret-c01d5a3f88")  # sees nothing

# One boto3 session for the whole run: it caches the loaded service model across clients.
_SESSION = boto3.session.Session()


@dataclass
class World:
    """A running sandbox: PARTNER's connection at PAR1 and an available gateway in CUSTOMER's account."""

    sb: DirectLinkSandbox
    clock: SandboxClock
    connection_id: str
    gateway_id: str

    def client(self, account: Account, retries: int = 0, region: str = REGION) -> Any:
        """A directconnect client for account in standard retry mode, making 1 + retries attempts."""
        return _SESSION.client(
            "directconnect",
            endpoint_url=self.sb.url,
            region_name=region,
            aws_access_key_id=account.access_key,
            aws_secret_access_key=account.secret_key,
            # In Config, max_attempts counts retries only (unlike AWS_MAX_ATTEMPTS, which counts the first try).
            config=Config(retries={"mode": "standard", "max_attempts": retries}),
        )

    def allocate(self, name: str = "prod-a", vlan: int = 101, **kwargs: Any) -> str:
        """Allocate a hosted VIF for CUSTOMER through the Python API; returns its id."""
        vif = self.sb.allocate(self.connection_id, CUSTOMER.account_id, name, vlan, kwargs.pop("asn", 65001), **kwargs)
        return vif["virtualInterfaceId"]


@pytest.fixture
def make_world() -> Iterator[Callable[..., World]]:
    """Build and start sandboxes (keyword arguments go to DirectLinkSandbox); all stop at teardown."""
    started: list[DirectLinkSandbox] = []

    def make(**kwargs: Any) -> World:
        clock = SandboxClock(START)
        sb = DirectLinkSandbox(clock=clock, region=REGION, **kwargs)
        for account in (PARTNER, CUSTOMER, STRANGER):
            sb.add_account(account.account_id, access_key=account.access_key, secret_key=account.secret_key)
        sb.add_location("PAR1", "Equinix PA3, Paris")
        connection_id = sb.add_connection(PARTNER.account_id, name="partner-par", location="PAR1")
        gateway_id = sb.add_gateway(CUSTOMER.account_id)
        started.append(sb)
        sb.start()
        return World(sb, clock, connection_id, gateway_id)

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    """An outscale-flavored world without faults."""
    return make_world(flavor="outscale", faults=Faults())


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    text: str


def raw_call(
    url: str,
    body: bytes | dict[str, Any],
    *,
    target: str | None = None,
    account: Account = CUSTOMER,
    content_type: str = JSON_11,
    sign_body: bytes | None = None,
    region: str = REGION,
    method: str = "POST",
    path: str = "/",
) -> RawResponse:
    """Send a request signed like botocore does; sign_body signs other bytes than those sent."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    if target is not None:
        headers["X-Amz-Target"] = target
    to_sign = AWSRequest(
        method=method, url=url + path, data=sign_body if sign_body is not None else data, headers=headers
    )
    SigV4Auth(Credentials(account.access_key, account.secret_key), "directconnect", region).add_auth(to_sign)
    signed = dict(to_sign.headers.items())
    return send(
        urllib.request.Request(url + path, data=data if method != "GET" else None, headers=signed, method=method)
    )


def send(request: urllib.request.Request) -> RawResponse:
    """urlopen that returns error answers instead of raising."""
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, text = response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        status, headers, text = error.code, dict(error.headers), error.read().decode()
    return RawResponse(status, {k.lower(): v for k, v in headers.items()}, json.loads(text), text)


def admin(url: str, path: str, body: dict[str, Any] | None = None) -> RawResponse:
    """Call the unauthenticated admin endpoint: GET without body, POST with one."""
    data = None if body is None else json.dumps(body).encode()
    return send(urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST"))
