"""Property tests of the policy parser: whatever comes in, a Policy or a short, secret-free ConfigError comes out."""

import json
import string
from datetime import date, datetime, timedelta
from decimal import Decimal

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import config
from chalicelib.config import ConfigError, Policy, parse_policy

from .test_config import GOOD

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = [
    "targets", "rules", "name", "provider", "region", "account_id", "credentials", "profile", "secret_id",
    "role_arn", "endpoint_url", "accounts", "connections", "any_connection", "vlan", "min", "max", "asn",
    "vif_name", "gateway", "action", "default_action", "expiry_alerts", "stuck_pending_after", "chat",
    "destinations", "kind", "url", "token", "channel", "signing_secret", "parameter", "key", "events",
    "approvals", "approvers", "groups", "link_ttl", "base_url", "signing_key", "slack_signing_secret", "slack",
    "mattermost", "email", "min_approvals", "gateways", "default_approvers", "default_min_approvals",
    "auto_confirm", "external_id",
]  # fmt: skip
SCALARS = [
    "aws", "outscale", "eu-west-2", "111122223333", "012345670123", "vgw-12345678", "dxcon-fg5678gh", "confirm",
    "ask", "slack", "webhook", "72h", "PT72H", "P1DT12H", "7d", "8d", "0h", "99999999999999999999d", "1:30",
    "0100", "0x64", "0b101", "1_000", "yes", "on", "~", "", "*", "2024-13-45",
    "alice", "netops", "U012ABCDEF", "W0B0B", "a" * 26, "https://gk.example/", "http://localhost:8000", "1m",
]  # fmt: skip
# Pieces of YAML syntax, so random text reaches the composer and constructors, not only the scanner.
TOKENS = [
    "[", "]", "{", "}", ":", ": ", ", ", "-", "- ", "\n", "  ", "    ", "&a ", "*a", "&b ", "*b", "<<: ", "? ",
    "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!pairs ", "!!str ",
    "!!map ", "!!seq ", "!!null ", "!!merge ", "!foo ", "!<tag:x> ", "|", ">", "'", '"', "#", "%YAML 1.1\n",
    "---\n", "...\n", "\t", "\\", "\x00", "é", "\ufeff", "9" * 40, "2024-01-01", "2024-01-01 10:00:00",
    "1.5", ".inf", ".nan", "-", "+", "_", ".",
    *FIELDS, *SCALARS,
]  # fmt: skip

yaml_soup = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join) | st.text(max_size=200)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**30, -(10**30), 2**64, 604800, 0, 150])
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(SCALARS)
)
keys = st.sampled_from(FIELDS) | st.text(max_size=10)
structures = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=30
)
# Python values no YAML or JSON text produces, for callers that hand in a structure.
odd_scalars = (
    scalars
    | st.builds(pow, st.just(10), st.just(5000))
    | st.sampled_from(
        [
            b"bytes",
            bytearray(b"x"),
            date(2024, 1, 1),
            datetime(2024, 1, 1),
            timedelta(days=3),
            timedelta(days=10**6),
            Decimal("1e999"),
            Decimal("NaN"),
            object(),
            frozenset({1}),
            (1, 2),
            float("inf"),
            float("nan"),
            complex(1, 2),
            range(3),
        ]
    )
)
odd_structures = st.recursive(
    odd_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(keys | st.integers() | st.none(), inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=30,
)
PLACES = [
    "",
    "targets",
    "targets.0",
    "targets.0.credentials",
    "targets.0.account_id",
    "targets.1.role_arn",
    "targets.1.external_id",
    "auto_confirm",
    "rules",
    "rules.0",
    "rules.0.vlan",
    "rules.0.vlan.min",
    "rules.0.asn",
    "rules.0.accounts",
    "expiry_alerts",
    "stuck_pending_after",
    "chat",
    "chat.destinations",
    "chat.destinations.0",
    "chat.destinations.0.url",
    "chat.destinations.0.token",
    "chat.destinations.0.signing_secret",
    "rules.1",
    "rules.1.approvers",
    "rules.1.min_approvals",
    "rules.1.gateways",
    "default_approvers",
    "default_min_approvals",
    "approvals",
    "approvals.approvers",
    "approvals.approvers.0",
    "approvals.approvers.0.slack",
    "approvals.approvers.1.mattermost",
    "approvals.groups",
    "approvals.groups.netops",
    "approvals.link_ttl",
    "approvals.base_url",
    "approvals.signing_key",
    "approvals.slack_signing_secret",
]
APPROVALS = {
    "approvers": [{"name": "alice", "slack": "U012ABCDEF"}, {"name": "bob", "mattermost": "a" * 26}],
    "groups": {"netops": ["alice", "bob"]},
    "link_ttl": "1h",
    "base_url": "https://gk.example/",
    "signing_key": {"secret_id": "vifgate/approvals"},
    "slack_signing_secret": {"parameter": "/vifgate/slack"},
}
ASK = {"name": "ask", "accounts": ["444455556666"], "action": "ask", "approvers": ["netops"], "min_approvals": 2}


def good_with(place: str, value):
    """GOOD (plus a chat destination, an approvals section and an ask rule) with `value` put at `place`."""
    doc = json.loads(json.dumps(GOOD))
    doc["chat"] = {"destinations": [{"name": "n", "kind": "teams", "url": {"secret_id": "vifgate/chat"}}]}
    doc["approvals"] = json.loads(json.dumps(APPROVALS))
    doc["rules"].append(dict(ASK))
    doc["default_approvers"] = ["alice"]
    if not place:
        return value
    *parents, last = [int(p) if p.isdigit() else p for p in place.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


def outcome(call, *args) -> Policy | ConfigError:
    """Only a Policy or a ConfigError may come out; the error text stays short."""
    try:
        result = call(*args)
    except ConfigError as exc:
        text = str(exc)
        assert len(text) < 22 * 500, len(text)
        assert text.startswith("invalid config fuzz:\n")
        return exc
    assert isinstance(result, Policy)
    return result


@FUZZ
@given(yaml_soup)
def test_any_text(text):
    outcome(parse_policy, text, "fuzz")


@FUZZ
@given(st.sampled_from(PLACES), structures)
def test_any_json_or_yaml_structure_anywhere(place, value):
    document = good_with(place, value)
    outcome(parse_policy, json.dumps(document), "fuzz")
    outcome(parse_policy, yaml.safe_dump(document), "fuzz")


@FUZZ
@given(st.sampled_from(PLACES), odd_structures)
def test_any_python_structure_anywhere(place, value):
    outcome(config.validate_policy, good_with(place, value), "fuzz")


def test_recursive_python_structures():
    loop: list = []
    loop.append(loop)
    looped: dict = {}
    looped["targets"] = [looped]
    for document in (good_with("rules", loop), looped, good_with("chat", {"destinations": loop})):
        assert "nests more than 20 levels deep" in str(outcome(config.validate_policy, document, "fuzz"))


SECRET = "s3cr3tVALUE"
secret_structures = st.recursive(
    st.just(SECRET) | st.sampled_from([f"https://hooks.slack.com/services/{SECRET}", f"xoxb-{SECRET}"]) | scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.just(SECRET) | st.just(f"AKIA{SECRET}") | keys, inner, max_size=3)
    ),
    max_leaves=12,
)
SECRET_PLACES = [
    "targets.0.credentials",
    "targets.1.external_id",  # the member role's shared secret: never echoed either
    "chat",
    "chat.destinations",
    "chat.destinations.0",
    "chat.destinations.0.url",
    "chat.destinations.0.token",
    "chat.destinations.0.signing_secret",
    "approvals.signing_key",
    "approvals.slack_signing_secret",
]


def test_the_document_fuzzed_is_good_as_it_stands():
    """Each place changes one field of a valid document, so the fuzz reaches past the first error."""
    policy = config.validate_policy(good_with("targets", GOOD["targets"]))
    assert policy.approvals is not None and policy.rules[1].approvers == ["netops"]


@FUZZ
@given(st.sampled_from(SECRET_PLACES), secret_structures)
def test_what_is_pasted_where_secrets_belong_is_never_echoed(place, value):
    document = good_with(place, value)
    for text in (json.dumps(document), yaml.safe_dump(document)):
        result = outcome(parse_policy, text, "fuzz")
        assert isinstance(result, Policy) or SECRET not in str(result)


def test_soup_alphabet_is_printable_enough():
    """The soup must reach past the scanner: most of its tokens are ordinary YAML."""
    assert sum(t.strip(string.punctuation + " \n") != "" for t in TOKENS) > len(TOKENS) / 2


@FUZZ
@given(st.text(max_size=30), st.text(max_size=30))
def test_a_base_url_holding_a_password_is_never_echoed(before, after):
    document = good_with("approvals.base_url", f"{before}https://admin:{SECRET}@{after}")
    result = outcome(config.validate_policy, document, "fuzz")
    assert isinstance(result, ConfigError) and SECRET not in str(result)
