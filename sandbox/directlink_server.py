"""HTTP front end of the sandbox: AWS JSON 1.1 routing, SigV4 auth, fault injection, admin endpoint."""

import ipaddress
import json
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .directlink_state import OPERATIONS, ApiError, DirectLinkState
from .sigv4 import authenticate

log = logging.getLogger(__name__)

JSON_11 = "application/x-amz-json-1.1"
TARGET_PREFIX = "OvertureService"
SERVICE = "directconnect"
MAX_LATENCY_MS = 10_000
_WIRE_FAULTS = {"throttleRate": "throttle_rate", "errorRate": "error_rate", "latencyMs": "latency_ms"}


def _fault_problem(name: str, value: Any) -> str | None:
    """What is wrong with a fault setting, or None; the caller prefixes the field's name."""
    if name == "latency_ms":
        if type(value) is not int or not 0 <= value <= MAX_LATENCY_MS:
            return f"must be an integer between 0 and {MAX_LATENCY_MS}, got {value!r}"
    elif type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= 1:
        return f"must be a number between 0 and 1, got {value!r}"
    return None


@dataclass(frozen=True)
class Request:
    """One authenticated API request as the sandbox saw it: what, by whom, on which VIF, and how it ended."""

    operation: str
    account_id: str
    vif_id: str | None  # the request's virtualInterfaceId, when it names one
    outcome: str  # "ok", or the error code answered (an injected fault's included)


@dataclass(frozen=True)
class Faults:
    """Fault injection applied to authenticated API requests."""

    throttle_rate: float = 0.0
    error_rate: float = 0.0
    latency_ms: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if problem := _fault_problem(f.name, getattr(self, f.name)):
                raise ValueError(f"{f.name} {problem}")

    def to_wire(self) -> dict[str, Any]:
        """The admin endpoint's camelCase view."""
        values = asdict(self)
        return {wire: values[name] for wire, name in _WIRE_FAULTS.items()}


class AdminError(Exception):
    """A bad admin request; the message names the offending field."""


class ApiServer:
    """Owns the credentials, faults and request records, and runs the HTTP server in a daemon thread."""

    def __init__(self, state: DirectLinkState, faults: Faults, seed: int) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._credentials: dict[str, tuple[str, str]] = {}
        self._faults = faults
        self._fault_rng = random.Random(seed)
        self._calls: list[tuple[str, str]] = []
        self._requests: list[Request] = []
        self._fault_counts = {"throttled": 0, "failed": 0}
        self._last_request_headers: dict[str, str] = {}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- configuration and records ---------------------------------------------------------

    def add_credentials(self, account_id: str, access_key: str, secret_key: str) -> None:
        """Let access_key sign requests for account_id."""
        with self._lock:
            self._credentials[access_key] = (account_id, secret_key)

    def credentials(self, access_key: str) -> tuple[str, str] | None:
        """(account id, secret key) for access_key, if known."""
        with self._lock:
            return self._credentials.get(access_key)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults

    def set_faults(self, **changes: Any) -> Faults:
        """Replace the given fault settings (python names), keep the others."""
        with self._lock:
            self._faults = replace(self._faults, **changes)
            return self._faults

    @property
    def calls(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._calls)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def record_request(self, operation: str, account_id: str, body: bytes, outcome: str) -> None:
        try:
            vif_id = json.loads(body or b"{}").get("virtualInterfaceId")
        except (ValueError, AttributeError):
            vif_id = None
        with self._lock:
            self._requests.append(Request(operation, account_id, vif_id if isinstance(vif_id, str) else None, outcome))

    @property
    def fault_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._fault_counts)

    @property
    def last_request_headers(self) -> dict[str, str]:
        with self._lock:
            return dict(self._last_request_headers)

    def record_headers(self, headers: dict[str, str]) -> None:
        with self._lock:
            self._last_request_headers = headers

    def admit(self, operation: str, account_id: str) -> None:
        """Record an authenticated call, then apply latency and maybe inject a fault (raises ApiError)."""
        with self._lock:
            self._calls.append((operation, account_id))
            faults = self._faults
            # Draw both numbers every time so one setting's outcomes do not shift with the other's.
            throttle_draw, error_draw = self._fault_rng.random(), self._fault_rng.random()
            throttled = throttle_draw < faults.throttle_rate
            failed = not throttled and error_draw < faults.error_rate
            if throttled:
                self._fault_counts["throttled"] += 1
            elif failed:
                self._fault_counts["failed"] += 1
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)  # outside the lock: slow requests must not serialize
        if throttled:
            raise ApiError(400, "ThrottlingException", "Rate exceeded")
        if failed:
            raise ApiError(500, "DirectConnectServerException", "Internal error (injected by sandbox)")

    # ---- admin endpoint --------------------------------------------------------------------

    def admin_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /_sandbox/faults: change any of throttleRate, errorRate, latencyMs."""
        changes = {}
        for key, value in body.items():
            if key not in _WIRE_FAULTS:
                raise AdminError(f"unknown field {key!r}; expected any of {', '.join(_WIRE_FAULTS)}")
            if problem := _fault_problem(_WIRE_FAULTS[key], value):
                raise AdminError(f"{key} {problem}")
            changes[_WIRE_FAULTS[key]] = value
        return self.set_faults(**changes).to_wire()

    def admin_clock(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /_sandbox/clock: {"advanceSeconds": N} or {"set": iso}."""
        clock = self.state.clock
        if set(body) == {"advanceSeconds"}:
            seconds = body["advanceSeconds"]
            if type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds < 0:
                raise AdminError(f"advanceSeconds must be a non-negative number, got {seconds!r}")
            clock.advance(timedelta(seconds=seconds))
        elif set(body) == {"set"}:
            text = body["set"]
            try:
                clock.set(datetime.fromisoformat(text))
            except (TypeError, ValueError):
                raise AdminError(f"set must be an ISO 8601 time with a UTC offset, got {text!r}") from None
        else:
            raise AdminError('expected exactly one of the fields "advanceSeconds" or "set"')
        return {"now": clock.now().isoformat()}

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    @property
    def server_address(self) -> tuple[str, int]:
        """The listening socket's (host, port)."""
        if self._httpd is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        host, port = self._httpd.socket.getsockname()[:2]
        return host, port

    def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1:port (ephemeral when 0) in a daemon thread; returns the URL."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.api = self
        # A short poll interval keeps stop() fast; the default 0.5 s adds up over a test suite.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="directlink-sandbox", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    api: ApiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    timeout = 60  # idle keep-alive connections give their thread back eventually
    server: _HTTPServer

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        request_id = str(uuid.uuid4())
        split = urlsplit(self.path)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The body cannot be skipped reliably, so the connection must not be reused.
            self.close_connection = True
            self._send(411, {"__type": "LengthRequired", "message": "Send the body with Content-Length"}, request_id)
            return
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self.close_connection = True
            self._send(400, {"__type": "SerializationException", "message": "Bad Content-Length"}, request_id)
            return
        try:
            if split.path.startswith("/_sandbox/"):
                answer = self._admin(method, split.path, body)
            elif split.path == "/":
                if method != "POST":
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on /; use POST")
                answer = self._api(split.query, body, request_id)
            else:
                raise ApiError(404, "NotFound", f"No route for {method} {split.path}")
        except ApiError as error:
            self._send(error.status, {"__type": error.code, "message": error.message}, request_id, error.code)
            return
        except AdminError as error:
            self._send(400, {"__type": "InvalidAdminRequest", "message": str(error)}, request_id, "InvalidAdminRequest")
            return
        except Exception:
            # A sandbox bug must read as a 500 answer, not as a dropped connection that botocore retries.
            log.exception("sandbox failed on %s %s", method, split.path)
            failure = {"__type": "InternalFailure", "message": "The sandbox failed; see its log"}
            self._send(500, failure, request_id, "InternalFailure")
            return
        self._send(200, answer, request_id)

    def _api(self, query: str, body: bytes, request_id: str) -> dict[str, Any]:
        api = self.server.api
        api.record_headers({name.lower(): value for name, value in self.headers.items()})
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != JSON_11:
            raise ApiError(
                400, "SerializationException", f"Content-Type header must be {JSON_11}, got {content_type or 'none'!r}"
            )
        target = self.headers.get("X-Amz-Target", "")
        prefix, _, operation = target.partition(".")
        if prefix != TARGET_PREFIX or operation not in OPERATIONS:
            raise ApiError(
                400, "UnknownOperationException", f"Unknown operation {target or '(no X-Amz-Target header)'}"
            )
        account_id = authenticate(
            "POST",
            "/",
            query,
            self.headers,
            body,
            region=api.state.region,
            service=SERVICE,
            credentials=api.credentials,
        )
        try:
            api.admit(operation, account_id)
            params = _json_object(body, "SerializationException")
            answer = api.state.handle(operation, account_id, params)
        except ApiError as error:
            api.record_request(operation, account_id, body, error.code)
            raise
        api.record_request(operation, account_id, body, "ok")
        return {**answer, "requestId": request_id}

    def _admin(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        if not ipaddress.ip_address(self.client_address[0]).is_loopback:
            raise ApiError(403, "AccessDenied", "The admin endpoint answers loopback clients only")
        api = self.server.api
        routes = {
            ("GET", "/_sandbox/health"): lambda: {"ok": True, "now": api.state.clock.now().isoformat()},
            ("POST", "/_sandbox/faults"): lambda: api.admin_faults(_json_object(body, "InvalidAdminRequest")),
            # `vifgate` reads its time here when VIFGATE_CLOCK names this URL (set by `vifgate sandbox`).
            ("GET", "/_sandbox/clock"): lambda: {"now": api.state.clock.now().isoformat()},
            ("POST", "/_sandbox/clock"): lambda: api.admin_clock(_json_object(body, "InvalidAdminRequest")),
        }
        if (method, path) in routes:
            return routes[(method, path)]()
        if any(route_path == path for _, route_path in routes):
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")
        raise ApiError(404, "NotFound", f"No route for {method} {path}")

    def _send(self, status: int, payload: dict[str, Any], request_id: str, error_type: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON_11)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id)
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(data)


def _json_object(body: bytes, error_code: str) -> dict[str, Any]:
    """Parse a JSON object body; an empty body counts as {}."""
    try:
        value = json.loads(body or b"{}")
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both derive from it
        raise ApiError(400, error_code, f"Request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, error_code, "Request body must be a JSON object")
    return value
