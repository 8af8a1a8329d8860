"""In-memory DirectLink model: connections, gateways and VIFs, their API operations and lifecycle."""

import base64
import binascii
import ipaddress
import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from .clock import SandboxClock

Flavor = Literal["outscale", "aws"]
FLAVORS: tuple[Flavor, ...] = ("outscale", "aws")
GATEWAY_STATES = ("pending", "available", "deleting", "deleted")
OPERATIONS = frozenset(
    {
        "DescribeVirtualInterfaces",
        "AllocatePrivateVirtualInterface",
        "CreatePrivateVirtualInterface",
        "ConfirmPrivateVirtualInterface",
        "DeleteVirtualInterface",
        "DescribeVirtualGateways",
        "DescribeConnections",
        "DescribeLocations",
    }
)

UNCONFIRMED_TTL = timedelta(days=7)
# States in which a VIF no longer holds its VLAN.
_FINISHED = frozenset({"deleted", "rejected", "expired"})
_VLAN_RANGE = (2, 4094)
_ASN_RANGE: dict[Flavor, tuple[int, int]] = {"outscale": (64512, 65534), "aws": (1, 4294967294)}
_AWS_MAX_PAGE = 100  # AWS answers at most 100 VIFs per page, whatever maxResults asks for
_AWS_AMAZON_SIDE_ASN = 64512
_AWS_PEER_SPACE = ipaddress.ip_network("169.254.0.0/16")  # where AWS picks BGP peer IPs when none are given
_ACCOUNT_ID = re.compile(r"\d{12}")
_TOKEN = re.compile(r"after:(\d+)")
_BGP_PEER_STATES = {"confirming": "pending", "pending": "pending", "available": "available", "deleting": "deleting"}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object"}

Wire = dict[str, Any]


class ApiError(Exception):
    """An API failure as the wire shows it: HTTP status, AWS error type and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def client_error(message: str) -> ApiError:
    """The 400 DirectConnectClientException used for every validation failure."""
    return ApiError(400, "DirectConnectClientException", message)


@dataclass
class Location:
    code: str
    name: str


@dataclass
class Connection:
    connection_id: str
    owner_account: str
    name: str
    location: str
    bandwidth: str


@dataclass
class Gateway:
    gateway_id: str
    account_id: str
    state: str


@dataclass
class Vif:
    vif_id: str
    seq: int  # creation order; pagination tokens point into it
    connection_id: str
    owner_account: str
    name: str
    vlan: int
    asn: int
    auth_key: str
    amazon_address: str | None
    customer_address: str | None
    state: str
    state_since: datetime
    allocated_at: datetime
    gateway_id: str | None
    bgp_peer_id: str

    def move(self, state: str, at: datetime) -> None:
        """Enter state at time at."""
        self.state = state
        self.state_since = at


def _field(obj: dict[str, Any], key: str, kind: type, where: str = "", required: bool = True) -> Any:
    """Read obj[key] checked against a JSON type; errors name the field by its wire path."""
    label = f"{where}.{key}" if where else key
    value = obj.get(key)
    if value is None:
        if required:
            raise client_error(f"{label} is required")
        return None
    # type() rather than isinstance(): JSON true must not pass as an integer.
    if type(value) is not kind:
        raise client_error(f"{label} must be {_TYPE_NAMES[kind]}")
    return value


def _cidr(text: str, name: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if "/" not in text:
        raise client_error(f"{name} {text} must include a network prefix, e.g. 172.16.0.1/30")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise client_error(f"{name} {text} is not a valid IP address with prefix") from None


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        match = _TOKEN.fullmatch(base64.urlsafe_b64decode(token.encode()).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        match = None
    if match is None:
        raise client_error("The nextToken is invalid")
    return int(match.group(1))


class DirectLinkState:
    """All sandbox data behind one lock; every read or write first applies the lifecycle at clock.now()."""

    def __init__(
        self,
        flavor: Flavor,
        region: str,
        clock: SandboxClock,
        pending_seconds: float,
        deleting_seconds: float,
        page_size: int | None,
        seed: int,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
        if pending_seconds < 0 or deleting_seconds < 0:
            raise ValueError("pending_seconds and deleting_seconds must not be negative")
        if page_size is not None and page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.flavor: Flavor = flavor
        self.region = region
        self.clock = clock
        self._pending = timedelta(seconds=pending_seconds)
        self._deleting = timedelta(seconds=deleting_seconds)
        self._page_size = page_size or 100
        self._lock = threading.RLock()
        # A string seed is hashed with SHA-512, so IDs and keys repeat across runs for one seed.
        self._rng = random.Random(f"directlink-state-{seed}")
        self._ids: set[str] = set()
        self._seq = 0
        self._locations: dict[str, Location] = {}
        self._connections: dict[str, Connection] = {}
        self._gateways: dict[str, Gateway] = {}
        self._vifs: dict[str, Vif] = {}
        self._confirms: Counter[str] = Counter()
        self._operations: dict[str, Callable[[str, dict[str, Any], datetime], Wire]] = {
            "DescribeVirtualInterfaces": self._describe_virtual_interfaces,
            "AllocatePrivateVirtualInterface": self._allocate_private_virtual_interface,
            "CreatePrivateVirtualInterface": self._create_private_virtual_interface,
            "ConfirmPrivateVirtualInterface": self._confirm_private_virtual_interface,
            "DeleteVirtualInterface": self._delete_virtual_interface,
            "DescribeVirtualGateways": self._describe_virtual_gateways,
            "DescribeConnections": self._describe_connections,
            "DescribeLocations": self._describe_locations,
        }

    # ---- API entry point -------------------------------------------------------------------

    def handle(self, operation: str, caller: str, params: dict[str, Any]) -> Wire:
        """Run one API operation as account caller; raises ApiError."""
        with self._lock:
            now = self.clock.now()
            self._settle(now)
            return self._operations[operation](caller, params, now)

    # ---- Python-side setup and inspection ----------------------------------------------------

    def add_location(self, code: str, name: str) -> None:
        """Register a location (datacenter)."""
        with self._lock:
            self._locations[code] = Location(code, name)

    def add_connection(
        self, owner_account: str, name: str, location: str, bandwidth: str, connection_id: str | None = None
    ) -> str:
        """Create an available connection owned by owner_account; returns its dxcon- id."""
        with self._lock:
            if location not in self._locations:
                raise ValueError(f"unknown location {location!r}; add it with add_location first")
            if connection_id in self._connections:
                raise ValueError(f"connection {connection_id} already exists")
            connection_id = connection_id or self._new_id("dxcon")
            self._connections[connection_id] = Connection(connection_id, owner_account, name, location, bandwidth)
            return connection_id

    def add_gateway(self, account_id: str, state: str, gateway_id: str | None) -> str:
        """Create a virtual gateway in account_id; returns its vgw- id."""
        self._check_gateway_state(state)
        with self._lock:
            if gateway_id is None:
                gateway_id = self._new_id("vgw")
            elif gateway_id in self._ids:
                raise ValueError(f"id {gateway_id} is already taken")
            self._ids.add(gateway_id)
            self._gateways[gateway_id] = Gateway(gateway_id, account_id, state)
            return gateway_id

    def set_gateway_state(self, gateway_id: str, state: str) -> None:
        """Change a gateway's state."""
        self._check_gateway_state(state)
        with self._lock:
            if gateway_id not in self._gateways:
                raise KeyError(f"no virtual gateway {gateway_id}")
            self._gateways[gateway_id].state = state

    def allocate(self, connection_id: str, owner_account: str, allocation: dict[str, Any]) -> Wire:
        """AllocatePrivateVirtualInterface acting as the connection's owner."""
        with self._lock:
            if connection_id not in self._connections:
                raise client_error(f"Connection {connection_id} does not exist")
            params = {
                "connectionId": connection_id,
                "ownerAccount": owner_account,
                "newPrivateVirtualInterfaceAllocation": allocation,
            }
            return self.handle(
                "AllocatePrivateVirtualInterface", self._connections[connection_id].owner_account, params
            )

    def vif(self, vif_id: str) -> Wire:
        """One VIF as the API would show it now."""
        with self._lock:
            self._settle(self.clock.now())
            if vif_id not in self._vifs:
                raise KeyError(f"no virtual interface {vif_id}")
            return self._wire_vif(self._vifs[vif_id])

    def vifs(self) -> list[Wire]:
        """Every VIF of every account, in creation order."""
        with self._lock:
            self._settle(self.clock.now())
            return [self._wire_vif(vif) for vif in self._vifs.values()]

    def confirm_count(self, vif_id: str) -> int:
        """Successful ConfirmPrivateVirtualInterface calls for vif_id."""
        with self._lock:
            return self._confirms[vif_id]

    # ---- lifecycle -------------------------------------------------------------------------

    def _settle(self, now: datetime) -> None:
        """Apply every timed transition due by now, dated when it was due rather than when seen."""
        for vif in list(self._vifs.values()):
            if vif.state == "confirming" and now >= vif.allocated_at + UNCONFIRMED_TTL:
                if self.flavor == "aws":
                    del self._vifs[vif.vif_id]  # AWS has no expired state: the VIF just vanishes
                else:
                    vif.move("expired", vif.allocated_at + UNCONFIRMED_TTL)
            elif vif.state == "pending" and now >= vif.state_since + self._pending:
                vif.move("available", vif.state_since + self._pending)
            elif vif.state == "deleting" and now >= vif.state_since + self._deleting:
                vif.move("deleted", vif.state_since + self._deleting)

    # ---- operations ------------------------------------------------------------------------

    def _describe_virtual_interfaces(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        connection_id = _field(params, "connectionId", str, required=False)
        vif_id = _field(params, "virtualInterfaceId", str, required=False)
        if connection_id is not None:
            self._visible_connection(caller, connection_id)
        if vif_id is not None:
            vifs = [self._visible_vif(caller, vif_id)]
        else:
            vifs = [vif for vif in self._vifs.values() if self._sees_vif(caller, vif)]
        if connection_id is not None:
            vifs = [vif for vif in vifs if vif.connection_id == connection_id]
        answer: Wire = {}
        if self.flavor == "aws":
            vifs, next_token = self._page(vifs, params)
            if next_token is not None:
                answer["nextToken"] = next_token
        answer["virtualInterfaces"] = [self._wire_vif(vif) for vif in vifs]
        return answer

    def _allocate_private_virtual_interface(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        connection = self._owned_connection(caller, _field(params, "connectionId", str))
        owner = _field(params, "ownerAccount", str)
        if not _ACCOUNT_ID.fullmatch(owner):
            raise client_error(f"ownerAccount {owner} is not a 12-digit account id")
        where = "newPrivateVirtualInterfaceAllocation"
        settings = self._vif_settings(connection, _field(params, where, dict), where)
        self._refuse_dry_run(params)
        vif = self._new_vif(connection, owner, "confirming", now, gateway_id=None, **settings)
        return self._wire_vif(vif)

    def _create_private_virtual_interface(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        connection = self._owned_connection(caller, _field(params, "connectionId", str))
        where = "newPrivateVirtualInterface"
        spec = _field(params, where, dict)
        settings = self._vif_settings(connection, spec, where)
        gateway_id = _field(spec, "virtualGatewayId", str, where, required=False)
        if gateway_id is not None:
            self._available_gateway(caller, gateway_id)
        self._refuse_dry_run(params)
        vif = self._new_vif(connection, caller, "pending", now, gateway_id=gateway_id, **settings)
        return self._wire_vif(vif)

    def _confirm_private_virtual_interface(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        vif = self._visible_vif(caller, _field(params, "virtualInterfaceId", str))
        if vif.owner_account != caller:
            raise client_error(f"Account {caller} is not the owner of virtual interface {vif.vif_id}")
        if vif.state != "confirming":
            raise client_error(
                f"Virtual interface {vif.vif_id} is in state {vif.state}; only a confirming interface can be confirmed"
            )
        # The sandbox has no Direct Connect gateways, so naming one can only fail.
        dx_gateway_id = _field(params, "directConnectGatewayId", str, required=False)
        if dx_gateway_id is not None:
            raise client_error(f"Direct Connect gateway {dx_gateway_id} does not exist")
        gateway_id = _field(params, "virtualGatewayId", str, required=False)
        if gateway_id is None:
            raise client_error("virtualGatewayId is required")
        self._available_gateway(caller, gateway_id)
        self._refuse_dry_run(params)
        vif.gateway_id = gateway_id
        vif.move("pending", now)
        self._confirms[vif.vif_id] += 1
        return {"virtualInterfaceState": "pending"}

    def _delete_virtual_interface(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        vif = self._visible_vif(caller, _field(params, "virtualInterfaceId", str))
        if vif.state in _FINISHED:
            raise client_error(f"Virtual interface {vif.vif_id} is already {vif.state}")
        self._refuse_dry_run(params)
        if vif.state == "confirming" and caller == vif.owner_account:
            vif.move("rejected", now)
        elif vif.state != "deleting":
            vif.move("deleting", now)
        return {"virtualInterfaceState": vif.state}

    def _describe_virtual_gateways(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        return {
            "virtualGateways": [
                {"virtualGatewayId": gw.gateway_id, "virtualGatewayState": gw.state}
                for gw in self._gateways.values()
                if gw.account_id == caller
            ]
        }

    def _describe_connections(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        connection_id = _field(params, "connectionId", str, required=False)
        if connection_id is not None:
            connections = [self._visible_connection(caller, connection_id)]
        else:
            connections = [c for c in self._connections.values() if self._sees_connection(caller, c)]
        return {"connections": [self._wire_connection(c) for c in connections]}

    def _describe_locations(self, caller: str, params: dict[str, Any], now: datetime) -> Wire:
        return {"locations": [{"locationCode": loc.code, "locationName": loc.name} for loc in self._locations.values()]}

    # ---- visibility and lookups ------------------------------------------------------------

    def _sees_vif(self, account: str, vif: Vif) -> bool:
        return account in (vif.owner_account, self._connections[vif.connection_id].owner_account)

    def _sees_connection(self, account: str, connection: Connection) -> bool:
        return connection.owner_account == account or any(
            vif.connection_id == connection.connection_id and vif.owner_account == account
            for vif in self._vifs.values()
        )

    def _visible_vif(self, caller: str, vif_id: str) -> Vif:
        # Another account's VIF reads as missing, so IDs cannot be probed across accounts.
        vif = self._vifs.get(vif_id)
        if vif is None or not self._sees_vif(caller, vif):
            raise client_error(f"Virtual interface {vif_id} does not exist")
        return vif

    def _visible_connection(self, caller: str, connection_id: str) -> Connection:
        connection = self._connections.get(connection_id)
        if connection is None or not self._sees_connection(caller, connection):
            raise client_error(f"Connection {connection_id} does not exist")
        return connection

    def _owned_connection(self, caller: str, connection_id: str) -> Connection:
        connection = self._visible_connection(caller, connection_id)
        if connection.owner_account != caller:
            raise client_error(f"Account {caller} is not the owner of connection {connection_id}")
        return connection

    def _available_gateway(self, account: str, gateway_id: str) -> Gateway:
        gateway = self._gateways.get(gateway_id)
        if gateway is None or gateway.account_id != account:
            raise client_error(f"Virtual gateway {gateway_id} does not exist")
        if gateway.state != "available":
            raise client_error(f"Virtual gateway {gateway_id} is {gateway.state}, not available")
        return gateway

    # ---- validation and construction -------------------------------------------------------

    def _vif_settings(self, connection: Connection, spec: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate the fields shared by Allocate and Create; error texts never include the authKey."""
        name = _field(spec, "virtualInterfaceName", str, where)
        if not name.strip():
            raise client_error(f"{where}.virtualInterfaceName must not be empty")
        vlan = _field(spec, "vlan", int, where)
        low, high = _VLAN_RANGE
        if not low <= vlan <= high:
            raise client_error(f"VLAN {vlan} is out of range {low}..{high}")
        if any(
            vif.connection_id == connection.connection_id and vif.vlan == vlan and vif.state not in _FINISHED
            for vif in self._vifs.values()
        ):
            raise client_error(f"VLAN {vlan} is already in use on connection {connection.connection_id}")
        asn = _field(spec, "asn", int, where)
        low, high = _ASN_RANGE[self.flavor]
        if not low <= asn <= high:
            raise client_error(f"ASN {asn} is out of range {low}..{high}")
        auth_key = _field(spec, "authKey", str, where, required=False)
        if auth_key == "":
            raise client_error(f"{where}.authKey must not be empty")
        amazon, customer = self._addresses(spec, where)
        return {
            "name": name,
            "vlan": vlan,
            "asn": asn,
            "auth_key": auth_key or self._secret(24),
            "amazon_address": amazon,
            "customer_address": customer,
        }

    def _addresses(self, spec: dict[str, Any], where: str) -> tuple[str | None, str | None]:
        amazon = _field(spec, "amazonAddress", str, where, required=False)
        customer = _field(spec, "customerAddress", str, where, required=False)
        if (amazon is None) != (customer is None):
            raise client_error("amazonAddress and customerAddress must be given together")
        if amazon is None or customer is None:
            return self._default_addresses()
        amazon_ip, customer_ip = _cidr(amazon, "amazonAddress"), _cidr(customer, "customerAddress")
        if amazon_ip.network != customer_ip.network:
            raise client_error(f"amazonAddress {amazon} and customerAddress {customer} are not in the same subnet")
        if amazon_ip.ip == customer_ip.ip:
            raise client_error(f"amazonAddress and customerAddress must differ, both are {amazon}")
        return amazon, customer

    def _default_addresses(self) -> tuple[str | None, str | None]:
        """AWS picks a link-local /29 for the BGP peers; OUTSCALE leaves them unset."""
        if self.flavor != "aws":
            return None, None
        base = _AWS_PEER_SPACE.network_address + 8 * self._rng.randrange(_AWS_PEER_SPACE.num_addresses // 8)
        return f"{base + 1}/29", f"{base + 2}/29"

    def _refuse_dry_run(self, params: dict[str, Any]) -> None:
        """OUTSCALE's dryRun: answer as an error once validation passed, before anything changes."""
        if self.flavor == "outscale" and _field(params, "dryRun", bool, required=False):
            raise ApiError(400, "DryRunOperation", "Request would have succeeded, but DryRun flag is set.")

    def _new_vif(
        self, connection: Connection, owner: str, state: str, now: datetime, gateway_id: str | None, **settings: Any
    ) -> Vif:
        self._seq += 1
        vif = Vif(
            vif_id=self._new_id("dxvif"),
            seq=self._seq,
            connection_id=connection.connection_id,
            owner_account=owner,
            state=state,
            state_since=now,
            allocated_at=now,
            gateway_id=gateway_id,
            bgp_peer_id=self._new_id("dxpeer"),
            **settings,
        )
        self._vifs[vif.vif_id] = vif
        return vif

    def _new_id(self, prefix: str) -> str:
        while True:
            candidate = f"{prefix}-{self._rng.getrandbits(32):08x}"
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def _secret(self, length: int) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(self._rng.choice(alphabet) for _ in range(length))

    @staticmethod
    def _check_gateway_state(state: str) -> None:
        if state not in GATEWAY_STATES:
            raise ValueError(f"gateway state must be one of {GATEWAY_STATES}, got {state!r}")

    # ---- pagination (aws flavor) -----------------------------------------------------------

    def _page(self, vifs: list[Vif], params: dict[str, Any]) -> tuple[list[Vif], str | None]:
        limit = _field(params, "maxResults", int, required=False)
        if limit is None:
            limit = self._page_size
        elif limit < 1:
            raise client_error(f"maxResults must be at least 1, got {limit}")
        else:
            limit = min(limit, _AWS_MAX_PAGE)
        token = _field(params, "nextToken", str, required=False)
        if token is not None:
            after = _decode_token(token)
            vifs = [vif for vif in vifs if vif.seq > after]
        page = vifs[:limit]
        return page, _encode_token(page[-1].seq) if len(vifs) > limit else None

    # ---- wire shapes -----------------------------------------------------------------------

    def _wire_vif(self, vif: Vif) -> Wire:
        wire: Wire = {
            "ownerAccount": vif.owner_account,
            "virtualInterfaceId": vif.vif_id,
            "location": self._connections[vif.connection_id].location,
            "connectionId": vif.connection_id,
            "virtualInterfaceType": "private",
            "virtualInterfaceName": vif.name,
            "vlan": vif.vlan,
            "asn": vif.asn,
            "authKey": vif.auth_key,
            "amazonAddress": vif.amazon_address,
            "customerAddress": vif.customer_address,
            "virtualInterfaceState": vif.state,
            "virtualGatewayId": vif.gateway_id,
            # Fields OUTSCALE keeps only for AWS compatibility: always null there.
            "addressFamily": None,
            "amazonSideAsn": None,
            "bgpPeers": None,
            "customerRouterConfig": None,
            "directConnectGatewayId": None,
            "routeFilterPrefixes": None,
        }
        if self.flavor == "aws":
            wire.update(
                addressFamily="ipv4",
                amazonSideAsn=_AWS_AMAZON_SIDE_ASN,
                bgpPeers=[self._wire_bgp_peer(vif)],
                routeFilterPrefixes=[],
                customerRouterConfig=self._router_config(vif) if vif.state == "available" else None,
            )
        return wire

    def _wire_bgp_peer(self, vif: Vif) -> Wire:
        return {
            "bgpPeerId": vif.bgp_peer_id,
            "asn": vif.asn,
            "authKey": vif.auth_key,
            "addressFamily": "ipv4",
            "amazonAddress": vif.amazon_address,
            "customerAddress": vif.customer_address,
            "bgpPeerState": _BGP_PEER_STATES.get(vif.state, "deleted"),
            "bgpStatus": "up" if vif.state == "available" else "down",
        }

    @staticmethod
    def _router_config(vif: Vif) -> str:
        """A short router snippet; like AWS's it embeds the BGP key, which callers must not log."""
        neighbor = (vif.amazon_address or "").split("/")[0]
        return (
            f"interface vlan {vif.vlan}\n ip address {vif.customer_address}\n"
            f"router bgp {vif.asn}\n neighbor {neighbor} remote-as {_AWS_AMAZON_SIDE_ASN}\n"
            f" neighbor {neighbor} password {vif.auth_key}\n"
        )

    def _wire_connection(self, connection: Connection) -> Wire:
        aws = self.flavor == "aws"
        return {
            "ownerAccount": connection.owner_account,
            "connectionId": connection.connection_id,
            "connectionName": connection.name,
            "connectionState": "available",
            "region": self.region,
            "location": connection.location,
            "bandwidth": connection.bandwidth,
            "awsDevice": f"{connection.location}-dx01" if aws else None,
            "lagId": None,
            "loaIssueTime": None,
            "partnerName": None,
            "vlan": None,
        }
