"""DirectLinkSandbox: a local DirectLink / Direct Connect endpoint for boto3 and the AWS CLI."""

from types import TracebackType
from typing import Self

from .clock import SandboxClock
from .directlink_server import ApiServer, Faults, Request
from .directlink_state import DirectLinkState, Flavor, Wire


class DirectLinkSandbox:
    """In-memory accounts, connections, gateways and VIFs served over the real wire protocol."""

    def __init__(
        self,
        flavor: Flavor = "outscale",
        region: str = "eu-west-2",
        clock: SandboxClock | None = None,
        pending_seconds: float = 60,
        deleting_seconds: float = 60,
        page_size: int | None = None,
        faults: Faults | None = None,
        seed: int = 0,
    ) -> None:
        self.clock = clock if clock is not None else SandboxClock()
        self._state = DirectLinkState(flavor, region, self.clock, pending_seconds, deleting_seconds, page_size, seed)
        self._server = ApiServer(self._state, faults if faults is not None else Faults(), seed)

    @property
    def flavor(self) -> Flavor:
        return self._state.flavor

    @property
    def region(self) -> str:
        return self._state.region

    # ---- world setup -----------------------------------------------------------------------

    def add_account(self, account_id: str, access_key: str, secret_key: str) -> None:
        """Let access_key / secret_key sign requests as account_id."""
        self._server.add_credentials(account_id, access_key, secret_key)

    def add_location(self, code: str, name: str) -> None:
        """Register a location (datacenter)."""
        self._state.add_location(code, name)

    def add_connection(
        self, owner_account: str, name: str, location: str, bandwidth: str = "10Gbps", connection_id: str | None = None
    ) -> str:
        """Create an available connection; returns its dxcon- id (given, or a new one)."""
        return self._state.add_connection(owner_account, name, location, bandwidth, connection_id)

    def add_gateway(self, account_id: str, state: str = "available", gateway_id: str | None = None) -> str:
        """Create a virtual gateway in account_id; returns its vgw- id."""
        return self._state.add_gateway(account_id, state, gateway_id)

    def set_gateway_state(self, gateway_id: str, state: str) -> None:
        """Move a gateway to pending, available, deleting or deleted."""
        self._state.set_gateway_state(gateway_id, state)

    def allocate(
        self,
        connection_id: str,
        owner_account: str,
        name: str,
        vlan: int,
        asn: int,
        auth_key: str | None = None,
        amazon_address: str | None = None,
        customer_address: str | None = None,
    ) -> Wire:
        """Allocate a hosted VIF for owner_account as the connection owner; returns its wire dict."""
        optional = {"authKey": auth_key, "amazonAddress": amazon_address, "customerAddress": customer_address}
        allocation = {"virtualInterfaceName": name, "vlan": vlan, "asn": asn}
        allocation |= {key: value for key, value in optional.items() if value is not None}
        return self._state.allocate(connection_id, owner_account, allocation)

    # ---- inspection ------------------------------------------------------------------------

    def vif(self, vif_id: str) -> Wire:
        """A VIF's wire dict as of clock.now(); KeyError if unknown (or gone, on aws)."""
        return self._state.vif(vif_id)

    def vifs(self) -> list[Wire]:
        """Every VIF of every account, in creation order."""
        return self._state.vifs()

    def confirm_count(self, vif_id: str) -> int:
        """Successful ConfirmPrivateVirtualInterface calls for vif_id."""
        return self._state.confirm_count(vif_id)

    @property
    def calls(self) -> list[tuple[str, str]]:
        """(operation, account id) of every request that passed auth, faulted ones included, in order."""
        return self._server.calls

    @property
    def requests(self) -> list[Request]:
        """Every request that passed auth, with the VIF it named and its outcome ("ok" or the error code)."""
        return self._server.requests

    def requests_for(self, vif_id: str, operation: str = "ConfirmPrivateVirtualInterface") -> list[Request]:
        """The requests of one operation naming vif_id, refused and faulted ones included, in order."""
        return [r for r in self._server.requests if r.operation == operation and r.vif_id == vif_id]

    @property
    def fault_counts(self) -> dict[str, int]:
        """How many requests were answered with an injected fault: {"throttled": n, "failed": m}."""
        return self._server.fault_counts

    @property
    def last_request_headers(self) -> dict[str, str]:
        """Headers (lower-case names) of the last request sent to the API route."""
        return self._server.last_request_headers

    # ---- faults ----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._server.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._server.faults = faults

    def set_faults(
        self, throttle_rate: float | None = None, error_rate: float | None = None, latency_ms: int | None = None
    ) -> Faults:
        """Change the given fault settings and keep the others; returns the new Faults."""
        given = {"throttle_rate": throttle_rate, "error_rate": error_rate, "latency_ms": latency_ms}
        return self._server.set_faults(**{name: value for name, value in given.items() if value is not None})

    # ---- serving ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:port (ephemeral when 0) in a daemon thread; returns the URL."""
        return self._server.start(port)

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT while running."""
        return self._server.url

    @property
    def server_address(self) -> tuple[str, int]:
        """The listening socket's (host, port) while running."""
        return self._server.server_address

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
