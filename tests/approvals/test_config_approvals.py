"""The approvals section and ask rules' approvers: good documents load, each bad field is named, no secret shown."""

from datetime import timedelta

import pytest

from chalicelib.config import Approvals, Approver, ConfigError, Policy, SecretRef, parse_policy
from tests.test_config import changed, problems

PROD, STAGING, OTHER = "111122223333", "444455556666", "777788889999"
ALICE_MM, BOB_MM = "a" * 26, "0123456789abcdefghijklmnop"

BASE = {
    "targets": [
        {
            "name": "osc-par",
            "provider": "outscale",
            "account_id": PROD,
            "credentials": {"secret_id": "vifgate/osc-par"},
        }
    ],
    "rules": [
        {
            "name": "partner-prod",
            "accounts": [PROD],
            "connections": ["dxcon-fg5678gh"],
            "gateway": "vgw-12345678",
            "action": "confirm",
        },
        {
            "name": "staging",
            "accounts": [STAGING],
            "action": "ask",
            "approvers": ["netops"],
            "min_approvals": 2,
            "gateways": ["vgw-12345678", "vgw-87654321"],
        },
        {"name": "never", "accounts": [OTHER], "action": "reject"},
    ],
    "default_action": "ask",
    "default_approvers": ["alice"],
    "approvals": {
        "approvers": [
            {"name": "alice", "slack": "U012ABCDEF", "mattermost": ALICE_MM, "email": "alice@example.com"},
            {"name": "bob", "slack": "W0B0B", "mattermost": BOB_MM},
            {"name": "carol.oncall", "email": "carol@example.org"},
        ],
        "groups": {"netops": ["alice", "bob"], "everyone": ["alice", "bob", "carol.oncall"]},
        "link_ttl": "12h",
        "base_url": "https://vifgate.example.com/api/",
        "signing_key": {"secret_id": "vifgate/approvals", "key": "signing_key"},
        "slack_signing_secret": {"parameter": "/vifgate/slack-signing-secret"},
    },
}


def document(*changes: tuple[str, object]) -> str:
    """BASE as JSON with each (path, value) put in place; value ... removes the field."""
    return changed(BASE, *changes)


def test_the_base_document_loads_with_every_field():
    policy = parse_policy(document())
    approvals = policy.approvals
    assert isinstance(approvals, Approvals)
    assert approvals.approvers[0] == Approver(
        name="alice", slack="U012ABCDEF", mattermost=ALICE_MM, email="alice@example.com"
    )
    assert approvals.groups == {"netops": ["alice", "bob"], "everyone": ["alice", "bob", "carol.oncall"]}
    assert approvals.link_ttl == timedelta(hours=12)
    assert approvals.base_url == "https://vifgate.example.com/api"  # the trailing slash dropped
    assert approvals.signing_key == SecretRef(secret_id="vifgate/approvals", key="signing_key")
    assert approvals.slack_signing_secret == SecretRef(parameter="/vifgate/slack-signing-secret")
    staging = policy.rules[1]
    assert (staging.approvers, staging.min_approvals, staging.gateways) == (
        ["netops"],
        2,
        ["vgw-12345678", "vgw-87654321"],
    )
    assert (policy.default_approvers, policy.default_min_approvals) == (["alice"], None)


def test_the_same_document_in_yaml():
    policy = parse_policy(f"""
targets:
  - {{name: osc-par, provider: outscale, account_id: {PROD}, credentials: {{secret_id: vifgate/osc-par}}}}
rules:
  - name: staging
    accounts: [{STAGING}]
    action: ask
    approvers: [netops, carol.oncall]
    min_approvals: 2
    gateway: vgw-12345678
default_approvers: [netops]
default_min_approvals: 2
approvals:
  approvers:
    - {{name: alice, slack: U012ABCDEF}}
    - {{name: bob, mattermost: {BOB_MM}}}
    - name: carol.oncall
  groups:
    netops: [alice, bob]
  link_ttl: PT30M
  base_url: http://127.0.0.1:8000
  signing_key: {{parameter: /vifgate/approvals-key}}
  slack_signing_secret: {{secret_id: vifgate/slack, key: signing_secret}}
""")
    assert policy.rules[0].approvers == ["netops", "carol.oncall"]
    assert policy.rules[0].gateway == "vgw-12345678" and policy.rules[0].gateways is None
    assert policy.default_min_approvals == 2
    assert policy.approvals is not None and policy.approvals.link_ttl == timedelta(minutes=30)


@pytest.mark.parametrize(
    "changes, check",
    [
        # link_ttl defaults to a day; its bounds are 1 minute and 7 days, written any way a duration may be
        ([("approvals.link_ttl", ...)], lambda p: p.approvals.link_ttl == timedelta(hours=24)),
        ([("approvals.link_ttl", "1m")], lambda p: p.approvals.link_ttl == timedelta(minutes=1)),
        ([("approvals.link_ttl", 60)], lambda p: p.approvals.link_ttl == timedelta(minutes=1)),
        ([("approvals.link_ttl", "7d")], lambda p: p.approvals.link_ttl == timedelta(days=7)),
        ([("approvals.link_ttl", "P7D")], lambda p: p.approvals.link_ttl == timedelta(days=7)),
        # plain http only on this machine; the trailing slash is dropped either way
        ([("approvals.base_url", "http://localhost:8000/")], lambda p: p.approvals.base_url == "http://localhost:8000"),
        ([("approvals.base_url", "http://127.0.0.1:9000")], lambda p: p.approvals.base_url == "http://127.0.0.1:9000"),
        ([("approvals.base_url", "http://[::1]:8080/x/")], lambda p: p.approvals.base_url == "http://[::1]:8080/x"),
        ([("approvals.base_url", "https://gk.example")], lambda p: p.approvals.base_url == "https://gk.example"),
        ([("approvals.base_url", "https://gk.example//")], lambda p: p.approvals.base_url == "https://gk.example"),
        ([("approvals.base_url", ...)], lambda p: p.approvals.base_url is None),
        # an ask rule without approvers stays notify-only, and may still say which gateways
        ([("rules.1.approvers", ...), ("rules.1.min_approvals", ...)], lambda p: p.rules[1].approvers is None),
        ([("rules.1.gateways", ...), ("rules.1.gateway", "vgw-87654321")], lambda p: p.rules[1].gateway is not None),
        # a person twice (by name and through a group) is fine: they count once
        (
            [("rules.1.approvers", ["alice", "netops"])],
            lambda p: p.approvals.resolve(["alice", "netops"]) == ("alice", "bob"),
        ),
        # no approver is named anywhere: the section needs no signing_key
        (
            [
                ("rules.1.approvers", ...),
                ("rules.1.min_approvals", ...),
                ("default_approvers", ...),
                ("approvals.signing_key", ...),
            ],
            lambda p: p.approvals.signing_key is None,
        ),
        # no Slack id anywhere: no Slack signing secret needed
        (
            [
                ("approvals.approvers.0.slack", ...),
                ("approvals.approvers.1.slack", ...),
                ("approvals.slack_signing_secret", ...),
            ],
            lambda p: p.approvals.slack_signing_secret is None,
        ),
        # without an approvals section, nothing asks anyone: a document of the previous release still loads
        (
            [
                ("approvals", ...),
                ("default_approvers", ...),
                ("rules.1.approvers", ...),
                ("rules.1.min_approvals", ...),
            ],
            lambda p: p.approvals is None,
        ),
        ([("default_min_approvals", 1)], lambda p: p.default_min_approvals == 1),
        ([("approvals.approvers.0.slack", "W" + "0" * 20)], lambda p: p.approvals.approvers[0].slack == "W" + "0" * 20),
    ],
)
def test_good_documents(changes, check):
    assert check(parse_policy(document(*changes)))


def _ttl_help(shown: str) -> str:
    return f"approvals.link_ttl: {shown} is outside 1m to 7d, the lifetimes a link may have"


@pytest.mark.parametrize(
    "changes, expected",
    [
        # rules
        (
            [("rules.1.approvers", ["dave"])],
            "rules[1].approvers: 'dave' is neither an approver nor a group in approvals",
        ),
        (
            [("rules.1.approvers", ["netops", "Netops"])],
            "rules[1].approvers: 'Netops' is neither an approver nor a group in approvals",
        ),
        ([("rules.0.approvers", ["alice"])], "rules[0].approvers: only for action ask (this rule's action is confirm)"),
        ([("rules.0.min_approvals", 1)], "rules[0].min_approvals: only for action ask (this rule's action is confirm)"),
        (
            [("rules.0.gateways", ["vgw-12345678"])],
            "rules[0].gateways: only for action ask (this rule's action is confirm)",
        ),
        ([("rules.2.approvers", ["alice"])], "rules[2].approvers: only for action ask (this rule's action is reject)"),
        (
            [("rules.2.gateways", ["vgw-12345678"])],
            "rules[2].gateways: only for action ask (this rule's action is reject)",
        ),
        (
            [("rules.1.gateway", "vgw-12345678")],
            "rules[1].gateways: give gateway (one) or gateways (a choice), not both",
        ),
        (
            [("rules.1.min_approvals", 3)],
            "rules[1].min_approvals: 3 is more than the 2 approver(s) named (alice, bob), so it could never be reached",
        ),
        ([("rules.1.min_approvals", 0)], "rules[1].min_approvals: Input should be greater than or equal to 1 (got 0)"),
        (
            [("rules.1.min_approvals", True)],
            "rules[1].min_approvals: write a number, not true (YAML reads yes, no, on and off as true and false)",
        ),
        (
            [("rules.1.approvers", ...)],
            "rules[1].min_approvals: needs approvers on the same rule (who gives the approvals)",
        ),
        (
            [("rules.1.approvers", [])],
            "rules[1].approvers: List should have at least 1 item after validation, not 0 (got [])",
        ),
        (
            [("rules.1.gateways", [])],
            "rules[1].gateways: List should have at least 1 item after validation, not 0 (got [])",
        ),
        (
            [("rules.1.approvers", ["not a name"])],
            "rules[1].approvers[0]: 'not a name' is not a name (letters, digits, . _ -)",
        ),
        (
            [("rules.1.gateways", ["vgw-12345678", "vgw-12345678"])],
            "rules[1].gateways[1]: 'vgw-12345678' is listed twice",
        ),
        (
            [("rules.1.gateways", ["vgw-nope"])],
            "rules[1].gateways[0]: 'vgw-nope' is not a virtual gateway id (vgw-xxxxxxxx)",
        ),
        # default_approvers / default_min_approvals
        ([("default_approvers", ["zed"])], "default_approvers: 'zed' is neither an approver nor a group in approvals"),
        (
            [("default_action", "reject")],
            "default_approvers: only with default_action: ask (it is reject, which asks nobody)",
        ),
        (
            [("default_approvers", ...), ("default_action", "ignore"), ("default_min_approvals", 1)],
            "default_min_approvals: only with default_action: ask (it is ignore, which asks nobody)",
        ),
        (
            [("default_approvers", ...), ("default_min_approvals", 1)],
            "default_min_approvals: needs default_approvers (who gives the approvals)",
        ),
        (
            [("default_min_approvals", 2)],
            "default_min_approvals: 2 is more than the 1 approver(s) named (alice), so it could never be reached",
        ),
        (
            [("default_approvers", ["everyone"]), ("default_min_approvals", 1000)],
            "default_min_approvals: 1000 is more than the 3 approver(s) named "
            "(alice, bob, carol.oncall), so it could never be reached",
        ),
        # approvers named without the section, or without the key that signs their links
        (
            [("approvals", ...)],
            "rules[1].approvers: needs an approvals section (approvers, signing_key) naming who they are",
        ),
        (
            [("approvals", ...), ("rules.1.approvers", ...), ("rules.1.min_approvals", ...)],
            "default_approvers: needs an approvals section (approvers, signing_key) naming who they are",
        ),
        (
            [("approvals.signing_key", ...)],
            "approvals.signing_key: required, since rules[1].approvers names approvers "
            "(it signs their links and Mattermost buttons)",
        ),
        (
            [("approvals.signing_key", ...), ("rules.1.approvers", ...), ("rules.1.min_approvals", ...)],
            "approvals.signing_key: required, since default_approvers names approvers "
            "(it signs their links and Mattermost buttons)",
        ),
        (
            [("approvals.slack_signing_secret", ...)],
            "approvals.slack_signing_secret: required, since approvers[0] (alice) has a slack id "
            "(it is how Slack's button clicks are verified)",
        ),
        (
            [("approvals.slack_signing_secret", ...), ("approvals.approvers.0.slack", ...)],
            "approvals.slack_signing_secret: required, since approvers[1] (bob) has a slack id "
            "(it is how Slack's button clicks are verified)",
        ),
        # approvers
        (
            [("approvals.approvers", [])],
            "approvals.approvers: List should have at least 1 item after validation, not 0 (got [])",
        ),
        ([("approvals.approvers.2.name", "alice")], "approvals.approvers[2].name: 'alice' is used twice"),
        ([("approvals.approvers.2.name", ...)], "approvals.approvers[2].name: Field required"),
        (
            [("approvals.approvers.2.phone", "+33 1")],
            "approvals.approvers[2].phone: unknown field (check its spelling)",
        ),
        (
            [("approvals.approvers.0.slack", "u012abcdef")],
            "approvals.approvers[0].slack: 'u012abcdef' is not a Slack user id (U… or W…, capitals and digits)",
        ),
        (
            [("approvals.approvers.0.slack", "B012ABCDEF")],  # a bot, not a person
            "approvals.approvers[0].slack: 'B012ABCDEF' is not a Slack user id (U… or W…, capitals and digits)",
        ),
        (
            [("approvals.approvers.0.slack", "U1")],
            "approvals.approvers[0].slack: 'U1' is not a Slack user id (U… or W…, capitals and digits)",
        ),
        (
            [("approvals.approvers.0.slack", "U" + "A" * 21)],
            f"approvals.approvers[0].slack: 'U{'A' * 21}' is not a Slack user id (U… or W…, capitals and digits)",
        ),
        (
            [("approvals.approvers.0.slack", "@alice")],
            "approvals.approvers[0].slack: '@alice' is not a Slack user id (U… or W…, capitals and digits)",
        ),
        (
            [("approvals.approvers.0.mattermost", "a" * 25)],
            f"approvals.approvers[0].mattermost: '{'a' * 25}' is not a Mattermost user id "
            "(26 lowercase letters and digits)",
        ),
        (
            [("approvals.approvers.0.mattermost", "A" * 26)],
            f"approvals.approvers[0].mattermost: '{'A' * 26}' is not a Mattermost user id "
            "(26 lowercase letters and digits)",
        ),
        ([("approvals.approvers.1.slack", "U012ABCDEF")], "approvals.approvers[1].slack: 'U012ABCDEF' is also alice's"),
        (
            [("approvals.approvers.2.mattermost", BOB_MM)],
            f"approvals.approvers[2].mattermost: '{BOB_MM}' is also bob's",
        ),
        (
            [("approvals.approvers.0.email", "alice")],
            "approvals.approvers[0].email: 'alice' is not an e-mail address",
        ),
        # groups
        (
            [("approvals.groups", {"alice": ["bob"]})],
            "approvals.groups.alice: 'alice' is an approver's name; give the group another",
        ),
        (
            [("approvals.groups.netops", ["alice", "dave"])],
            "approvals.groups.netops[1]: 'dave' is not an approver (groups hold approvers)",
        ),
        (
            [("approvals.groups.everyone", ["netops"])],
            "approvals.groups.everyone[0]: 'netops' is not an approver (groups hold approvers)",
        ),
        ([("approvals.groups.netops", [])], "approvals.groups.netops: a group needs at least one approver"),
        (
            [("approvals.groups", {"net ops": ["alice"]})],
            "approvals.groups: 'net ops' is not a name (letters, digits, . _ -)",
        ),
        ([("approvals.groups.netops", "alice")], "approvals.groups.netops: Input should be a valid list (got 'alice')"),
        # link_ttl
        ([("approvals.link_ttl", "30s")], _ttl_help("'30s'")),
        ([("approvals.link_ttl", 59)], _ttl_help("59")),
        ([("approvals.link_ttl", "8d")], _ttl_help("'8d'")),
        ([("approvals.link_ttl", "P7DT1S")], _ttl_help("'P7DT1S'")),
        (
            [("approvals.link_ttl", "soon")],
            "approvals.link_ttl: 'soon' is not a duration: write 72h, 30m, 2d or 90s, or ISO 8601 like PT72H, P3D "
            "or P1DT12H",
        ),
        # base_url
        (
            [("approvals.base_url", "http://vifgate.example.com")],
            "approvals.base_url: 'http://vifgate.example.com' is plain http: links are bearer credentials, "
            "so use https (http only for localhost, 127.0.0.1 or [::1])",
        ),
        (
            [("approvals.base_url", "http://127.0.0.1.example.com")],
            "approvals.base_url: 'http://127.0.0.1.example.com' is plain http: links are bearer credentials, "
            "so use https (http only for localhost, 127.0.0.1 or [::1])",
        ),
        (
            [("approvals.base_url", "https://gk.example/api?stage=prod")],
            "approvals.base_url: 'https://gk.example/api?stage=prod' has a query or fragment; "
            "give the base URL the routes are under",
        ),
        (
            [("approvals.base_url", "https://gk.example/#top")],
            "approvals.base_url: 'https://gk.example/#top' has a query or fragment; "
            "give the base URL the routes are under",
        ),
        (
            [("approvals.base_url", "https://gk.example/?")],
            "approvals.base_url: 'https://gk.example/?' has a query or fragment; "
            "give the base URL the routes are under",
        ),
        ([("approvals.base_url", "ftp://gk.example")], "approvals.base_url: 'ftp://gk.example' is not an https:// URL"),
        ([("approvals.base_url", "gk.example/api")], "approvals.base_url: 'gk.example/api' is not an https:// URL"),
        ([("approvals.base_url", "https://")], "approvals.base_url: 'https://' is not an https:// URL"),
        (
            [("approvals.base_url", "https://gk.example:port")],
            "approvals.base_url: 'https://gk.example:port' is not a URL",
        ),
        ([("approvals.base_url", "https://[::1")], "approvals.base_url: 'https://[::1' is not a URL"),
        (
            [("approvals.base_url", "https://gk.example/a b")],
            "approvals.base_url: is not a URL (too long, or it holds spaces or control characters)",
        ),
        (
            [("approvals.base_url", 8000)],
            "approvals.base_url: Input should be a valid string (got 8000)",
        ),
        # the section itself
        ([("approvals.approval_ttl", "1h")], "approvals.approval_ttl: unknown field (check its spelling)"),
        (
            [("approvals", ["alice"])],
            "approvals: Input should be a valid dictionary or instance of Approvals (got ['alice'])",
        ),
    ],
)
def test_each_bad_field_is_named(changes, expected):
    assert problems(document(*changes)) == [expected]


REFERENCE_HELP = (
    "write {secret_id: …} (a Secrets Manager secret; add key: … for a field of a JSON secret) or "
    "{parameter: …} (an SSM SecureString), never the secret itself (what was given is not shown)"
)


@pytest.mark.parametrize(
    "changes, expected, pasted",
    [
        (
            [("approvals.signing_key", "k3y-s3cr3t-0123456789abcdef0123456789")],
            f"approvals.signing_key: {REFERENCE_HELP}",
            "k3y-s3cr3t",
        ),
        (
            [("approvals.slack_signing_secret", "8f14e45fceea167a5a36dedd4bea2543")],
            f"approvals.slack_signing_secret: {REFERENCE_HELP}",
            "8f14e45fceea",
        ),
        (
            [("approvals.slack_signing_secret", {"8f14e45fceea167a5a36dedd4bea2543": None})],
            f"approvals.slack_signing_secret: {REFERENCE_HELP}",
            "8f14e45fceea",
        ),
        (
            [("approvals.signing_key", {"secret_id": {"k3y-s3cr3t": 1}})],
            "approvals.signing_key.secret_id: Input should be a valid string",
            "k3y-s3cr3t",
        ),
        (
            [("approvals.signing_key", {"secret_id": "x", "k3y-s3cr3t": 1})],
            f"approvals.signing_key: {REFERENCE_HELP}",
            "k3y-s3cr3t",
        ),
        (
            [("approvals.signing_key", 1234567890123456789)],
            f"approvals.signing_key: {REFERENCE_HELP}",
            "1234567890123456789",
        ),
        (
            [("approvals.base_url", "https://admin:pa55w0rd@gk.example")],
            "approvals.base_url: must not hold '@' (a user or password in the URL); what was given is not shown",
            "pa55w0rd",
        ),
        (
            [("approvals.base_url", "https://admin:pa55w0rd@gk.example:port")],
            "approvals.base_url: must not hold '@' (a user or password in the URL); what was given is not shown",
            "pa55w0rd",
        ),
    ],
)
def test_secrets_stay_references_and_are_never_echoed(changes, expected, pasted):
    with pytest.raises(ConfigError) as info:
        parse_policy(document(*changes), "test.yaml")
    assert info.value.problems == [expected]
    assert pasted not in str(info.value)


def test_a_secret_pasted_into_yaml_is_never_echoed():
    text = f"""
targets: [{{name: osc-par, provider: outscale, account_id: {PROD}, credentials: {{profile: p}}}}]
approvals:
  approvers: [{{name: alice}}]
  signing_key: |
    -----BEGIN s3cr3t KEY-----
  slack_signing_secret: {{secret_id: vifgate/slack, 8f14e45fceea167a5a36dedd4bea2543: x}}
"""
    found = problems(text)
    assert found == [f"approvals.signing_key: {REFERENCE_HELP}", f"approvals.slack_signing_secret: {REFERENCE_HELP}"]
    assert "s3cr3t" not in "\n".join(found) and "8f14e45f" not in "\n".join(found)


APPROVALS = parse_policy(document()).approvals
assert APPROVALS is not None


def test_approver_by_name_and_by_chat_user_id():
    assert APPROVALS.approver("alice") == APPROVALS.approvers[0]
    assert APPROVALS.approver("carol.oncall") == APPROVALS.approvers[2]
    assert APPROVALS.approver("netops") is None  # a group is not a person
    assert APPROVALS.approver("Alice") is None
    assert APPROVALS.by_slack("U012ABCDEF") == APPROVALS.approvers[0]
    assert APPROVALS.by_slack("W0B0B") == APPROVALS.approvers[1]
    assert APPROVALS.by_slack("U999999") is None
    assert APPROVALS.by_slack("u012abcdef") is None  # Slack ids are case-sensitive
    assert APPROVALS.by_slack("") is None
    assert APPROVALS.by_mattermost(ALICE_MM) == APPROVALS.approvers[0]
    assert APPROVALS.by_mattermost(BOB_MM) == APPROVALS.approvers[1]
    assert APPROVALS.by_mattermost("U012ABCDEF") is None  # one chat's id is not another's
    assert APPROVALS.by_mattermost("") is None


@pytest.mark.parametrize(
    "names, expected",
    [
        ([], ()),
        (["bob"], ("bob",)),
        (["netops"], ("alice", "bob")),
        (["carol.oncall", "netops"], ("alice", "bob", "carol.oncall")),
        (["bob", "alice", "netops", "bob"], ("alice", "bob")),
        (["everyone", "netops"], ("alice", "bob", "carol.oncall")),
    ],
)
def test_resolve_expands_groups_unique_and_sorted(names, expected):
    assert APPROVALS.resolve(names) == expected


def test_resolve_names_what_it_does_not_know():
    with pytest.raises(LookupError, match="'dave' is neither an approver nor a group in approvals"):
        APPROVALS.resolve(["alice", "dave"])


def test_models_are_frozen_like_the_rest():
    with pytest.raises(ValueError):
        APPROVALS.link_ttl = timedelta(days=30)  # type: ignore[misc]
    assert isinstance(parse_policy(document()), Policy)
