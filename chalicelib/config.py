"""The allowlist document: targets to poll and ordered rules, validated before anything acts on it.

An invalid document raises ConfigError, whose lines name each bad field and value
(`rules[2].gateway: 'vgw-xyz' is not a virtual gateway id`); callers then confirm nothing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

OUTSCALE_REGIONS = ("eu-west-2", "us-east-2", "cloudgouv-eu-west-1")


class ConfigError(ValueError):
    """An invalid configuration; `problems` holds one readable line per bad field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def _pattern(regex: str, what: str):
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _as_str(value: Any) -> Any:
    # YAML reads 111122223333 as an int; an account id is a string of 12 digits either way.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


AccountId = Annotated[str, BeforeValidator(_as_str), _pattern(r"\d{12}", "a 12-digit account id")]
GatewayId = Annotated[str, _pattern(r"vgw-[0-9a-f]{8}([0-9a-f]{9})?", "a virtual gateway id (vgw-xxxxxxxx)")]
ConnectionId = Annotated[str, _pattern(r"dx(con|lag)-[0-9a-z]{8}", "a connection id (dxcon-xxxxxxxx)")]
Name = Annotated[str, _pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a name (letters, digits, . _ -)")]
RoleArn = Annotated[str, _pattern(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", "an IAM role ARN")]

_DURATION = re.compile(r"(?P<n>\d+)\s*(?P<unit>[smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """'72h', '30m', '2d' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    match = _DURATION.fullmatch(str(value).strip())
    if not match or int(match["n"]) == 0:
        raise ValueError(f"{value!r} is not a duration like '72h', '30m' or '2d'")
    return timedelta(seconds=int(match["n"]) * _UNIT_SECONDS[match["unit"]])


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Doc(BaseModel):
    # Unknown keys are typos until proven otherwise: `defualt_action` must not pass silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(model: BaseModel, first: str, second: str) -> BaseModel:
    """A reference names one place to read a secret from, never two, never none."""
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of {first} or {second}")
    return model


class Credentials(_Doc):
    """Where a target's access key comes from: a local profile or a Secrets Manager secret."""

    profile: str | None = None
    secret_id: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Credentials:
        return _exactly_one(self, "profile", "secret_id")


class Target(_Doc):
    name: Name
    provider: Literal["outscale", "aws"]
    region: str = "eu-west-2"
    endpoint_url: Annotated[str, _pattern(r"https?://\S+", "an http(s) URL")] | None = None
    credentials: Credentials | None = None
    role_arn: RoleArn | None = None
    # The account these credentials act as. VIFs it allocated to others are never confirmed or
    # rejected by it (a hub deleting its own allocations would be a rejection of somebody else's).
    account_id: AccountId

    @model_validator(mode="after")
    def _provider_fields(self) -> Target:
        if self.provider == "outscale" and self.endpoint_url is None and self.region not in OUTSCALE_REGIONS:
            raise ValueError(
                f"region {self.region!r} has no OUTSCALE DirectLink endpoint "
                f"(known: {', '.join(OUTSCALE_REGIONS)}); set endpoint_url to use another"
            )
        if self.provider == "outscale" and self.role_arn is not None:
            raise ValueError("role_arn is for provider aws; OUTSCALE takes credentials")
        if self.provider == "outscale" and self.credentials is None:
            # Without them boto3 would sign with the Lambda's own AWS keys and send them to OUTSCALE.
            raise ValueError("provider outscale needs credentials (secret_id or profile)")
        return self


class VlanRange(_Doc):
    min: int = Field(default=2, ge=2, le=4094)
    max: int = Field(default=4094, ge=2, le=4094)

    @model_validator(mode="after")
    def _ordered(self) -> VlanRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def __contains__(self, vlan: object) -> bool:
        return isinstance(vlan, int) and self.min <= vlan <= self.max


class Rule(_Doc):
    """Ordered: the first rule whose every constraint matches a VIF decides it."""

    name: Name
    accounts: list[AccountId] = Field(min_length=1, description="the VIF's ownerAccount: the account receiving it")
    connections: list[ConnectionId] | None = Field(default=None, description="the partner connections trusted")
    any_connection: bool = Field(default=False, description="confirm from any connection (explicit opt-in)")
    targets: list[Name] | None = None
    vlan: VlanRange | None = None
    asn: list[Annotated[int, Field(ge=1, le=4294967294)]] | None = None
    vif_name: str | None = Field(default=None, description="glob on the VIF name, e.g. 'prod-*'")
    gateway: GatewayId | None = None
    action: Literal["confirm", "ask", "reject"]

    @model_validator(mode="after")
    def _confirm_is_bounded(self) -> Rule:
        if self.action == "confirm" and self.gateway is None:
            raise ValueError("action confirm needs a gateway (the vgw-... to attach on confirm)")
        # Whoever allocates a hosted VIF chooses its vlan, asn and name; only the connection says
        # who the allocator is. Trusting every connection must be said out loud.
        if self.action == "confirm" and self.connections is None and not self.any_connection:
            raise ValueError(
                "action confirm needs connections (the partner connections you trust), "
                "or any_connection: true to trust every allocator"
            )
        if self.connections is not None and self.any_connection:
            raise ValueError("give connections or any_connection: true, not both")
        return self


class SecretRef(_Doc):
    """Where a secret lives: a Secrets Manager secret or an SSM SecureString, never the value itself."""

    secret_id: str | None = None
    parameter: str | None = None
    key: str | None = Field(default=None, description="the field to read when the secret is a JSON object")

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        return _exactly_one(self, "secret_id", "parameter")


class Destination(_Doc):
    """A chat room or endpoint that people follow; `events` are globs on the event type."""

    name: Name
    kind: Literal["slack", "mattermost", "teams", "webhook"]
    url: SecretRef | None = Field(default=None, description="incoming webhook URL (a secret: it grants posting)")
    token: SecretRef | None = Field(default=None, description="Slack bot token, with channel, instead of url")
    channel: str | None = None
    signing_secret: SecretRef | None = Field(default=None, description="webhook: the HMAC key receivers verify with")
    events: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "slack" and (self.url is None) == (self.token is None):
            raise ValueError("slack needs exactly one of url (incoming webhook) or token (bot) ")
        if self.token is not None and (self.kind != "slack" or not self.channel):
            raise ValueError("token is for kind slack and needs a channel")
        if self.kind != "slack" and self.url is None:
            raise ValueError(f"kind {self.kind} needs a url")
        if (self.kind == "webhook") != (self.signing_secret is not None):
            raise ValueError("signing_secret is required for kind webhook, and only for it")
        return self


class Chat(_Doc):
    destinations: list[Destination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Chat:
        _unique("chat.destinations", [d.name for d in self.destinations])
        return self


def _default_alerts() -> list[timedelta]:
    return [timedelta(hours=72), timedelta(hours=24), timedelta(hours=4)]


class Policy(_Doc):
    targets: list[Target] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    default_action: Literal["ask", "ignore", "reject"] = "ask"
    expiry_alerts: list[Duration] = Field(default_factory=_default_alerts)
    stuck_pending_after: Duration = timedelta(minutes=30)
    chat: Chat = Field(default_factory=Chat)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        _unique("targets", [t.name for t in self.targets])
        _unique("rules", [r.name for r in self.rules])
        known = {t.name for t in self.targets}
        for i, rule in enumerate(self.rules):
            for name in rule.targets or ():
                if name not in known:
                    raise ValueError(f"rules[{i}].targets: {name!r} is not a target of this document")
        return self

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def allowlist(self) -> dict[str, set[str]]:
        """Accounts and gateways the confirm rules trust (the union over rules)."""
        confirm = [r for r in self.rules if r.action == "confirm"]
        return {
            "accounts": {a for r in confirm for a in r.accounts},
            "gateways": {r.gateway for r in confirm if r.gateway},
        }


def _unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{field}[{i}].name: {name!r} is used twice")
        seen.add(name)


def parse_policy(text: str, source: str = "<config>") -> Policy:
    """YAML or JSON text -> Policy, or ConfigError naming every bad field."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, [f"not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}"]) from None
    if document is None:
        raise ConfigError(source, ["the document is empty: it needs 'targets' (and usually 'rules')"])
    if not isinstance(document, dict):
        raise ConfigError(
            source, [f"the document must be a mapping with 'targets' and 'rules', got {type(document).__name__}"]
        )
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(err) for err in exc.errors()]) from None


_SECRET_FIELDS = {"chat", "credentials", "url", "token", "signing_secret"}


def _may_be_secret(loc: tuple) -> bool:
    """Someone may paste a webhook URL or a key where a reference belongs: never echo it back."""
    return any(part in _SECRET_FIELDS for part in loc)


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as `rules[2].gateway: <what is wrong>`."""
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (check its spelling)"
    elif error["type"] not in ("value_error", "missing") and "input" in error and not _may_be_secret(error["loc"]):
        message += f" (got {error['input']!r})"
    # Errors raised by a model validator carry their own path inside the message.
    if message.startswith(("rules[", "targets[", "chat.")) or not path:
        return message
    return f"{path}: {message}"
