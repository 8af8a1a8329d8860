"""The allowlist document: targets to poll and ordered rules, validated before anything acts on it.

An invalid document raises ConfigError, whose lines name each bad field and value
(`rules[2].gateway: 'vgw-xyz' is not a virtual gateway id`); callers then confirm nothing.
Nothing else comes out of parse_policy: a hostile document (deep nesting, alias bombs, huge numbers)
is a ConfigError too, and what it echoes is cut short and never comes from where a secret may be.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError, PydanticKnownError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

OUTSCALE_REGIONS = ("eu-west-2", "us-east-2", "cloudgouv-eu-west-1")


# What a policy document can reasonably be: far past any real one, far short of hurting a Lambda.
MAX_TEXT = 1_000_000  # characters (an SSM parameter holds at most 8 KB)
MAX_DEPTH = 20  # nesting levels; a policy needs 6 (chat.destinations[0].url.secret_id)
MAX_VALUES = 100_000  # values once YAML aliases and merge keys are expanded
MAX_SHOWN = 20  # problems listed in the error text; the rest are counted


class ConfigError(ValueError):
    """An invalid configuration; `problems` holds one readable line per bad field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = [f"  - {p}" for p in problems[:MAX_SHOWN]]
        if len(problems) > MAX_SHOWN:
            lines.append(f"  … and {len(problems) - MAX_SHOWN} more problems")
        super().__init__(f"invalid config {source}:\n" + "\n".join(lines))


class _ShortRepr(reprlib.Repr):
    """repr() that never builds more than a few levels and items, so an alias bomb echoes a few bytes."""

    def __init__(self) -> None:
        super().__init__(
            maxlevel=3, maxtuple=4, maxlist=4, maxdict=4, maxset=4, maxfrozenset=4, maxstring=60, maxother=40
        )

    def repr1(self, x: Any, level: int) -> str:
        # By isinstance, not by type name: a subclass of list must not fall through to the full repr().
        if isinstance(x, bool):
            return repr(bool(x))
        if isinstance(x, int):
            return self.repr_int(x, level)
        if isinstance(x, str):
            return self.repr_str(x, level)
        if isinstance(x, (bytes, bytearray)):
            return repr(bytes(x[: self.maxstring])) + ("…" if len(x) > self.maxstring else "")
        if isinstance(x, list):
            return self.repr_list(x, level)
        if isinstance(x, tuple):
            return self.repr_tuple(x, level)
        if isinstance(x, dict):
            return self.repr_dict(x, level)
        if isinstance(x, frozenset):
            return self.repr_frozenset(x, level)
        if isinstance(x, set):
            return self.repr_set(x, level)
        return self.repr_instance(x, level)

    def repr_str(self, x: str, level: int) -> str:
        if len(x) <= self.maxstring:
            return repr(str(x))
        head = repr(str(x[: self.maxstring]))
        return head[:-1] + "…" + head[-1]

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 200:  # past ~60 digits (and past the 4300 digits str() refuses)
            return f"<a number of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_REPR = _ShortRepr()


def _short(value: Any, limit: int = 80) -> str:
    """A value as the error text shows it: a repr of at most `limit` characters, built without the full repr."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pattern(regex: str, what: str):
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            # Its own type, so that under chat or credentials _describe can leave the value out.
            raise PydanticCustomError("not_a", "{shown} is not {what}", {"shown": _short(value), "what": what})
        return value

    return AfterValidator(check)


def _as_str(value: Any) -> Any:
    # YAML reads 111122223333 as an int; an account id is a string of 12 digits either way.
    # (A leading zero, 012345670123, stays text: _PolicyLoader never reads it as octal.)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value.bit_length() < 200 else _short(value)
    return value


AccountId = Annotated[str, BeforeValidator(_as_str), _pattern(r"\d{12}", "a 12-digit account id")]
GatewayId = Annotated[str, _pattern(r"vgw-[0-9a-f]{8}([0-9a-f]{9})?", "a virtual gateway id (vgw-xxxxxxxx)")]
ConnectionId = Annotated[str, _pattern(r"dx(con|lag)-[0-9a-z]{8}", "a connection id (dxcon-xxxxxxxx)")]
Name = Annotated[str, _pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a name (letters, digits, . _ -)")]
RoleArn = Annotated[str, _pattern(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", "an IAM role ARN")]
# STS's own limits: 2 to 1224 characters of letters, digits and _+=,.@:/-
ExternalId = Annotated[
    str, _pattern(r"[A-Za-z0-9_+=,.@:/-]{2,1224}", "an external id (2 to 1224 letters, digits or _+=,.@:/-)")
]
# AWS Organizations' own patterns for a root (r-…) and an organizational unit (ou-<root part>-<unit part>).
ParentId = Annotated[
    str,
    _pattern(
        r"r-[0-9a-z]{4,32}|ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}",
        "an organizational unit id (ou-xxxx-xxxxxxxx) or a root id (r-xxxx)",
    ),
]
RoleName = Annotated[str, _pattern(r"[\w+=,.@-]{1,64}", "an IAM role name (1 to 64 letters, digits or _+=,.@-)")]
AwsRegion = Annotated[
    str,
    _pattern(
        r"[a-z]{2}(-gov|-iso[a-z]?)?-(central|north|south|east|west|northeast|northwest|southeast|southwest)-\d{1,2}",
        "an AWS region name (like eu-west-1)",
    ),
]

_DURATION = re.compile(r"(?P<n>\d+)\s*(?P<unit>[smhd])")
_ISO_DURATION = re.compile(r"P(?:(?P<d>\d+)D)?(?:T(?=\d)(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=365)
VIF_LIFETIME = timedelta(days=7)  # a hosted VIF left in `confirming` expires this long after allocation
_DURATION_FORMS = "write 72h, 30m, 2d or 90s, or ISO 8601 like PT72H, P3D or P1DT12H"


def parse_duration(value: Any) -> timedelta:
    """'72h', '30m', '2d', '90s', ISO 8601 ('PT72H', 'P1DT12H') or a number of seconds; at most 365 days."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
        seconds = value
        if value > MAX_DURATION.total_seconds():
            raise ValueError(f"{_short(value)} seconds is longer than 365 days, the longest duration allowed")
    else:
        # Longer text is no duration, and int() of thousands of digits would be refused anyway.
        text = str(value).strip() if isinstance(value, str) and len(value) <= 40 else ""
        short, iso = _DURATION.fullmatch(text), _ISO_DURATION.fullmatch(text)
        if short:
            seconds = int(short["n"]) * _UNIT_SECONDS[short["unit"]]
        elif iso and any(iso.groups()):
            seconds = sum(int(iso[unit] or 0) * _UNIT_SECONDS[unit] for unit in "dhms")
        else:
            raise ValueError(f"{_short(value)} is not a duration: {_DURATION_FORMS}")
    if seconds <= 0:
        raise ValueError(f"{_short(value)} is not a duration (it must be longer than zero): {_DURATION_FORMS}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{_short(value)} is longer than 365 days, the longest duration allowed")
    return timedelta(seconds=seconds)


def _expiry_alert(value: Any) -> timedelta:
    """An alert this long before the deadline must come after the VIF can first be seen."""
    alert = parse_duration(value)
    if alert >= VIF_LIFETIME:
        raise ValueError(
            f"{_short(value)} is 7 days or more: a VIF expires 7 days after it is allocated, so this alert would "
            "fire as soon as the VIF is seen; give less than 7d (e.g. 72h)"
        )
    return alert


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
ExpiryAlert = Annotated[timedelta, BeforeValidator(_expiry_alert)]


_BASED = re.compile(r"[-+]?0[xXbBoO][0-9a-fA-F_]+")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+")
_UNDERSCORED = re.compile(r"[-+]?[0-9][0-9_]*_[0-9_]*")


def _plain_int(value: Any) -> Any:
    """Where a number is expected, refuse what YAML 1.1 reads as one in ways people do not mean."""
    if isinstance(value, bool):
        raise ValueError(
            f"write a number, not {'true' if value else 'false'} (YAML reads yes, no, on and off as true and false)"
        )
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not any(p.fullmatch(text) for p in (_BASED, _LEADING_ZERO, _SEXAGESIMAL, _UNDERSCORED)):
        return value  # plain digits, or something pydantic will name as not a number
    if len(text) > 30:
        raise ValueError(f"{_short(text)} is not a plain decimal number")
    sign, digits = ("-" if text.startswith("-") else ""), text.lstrip("+-").replace("_", "")
    plain = sign + (digits.lstrip("0") or "0")
    if _BASED.fullmatch(text):
        message = f"write {int(text.replace('_', ''), 0)}, not {text}: numbers here are plain decimal"
    elif _SEXAGESIMAL.fullmatch(text):
        base60 = 0
        for part in digits.split(":"):
            base60 = base60 * 60 + int(part)
        message = f"write a plain number, not {text}: YAML reads it as the base-60 number {sign}{base60}"
    elif _OCTAL.fullmatch(text):
        octal = int(digits, 8)
        message = (
            f"write {plain}, not {text}: YAML reads a number with a leading zero as octal "
            f"({text} would be {sign}{octal})"
        )
    elif _LEADING_ZERO.fullmatch(text):
        message = f"write {plain}, not {text}: numbers here have no leading zero"
    else:
        message = f"write {sign}{digits}, not {text}: numbers here are plain digits"
    raise ValueError(message)


Int = Annotated[int, BeforeValidator(_plain_int)]


def _vlan_range(value: Any) -> Any:
    """`vlan: 150` or `vlan: 100-199` is a common slip for a range: show the form that works."""
    bounds: tuple[str, str] | None = None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**6:
        bounds = (str(value), str(value))
    elif isinstance(value, str) and (match := re.fullmatch(r"\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?", value)):
        bounds = (str(int(match[1])), str(int(match[2] or match[1])))
    if bounds:
        raise ValueError(f"vlan takes a range: {{min: {bounds[0]}, max: {bounds[1]}}}")
    return value


class _Doc(BaseModel):
    # Unknown keys are typos until proven otherwise: `defualt_action` must not pass silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one[M: BaseModel](model: M, first: str, second: str) -> M:
    """A reference names one place to read a secret from, never two, never none."""
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of {first} or {second}")
    return model


_CREDENTIALS_HELP = (
    "write {profile: …} (a local AWS profile) or {secret_id: …} (a Secrets Manager secret holding JSON with "
    "access_key_id and secret_access_key), never the keys themselves (what was given is not shown)"
)
_REFERENCE_HELP = (
    "write {secret_id: …} (a Secrets Manager secret; add key: … for a field of a JSON secret) or "
    "{parameter: …} (an SSM SecureString), never the secret itself (what was given is not shown)"
)


def _only_fields(value: Any, model: type[BaseModel], help: str) -> Any:
    """A reference is a mapping of known fields: anything else is likely the secret itself, pasted."""
    if isinstance(value, model) or (isinstance(value, dict) and set(value) <= set(model.model_fields)):
        return value
    raise ValueError(help)


class Credentials(_Doc):
    """Where a target's access key comes from: a local profile or a Secrets Manager secret."""

    profile: str | None = None
    secret_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_reference(cls, value: Any) -> Any:
        return _only_fields(value, cls, _CREDENTIALS_HELP)

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
    # Sent as ExternalId when assuming role_arn (the member role's trust condition): never logged or sent to chat.
    external_id: ExternalId | None = Field(
        default=None, repr=False, description="sts:ExternalId of role_arn's trust policy"
    )
    # The account these credentials act as. VIFs it allocated to others are never confirmed or
    # rejected by it (a hub deleting its own allocations would be a rejection of somebody else's).
    account_id: AccountId

    @model_validator(mode="after")
    def _provider_fields(self) -> Target:
        if self.provider == "outscale" and self.endpoint_url is None and self.region not in OUTSCALE_REGIONS:
            raise ValueError(
                f"region {_short(self.region)} has no OUTSCALE DirectLink endpoint "
                f"(known: {', '.join(OUTSCALE_REGIONS)}); set endpoint_url to use another"
            )
        if self.provider == "outscale" and self.role_arn is not None:
            raise ValueError("role_arn is for provider aws; OUTSCALE takes credentials")
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id: only with role_arn (it is sent when assuming that role)")
        if self.provider == "outscale" and self.credentials is None:
            # Without them boto3 would sign with the Lambda's own AWS keys and send them to OUTSCALE.
            raise ValueError("provider outscale needs credentials (secret_id or profile)")
        return self


NAME_MAX = 64  # characters in a Name
_ACCOUNT_AND_REGION = len("-111122223333-")


class OrganizationSource(_Doc):
    """AWS member accounts listed from Organizations: one aws target per ACTIVE account under `ous`, per region."""

    name: Name = Field(description="prefix of the targets it generates: <name>-<account id>-<region>")
    ous: list[ParentId] = Field(min_length=1, description="organizational unit or root ids; child units included")
    role_name: RoleName = Field(description="the member role in every account (infra/member-role.yaml)")
    # Sent as ExternalId when assuming each account's role: never logged or sent to chat.
    external_id: ExternalId | None = Field(
        default=None, repr=False, description="sts:ExternalId of the member role's trust policy"
    )
    regions: list[AwsRegion] = Field(min_length=1, description="each account is polled in each of these regions")
    exclude: list[AccountId] = Field(default_factory=list, description="account ids left out")
    list_role_arn: RoleArn | None = Field(
        default=None,
        description="assumed to list the accounts (in the management or a delegated administrator account); "
        "without it the function's own credentials list them",
    )

    @model_validator(mode="after")
    def _consistent(self) -> OrganizationSource:
        for field in ("ous", "regions", "exclude"):
            seen: set[str] = set()
            for i, value in enumerate(getattr(self, field)):
                if value in seen:
                    raise ValueError(f"{field}[{i}]: {value!r} is listed twice")
                seen.add(value)
        room = NAME_MAX - _ACCOUNT_AND_REGION - max(len(r) for r in self.regions)
        if len(self.name) > room:
            raise ValueError(
                f"name: {_short(self.name)} is too long: the names of the targets it generates "
                f"(<name>-<account id>-<region>) must fit {NAME_MAX} characters, so at most {room} here"
            )
        return self

    def target_name(self, account_id: str, region: str) -> str:
        return f"{self.name}-{account_id}-{region}"

    def role_arn(self, account_id: str, region: str) -> str:
        partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
        return f"arn:{partition}:iam::{account_id}:role/{self.role_name}"

    def targets(self, accounts: Iterable[str]) -> list[Target]:
        """Every account listed (ACTIVE under `ous`) in every region, `exclude` left out."""
        excluded = set(self.exclude)
        return [
            Target(
                name=self.target_name(account, region),
                provider="aws",
                region=region,
                account_id=account,
                role_arn=self.role_arn(account, region),
                external_id=self.external_id,
            )
            for account in accounts
            if account not in excluded
            for region in self.regions
        ]


class FromOrganization(_Doc):
    """A `targets` entry naming an Organizations source (parsing moves it to Policy.organizations)."""

    from_organization: OrganizationSource


def _is_source(entry: Any) -> bool:
    return isinstance(entry, dict) and "from_organization" in entry


def _from_organization(value: Any) -> Any:
    """A `targets` entry `{from_organization: {...}}` as the source it holds."""
    if not _is_source(value):
        return value
    others = [key for key in value if key != "from_organization"]
    if others:
        shown = ", ".join(
            repr(k) if isinstance(k, str) and _FIELD_LIKE.fullmatch(k) else "a key (not shown)" for k in others[:3]
        )
        raise ValueError(f"from_organization: give it alone in its targets entry; this entry also has {shown}")
    inner = value["from_organization"]
    if not isinstance(inner, (dict, OrganizationSource)):
        raise ValueError(
            f"from_organization: expected a mapping with name, ous, role_name and regions (got {type(inner).__name__})"
        )
    return inner


def _as_given(value: Any) -> Any:
    return value  # the JSON Schema's view of `targets` (json_schema_input_type); Policy._split_targets splits it


# What a document's `targets` holds: targets, and Organizations sources written `{from_organization: …}`.
TargetsInput = Annotated[list[Target | FromOrganization], Field(min_length=1)]


class VlanRange(_Doc):
    min: Int = Field(default=2, ge=2, le=4094)
    max: Int = Field(default=4094, ge=2, le=4094)

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
    vlan: Annotated[VlanRange | None, BeforeValidator(_vlan_range)] = None
    asn: list[Annotated[Int, Field(ge=1, le=4294967294)]] | None = None
    vif_name: str | None = Field(default=None, description="glob on the VIF name, e.g. 'prod-*'")
    gateway: GatewayId | None = None
    action: Literal["confirm", "ask", "reject"]
    # Approvals: who may decide an `ask`, how many of them, and the gateways they may confirm with.
    approvers: Annotated[list[Name], Field(min_length=1)] | None = Field(
        default=None, description="approver or group names (see approvals) who may approve or reject"
    )
    min_approvals: Annotated[Int, Field(ge=1)] | None = Field(default=None, description="distinct approvals needed")
    gateways: Annotated[list[GatewayId], Field(min_length=1)] | None = Field(
        default=None, description="the gateways an approver may choose from (instead of one gateway)"
    )

    @model_validator(mode="after")
    def _approvals_only_on_ask(self) -> Rule:
        for field in ("approvers", "min_approvals", "gateways"):
            if self.action != "ask" and getattr(self, field) is not None:
                raise ValueError(f"{field}: only for action ask (this rule's action is {self.action})")
        if self.gateway is not None and self.gateways is not None:
            raise ValueError("gateways: give gateway (one) or gateways (a choice), not both")
        if self.min_approvals is not None and self.approvers is None:
            raise ValueError("min_approvals: needs approvers on the same rule (who gives the approvals)")
        for i, gateway in enumerate(self.gateways or ()):
            if gateway in (self.gateways or [])[:i]:
                raise ValueError(f"gateways[{i}]: {gateway!r} is listed twice")
        return self

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

    @model_validator(mode="before")
    @classmethod
    def _a_reference(cls, value: Any) -> Any:
        return _only_fields(value, cls, _REFERENCE_HELP)

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


SlackUserId = Annotated[str, _pattern(r"[UW][A-Z0-9]{2,20}", "a Slack user id (U… or W…, capitals and digits)")]
MattermostUserId = Annotated[str, _pattern(r"[a-z0-9]{26}", "a Mattermost user id (26 lowercase letters and digits)")]
Email = Annotated[str, _pattern(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{1,63}", "an e-mail address")]
LINK_TTL_MIN = timedelta(minutes=1)
LINK_TTL_MAX = timedelta(days=7)
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _link_ttl(value: Any) -> timedelta:
    """A link lives long enough to be read on a phone, and never past a VIF's own 7 days."""
    ttl = parse_duration(value)
    if not LINK_TTL_MIN <= ttl <= LINK_TTL_MAX:
        raise ValueError(f"{_short(value)} is outside 1m to 7d, the lifetimes a link may have")
    return ttl


def _base_url(value: Any) -> Any:
    """Where people reach the approval routes: https (plain http only on this machine), no query, no fragment."""
    if not isinstance(value, str):
        return value  # pydantic names the wrong type
    if len(value) > 2000 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("is not a URL (too long, or it holds spaces or control characters)")
    if "@" in value:
        # A user or password in the URL is a credential that would go into every link sent: not echoed.
        raise ValueError("must not hold '@' (a user or password in the URL); what was given is not shown")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError(f"{_short(value)} is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"{_short(value)} is not an https:// URL")
    if parts.scheme == "http" and host not in _LOCAL_HOSTS:
        raise ValueError(
            f"{_short(value)} is plain http: links are bearer credentials, so use https "
            "(http only for localhost, 127.0.0.1 or [::1])"
        )
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(f"{_short(value)} has a query or fragment; give the base URL the routes are under")
    return value.rstrip("/")


class Approver(_Doc):
    """A person who may approve or reject, and the chat user ids that act as them."""

    name: Name
    slack: SlackUserId | None = None
    mattermost: MattermostUserId | None = None
    email: Email | None = None


class Approvals(_Doc):
    """Who may decide an asked-about VIF, and the keys that make their decisions verifiable."""

    approvers: list[Approver] = Field(min_length=1)
    groups: dict[Name, list[Name]] = Field(default_factory=dict, description="group name -> approver names")
    link_ttl: Annotated[timedelta, BeforeValidator(_link_ttl)] = timedelta(hours=24)
    base_url: Annotated[str, BeforeValidator(_base_url)] | None = Field(
        default=None, description="the public URL the approval routes are under (links and Mattermost actions)"
    )
    signing_key: SecretRef | None = Field(default=None, description="signs links and Mattermost actions")
    slack_signing_secret: SecretRef | None = Field(default=None, description="verifies Slack's requests")

    @model_validator(mode="after")
    def _consistent(self) -> Approvals:
        _unique("approvers", [a.name for a in self.approvers])
        names = {a.name for a in self.approvers}
        for kind in ("slack", "mattermost"):
            owner: dict[str, str] = {}
            for i, approver in enumerate(self.approvers):
                user_id = getattr(approver, kind)
                if user_id is None:
                    continue
                if user_id in owner:
                    raise ValueError(f"approvers[{i}].{kind}: {user_id!r} is also {owner[user_id]}'s")
                owner[user_id] = approver.name
        for group, members in self.groups.items():
            if group in names:
                raise ValueError(f"groups.{group}: {group!r} is an approver's name; give the group another")
            if not members:
                raise ValueError(f"groups.{group}: a group needs at least one approver")
            for i, member in enumerate(members):
                if member not in names:
                    raise ValueError(f"groups.{group}[{i}]: {member!r} is not an approver (groups hold approvers)")
        if self.slack_signing_secret is None:
            for i, approver in enumerate(self.approvers):
                if approver.slack is not None:
                    raise ValueError(
                        f"slack_signing_secret: required, since approvers[{i}] ({approver.name}) has a slack id "
                        "(it is how Slack's button clicks are verified)"
                    )
        return self

    def approver(self, name: str) -> Approver | None:
        return next((a for a in self.approvers if a.name == name), None)

    def by_slack(self, user_id: str) -> Approver | None:
        return next((a for a in self.approvers if a.slack is not None and a.slack == user_id), None)

    def by_mattermost(self, user_id: str) -> Approver | None:
        return next((a for a in self.approvers if a.mattermost is not None and a.mattermost == user_id), None)

    def resolve(self, names: Iterable[str]) -> tuple[str, ...]:
        """Approver names with groups expanded: unique, sorted. LookupError names an unknown name."""
        resolved: set[str] = set()
        for name in names:
            if name in self.groups:
                resolved.update(self.groups[name])
            elif self.approver(name) is not None:
                resolved.add(name)
            else:
                raise LookupError(f"{_short(name)} is neither an approver nor a group in approvals")
        return tuple(sorted(resolved))


def _default_alerts() -> list[timedelta]:
    return [timedelta(hours=72), timedelta(hours=24), timedelta(hours=4)]


class Policy(_Doc):
    # Sources are written as `targets` entries; _split_targets moves them here. Not a key of the document.
    organizations: SkipJsonSchema[list[Annotated[OrganizationSource, BeforeValidator(_from_organization)]]] = Field(
        default_factory=list
    )
    # Concrete targets only (an expanded policy holds the ones its sources generated, see organizations.expand).
    targets: Annotated[list[Target], BeforeValidator(_as_given, json_schema_input_type=TargetsInput)]
    rules: list[Rule] = Field(default_factory=list)
    default_action: Literal["ask", "ignore", "reject"] = "ask"
    expiry_alerts: list[ExpiryAlert] = Field(default_factory=_default_alerts)
    stuck_pending_after: Duration = timedelta(minutes=30)
    chat: Chat = Field(default_factory=Chat)
    approvals: Approvals | None = None
    default_approvers: Annotated[list[Name], Field(min_length=1)] | None = Field(
        default=None, description="who may decide a VIF no rule matches (with default_action: ask)"
    )
    default_min_approvals: Annotated[Int, Field(ge=1)] | None = None
    # The emergency stop: false turns every confirm into an ask (the default approvers may still approve).
    auto_confirm: bool = Field(default=True, description="false: every confirm becomes an ask (emergency stop)")

    @model_validator(mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> Any:
        """`targets` entries written `{from_organization: …}` are sources (Policy.organizations); the rest targets."""
        if not isinstance(value, dict) or not isinstance(value.get("targets"), list):
            return value
        entries = value["targets"]
        if not any(_is_source(entry) for entry in entries):
            return value
        return {
            **value,
            "targets": [entry for entry in entries if not _is_source(entry)],
            "organizations": [*value.get("organizations", []), *(entry for entry in entries if _is_source(entry))],
        }

    @field_validator("targets")
    @classmethod
    def _some_target(cls, targets: list[Target], info: ValidationInfo) -> list[Target]:
        # At least one target or one source (not checked when the sources were invalid: they are named already).
        if not targets and info.data.get("organizations") == []:
            raise PydanticKnownError("too_short", {"field_type": "List", "min_length": 1, "actual_length": 0})
        return targets

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        _unique("targets", [t.name for t in self.targets])
        _unique("rules", [r.name for r in self.rules])
        known = {t.name: f"targets[{i}]" for i, t in enumerate(self.targets)}
        for j, source in enumerate(self.organizations):
            if source.name in known:
                raise ValueError(f"organizations[{j}].name: {source.name!r} is used twice (also {known[source.name]})")
            known[source.name] = f"organizations[{j}]"
        if self.organizations:
            generated = re.compile(
                "(" + "|".join(re.escape(s.name) for s in self.organizations) + r")-\d{12}-[a-z0-9-]+"
            )
            for i, target in enumerate(self.targets):
                if match := generated.fullmatch(target.name):
                    raise ValueError(
                        f"targets[{i}].name: {target.name!r} has the form of the names from_organization "
                        f"{match[1]} generates; give it another name"
                    )
        for i, rule in enumerate(self.rules):
            for name in rule.targets or ():
                if name not in known:
                    what = "a target" if not self.organizations else "a target or a from_organization source"
                    raise ValueError(f"rules[{i}].targets: {name!r} is not {what} of this document")
        for field in ("default_approvers", "default_min_approvals"):
            if getattr(self, field) is not None and self.default_action != "ask":
                raise ValueError(
                    f"{field}: only with default_action: ask (it is {self.default_action}, which asks nobody)"
                )
        if self.default_min_approvals is not None and self.default_approvers is None:
            raise ValueError("default_min_approvals: needs default_approvers (who gives the approvals)")
        # Every place that names approvers: (its field, its count's field, the names, the count asked for).
        asking = [
            (f"rules[{i}].approvers", f"rules[{i}].min_approvals", rule.approvers, rule.min_approvals)
            for i, rule in enumerate(self.rules)
            if rule.approvers
        ]
        if self.default_approvers:
            asking.append(
                ("default_approvers", "default_min_approvals", self.default_approvers, self.default_min_approvals)
            )
        for field, count, names, needed in asking:
            if self.approvals is None:
                raise ValueError(f"{field}: needs an approvals section (approvers, signing_key) naming who they are")
            if self.approvals.signing_key is None:
                raise ValueError(
                    f"approvals.signing_key: required, since {field} names approvers "
                    "(it signs their links and Mattermost buttons)"
                )
            try:
                resolved = self.approvals.resolve(names)
            except LookupError as exc:
                raise ValueError(f"{field}: {exc}") from None
            if needed is not None and needed > len(resolved):
                raise ValueError(
                    f"{count}: {_short(needed)} is more than the {len(resolved)} approver(s) named "
                    f"({', '.join(resolved)}), so it could never be reached"
                )
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


class _Refused(yaml.YAMLError):
    """A document that is valid YAML but too big or too deep to be a policy document."""

    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting and merge-key expansion, and reads only plain decimals as integers."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._merged = 0
        self._flattening: set[int] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # The composer recurses once per level: bound it before Python's recursion limit does.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(_too_deep(), self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        # YAML keeps the last of two equal keys: a second `rules:` would silently drop the first.
        node: MappingNode = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if (key_node.tag, key_node.value) in seen:
                    key = key_node.value
                    shown = repr(key) if _FIELD_LIKE.fullmatch(key) else "a key (not shown: it may be a secret)"
                    problem = f"{shown} is given twice in one mapping; YAML would keep only the last"
                    raise _Refused(problem, key_node.start_mark)
                seen.add((key_node.tag, key_node.value))
        return node

    def flatten_mapping(self, node: MappingNode) -> None:
        # `<<: [*a, *a, ...]` copies entries into the node at load time, so nested merges multiply:
        # count what each merge adds before PyYAML builds it.
        if id(node) in self._flattening:
            raise _Refused("a merge key (<<) refers to the mapping it is in", node.start_mark)
        self._flattening.add(id(node))
        try:
            for key_node, value_node in node.value:
                if key_node.tag != "tag:yaml.org,2002:merge":
                    continue
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    if isinstance(source, MappingNode):
                        self.flatten_mapping(source)
                        self._merged += len(source.value)
                if self._merged > MAX_VALUES:
                    raise _Refused(
                        f"merge keys (<<) expand to more than {MAX_VALUES} entries; a policy document is far smaller",
                        key_node.start_mark,
                    )
            super().flatten_mapping(node)
        finally:
            self._flattening.discard(id(node))

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        # PyYAML's scalar constructors raise ValueError, KeyError, ... on `!!int abc` or 2024-13-45.
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise _Unreadable(f"this value cannot be read as {_clip(tag, 30)}", node.start_mark) from None

    def construct_plain_int(self, node: Node) -> int | str:
        """Plain decimals are numbers; 0100 (octal), 0x64, 0b101, 1:30 (base 60) and 1_000 stay text.

        Text keeps an account id's leading zero, and lets a number field say what to write instead.
        """
        text = str(self.construct_scalar(node))  # type: ignore[arg-type]
        if re.fullmatch(r"[-+]?(0|[1-9][0-9]{0,99})", text):
            return int(text)
        return text


class _Unreadable(yaml.MarkedYAMLError):
    """A scalar whose YAML type cannot hold its text (`!!int abc`, a 13th month)."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem=problem, problem_mark=mark)


_PolicyLoader.add_constructor("tag:yaml.org,2002:int", _PolicyLoader.construct_plain_int)


def _too_deep() -> str:
    return f"the document nests more than {MAX_DEPTH} levels deep; a policy document needs 6"


def _check_shape(document: Any) -> str | None:
    """Why `document` is too deep or too big to validate, or None; iterative, and it stops at the limit."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return (
                f"the document expands to more than {MAX_VALUES} values (YAML aliases repeating a structure?); "
                "a policy document is far smaller"
            )
        if depth > MAX_DEPTH:
            return _too_deep() + " (a YAML alias inside its own anchor?)"
        if isinstance(value, dict):
            for key, item in value.items():
                stack += ((key, depth + 1), (item, depth + 1))
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack += ((item, depth + 1) for item in value)
    return None


def parse_policy(text: str, source: str = "<config>") -> Policy:
    """YAML or JSON text -> Policy, or ConfigError naming every bad field; never another exception."""
    try:
        return _parse(text, source)
    except ConfigError:
        raise
    except Exception as exc:
        raise _unexpected(source, exc) from None


def validate_policy(document: Any, source: str = "<config>") -> Policy:
    """An already-loaded document (dicts and lists) -> Policy, or ConfigError; never another exception."""
    try:
        return _validate(document, source)
    except ConfigError:
        raise
    except Exception as exc:
        raise _unexpected(source, exc) from None


def _unexpected(source: str, exc: Exception) -> ConfigError:
    # The safety net: the exception's own text may quote the document, so only its type is named.
    return ConfigError(
        source,
        [f"could not be read: unexpected {type(exc).__name__} (a bug in vifgate; the document's content is not shown)"],
    )


def _parse(text: str, source: str) -> Policy:
    if len(text) > MAX_TEXT:
        raise ConfigError(
            source, [f"the document is {len(text):,} characters long; a policy document is at most {MAX_TEXT:,}"]
        )
    try:
        document = yaml.load(text, Loader=_PolicyLoader)  # a SafeLoader subclass: no arbitrary objects
    except _Refused as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(source, [f"{exc.problem}{where}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"not valid YAML or JSON{where}: {_yaml_problem(problem)}"]) from None
    return _validate(document, source)


def _yaml_problem(problem: str) -> str:
    """PyYAML's own words, on one line, with anything long it quotes (a tag, an alias) left out."""
    problem = re.sub(r"'[^']{20,}'|\"[^\"]{20,}\"", "'…'", " ".join(problem.split()))
    return _clip(problem, 200)


def _validate(document: Any, source: str) -> Policy:
    if document is None:
        raise ConfigError(source, ["the document is empty: it needs 'targets' (and usually 'rules')"])
    if not isinstance(document, dict):
        raise ConfigError(
            source, [f"the document must be a mapping with 'targets' and 'rules', got {type(document).__name__}"]
        )
    if problem := _check_shape(document):
        raise ConfigError(source, [problem])
    if "organizations" in document:  # Policy's own field, filled from `targets`: not something to write
        why = "organizations: unknown field (an Organizations source is a targets entry: - from_organization: …)"
        raise ConfigError(source, [why])
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        at_written = _written_positions(document.get("targets"))
        problems = [at_written(_describe(err)) for err in exc.errors(include_url=False)]
        raise ConfigError(source, list(dict.fromkeys(problems))) from None


_SPLIT_PATH = re.compile(r"(?<![\w.\]])(targets|organizations)\[(\d+)\](\.from_organization)?")


def _written_positions(entries: Any):
    """Paths in the split policy (`targets[j]`, `organizations[j]`) as written (`targets[i]`, `….from_organization`)."""
    if not isinstance(entries, list) or not any(_is_source(entry) for entry in entries):
        return lambda problem: problem
    concrete = [i for i, entry in enumerate(entries) if not _is_source(entry)]
    sources = [i for i, entry in enumerate(entries) if _is_source(entry)]

    def rewrite(match: re.Match) -> str:
        kind, j = match[1], int(match[2])
        if kind == "targets":
            return f"targets[{concrete[j]}]" if j < len(concrete) else match[0]
        return f"targets[{sources[j]}].from_organization" if j < len(sources) else match[0]

    return lambda problem: _SPLIT_PATH.sub(rewrite, problem)


_SECRET_FIELDS = {
    "external_id",
    "chat",
    "credentials",
    "url",
    "token",
    "signing_secret",
    "signing_key",
    "slack_signing_secret",
}
# Every field name of the document: a path under a secret field prints these, never a key someone wrote.
_FIELD_NAMES = {
    name
    for model in (
        Policy,
        Target,
        OrganizationSource,
        FromOrganization,
        Credentials,
        Rule,
        VlanRange,
        Chat,
        Destination,
        SecretRef,
        Approvals,
        Approver,
    )
    for name in model.model_fields
}


def _may_be_secret(loc: tuple) -> bool:
    """Someone may paste a webhook URL or a key where a reference belongs: never echo it back."""
    return any(part in _SECRET_FIELDS for part in loc)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_FIELD_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")


def _path(loc: tuple) -> str:
    """`rules[2].gateway`, cut before any part under a secret field that is not one of our field names."""
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and not isinstance(part, bool):
            path += f"[{part}]"
        elif part in _FIELD_NAMES or not _may_be_secret(loc[:i]):
            path += f".{_clip(str(part), 40)}" if path else _clip(str(part), 40)
        else:
            break
    return path


def _describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as `rules[2].gateway: <what is wrong>`."""
    loc = tuple(error["loc"])
    if loc[-1:] == ("[key]",):  # a mapping's key is wrong (a group's name): the message shows it, the path ends above
        loc = loc[:-2]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        # The last part is a key someone wrote. A misspelt field is worth showing; a URL or an access key
        # pasted as a key, or anything under a secret field, is not.
        parents, key = loc[:-1], loc[-1]
        if isinstance(key, str) and _FIELD_LIKE.fullmatch(key) and not _may_be_secret(parents):
            path = _path(loc)
            message = "unknown field (check its spelling)"
        else:
            path = _path(parents)
            where = "field" if path else "top-level field"
            message = f"unknown {where} (not shown: it may be a secret; check its spelling)"
    elif error["type"] == "not_a":
        path = _path(loc)
        if _may_be_secret(loc):
            message = f"the value given is not {error['ctx']['what']} (not shown: it may be a secret)"
    else:
        path = _path(loc)
        if error["type"] not in ("value_error", "missing") and "input" in error and not _may_be_secret(loc):
            message += f" (got {_short(error['input'])})"
    message = _clip(message, 400)
    # Errors raised by a model validator carry their own path inside the message: in full, or below
    # the model (`approvers: only for action ask` under rules[1] reads `rules[1].approvers: ...`).
    if message.startswith(("rules[", "targets[", "organizations[", "chat.")) or not path:
        return message
    if error["type"] == "value_error" and (below := _BELOW.match(message)) and below[1] in _FIELD_NAMES:
        return f"{path}.{message}"
    return f"{path}: {message}"


_BELOW = re.compile(r"([a-z_]+)(?:\[\d+\]|\.[A-Za-z0-9_.-]+)*: ")
