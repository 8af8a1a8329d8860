"""Talks to DirectLink (OUTSCALE) and Direct Connect (AWS) through boto3's `directconnect` client."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from pydantic import ValidationError

from .config import Target
from .log import logger
from .models import VirtualGateway, VirtualInterface, parse_gateways

# Throttling and 5xx are retried by botocore with backoff; `legacy` mode (the default) retries
# fewer error codes, so the mode is set explicitly. The count bounds how long one target can stall.
MAX_ATTEMPTS = 4
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    connect_timeout=5,
    read_timeout=10,
    user_agent_extra="vif-gatekeeper",
)
SECRET_REFRESH_SECONDS = 900  # keys from Secrets Manager are read again about this often (rotation)
REFRESH_SPREAD = 0.2  # each target's refresh moves by its own share of +/-20%: a fleet refreshes a few at a time
MAX_PAGES = 1000
ROLE_SESSION_SECONDS = 3600
REFRESH_MARGIN_SECONDS = 300


class TargetError(Exception):
    """A target could not be reached or answered with an error; the text is safe to log."""

    def __init__(self, target: str, operation: str, code: str, message: str, *, retryable: bool):
        self.target, self.operation, self.code, self.retryable = target, operation, code, retryable
        super().__init__(f"{operation} on {target} failed: {code}: {message}")


def endpoint_url(target: Target) -> str | None:
    """The endpoint to pass to boto3, or None to let botocore resolve it (and honour env vars)."""
    if target.endpoint_url:
        return target.endpoint_url
    if os.environ.get("AWS_ENDPOINT_URL_DIRECT_CONNECT") or os.environ.get("AWS_ENDPOINT_URL"):
        return None  # the standard override wins, for OUTSCALE targets too (sandbox, proxies)
    if target.provider == "outscale":
        return f"https://directlink.{target.region}.outscale.com"
    return None


def _wrap(target: str, operation: str, exc: Exception) -> TargetError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return TargetError(
            target,
            operation,
            error.get("Code", "Error"),
            error.get("Message", ""),
            retryable=status >= 500 or "Throttl" in error.get("Code", ""),
        )
    return TargetError(target, operation, type(exc).__name__, str(exc), retryable=True)


def _is_missing(error: TargetError) -> bool:
    """The API's own word that a VIF is not there (AWS and OUTSCALE: a client error "... does not exist")."""
    return error.code == "DirectConnectClientException" and "does not exist" in str(error)


class DirectLinkApi:
    """The calls a cycle needs, with pagination and errors made readable.

    Every answer is checked for the shape the API promises: a proxy answering 200 with an HTML page
    or nothing gives botocore a dict without the expected key, and that must fail the call, never
    read as "no VIFs" or as "confirmed".
    """

    def __init__(self, target: Target, client):
        self.target = target
        self.client = client
        # Ids of the VIFs the last listing skipped as unreadable; None when one had no usable id.
        self.unreadable: set[str] | None = set()

    def _call(self, operation: str, **params) -> dict:
        try:
            return getattr(self.client, operation)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise _wrap(self.target.name, operation, exc) from None
        except (ResponseParserError, ValueError, TypeError, AttributeError) as exc:
            # botocore's parser chokes on some bodies (not UTF-8, a list where a map belongs).
            raise self._malformed(operation, f"the answer could not be parsed ({type(exc).__name__})") from None

    def _malformed(self, operation: str, what: str) -> TargetError:
        return TargetError(self.target.name, operation, "MalformedAnswer", what, retryable=True)

    def _field(self, operation: str, answer: dict, key: str, kind: type) -> Any:
        value = answer.get(key)
        if not isinstance(value, kind):
            got = "nothing" if value is None else type(value).__name__
            raise self._malformed(operation, f"expected {key} ({kind.__name__}) in the answer, got {got}")
        return value

    def _page(self, **params: str) -> tuple[list, str | None]:
        operation = "describe_virtual_interfaces"
        page = self._call(operation, **params)
        items = self._field(operation, page, "virtualInterfaces", list)
        token = page.get("nextToken")
        if token is not None and not isinstance(token, str):
            raise self._malformed(operation, f"nextToken is a {type(token).__name__}, not a string")
        return items, token or None

    def describe_virtual_interfaces(self) -> list[VirtualInterface]:
        """Every VIF the account sees. Follows nextToken (AWS); OUTSCALE never sends one."""
        items: list = []
        params: dict[str, str] = {}
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            page, token = self._page(**params)
            items.extend(page)
            if not token:
                skipped: list[object] = []
                vifs = self._parse(items, skipped)
                # Listed but unreadable is not gone: the cycle must not announce these as disappeared.
                # An unreadable item without a usable id could be any VIF: then nothing is "gone".
                named = all(isinstance(vif_id, str) and vif_id for vif_id in skipped)
                self.unreadable = {str(vif_id) for vif_id in skipped} if named else None
                return vifs
            if token in seen_tokens:  # a server repeating itself must not loop us forever
                raise TargetError(
                    self.target.name,
                    "describe_virtual_interfaces",
                    "PaginationLoop",
                    "the same nextToken came back twice",
                    retryable=False,
                )
            seen_tokens.add(token)
            params = {"nextToken": token}
        raise TargetError(
            self.target.name,
            "describe_virtual_interfaces",
            "TooManyPages",
            f"more than {MAX_PAGES} pages",
            retryable=False,
        )

    def _parse(self, items: list, skipped: list[object] | None = None) -> list[VirtualInterface]:
        """VIFs one by one: one the model cannot read (or store) is skipped and named, never echoed (authKey).

        `skipped` collects the ids (whatever they are) of the items left out.
        """
        vifs: dict[str, VirtualInterface] = {}
        for item in items:
            if not isinstance(item, dict):
                self._skipped(None, [f"<{type(item).__name__}, not an object>"], skipped)
                continue
            try:
                vif = VirtualInterface.model_validate(item)
            except ValidationError as exc:
                fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
                self._skipped(item.get("virtualInterfaceId"), fields, skipped)
                continue
            if vif.id in vifs:  # two answers for one VIF: trust neither more, keep the first
                logger.error(
                    "virtual interface listed twice; the first is kept",
                    extra={"target": self.target.name, "vif_id": vif.id},
                )
                continue
            vifs[vif.id] = vif
        return list(vifs.values())

    def _skipped(self, vif_id: object, fields: list[str], skipped: list[object] | None) -> None:
        if skipped is not None:
            skipped.append(vif_id)
        shown = vif_id[:64] if isinstance(vif_id, str) else repr(vif_id)[:64]
        logger.error(
            "unreadable virtual interface skipped",
            extra={"target": self.target.name, "vif_id": shown.encode("utf-8", "replace").decode(), "fields": fields},
        )

    def describe_one(self, vif_id: str) -> VirtualInterface | None:
        """One VIF as the API sees it now; None only when the API says it is not there.

        Raises TargetError when the answer cannot be trusted: a lost or broken answer is "unknown",
        never "gone" (the caller keeps its claim and looks again next cycle).
        """
        try:
            items, _ = self._page(virtualInterfaceId=vif_id)
        except TargetError as exc:
            if _is_missing(exc):
                return None
            raise
        found = [v for v in self._parse(items) if v.id == vif_id]
        if not found and items:  # listed, but unreadable: not the same as gone
            raise self._malformed("describe_virtual_interfaces", f"{vif_id} was listed but could not be read")
        return found[0] if found else None

    def describe_virtual_gateways(self) -> dict[str, VirtualGateway]:
        operation = "describe_virtual_gateways"
        items = self._field(operation, self._call(operation), "virtualGateways", list)
        try:
            return parse_gateways(items)
        except (ValidationError, TypeError) as exc:
            raise self._malformed(operation, f"a gateway could not be read ({type(exc).__name__})") from None

    def confirm(self, vif_id: str, gateway_id: str) -> str:
        operation = "confirm_private_virtual_interface"
        answer = self._call(operation, virtualInterfaceId=vif_id, virtualGatewayId=gateway_id)
        # A 200 without the new state is not a confirmation: the caller looks at the VIF itself.
        return self._field(operation, answer, "virtualInterfaceState", str)

    def reject(self, vif_id: str) -> str:
        """Deleting a `confirming` VIF as its owner rejects it."""
        operation = "delete_virtual_interface"
        return self._field(operation, self._call(operation, virtualInterfaceId=vif_id), "virtualInterfaceState", str)


@dataclass(frozen=True)
class _Keys:
    """One set of keys. Hidden from repr: a traceback or a log of this object must not show them."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # wall clock; None when no end is known (keys from a secret)

    def client_args(self) -> dict[str, str | None]:
        return {
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "aws_session_token": self.token,
        }

    def digest(self) -> bytes:
        """Tells whether keys changed without keeping them in another form; never logged."""
        return hashlib.sha256("\0".join((self.access_key, self.secret_key, self.token or "")).encode()).digest()


@dataclass(frozen=True)
class _Built:
    """A target's client, the settings and keys it was built for, and when its keys are read again.

    `api` is None once the client was dropped to bound the cache: the keys stay, so the next get()
    builds a client again without reading them again (no AssumeRole, no secret read).
    """

    target: Target
    api: DirectLinkApi | None
    session: boto3.Session = field(repr=False)
    keys: _Keys | None  # None: it signs with the session's own credentials (base session, profile)
    expires_at: float | None  # when its keys stop working, if known
    due_at: float  # wall clock

    @property
    def keys_digest(self) -> bytes | None:
        return self.keys.digest() if self.keys is not None else None


class _Slot:
    """One target's place in the cache; its lock lets one thread refresh it while the other targets go on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.built: _Built | None = None


def _share(name: str) -> float:
    """A fixed number in [0, 1) per target name: where in the spread that target's refreshes fall."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def _due_at(target: Target, keys: _Keys | None, now: float) -> float:
    """When the keys are read again: secrets every SECRET_REFRESH_SECONDS, assumed roles before they expire.

    Each target's time moves by its own fixed share of a spread, so a fleet whose keys were all read
    in one cold start does not read them all again in one cycle, 15 minutes later, then every 15.
    """
    due = float("inf")  # a profile or the base session refreshes its own credentials
    if target.credentials and target.credentials.secret_id:
        due = now + SECRET_REFRESH_SECONDS * (1 + REFRESH_SPREAD * (2 * _share(target.name) - 1))
    if keys is not None and keys.expires_at is not None:
        # Between one and two margins before the end: always in time, never all at once.
        due = min(due, keys.expires_at - REFRESH_MARGIN_SECONDS * (1 + _share(target.name)))
    return due


class DirectLinkClients:
    """One client per target, all from one boto3 Session, each signing with its own target's keys.

    A boto3 Session holds its own copy of botocore's data (about 8 MB, 50-90 ms of CPU); a client
    from a shared one costs about 0.3 MB, and about 0.7 MB more once it opened an HTTPS connection
    (its own SSL context holds the CA bundle). Keys from a secret are read again when due (spread per
    target), assumed-role keys renewed before they expire, and a client is rebuilt only when its
    keys changed. Worker threads call get() concurrently: each target is built once, and one
    target's refresh does not wait for another's.

    At most `max_clients` clients are held, the least recently used dropped first: a `work`
    instance meets any batch of a large fleet, and a client per target it ever saw outgrew the
    function's memory. Every target's keys are kept (a few hundred bytes): a dropped client is
    built again from them, without another AssumeRole or secret read.
    """

    def __init__(
        self,
        base_session: Callable[[], boto3.Session] = boto3.Session,
        secrets_client: Callable[[], Any] | None = None,
        pool: int = 10,
        max_clients: int = 100,
    ):
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        self._max_clients = max_clients
        # Targets whose slot holds a client, least recently used first (guarded by self._lock).
        self._held: OrderedDict[str, _Slot] = OrderedDict()
        self.clients_built = 0  # every client built, the first and each rebuilt one (benchmarks read it)
        self._base_session = base_session
        self._secrets_client = secrets_client
        # The STS and Secrets Manager clients are shared by every worker thread refreshing keys (a cold
        # start refreshes them all at once): one pooled connection per worker, or urllib3 churns them.
        self._shared_config = CLIENT_CONFIG.merge(Config(max_pool_connections=max(10, pool)))
        self._lock = threading.RLock()  # the slots and the shared pieces, each created once
        # boto3 Sessions are not thread-safe: clients are created from them one at a time (~5 ms each).
        self._build_lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._session: boto3.Session | None = None
        self._profiles: dict[str, boto3.Session] = {}
        self._shared: dict[tuple[str, ...], Any] = {}

    def get(self, target: Target) -> DirectLinkApi:
        with self._lock:
            slot = self._slots.setdefault(target.name, _Slot())
        built = slot.built
        if built is not None and built.api is not None and self._current(built, target):
            self._hold(target.name, slot)
            return built.api
        with slot.lock:
            built = slot.built
            if built is None or not self._current(built, target):  # else another thread refreshed it meanwhile
                built = self._refresh(target, built)
            api = built.api
            if api is None:  # dropped from the cache: the same keys, a new client
                api = self._api(target, built.session, built.keys)
                built = replace(built, api=api)
            slot.built = built
        self._hold(target.name, slot)
        return api

    @property
    def held(self) -> int:
        """How many clients are held now (at most max_clients)."""
        with self._lock:
            return len(self._held)

    def _hold(self, name: str, slot: _Slot) -> None:
        """Mark the target's client as just used; drop the least recently used beyond max_clients."""
        with self._lock:
            self._held[name] = slot
            self._held.move_to_end(name)
            while len(self._held) > self._max_clients:
                _, oldest = self._held.popitem(last=False)
                built = oldest.built
                if built is not None and built.api is not None:
                    # A thread still using that client keeps its reference; the client goes when it is done.
                    oldest.built = replace(built, api=None)

    @staticmethod
    def _current(built: _Built, target: Target) -> bool:
        # A changed target (region, endpoint, credentials) in the policy gets new keys and a new client.
        return built.target == target and time.time() < built.due_at

    def _refresh(self, target: Target, built: _Built | None) -> _Built:
        now = time.time()
        same_target = built is not None and built.target == target
        try:
            session, keys = self._keys(target)
        except TargetError as exc:
            still_valid = built is not None and (built.expires_at is None or now < built.expires_at)
            if same_target and exc.retryable and still_valid:
                # The keys read last time still work; a secret store having a bad minute must not stop
                # the target. The due time stays past, so the next cycle tries again.
                logger.warning(
                    "keys not refreshed; the current ones are used until the next cycle",
                    extra={"target": target.name, "error": str(exc)},
                )
                return built  # type: ignore[return-value]
            raise
        digest = keys.digest() if keys is not None else None
        due_at = _due_at(target, keys, now)
        expires_at = keys.expires_at if keys is not None else None
        if same_target and built is not None and digest == built.keys_digest:
            logger.debug("keys read again, unchanged: client kept", extra={"target": target.name})
            return replace(built, keys=keys, expires_at=expires_at, due_at=due_at)
        api = self._api(target, session, keys)
        reason = "new target" if built is None else "keys changed" if same_target else "target settings changed"
        logger.info("directlink client built", extra={"target": target.name, "reason": reason})
        return _Built(target, api, session, keys, expires_at, due_at)

    def _api(self, target: Target, session: boto3.Session, keys: _Keys | None) -> DirectLinkApi:
        try:
            client = self._client(
                session,
                "directconnect",
                region_name=target.region,
                endpoint_url=endpoint_url(target),
                **(keys.client_args() if keys is not None else {}),
            )
        except (ClientError, BotoCoreError, ValueError) as exc:
            raise _wrap(target.name, "credentials", exc) from None
        with self._lock:
            self.clients_built += 1
        return DirectLinkApi(target, client)

    def _keys(self, target: Target) -> tuple[boto3.Session, _Keys | None]:
        """The session to build from and the keys to sign with (None: the session's own credentials)."""
        creds = target.credentials
        try:
            if creds and creds.profile:
                session, keys = self._profile(creds.profile), None
            elif creds and creds.secret_id:
                session, keys = self._base(), self._keys_from_secret(target, creds.secret_id)
            else:
                session, keys = self._base(), None
            if target.role_arn:
                keys = self._assume_role(target, session, keys)
        except (ClientError, BotoCoreError, ValueError) as exc:
            raise _wrap(target.name, "credentials", exc) from None
        return session, keys

    def _assume_role(self, target: Target, session: boto3.Session, source: _Keys | None) -> _Keys:
        assert target.role_arn is not None
        if source is None:  # the session's own credentials: one STS client per session and region
            key = ("sts", str(id(session)), target.region)
            sts = self._shared_client(key, lambda: self._pooled(session, "sts", region_name=target.region))
        else:  # keys from a secret assume the role (rare): their own STS client, gone with them
            sts = self._client(session, "sts", region_name=target.region, **source.client_args())
        try:
            # The external id is the member role's trust condition: sent here, never logged.
            external = {"ExternalId": target.external_id} if target.external_id else {}
            answer = sts.assume_role(
                RoleArn=target.role_arn,
                RoleSessionName=f"vif-gatekeeper-{target.name}"[:64],
                DurationSeconds=ROLE_SESSION_SECONDS,
                **external,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _wrap(target.name, "assume_role", exc) from None
        keys = answer["Credentials"]
        return _Keys(keys["AccessKeyId"], keys["SecretAccessKey"], keys["SessionToken"], keys["Expiration"].timestamp())

    def _keys_from_secret(self, target: Target, secret_id: str) -> _Keys:
        """The secret holds JSON {"access_key_id": ..., "secret_access_key": ...}."""
        if self._secrets_client is not None:
            client = self._secrets_client()
        else:
            client = self._shared_client(("secretsmanager",), lambda: self._pooled(self._base(), "secretsmanager"))
        try:
            raw = client.get_secret_value(SecretId=secret_id)["SecretString"]
        except (ClientError, BotoCoreError) as exc:
            raise _wrap(target.name, "get_secret_value", exc) from None
        try:
            value = json.loads(raw)
            return _Keys(value["access_key_id"], value["secret_access_key"])
        except (ValueError, KeyError, TypeError):
            # Never echo the secret's text: it holds the keys.
            raise TargetError(
                target.name,
                "get_secret_value",
                "BadSecret",
                f"secret {secret_id} must be JSON with access_key_id and secret_access_key",
                retryable=False,
            ) from None

    def _base(self) -> boto3.Session:
        with self._lock:
            if self._session is None:
                self._session = self._base_session()
            return self._session

    def _profile(self, name: str) -> boto3.Session:
        """One Session per profile name (CLI use): each reads its own keys from the AWS config files."""
        with self._lock:
            if name not in self._profiles:
                self._profiles[name] = boto3.Session(profile_name=name)
            return self._profiles[name]

    def _shared_client(self, key: tuple[str, ...], build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._shared:
                self._shared[key] = build()
            return self._shared[key]

    def _client(self, session: boto3.Session, service: str, **args: Any) -> Any:
        """A client for one target (one thread at a time uses it: botocore's pool of 10 is plenty)."""
        with self._build_lock:
            return session.client(service, config=CLIENT_CONFIG, **args)  # type: ignore[call-overload]

    def _pooled(self, session: boto3.Session, service: str, **args: Any) -> Any:
        """A client every worker thread may use at once."""
        with self._build_lock:
            return session.client(service, config=self._shared_config, **args)  # type: ignore[call-overload]
