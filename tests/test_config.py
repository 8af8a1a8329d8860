"""The policy document: every bad field is named with its value; good documents load from YAML and JSON."""

import itertools
import json
import time
from datetime import timedelta

import pytest
import yaml

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


def changed(base: dict, *changes: tuple[str, object]) -> str:
    """`base` as JSON with each (dotted path, value) put in place; value ... removes the field."""
    doc = json.loads(json.dumps(base))
    for path, value in changes:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = doc
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return json.dumps(doc)


def with_change(path: str, value):
    """GOOD with one field replaced (or removed when value is ...)."""
    return changed(GOOD, (path, value))


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
        (
            "expiry_alerts",
            ["72 hours"],
            "expiry_alerts[0]: '72 hours' is not a duration: write 72h, 30m, 2d or 90s, or ISO 8601 like PT72H, P3D "
            "or P1DT12H",
        ),
        (
            "expiry_alerts",
            ["99999999999999999999d"],
            "expiry_alerts[0]: '99999999999999999999d' is longer than 365 days, the longest duration allowed",
        ),
        (
            "stuck_pending_after",
            10**20,
            "stuck_pending_after: 100000000000000000000 seconds is longer than 365 days, the longest duration allowed",
        ),
        (
            "stuck_pending_after",
            "P2Y",
            "stuck_pending_after: 'P2Y' is not a duration: write 72h, 30m, 2d or 90s, "
            "or ISO 8601 like PT72H, P3D or P1DT12H",
        ),
        *[
            (
                "expiry_alerts",
                ["24h", too_early],
                f"expiry_alerts[1]: {too_early!r} is 7 days or more: a VIF expires 7 days after it is allocated, so "
                "this alert would fire as soon as the VIF is seen; give less than 7d (e.g. 72h)",
            )
            for too_early in ("7d", "168h", "8d", "P7D", 604800)
        ],
        ("rules.0.vlan", 150, "rules[0].vlan: vlan takes a range: {min: 150, max: 150}"),
        ("rules.0.vlan", "100-199", "rules[0].vlan: vlan takes a range: {min: 100, max: 199}"),
        (
            "rules.0.asn",
            [True],
            "rules[0].asn[0]: write a number, not true (YAML reads yes, no, on and off as true and false)",
        ),
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
        ("PT72H", timedelta(hours=72)),
        ("P3D", timedelta(days=3)),
        ("PT30M", timedelta(minutes=30)),
        ("P1DT12H", timedelta(hours=36)),
        ("PT1H30M15S", timedelta(hours=1, minutes=30, seconds=15)),
        ("365d", timedelta(days=365)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "0h",
        "h",
        "-1h",
        True,
        "1w",
        "P",
        "PT",
        "P1Y",
        "P1M",
        "PT1.5H",
        "PT0S",
        "P3DT",
        "366d",
        "P400D",
        "99999999999999999999d",
        10**20,
        "9" * 5000 + "s",
        0,
        -5,
        1.5,
        timedelta(0),
        timedelta(days=10**6),
    ],
)
def test_bad_durations(bad):
    """Each is refused with a ValueError (which pydantic turns into a named problem), never OverflowError."""
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert len(str(info.value)) < 200


def yaml_doc(rule: str = "", top: str = "", account: str = '"111122223333"') -> str:
    """A good YAML document with extra text in its one rule and at its top level."""
    return f"""
targets:
  - {{name: osc-par, provider: outscale, account_id: {account}, credentials: {{secret_id: vifgate/osc-par}}}}
rules:
  - name: partner-prod
    accounts: ["111122223333"]
    connections: [dxcon-fg5678gh]
    gateway: vgw-12345678
    action: confirm
{rule}
{top}
"""


@pytest.mark.parametrize(
    "rule, expected",
    [
        (
            "    vlan: {min: 0100}",
            "rules[0].vlan.min: write 100, not 0100: YAML reads a number with a leading zero as octal "
            "(0100 would be 64)",
        ),
        ("    vlan: {max: 0109}", "rules[0].vlan.max: write 109, not 0109: numbers here have no leading zero"),
        (
            "    vlan: {min: 1:30}",
            "rules[0].vlan.min: write a plain number, not 1:30: YAML reads it as the base-60 number 90",
        ),
        ("    vlan: {min: 0x64}", "rules[0].vlan.min: write 100, not 0x64: numbers here are plain decimal"),
        ("    vlan: {min: 0b101}", "rules[0].vlan.min: write 5, not 0b101: numbers here are plain decimal"),
        ("    vlan: {max: 1_000}", "rules[0].vlan.max: write 1000, not 1_000: numbers here are plain digits"),
        (
            "    asn: [065000]",
            "rules[0].asn[0]: write 65000, not 065000: YAML reads a number with a leading zero as octal "
            "(065000 would be 27136)",
        ),
        (
            "    asn: [on]",
            "rules[0].asn[0]: write a number, not true (YAML reads yes, no, on and off as true and false)",
        ),
        ("    vlan: 150", "rules[0].vlan: vlan takes a range: {min: 150, max: 150}"),
        ("    vlan: 0150", "rules[0].vlan: vlan takes a range: {min: 150, max: 150}"),
        ("    vlan: {min: !!int abc}", "rules[0].vlan.min: Input should be a valid integer, unable to parse string"),
    ],
)
def test_yaml_number_surprises_are_refused(rule, expected):
    """YAML 1.1 reads 0100 as 64 and 1:30 as 90: where a number is expected, say what to write instead."""
    assert problems(yaml_doc(rule=rule))[0].startswith(expected)


def test_plain_yaml_numbers_still_work():
    policy = parse_policy(yaml_doc(rule="    vlan: {min: 100, max: +199}\n    asn: [65000, 4200000000]"))
    assert (policy.rules[0].vlan.min, policy.rules[0].vlan.max) == (100, 199)
    assert policy.rules[0].asn == [65000, 4200000000]


@pytest.mark.parametrize(
    "written, account_id",
    [
        ("111122223333", "111122223333"),
        ("012345678901", "012345678901"),  # not octal (8, 9): YAML 1.1 already reads it as a string
        ("012345670123", "012345670123"),  # octal digits only: YAML 1.1 would read 1402433619
        ("000000000001", "000000000001"),
    ],
)
def test_unquoted_account_ids_keep_their_digits(written, account_id):
    assert parse_policy(yaml_doc(account=written)).targets[0].account_id == account_id


@pytest.mark.parametrize(
    "top, expected",
    [
        ("stuck_pending_after: 1:30", "stuck_pending_after: '1:30' is not a duration"),
        ("expiry_alerts: [0100]", "expiry_alerts[0]: '0100' is not a duration"),
        ("stuck_pending_after: PT45M", None),
        ("expiry_alerts: [P3D, PT4H]", None),
    ],
)
def test_durations_in_yaml(top, expected):
    if expected is None:
        parse_policy(yaml_doc(top=top))
    else:
        assert problems(yaml_doc(top=top))[0].startswith(expected)


REFERENCE_HELP = (
    "write {secret_id: …} (a Secrets Manager secret; add key: … for a field of a JSON secret) or "
    "{parameter: …} (an SSM SecureString), never the secret itself (what was given is not shown)"
)
CREDENTIALS_HELP = (
    "write {profile: …} (a local AWS profile) or {secret_id: …} (a Secrets Manager secret holding JSON with "
    "access_key_id and secret_access_key), never the keys themselves (what was given is not shown)"
)
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXX"


def with_destination(**fields) -> str:
    doc = json.loads(json.dumps(GOOD))
    doc["chat"] = {"destinations": [{"name": "netops", **fields}]}
    return json.dumps(doc)


def with_credentials(credentials) -> str:
    return with_change("targets.0.credentials", credentials)


@pytest.mark.parametrize(
    "text, expected, pasted",
    [
        (with_destination(kind="slack", url=SLACK_URL), f"chat.destinations[0].url: {REFERENCE_HELP}", [SLACK_URL]),
        (
            with_destination(kind="mattermost", url={SLACK_URL: None}),
            f"chat.destinations[0].url: {REFERENCE_HELP}",
            [SLACK_URL],
        ),
        (
            with_destination(kind="mattermost", url={"secret_id": "x", SLACK_URL: "hooks"}),
            f"chat.destinations[0].url: {REFERENCE_HELP}",
            [SLACK_URL],
        ),
        (
            with_destination(kind="slack", token="xoxb-1234-5678-s3cr3t", channel="#noc"),
            f"chat.destinations[0].token: {REFERENCE_HELP}",
            ["xoxb", "s3cr3t"],
        ),
        (
            with_destination(kind="webhook", url={"parameter": "/hook"}, signing_secret="whsec_s3cr3t"),
            f"chat.destinations[0].signing_secret: {REFERENCE_HELP}",
            ["whsec_s3cr3t"],
        ),
        (
            with_destination(kind="teams", url={"secret_id": {SLACK_URL: "x"}}),
            "chat.destinations[0].url.secret_id: Input should be a valid string",
            [SLACK_URL],
        ),
        (
            with_destination(kind="teams", url={"secret_id": "x"}, **{SLACK_URL: "s3cr3t"}),
            "chat.destinations[0]: unknown field (not shown: it may be a secret; check its spelling)",
            [SLACK_URL, "s3cr3t"],
        ),
        (
            with_destination(name=SLACK_URL, kind="teams", url={"secret_id": "x"}),
            "chat.destinations[0].name: the value given is not a name (letters, digits, . _ -) "
            "(not shown: it may be a secret)",
            [SLACK_URL, "hooks"],
        ),
        (
            with_change("chat", {SLACK_URL: "s3cr3t"}),
            "chat: unknown field (not shown: it may be a secret; check its spelling)",
            [SLACK_URL, "s3cr3t"],
        ),
        (
            with_credentials({"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG"}),
            f"targets[0].credentials: {CREDENTIALS_HELP}",
            ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI"],
        ),
        (
            with_credentials({"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG"}),
            f"targets[0].credentials: {CREDENTIALS_HELP}",
            ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI"],
        ),
        (
            with_credentials({"secret_id": "vifgate/x", "AKIAIOSFODNN7EXAMPLE": None}),
            f"targets[0].credentials: {CREDENTIALS_HELP}",
            ["AKIAIOSFODNN7EXAMPLE"],
        ),
        (
            with_credentials("AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG"),
            f"targets[0].credentials: {CREDENTIALS_HELP}",
            ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI"],
        ),
    ],
)
def test_pasted_secrets_get_a_hint_and_are_never_echoed(text, expected, pasted):
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "test.yaml")
    assert info.value.problems[0] == expected
    for secret in pasted:
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    "key, expected",
    [
        ("defualt_action", "defualt_action: unknown field (check its spelling)"),
        ("url", "url: unknown field (check its spelling)"),
        (SLACK_URL, "unknown top-level field (not shown: it may be a secret; check its spelling)"),
        ("wJalrXUtnFEMI/K7MDENG", "unknown top-level field (not shown: it may be a secret; check its spelling)"),
        ("x" * 41, "unknown top-level field (not shown: it may be a secret; check its spelling)"),
    ],
)
def test_an_unknown_key_is_named_only_when_it_looks_like_a_field(key, expected):
    assert problems(json.dumps({**GOOD, key: "s3cr3t"})) == [expected]


def test_pasted_secrets_in_yaml_keys_are_never_echoed():
    text = yaml_doc(top=f"chat: {{destinations: [{{name: n, kind: mattermost, url: {{{SLACK_URL}: null}}}}]}}").replace(
        "{secret_id: vifgate/osc-par}", "{AKIAIOSFODNN7EXAMPLE: wJalrXUtnFEMI/K7MDENG}"
    )
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "test.yaml")
    found = str(info.value)
    assert "chat.destinations[0].url: write {secret_id" in found and "targets[0].credentials: write {profile" in found
    for secret in ("hooks.slack.com", "T000", "XXXX", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI"):
        assert secret not in found


def alias_bomb(levels: int = 9) -> str:
    """'Billion laughs': each anchor repeats the previous one nine times (9**levels strings from ~450 bytes)."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = ["default_action:", '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  - &{cur} [" + ",".join([f"*{prev}"] * 9) + "]" for prev, cur in itertools.pairwise(names)]
    return "targets: [{name: t, provider: aws, region: eu-west-1, account_id: '111122223333'}]\n" + "\n".join(lines)


def test_an_alias_bomb_is_refused_before_validation():
    text = alias_bomb(9)
    assert len(text) < 600
    start = time.perf_counter()
    found = problems(text)
    assert time.perf_counter() - start < 2
    assert found == [
        "the document expands to more than 100000 values (YAML aliases repeating a structure?); "
        "a policy document is far smaller"
    ]


def test_a_small_alias_expansion_is_echoed_cut_short():
    """4 levels (6561 strings) pass the expansion limit; the error still shows only the start of the value."""
    with pytest.raises(ConfigError) as info:
        parse_policy(alias_bomb(4), "test.yaml")
    (line,) = info.value.problems
    assert line.startswith("default_action: Input should be 'ask', 'ignore' or 'reject' (got [['lol', ")
    assert len(line) < 200


def test_merge_keys_cannot_multiply_a_document():
    """`<<: [*a, *a, ...]` copies entries at load time: nine levels of it would build 387 million of them."""
    lines = ["a0: &a0 {x0: 1, x1: 1, x2: 1, x3: 1, x4: 1, x5: 1, x6: 1, x7: 1, x8: 1}"]
    lines += [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}]}}" for i in range(1, 10)]
    start = time.perf_counter()
    found = problems("\n".join(lines))
    assert time.perf_counter() - start < 2
    if tuple(int(part) for part in yaml.__version__.split(".")[:3]) >= (6, 0, 4):
        # PyYAML 6.0.4 merges each distinct key once: the nine levels stay nine keys each, and the
        # document is only what it is (no targets, ten unknown fields).
        assert found[0] == "targets: Field required" and len(found) == 11, found
    else:
        assert len(found) == 1 and found[0].startswith("merge keys (<<) expand to more than 100000 entries")


def test_echoed_values_are_cut_short():
    found = problems(with_change("rules.0.gateway", "vgw-" + "x" * 100_000))
    assert found == [f"rules[0].gateway: 'vgw-{'x' * 56}…' is not a virtual gateway id (vgw-xxxxxxxx)"]
    (found,) = problems(with_change("default_action", [list(range(100))] * 100))
    assert len(found) < 200


def test_the_error_text_lists_twenty_problems_and_counts_the_rest():
    doc = json.loads(json.dumps(GOOD))
    doc["rules"] = [dict(doc["rules"][0], name=f"r{i}", gateway="vgw-bad") for i in range(50)]
    with pytest.raises(ConfigError) as info:
        parse_policy(json.dumps(doc), "test.yaml")
    lines = str(info.value).splitlines()
    assert len(info.value.problems) == 50
    assert lines[1:3] == [
        f"  - rules[{i}].gateway: 'vgw-bad' is not a virtual gateway id (vgw-xxxxxxxx)" for i in (0, 1)
    ]
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  … and 30 more problems"


def nested(depth: int, open_: str, close: str, inner: str = "1") -> str:
    return open_ * depth + inner + close * depth


@pytest.mark.parametrize(
    "text, expected",
    [
        ("targets: " + nested(5000, "[", "]"), "the document nests more than 20 levels deep"),
        (nested(5000, '{"a":', "}"), "the document nests more than 20 levels deep"),
        ("x:\n" + "".join("  " * i + "- \n" for i in range(500)), "the document nests more than 20 levels deep"),
        ("targets: &a [*a]", "the document nests more than 20 levels deep"),
        ("targets: &a {x: *a}", "the document nests more than 20 levels deep"),
        ("targets: 9" + "9" * 5000, "targets: Input should be a valid list (got '"),
        ("rules: [{vlan: {min: " + "9" * 5000 + "}}]", "targets: Field required"),
        ("targets: !!int abc", "targets: Input should be a valid list (got 'abc')"),
        ("x: !!float abc", "not valid YAML or JSON at line 1, column 4: this value cannot be read as !!float"),
        ("x: !!bool maybe", "not valid YAML or JSON at line 1, column 4: this value cannot be read as !!bool"),
        ("x: !!timestamp abc", "not valid YAML or JSON at line 1, column 4: this value cannot be read as !!timestamp"),
        ("x: 2024-13-45", "not valid YAML or JSON at line 1, column 4: this value cannot be read as !!timestamp"),
        ("x: !!binary 'not base64!'", "not valid YAML or JSON at line 1, column 4: failed to decode base64 data"),
        (
            f"x: !<{SLACK_URL}> 1",
            "not valid YAML or JSON at line 1, column 4: could not determine a constructor for the tag '…'",
        ),
        (
            "rules: []\ntargets: []\nrules: [{name: r}]",
            "'rules' is given twice in one mapping; YAML would keep only the last (line 3, column 1)",
        ),
        (
            '{"targets": [{"name": "a", "name": "b"}]}',
            "'name' is given twice in one mapping; YAML would keep only the last (line 1, column 28)",
        ),
        (
            f"chat: {{destinations: [{{url: {{{SLACK_URL}: 1, {SLACK_URL}: 2}}}}]}}",
            "a key (not shown: it may be a secret) is given twice in one mapping",
        ),
        ("x: 1\n" + "#" * 1_000_001, "the document is 1,000,006 characters long; a policy document is at most"),
    ],
)
def test_hostile_documents_are_config_errors(text, expected):
    start = time.perf_counter()
    found = problems(text)
    assert time.perf_counter() - start < 2
    assert found[0].startswith(expected), found
    assert SLACK_URL not in "\n".join(found)


def test_an_unexpected_failure_is_a_config_error_naming_the_source(monkeypatch):
    from chalicelib import config

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail with s3cr3t content")

    monkeypatch.setattr(config.Policy, "model_validate", broken)
    with pytest.raises(ConfigError) as info:
        parse_policy(json.dumps(GOOD), "/etc/vifgate.yaml")
    assert info.value.problems == [
        "could not be read: unexpected RuntimeError (a bug in vifgate; the document's content is not shown)"
    ]
    assert str(info.value).startswith("invalid config /etc/vifgate.yaml:") and "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
