"""Talks to DirectLink (OUTSCALE) and Direct Connect (AWS) through boto3's `directconnect` client."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
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


class DirectLinkApi:
    """The four calls a cycle needs, with pagination and errors made readable."""

    def __init__(self, target: Target, client):
        self.target = target
        self.client = client

    def _call(self, operation: str, **params):
        try:
            return getattr(self.client, operation)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise _wrap(self.target.name, operation, exc) from None

    def describe_virtual_interfaces(self) -> list[VirtualInterface]:
        """Every VIF the account sees. Follows nextToken (AWS); OUTSCALE never sends one."""
        vifs: list[VirtualInterface] = []
        params: dict[str, str] = {}
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self._call("describe_virtual_interfaces", **params)
            vifs.extend(self._parse(page.get("virtualInterfaces") or []))
            token = page.get("nextToken")
            if not token:
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

    def _parse(self, items: list[dict]) -> list[VirtualInterface]:
        """VIFs one by one: one the model cannot read is skipped and named, never echoed (authKey)."""
        vifs = []
        for item in items:
            try:
                vifs.append(VirtualInterface.model_validate(item))
            except ValidationError as exc:
                fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
                logger.error(
                    "unreadable virtual interface skipped",
                    extra={
                        "target": self.target.name,
                        "vif_id": str(item.get("virtualInterfaceId"))[:64],
                        "fields": fields,
                    },
                )
        return vifs

    def describe_one(self, vif_id: str) -> VirtualInterface | None:
        """One VIF as the API sees it now, or None when it cannot be read."""
        try:
            found = self._parse(
                self._call("describe_virtual_interfaces", virtualInterfaceId=vif_id).get("virtualInterfaces") or []
            )
        except TargetError:
            return None
        return next((v for v in found if v.id == vif_id), None)

    def describe_virtual_gateways(self) -> dict[str, VirtualGateway]:
        return parse_gateways(self._call("describe_virtual_gateways").get("virtualGateways"))

    def confirm(self, vif_id: str, gateway_id: str) -> str:
        answer = self._call("confirm_private_virtual_interface", virtualInterfaceId=vif_id, virtualGatewayId=gateway_id)
        return answer.get("virtualInterfaceState", "pending")

    def reject(self, vif_id: str) -> str:
        """Deleting a `confirming` VIF as its owner rejects it."""
        return self._call("delete_virtual_interface", virtualInterfaceId=vif_id).get("virtualInterfaceState", "")


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
