"""The policy's JSON Schema (AppConfig's validator): draft 4, never stricter than parse_policy, kept current."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from chalicelib.config import parse_policy
from chalicelib.configschema import VALIDATOR_CONTENT_MAX, compact_text, policy_json_schema, schema_text
from sandbox import scenario

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = jsonschema.Draft4Validator(policy_json_schema())
# The tests whose documents parse_policy accepts: every config document of the repository's tests.
CONFIG_TESTS = [
    "tests/test_config.py",
    "tests/test_config_fuzz.py",
    "tests/test_policy.py",
    "tests/test_pause.py",
    "tests/test_external_id.py",
    "tests/approvals/test_config_approvals.py",
    "tests/test_cli_budget.py",
    "tests/test_transitions.py",
]


def errors(document) -> list[str]:
    """Each error, and under an anyOf (a targets entry: a target or a from_organization source) each branch's own."""
    found = []
    for error in VALIDATOR.iter_errors(document):
        for e in [error, *(error.context or ())]:
            found.append(f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
    return found


def test_the_schema_is_draft_4_and_fits_an_appconfig_validator():
    schema = policy_json_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema.Draft4Validator.check_schema(schema)
    text = json.dumps(schema)
    assert "$defs" not in text and '"const"' not in text, "2019+ keywords a draft 4 validator ignores"
    assert len(compact_text()) < VALIDATOR_CONTENT_MAX


def test_the_committed_schema_is_current():
    committed = (ROOT / "infra" / "config-schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), "run: python -m chalicelib.configschema > infra/config-schema.json"


def _readme_policy() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The policy document.*?```yaml\n(.*?)```", readme, re.S)
    assert block, "README's policy example"
    return block.group(1)


@pytest.mark.parametrize(
    "text",
    [scenario.CONFIG, scenario.APPROVALS_CONFIG, _readme_policy()],
    ids=["sandbox", "sandbox-approvals", "readme"],
)
def test_the_sandbox_and_readme_documents_pass(text):
    document = json.loads(json.dumps(__import__("yaml").safe_load(text)))
    parse_policy(json.dumps(document))
    assert errors(document) == []


def test_every_document_the_config_tests_accept_passes(tmp_path):
    """Runs the config tests with a recorder on parse_policy, then validates each document it accepted."""
    capture = tmp_path / "documents.jsonl"
    env = dict(os.environ, VIFGATE_CAPTURE=str(capture))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "tests.schema_capture",
            "-p",
            "no:cacheprovider",
            *CONFIG_TESTS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    documents = [json.loads(line) for line in capture.read_text(encoding="utf-8").splitlines()]
    assert len(documents) > 40, "the recorder saw the tests' documents"
    refused = [(doc, problems) for doc in documents if (problems := errors(doc))]
    assert not refused, f"{len(refused)} of {len(documents)} accepted documents refused, first: {refused[0]}"


GOOD = {
    "targets": [{"name": "t", "provider": "aws", "region": "eu-west-1", "account_id": "111122223333"}],
    "rules": [
        {
            "name": "r",
            "accounts": ["111122223333"],
            "connections": ["dxcon-fg5678gh"],
            "vlan": {"min": 100, "max": 199},
            "gateway": "vgw-12345678",
            "action": "confirm",
        }
    ],
}


def with_change(path: str, value) -> dict:
    """GOOD with the value at a dotted path (`rules.0.vlan.min`) replaced; `...=DELETE` removes it."""
    document = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return document


DELETE = object()


@pytest.mark.parametrize(
    "path, value",
    [
        # The parser's lax forms the schema must accept too.
        ("targets.0.account_id", 111122223333),
        ("rules.0.vlan.min", "100"),
        ("rules.0.vlan.max", 199.0),
        ("rules.0.accounts", [111122223333]),
        ("expiry_alerts", ["72h", "PT4H", 3600]),
        ("stuck_pending_after", 1800),
        ("auto_confirm", False),
        ("auto_confirm", "no"),
        ("rules.0.any_connection", "false"),
        ("default_action", "ignore"),
    ],
)
def test_lax_forms_the_parser_takes_pass(path, value):
    document = with_change(path, value)
    parse_policy(json.dumps(document))
    assert errors(document) == []


@pytest.mark.parametrize(
    "path, value, where",
    [
        ("targets", DELETE, "'targets' is a required property"),
        ("targets", [], "targets: [] should be non-empty"),
        ("defualt_action", "ask", "Additional properties are not allowed ('defualt_action' was unexpected)"),
        ("rules.0.vlan", "100-199", "rules/0/vlan"),
        ("rules.0.accounts", "111122223333", "rules/0/accounts"),
        ("targets.0.provider", "azure", "targets/0/provider"),
        ("targets.0.name", DELETE, "'name' is a required property"),
        ("targets.0.region", 3, "targets/0/region"),
        ("rules.0.action", "allow", "rules/0/action"),
        ("rules.0.vlan.max", 5000, "rules/0/vlan"),
        ("chat", [], "chat"),
        ("auto_confirm", [], "auto_confirm"),
        ("rules.0.gatewya", "vgw-12345678", "rules/0"),
        ("targets.0.credentials", {"access_key_id": "AKIA"}, "targets/0/credentials"),
    ],
)
def test_plain_shape_errors_are_refused_by_both(path, value, where):
    document = with_change(path, value)
    with pytest.raises(Exception):  # noqa: B017 - parse_policy's ConfigError; the point is the schema's answer
        parse_policy(json.dumps(document))
    found = errors(document)
    assert found and any(where in problem for problem in found), found
