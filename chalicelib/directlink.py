"""Talks to DirectLink (OUTSCALE) and Direct Connect (AWS) through boto3's `directconnect` client."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
SECRET_SESSION_SECONDS = 900  # keys from Secrets Manager are read again this often (rotation)
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
                return self._parse(items)
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

    def _parse(self, items: list) -> list[VirtualInterface]:
        """VIFs one by one: one the model cannot read (or store) is skipped and named, never echoed (authKey)."""
        vifs: dict[str, VirtualInterface] = {}
        for item in items:
            if not isinstance(item, dict):
                self._skipped("?", [f"<{type(item).__name__}, not an object>"])
                continue
            try:
                vif = VirtualInterface.model_validate(item)
            except ValidationError as exc:
                fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
                self._skipped(item.get("virtualInterfaceId"), fields)
                continue
            if vif.id in vifs:  # two answers for one VIF: trust neither more, keep the first
                logger.error("virtual interface listed twice; the first is kept",
                             extra={"target": self.target.name, "vif_id": vif.id})
                continue
            vifs[vif.id] = vif
        return list(vifs.values())

    def _skipped(self, vif_id: object, fields: list[str]) -> None:
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


@dataclass
class _Cached:
    target: Target
    api: DirectLinkApi
    expires_at: float


class DirectLinkClients:
    """Builds one client per target, lazily, and rebuilds it before assumed-role keys expire."""

    def __init__(
        self,
        base_session: Callable[[], boto3.Session] = boto3.Session,
        secrets_client: Callable[[], object] | None = None,
    ):
        self._base_session = base_session
        self._secrets_client = secrets_client
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def get(self, target: Target) -> DirectLinkApi:
        with self._lock:
            cached = self._cache.get(target.name)
        # A changed target (region, endpoint, credentials) in the policy gets a new client.
        if cached and cached.target == target and cached.expires_at - REFRESH_MARGIN_SECONDS > time.time():
            return cached.api
        try:
            session, expires_at = self._session(target)
            client = session.client(
                "directconnect", region_name=target.region, endpoint_url=endpoint_url(target), config=CLIENT_CONFIG
            )
        except TargetError:
            raise
        except (ClientError, BotoCoreError, ValueError) as exc:
            raise _wrap(target.name, "credentials", exc) from None
        api = DirectLinkApi(target, client)
        with self._lock:
            self._cache[target.name] = _Cached(target, api, expires_at)
        return api

    def _session(self, target: Target) -> tuple[boto3.Session, float]:
        expires_at = float("inf")  # profiles and the base session refresh themselves
        creds = target.credentials
        if creds and creds.profile:
            session = boto3.Session(profile_name=creds.profile)
        elif creds and creds.secret_id:
            session = boto3.Session(**self._keys_from_secret(target, creds.secret_id))
            expires_at = time.time() + SECRET_SESSION_SECONDS + REFRESH_MARGIN_SECONDS
        else:
            session = self._base_session()
        if not target.role_arn:
            return session, expires_at
        answer = session.client("sts", region_name=target.region, config=CLIENT_CONFIG).assume_role(
            RoleArn=target.role_arn,
            RoleSessionName=f"vif-gatekeeper-{target.name}"[:64],
            DurationSeconds=ROLE_SESSION_SECONDS,
        )
        keys = answer["Credentials"]
        assumed = boto3.Session(
            aws_access_key_id=keys["AccessKeyId"],
            aws_secret_access_key=keys["SecretAccessKey"],
            aws_session_token=keys["SessionToken"],
        )
        return assumed, keys["Expiration"].timestamp()

    def _keys_from_secret(self, target: Target, secret_id: str) -> dict[str, str]:
        """The secret holds JSON {"access_key_id": ..., "secret_access_key": ...}."""
        client = (
            self._secrets_client()
            if self._secrets_client
            else self._base_session().client("secretsmanager", config=CLIENT_CONFIG)
        )
        try:
            raw = client.get_secret_value(SecretId=secret_id)["SecretString"]
        except (ClientError, BotoCoreError) as exc:
            raise _wrap(target.name, "get_secret_value", exc) from None
        try:
            value = json.loads(raw)
            return {"aws_access_key_id": value["access_key_id"], "aws_secret_access_key": value["secret_access_key"]}
        except (ValueError, KeyError, TypeError):
            # Never echo the secret's text: it holds the keys.
            raise TargetError(
                target.name,
                "get_secret_value",
                "BadSecret",
                f"secret {secret_id} must be JSON with access_key_id and secret_access_key",
                retryable=False,
            ) from None
