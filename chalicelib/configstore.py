"""Where the policy document lives: a local file (the CLI), an SSM parameter, or an AWS AppConfig profile.

`VIFGATE_CONFIG` names one: `policy.yaml`, `ssm:/vifgate/prod/config` or
`appconfig:vif-gatekeeper-prod/prod/policy` (application/environment/profile). Reading fails closed
with a ConfigError that names the source and never quotes the document; publishing (`vifgate config
push`) writes a new SSM parameter version or a new AppConfig hosted version and deploys it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from .config import ConfigError

SSM_PREFIX = "ssm:"
APPCONFIG_PREFIX = "appconfig:"
READ_MAX_AGE = 60  # seconds a warm Lambda keeps the document before it asks the store again
SSM_STANDARD_MAX = 4096  # bytes a standard SSM parameter holds
SSM_ADVANCED_MAX = 8192  # bytes an advanced one holds (charged per parameter and per API call)
APPCONFIG_MAX = 1024 * 1024  # bytes a hosted AppConfig configuration holds
CONTENT_TYPE = "application/json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FORMS = (
    "give a file path, ssm:/parameter/name, or appconfig:APPLICATION/ENVIRONMENT/PROFILE "
    "(e.g. appconfig:vif-gatekeeper-prod/prod/policy)"
)


class StoreError(Exception):
    """The store could not be read or written (missing resource, denied, conflict); the text says which."""


@dataclass(frozen=True)
class Source:
    """One parsed `VIFGATE_CONFIG` value."""

    kind: Literal["file", "ssm", "appconfig"]
    text: str  # as given, for messages
    path: str = ""  # file
    parameter: str = ""  # ssm
    application: str = ""  # appconfig
    environment: str = ""
    profile: str = ""

    def describe(self) -> str:
        if self.kind == "ssm":
            return f"SSM parameter {self.parameter}"
        if self.kind == "appconfig":
            return f"AppConfig {self.application}/{self.environment}/{self.profile}"
        return f"file {self.path}"


def parse_source(text: str) -> Source:
    """`VIFGATE_CONFIG` -> Source; ConfigError when an ssm: or appconfig: form is malformed."""
    text = text.strip()
    if text.startswith(SSM_PREFIX):
        name = text.removeprefix(SSM_PREFIX)
        if not re.fullmatch(r"/?[A-Za-z0-9_.\-/]{1,1011}", name):
            raise ConfigError(text, [f"{name!r} is not an SSM parameter name; {_FORMS}"])
        return Source("ssm", text, parameter=name)
    if text.startswith(APPCONFIG_PREFIX):
        parts = text.removeprefix(APPCONFIG_PREFIX).split("/")
        if len(parts) != 3 or not all(_NAME.fullmatch(p) for p in parts):
            problem = f"not APPLICATION/ENVIRONMENT/PROFILE (names of letters, digits, . _ -); {_FORMS}"
            raise ConfigError(text, [problem])
        return Source("appconfig", text, application=parts[0], environment=parts[1], profile=parts[2])
    if not text:
        raise ConfigError("VIFGATE_CONFIG", [f"no config source: {_FORMS}"])
    return Source("file", text, path=text)


# -- reading (every cycle of the Lambda, and the CLI) ------------------------------------------------------------

_providers: dict[tuple[str, str, int | None], Any] = {}
_providers_lock = threading.Lock()


def _appconfig_provider(application: str, environment: str, client: Any = None) -> Any:
    """One Powertools AppConfigProvider per application, environment (and client handed in), kept while warm.

    Not `parameters.get_app_config`: its one default provider keeps the first application and
    environment it was called with, so a second source would be read from the first.
    """
    from aws_lambda_powertools.utilities.parameters import AppConfigProvider

    with _providers_lock:
        key = (application, environment, id(client) if client is not None else None)
        if key not in _providers:
            _providers[key] = AppConfigProvider(environment=environment, application=application, boto3_client=client)
        return _providers[key]


def read_text(source: str, *, appconfigdata: Any = None) -> str:
    """The document's text from its source; ConfigError naming the source (never the text) when it cannot be read.

    `appconfigdata` is a boto3 appconfigdata client to read through (tests); otherwise a cached one.
    """
    where = parse_source(source)
    if where.kind == "file":
        try:
            return Path(where.path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, [f"cannot read {where.path}: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError(source, [f"cannot read {where.path}: it is not UTF-8 text"]) from None
    from aws_lambda_powertools.utilities import parameters

    try:
        if where.kind == "ssm":
            # Cached for a minute: a warm Lambda does not read SSM every cycle.
            return parameters.get_parameter(where.parameter, decrypt=True, max_age=READ_MAX_AGE)
        provider = _appconfig_provider(where.application, where.environment, appconfigdata)
        value = provider.get(where.profile, max_age=READ_MAX_AGE)
    except parameters.exceptions.GetParameterError as exc:
        raise ConfigError(source, [f"cannot read {where.describe()}: {_cause(exc)}"]) from None
    except (BotoCoreError, ClientError) as exc:  # building the client (no region, no credentials) is outside Powertools
        raise ConfigError(source, [f"cannot read {where.describe()}: {_code(exc)}"]) from None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(source, [f"{where.describe()} is not UTF-8 text"]) from None
    if not isinstance(value, str):
        raise ConfigError(source, [f"{where.describe()} did not answer with text"])
    return value


def _cause(exc: Exception) -> str:
    """What went wrong under a Powertools GetParameterError: the AWS error code and message, or a plain word."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {_clip(str(error.get('Message', '')))}"
    if isinstance(cause, KeyError):
        # Powertools' AppConfig provider: an empty first answer means nothing was ever deployed.
        return "no configuration deployed to this environment yet (run: vifgate config push --stage STAGE FILE)"
    if cause is not None:
        return type(cause).__name__
    return _clip(str(exc))


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the deployed document and publishing (vifgate config diff / push) --------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """The document the deployed functions read now, and which version of the store it is."""

    text: str | None  # None: nothing deployed yet
    version: str | None = None
    deployment: int | None = None
    state: str | None = None

    def describe(self) -> str:
        if self.text is None:
            return "nothing deployed yet"
        parts = [f"version {self.version}"] if self.version else []
        if self.deployment is not None:
            parts.append(f"deployment {self.deployment}" + (f" ({self.state})" if self.state else ""))
        return ", ".join(parts) or "deployed"


@dataclass
class Published:
    """What `publish` did, in words for the terminal."""

    where: str
    version: str
    deployment: int | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"published to {self.where}: version {self.version}"
        if self.deployment is not None:
            line += f", deployment {self.deployment} started"
        return "\n".join([line, *(f"  {note}" for note in self.notes)])


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__


def _failed(what: str, exc: Exception) -> StoreError:
    message = exc.response.get("Error", {}).get("Message", "") if isinstance(exc, ClientError) else str(exc)
    return StoreError(f"{what} failed: {_code(exc)}: {_clip(message)}")


class SsmStore:
    """The document as one SSM parameter: standard tier up to 4 KB, advanced up to 8 KB."""

    def __init__(self, source: Source, client: Any):
        self.source, self.client = source, client

    def deployed(self) -> Deployed:
        try:
            answer = self.client.get_parameter(Name=self.source.parameter, WithDecryption=True)["Parameter"]
        except ClientError as exc:
            if _code(exc) == "ParameterNotFound":
                return Deployed(None)
            raise _failed(f"reading {self.source.describe()}", exc) from None
        except BotoCoreError as exc:
            raise _failed(f"reading {self.source.describe()}", exc) from None
        return Deployed(answer["Value"], version=str(answer.get("Version", "")) or None)

    def _existing(self) -> dict | None:
        """The parameter's type and tier, or None when it does not exist yet."""
        found = self.client.describe_parameters(
            ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [self.source.parameter]}]
        )["Parameters"]
        return found[0] if found else None

    def publish(self, text: str) -> Published:
        size = len(text.encode("utf-8"))
        where = self.source.describe()
        if size > SSM_ADVANCED_MAX:
            raise StoreError(
                f"the document is {size:,} bytes: more than the {SSM_ADVANCED_MAX:,} an advanced SSM parameter holds; "
                "move the stage to AppConfig (VIFGATE_CONFIG=appconfig:vif-gatekeeper-STAGE/STAGE/policy, up to 1 MB)"
            )
        try:
            existing = self._existing()
            kind = existing["Type"] if existing else "String"
            was_advanced = existing is not None and existing.get("Tier") == "Advanced"
            tier = "Advanced" if size > SSM_STANDARD_MAX or was_advanced else "Standard"
            answer = self.client.put_parameter(
                Name=self.source.parameter, Value=text, Type=kind, Tier=tier, Overwrite=existing is not None
            )
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"writing {where}", exc) from None
        notes = [f"{size:,} bytes, type {kind} ({'kept' if existing else 'new parameter'}), {tier} tier"]
        if tier == "Advanced" and not was_advanced:
            notes.append(
                f"Advanced tier: the document is over the {SSM_STANDARD_MAX:,} bytes a standard parameter holds "
                "(advanced parameters are charged, and cannot go back to standard)"
            )
        elif was_advanced and size <= SSM_STANDARD_MAX:
            notes.append("kept the Advanced tier: SSM cannot turn an advanced parameter back into a standard one")
        if size > SSM_STANDARD_MAX * 3 // 4:
            notes.append("close to the SSM limit: AppConfig holds up to 1 MB (see README, Config store)")
        return Published(where, str(answer["Version"]), notes=notes)


def _pages(call: Callable[..., dict], **args: Any) -> Iterator[dict]:
    """Every item of a paginated AppConfig list call."""
    while True:
        answer = call(**args)
        yield from answer.get("Items", [])
        token = answer.get("NextToken")
        if not token:
            return
        args["NextToken"] = token


class AppConfigStore:
    """The document as AppConfig hosted configuration versions, deployed with the stage's strategy."""

    def __init__(self, source: Source, client: Any, strategy: str | None = None):
        self.source, self.client = source, client
        self.strategy = strategy or source.application  # the stack names the strategy like the application

    def _id(self, what: str, call: Callable[..., dict], name: str, **args: Any) -> str:
        try:
            for item in _pages(call, **args):
                if item.get("Name") == name:
                    return str(item["Id"])
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"looking up AppConfig {what} {name}", exc) from None
        raise StoreError(
            f"AppConfig {what} {name!r} does not exist in this account and region "
            "(deploy the stack first: make deploy STAGE=…, or give --source)"
        )

    def _ids(self) -> tuple[str, str, str]:
        app = self._id("application", self.client.list_applications, self.source.application)
        env = self._id("environment", self.client.list_environments, self.source.environment, ApplicationId=app)
        profile = self._id(
            "configuration profile", self.client.list_configuration_profiles, self.source.profile, ApplicationId=app
        )
        return app, env, profile

    def deployed(self) -> Deployed:
        app, env, profile = self._ids()
        try:
            # Newest first: the latest deployment of this profile that did not roll back is what the functions read.
            for item in _pages(self.client.list_deployments, ApplicationId=app, EnvironmentId=env):
                if item.get("ConfigurationName") != self.source.profile:
                    continue
                if item.get("State") in ("ROLLING_BACK", "ROLLED_BACK", "REVERTED"):
                    continue
                version = str(item["ConfigurationVersion"])
                answer = self.client.get_hosted_configuration_version(
                    ApplicationId=app, ConfigurationProfileId=profile, VersionNumber=int(version)
                )
                text = answer["Content"].read().decode("utf-8")
                return Deployed(text, version=version, deployment=item.get("DeploymentNumber"), state=item.get("State"))
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"reading the deployed {self.source.describe()}", exc) from None
        except UnicodeDecodeError:
            raise StoreError(f"the deployed {self.source.describe()} is not UTF-8 text") from None
        return Deployed(None)

    def _latest_version(self, app: str, profile: str) -> int | None:
        list_versions = self.client.list_hosted_configuration_versions
        items = _pages(list_versions, ApplicationId=app, ConfigurationProfileId=profile)
        return max((int(i["VersionNumber"]) for i in items), default=None)

    def publish(self, text: str) -> Published:
        size = len(text.encode("utf-8"))
        where = self.source.describe()
        if size > APPCONFIG_MAX:
            raise StoreError(f"the document is {size:,} bytes: more than the 1 MB an AppConfig hosted version holds")
        app, env, profile = self._ids()
        strategy = self._id("deployment strategy", self.client.list_deployment_strategies, self.strategy)
        try:
            latest = self._latest_version(app, profile)
            # LatestVersionNumber: refused if someone else created a version since we looked.
            locking = {"LatestVersionNumber": latest} if latest is not None else {}
            created = self.client.create_hosted_configuration_version(
                ApplicationId=app,
                ConfigurationProfileId=profile,
                Content=text.encode("utf-8"),
                ContentType=CONTENT_TYPE,
                Description="vifgate config push",
                **locking,
            )
        except ClientError as exc:
            if _code(exc) == "ConflictException":
                raise StoreError(
                    f"{where}: another version was created since version {latest} was read; "
                    "nothing was uploaded: run `vifgate config diff` again, then push"
                ) from None
            if _code(exc) == "BadRequestException":
                # AppConfig's own JSON Schema validator refused it (infra/config-schema.json out of date?).
                raise _failed(f"creating a version of {where} (refused by the profile's validator?)", exc) from None
            raise _failed(f"creating a version of {where}", exc) from None
        except BotoCoreError as exc:
            raise _failed(f"creating a version of {where}", exc) from None
        version = str(created["VersionNumber"])
        try:
            deployment = self.client.start_deployment(
                ApplicationId=app,
                EnvironmentId=env,
                DeploymentStrategyId=strategy,
                ConfigurationProfileId=profile,
                ConfigurationVersion=version,
                Description="vifgate config push",
            )
        except (ClientError, BotoCoreError) as exc:
            why = (
                "a deployment is already running in this environment: wait for it to finish"
                if _code(exc) == "ConflictException"
                else "see the error"
            )
            raise StoreError(
                f"{where}: version {version} was stored but not deployed ({_failed('start_deployment', exc)}); "
                f"{why}, then push again"
            ) from None
        notes = [
            f"{size:,} bytes, content type {CONTENT_TYPE}, strategy {self.strategy}",
            f"deployment {deployment['DeploymentNumber']} is {deployment.get('State', 'started')}: the functions "
            f"read it within {READ_MAX_AGE} s of its completion; an alarm during the bake rolls it back",
        ]
        return Published(where, version, deployment=int(deployment["DeploymentNumber"]), notes=notes)


def store_for(source: Source, *, session: Any = None, strategy: str | None = None) -> SsmStore | AppConfigStore:
    """The publishing side of a source (ssm: or appconfig:); StoreError for a file."""
    if source.kind == "file":
        raise StoreError(f"{source.text} is a local file: push to ssm:/… or appconfig:…/…/… (see --source)")
    if session is None:
        import boto3

        session = boto3.Session()
    from .directlink import CLIENT_CONFIG

    if source.kind == "ssm":
        return SsmStore(source, session.client("ssm", config=CLIENT_CONFIG))
    return AppConfigStore(source, session.client("appconfig", config=CLIENT_CONFIG), strategy)


def to_json(document: Any) -> str:
    """The loaded document as the JSON text the store holds (AppConfig's JSON Schema validator needs JSON)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


# -- where each function may read its secrets (the IAM policies grant these paths only) ---------------------------


@dataclass(frozen=True)
class Reference:
    """One secret reference of a document: its field, where it points, who reads it, and where that one may read."""

    field: str
    kind: Literal["secret", "parameter", "profile"]
    name: str
    key: str | None
    readers: str  # the deployed functions that resolve it
    allowed: str  # the path (prefix) those functions may read

    def allowed_here(self) -> bool:
        name = _secret_name(self.name) if self.kind == "secret" else self.name.lstrip("/")
        base = self.allowed.rstrip("/")
        if self.allowed.endswith("/"):
            return name.startswith(self.allowed) and len(name) > len(self.allowed)
        return name == base or name.startswith(base + "/")


def _secret_name(secret_id: str) -> str:
    """A secret's name from its name or ARN (`arn:…:secret:NAME-AbCdEf`: the 6 characters AWS adds dropped)."""
    if secret_id.startswith("arn:") and ":secret:" in secret_id:
        return re.sub(r"-[A-Za-z0-9]{6}$", "", secret_id.split(":secret:", 1)[1])
    return secret_id


def references(policy: Any, stage: str) -> list[Reference]:
    """Every secret reference of `policy`, with the path the function reading it may read in `stage`.

    Targets' keys are read by poll (directlink), chat secrets by notify (chatops.notifier), the approvals
    signing key by notify (links in messages) and api (verifying them), the Slack signing secret by api.
    """
    found: list[Reference] = []

    def add(field_name: str, ref: Any, readers: str, allowed: str) -> None:
        if ref is None:
            return
        if getattr(ref, "profile", None):
            found.append(Reference(field_name, "profile", ref.profile, None, readers, allowed))
        elif ref.secret_id:
            found.append(Reference(field_name, "secret", ref.secret_id, getattr(ref, "key", None), readers, allowed))
        else:
            found.append(Reference(field_name, "parameter", ref.parameter, ref.key, readers, allowed))

    for i, target in enumerate(policy.targets):
        add(f"targets[{i}].credentials", target.credentials, "poll", f"vifgate/{stage}/targets/")
    for i, destination in enumerate(policy.chat.destinations):
        for name in ("url", "token", "signing_secret"):
            add(f"chat.destinations[{i}].{name}", getattr(destination, name), "notify", f"vifgate/{stage}/chat/")
    if policy.approvals is not None:
        allowed = f"vifgate/{stage}/approvals"
        add("approvals.signing_key", policy.approvals.signing_key, "notify and api", allowed)
        add("approvals.slack_signing_secret", policy.approvals.slack_signing_secret, "api", allowed)
    return found
