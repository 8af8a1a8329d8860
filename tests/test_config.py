"""The policy document: every bad field is named with its value; good documents load from YAML and JSON."""

import json
from datetime import timedelta

import pytest

from chalicelib.config import ConfigError, parse_duration, parse_policy

GOOD = {
    "targets": [
        {
            "name": "osc-par",
            "provider": "outscale",
            "region": "eu-west-2",
            "account_id": "111122223333",
            "credentials": {"secret_id": "vifgate/osc-par"},
        },
        {
            "name": "aws-hub",
            "provider": "aws",
            "region": "eu-west-1",
            "account_id": "444455556666",
            "role_arn": "arn:aws:iam::444455556666:role/vif-gatekeeper",
        },
    ],
    "rules": [
        {
            "name": "partner-prod",
            "accounts": ["111122223333"],
            "connections": ["dxcon-fg5678gh"],
            "vlan": {"min": 100, "max": 199},
            "asn": [65000],
            "vif_name": "prod-*",
            "gateway": "vgw-12345678",
            "action": "confirm",
        }
    ],
    "default_action": "ask",
    "expiry_alerts": ["72h", "24h", "4h"],
}


def with_change(path: str, value):
    """GOOD with one field replaced (or removed when value is ...)."""
    doc = json.loads(json.dumps(GOOD))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return json.dumps(doc)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "test.yaml")
    return info.value.problems


def test_good_document_loads_from_json_and_yaml():
    from_json = parse_policy(json.dumps(GOOD))
    from_yaml = parse_policy("""
targets:
  - name: osc-par
    provider: outscale
    region: eu-west-2
    account_id: 111122223333
    credentials: {secret_id: vifgate/osc-par}
  - {name: aws-hub, provider: aws, region: eu-west-1, account_id: "444455556666",
     role_arn: "arn:aws:iam::444455556666:role/vif-gatekeeper"}
rules:
  - name: partner-prod
    accounts: [111122223333]      # YAML reads this as a number; it is still an account id
    connections: [dxcon-fg5678gh]
    vlan: {min: 100, max: 199}
    asn: [65000]
    vif_name: "prod-*"
    gateway: vgw-12345678
    action: confirm
default_action: ask
expiry_alerts: [72h, 24h, 4h]
""")
    assert from_json == from_yaml
    assert from_yaml.rules[0].accounts == ["111122223333"]
    assert from_yaml.expiry_alerts == [timedelta(hours=72), timedelta(hours=24), timedelta(hours=4)]
    assert from_yaml.allowlist() == {"accounts": {"111122223333"}, "gateways": {"vgw-12345678"}}


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("rules.0.gateway", "vgw-xyz", "rules[0].gateway: 'vgw-xyz' is not a virtual gateway id (vgw-xxxxxxxx)"),
        ("rules.0.accounts", ["12345"], "rules[0].accounts[0]: '12345' is not a 12-digit account id"),
        (
            "rules.0.accounts",
            [],
            "rules[0].accounts: List should have at least 1 item after validation, not 0 (got [])",
        ),
        (
            "rules.0.connections",
            ["conn-1"],
            "rules[0].connections[0]: 'conn-1' is not a connection id (dxcon-xxxxxxxx)",
        ),
        (
            "rules.0.vlan",
            {"min": 100, "max": 5000},
            "rules[0].vlan.max: Input should be less than or equal to 4094 (got 5000)",
        ),
        (
            "rules.0.vlan",
            {"min": 1, "max": 10},
            "rules[0].vlan.min: Input should be greater than or equal to 2 (got 1)",
        ),
        ("rules.0.vlan", {"min": 200, "max": 100}, "rules[0].vlan: min 200 is greater than max 100"),
        (
            "rules.0.asn",
            ["sixty-five"],
            "rules[0].asn[0]: Input should be a valid integer, unable to parse string as an integer (got 'sixty-five')",
        ),
        ("rules.0.action", "approve", "rules[0].action: Input should be 'confirm', 'ask' or 'reject' (got 'approve')"),
        ("rules.0.gateway", ..., "rules[0]: action confirm needs a gateway (the vgw-... to attach on confirm)"),
        ("rules.0.name", "bad name!", "rules[0].name: 'bad name!' is not a name (letters, digits, . _ -)"),
        ("rules.0.acounts", ["111122223333"], "rules[0].acounts: unknown field (check its spelling)"),
        (
            "rules.0.connections",
            ...,
            "rules[0]: action confirm needs connections (the partner connections you trust), "
            "or any_connection: true to trust every allocator",
        ),
        ("rules.0.any_connection", True, "rules[0]: give connections or any_connection: true, not both"),
        ("targets.0.credentials", ..., "targets[0]: provider outscale needs credentials (secret_id or profile)"),
        ("targets.1.account_id", ..., "targets[1].account_id: Field required"),
        ("targets.1.account_id", "1111", "targets[1].account_id: '1111' is not a 12-digit account id"),
        ("default_action", "confirm", "default_action: Input should be 'ask', 'ignore' or 'reject' (got 'confirm')"),
        ("defualt_action", "ask", "defualt_action: unknown field (check its spelling)"),
        ("expiry_alerts", ["72 hours"], "expiry_alerts[0]: '72 hours' is not a duration like '72h', '30m' or '2d'"),
        ("targets", [], "targets: List should have at least 1 item after validation, not 0 (got [])"),
        ("targets.0.provider", "azure", "targets[0].provider: Input should be 'outscale' or 'aws' (got 'azure')"),
        (
            "targets.0.region",
            "mars-1",
            "targets[0]: region 'mars-1' has no OUTSCALE DirectLink endpoint "
            "(known: eu-west-2, us-east-2, cloudgouv-eu-west-1); set endpoint_url to use another",
        ),
        ("targets.0.endpoint_url", "ftp://x", "targets[0].endpoint_url: 'ftp://x' is not an http(s) URL"),
        (
            "targets.0.credentials",
            {"profile": "a", "secret_id": "b"},
            "targets[0].credentials: give exactly one of profile or secret_id",
        ),
        (
            "targets.1.role_arn",
            "arn:aws:iam::1:role/x",
            "targets[1].role_arn: 'arn:aws:iam::1:role/x' is not an IAM role ARN",
        ),
        ("targets.1.name", "osc-par", "targets[1].name: 'osc-par' is used twice"),
        ("rules.0.targets", ["nowhere"], "rules[0].targets: 'nowhere' is not a target of this document"),
    ],
)
def test_each_bad_field_is_named(path, value, expected):
    assert problems(with_change(path, value)) == [expected]


def test_several_problems_are_all_reported():
    doc = json.loads(with_change("rules.0.gateway", "vgw-xyz"))
    doc["rules"][0]["vlan"] = {"min": 0, "max": 10}
    found = problems(json.dumps(doc))
    assert "rules[0].gateway: 'vgw-xyz' is not a virtual gateway id (vgw-xxxxxxxx)" in found
    assert "rules[0].vlan.min: Input should be greater than or equal to 2 (got 0)" in found


@pytest.mark.parametrize(
    "text, expected",
    [
        ("targets: [", "not valid YAML or JSON at line 1, column 11"),
        ("targets:\n  - name: a\n bad: x", "not valid YAML or JSON at line 3, column 2"),
        ("", "the document is empty: it needs 'targets'"),
        ("- a\n- b", "the document must be a mapping with 'targets' and 'rules', got list"),
    ],
)
def test_unreadable_documents(text, expected):
    assert problems(text)[0].startswith(expected)


def test_error_text_names_the_source():
    with pytest.raises(ConfigError) as info:
        parse_policy(with_change("rules.0.gateway", "vgw-xyz"), "/etc/vifgate.yaml")
    assert str(info.value).startswith("invalid config /etc/vifgate.yaml:\n  - rules[0].gateway:")


def test_a_pasted_secret_is_never_echoed():
    doc = json.loads(json.dumps(GOOD))
    doc["chat"] = {
        "destinations": [
            {
                "name": "s",
                "kind": "webhook",
                "url": "https://hooks.example/T0/B0/s3cr3t-path",
                "signing_secret": "my-hmac-s3cr3t",
            }
        ]
    }
    doc["targets"][0]["credentials"] = "AKIDEXAMPLE:s3cr3t-key"
    found = "\n".join(problems(json.dumps(doc)))
    assert "chat.destinations[0].url" in found and "targets[0].credentials" in found
    assert "s3cr3t" not in found


def test_any_connection_is_an_explicit_opt_in():
    doc = json.loads(with_change("rules.0.connections", ...))
    doc["rules"][0]["any_connection"] = True
    assert parse_policy(json.dumps(doc)).rules[0].any_connection is True


@pytest.mark.parametrize(
    "text, expected",
    [
        ("72h", timedelta(hours=72)),
        ("30m", timedelta(minutes=30)),
        ("2d", timedelta(days=2)),
        (90, timedelta(seconds=90)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["0h", "h", "-1h", True, "1w"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)
