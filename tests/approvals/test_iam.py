"""The internet-facing API function's own IAM policy: the ledger, one Invoke of the poller, config, approvals secrets.

It holds nothing of DirectLink (no confirm or delete can start from a forged request), no STS (it
cannot become a target's role) and no SQS. What the routes really call is granted: the last test
records every AWS call the API function makes through chalice's test client and checks each one
against the policy file, so a new ledger operation without its grant fails here, not in production.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

import boto3
import botocore.client
import pytest
import yaml
from chalice.test import Client
from slack_sdk.signature import SignatureVerifier

from chalicelib.approvals import tokens
from chalicelib.ledger import Ledger, create_table
from sandbox import scenario

ROOT = Path(__file__).resolve().parents[2]
CHALICE = ROOT / ".chalice"
BIN = Path(sys.executable).parent
STAGES = ("dev", "prod")
# The one statement list the API function may hold; anything added here is a decision to review.
API_ACTIONS = {
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "dynamodb:GetItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
    "dynamodb:PutItem",
    "lambda:InvokeFunction",
    "ssm:GetParameter",
    "secretsmanager:GetSecretValue",
}
FORBIDDEN_PREFIXES = ("directconnect:", "sts:", "sqs:", "iam:", "kms:")


def stage_config(stage: str) -> dict:
    return json.loads((CHALICE / "config.json").read_text())["stages"][stage]


def api_policy_file(stage: str) -> str:
    return stage_config(stage)["lambda_functions"]["api_handler"]["iam_policy_file"]


def policy(name: str) -> dict:
    return json.loads((CHALICE / name).read_text())


def statements(document: dict) -> list[dict]:
    found = document["Statement"]
    return [found] if isinstance(found, dict) else found


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def granted(document: dict) -> set[str]:
    return {action for s in statements(document) if s["Effect"] == "Allow" for action in as_list(s["Action"])}


@pytest.mark.parametrize("name", sorted(p.name for p in CHALICE.glob("policy*.json")))
def test_no_policy_file_grants_a_wildcard_action_or_denies_by_exception(name):
    for statement in statements(policy(name)):
        assert "NotAction" not in statement and "NotResource" not in statement, (name, statement.get("Sid"))
        for action in as_list(statement["Action"]):
            assert "*" not in action and "?" not in action, f"{name}: wildcard action {action}"


@pytest.mark.parametrize("stage", STAGES)
def test_the_api_function_has_its_own_policy_with_nothing_of_directlink(stage):
    name = api_policy_file(stage)
    assert name == f"policy-api-{stage}.json"
    assert name != stage_config(stage)["iam_policy_file"], "the API must not share the poller's role"
    document = policy(name)
    actions = granted(document)
    assert actions == API_ACTIONS
    assert not [a for a in actions if a.lower().startswith(FORBIDDEN_PREFIXES)]
    by_sid = {s["Sid"]: as_list(s["Resource"]) for s in statements(document)}
    poll_function = stage_config(stage)["environment_variables"]["VIFGATE_POLL_FUNCTION"]
    assert poll_function == f"vif-gatekeeper-{stage}-poll"  # Chalice's <app_name>-<stage>-<function>
    assert by_sid["TriggerThePoller"] == [f"arn:aws:lambda:*:*:function:{poll_function}"]
    assert by_sid["LedgerApprovalsAndVotes"] == [f"arn:aws:dynamodb:*:*:table/vifgate-{stage}-ledger"]
    assert by_sid["ConfigParameter"] == [f"arn:aws:ssm:*:*:parameter/vifgate/{stage}/config"]
    assert by_sid["ApprovalsSecrets"] == [f"arn:aws:secretsmanager:*:*:secret:vifgate/{stage}/approvals*"]
    # The poller keeps its DirectLink rights: the approval is carried out there.
    assert "directconnect:ConfirmPrivateVirtualInterface" in granted(policy(stage_config(stage)["iam_policy_file"]))


ROLES_SCRIPT = """
import json, sys
from chalice.cli.factory import CLIFactory
from chalice.deploy import models
from chalice.deploy.appgraph import ApplicationGraphBuilder, DependencyBuilder

stage = sys.argv[1]
config = CLIFactory(".").create_config_obj(chalice_stage_name=stage, autogen_policy=False)
graph = ApplicationGraphBuilder().build(config, stage)
roles = {}
for resource in DependencyBuilder().build_dependencies(graph):
    if isinstance(resource, models.LambdaFunction):
        roles[resource.function_name] = [resource.role.role_name, resource.role.policy.filename]
print(json.dumps(roles))
"""


@pytest.mark.parametrize("stage", STAGES)
def test_chalice_gives_the_api_handler_the_api_policy_and_the_others_the_stage_policy(stage):
    """Chalice's own application graph (what `chalice package` and `deploy` build), without packaging."""
    env = dict(os.environ, AWS_DEFAULT_REGION="eu-west-1")
    out = subprocess.run(
        [sys.executable, "-c", ROLES_SCRIPT, stage], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    roles = {name: (role, Path(file).name) for name, (role, file) in json.loads(out.stdout).items()}
    assert roles[f"vif-gatekeeper-{stage}"] == (f"vif-gatekeeper-{stage}-api_handler", f"policy-api-{stage}.json")
    assert roles[f"vif-gatekeeper-{stage}-poll"][1] == f"policy-{stage}.json"
    assert roles[f"vif-gatekeeper-{stage}-notify"][1] == f"policy-{stage}.json"


@pytest.mark.slow
def test_chalice_package_gives_the_api_handler_a_role_without_directlink(tmp_path):
    """`chalice package --stage prod`: downloads the Lambda wheels once (PyPI), like tests/test_packaging.py."""
    out = tmp_path / "out"
    env = dict(os.environ, AWS_DEFAULT_REGION="eu-west-1")
    result = subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "prod", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    resources = json.loads((out / "sam.json").read_text())["Resources"]
    role = resources["APIHandler"]["Properties"]["Role"]
    assert role == {"Fn::GetAtt": ["ApiHandlerRole", "Arn"]}
    documents = [p["PolicyDocument"] for p in resources["ApiHandlerRole"]["Properties"]["Policies"]]
    assert documents == [policy("policy-api-prod.json")]
    assert "directconnect" not in json.dumps(resources["ApiHandlerRole"])
    assert resources["APIHandler"]["Properties"]["Environment"]["Variables"]["VIFGATE_POLL_FUNCTION"] == (
        "vif-gatekeeper-prod-poll"
    )
    poll_role = resources["Poll"]["Properties"]["Role"]["Fn::GetAtt"][0]
    assert poll_role != "ApiHandlerRole"
    assert "directconnect:ConfirmPrivateVirtualInterface" in json.dumps(resources[poll_role])


# --- what the API function really calls -------------------------------------------------------

ACCOUNT = "123456789012"  # moto's account
SIGNING_KEY = "k" * 24 + "-iam-test-signing-key-0001"
SLACK_SECRET = "slack-signing-secret-for-the-iam-test"
APPROVERS = {"alice": ("U0ALICE01", "a" * 26), "bob": ("U0BOB0001", "b" * 26)}


def approvals_config(stage: str) -> str:
    """scenario.CONFIG, with prod-legacy asked of alice and bob (two approvals), the lab VIF of alice."""
    document = yaml.safe_load(scenario.CONFIG)
    secret = f"vifgate/{stage}/approvals"
    document["approvals"] = {
        "approvers": [{"name": n, "slack": s, "mattermost": m} for n, (s, m) in APPROVERS.items()],
        "base_url": "https://gatekeeper.example.net/api",
        "signing_key": {"secret_id": secret, "key": "signing_key"},
        "slack_signing_secret": {"secret_id": secret, "key": "slack"},
    }
    legacy = {
        "name": "legacy-asks-two",
        "accounts": [scenario.PROD],
        "vif_name": "prod-legacy",
        "action": "ask",
        "approvers": ["alice", "bob"],
        "min_approvals": 2,
    }
    document["rules"].insert(0, legacy)
    document["default_approvers"] = ["alice"]
    return yaml.safe_dump(document)


class CallRecorder:
    """Every AWS API call made through any botocore client (powertools' included), with its parameters."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []
        self.recording = False

    def install(self, monkeypatch) -> None:
        original = botocore.client.BaseClient._make_api_call
        recorder = self

        def recording(client, operation, params):
            if recorder.recording:
                recorder.calls.append((client.meta.service_model.service_name, operation, dict(params)))
            return original(client, operation, params)

        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)


# IAM has no TransactWriteItems action: each item is authorized as the single-item call it stands for.
TRANSACT_KINDS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def needed(service: str, operation: str, params: dict, region: str) -> list[tuple[str, str]]:
    """The IAM action(s) and resource ARN a call is authorized against."""
    prefix = f"arn:aws:{service}:{region}:{ACCOUNT}"
    if service == "dynamodb":
        if operation == "TransactWriteItems":
            return [
                (f"dynamodb:{TRANSACT_KINDS[kind]}", f"{prefix}:table/{body['TableName']}")
                for item in params["TransactItems"]
                for kind, body in item.items()
            ]
        if operation == "TransactGetItems":
            return [("dynamodb:GetItem", f"{prefix}:table/{i['Get']['TableName']}") for i in params["TransactItems"]]
        return [(f"dynamodb:{operation}", f"{prefix}:table/{params['TableName']}")]
    if service == "ssm":
        return [(f"ssm:{operation}", f"{prefix}:parameter{params['Name']}")]
    if service == "secretsmanager":
        return [(f"secretsmanager:{operation}", f"{prefix}:secret:{params['SecretId']}-AbCdEf")]
    if service == "lambda" and operation == "Invoke":
        return [("lambda:InvokeFunction", f"{prefix}:function:{params['FunctionName']}")]
    return [(f"{service}:{operation}", "*")]


def allowed(document: dict, action: str, resource: str) -> bool:
    return any(
        s["Effect"] == "Allow"
        and action in as_list(s["Action"])
        and any(fnmatch.fnmatchcase(resource, pattern) for pattern in as_list(s["Resource"]))
        for s in statements(document)
    )


@pytest.fixture
def prod_world(aws, directlink, monkeypatch):
    """The prod stage as deployed: its ledger table, its SSM config, its approvals secret; one poll cycle ran."""
    from app import app
    from sandbox.local import create_queues

    stage = "prod"
    create_table(boto3.client("dynamodb"), f"vifgate-{stage}-ledger")
    create_queues(boto3.client("sqs"), f"vifgate-{stage}-events.fifo", f"vifgate-{stage}-events-dlq.fifo")
    boto3.client("ssm").put_parameter(
        Name=f"/vifgate/{stage}/config", Value=approvals_config(stage), Type="SecureString", Overwrite=True
    )
    boto3.client("secretsmanager").create_secret(
        Name=f"vifgate/{stage}/approvals", SecretString=json.dumps({"signing_key": SIGNING_KEY, "slack": SLACK_SECRET})
    )
    with Client(app, stage_name=stage) as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        client.lambda_.invoke("poll", event)
    ledger = Ledger(boto3.client("dynamodb"), f"vifgate-{stage}-ledger")
    pending = {record.snapshot.get("virtualInterfaceName"): request for request, record in ledger.approvals()}
    assert set(pending) >= {"prod-legacy", "lab-bench"}, pending
    return app, pending


def test_every_call_the_api_function_makes_is_granted_by_its_policy(prod_world, monkeypatch):
    app, pending = prod_world
    legacy, lab = pending["prod-legacy"], pending["lab-bench"]
    recorder = CallRecorder()
    recorder.install(monkeypatch)
    expires = datetime.now(UTC) + timedelta(hours=1)  # the deployed runtime's clock is the real one
    link = tokens.mint_link(SIGNING_KEY, legacy.request_id, "alice", expires)
    mattermost_token = tokens.mint_action(SIGNING_KEY, lab.request_id, "reject", None, expires)
    slack_body = "payload=" + quote(
        json.dumps(
            {
                "type": "block_actions",
                "user": {"id": APPROVERS["bob"][0]},
                "actions": [{"action_id": "vifgate_approve", "value": legacy.request_id}],
            }
        )
    )
    timestamp = str(int(time.time()))
    slack_headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": SignatureVerifier(SLACK_SECRET).generate_signature(timestamp=timestamp, body=slack_body),
    }
    recorder.recording = True
    with Client(app, stage_name="prod") as client:
        answers = [
            client.http.get("/health"),
            client.http.get(f"/approvals/link/{link}"),
            client.http.post(
                f"/approvals/link/{link}",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                body=urlencode({"action": "approve"}).encode(),
            ),
            client.http.post("/approvals/slack", headers=slack_headers, body=slack_body.encode()),
            client.http.post(
                "/approvals/mattermost",
                headers={"Content-Type": "application/json"},
                body=json.dumps({"user_id": APPROVERS["alice"][1], "context": {"token": mattermost_token}}).encode(),
            ),
        ]
    recorder.recording = False
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200], [a.body[:300] for a in answers]
    services = {service for service, _, _ in recorder.calls}
    assert "directconnect" not in services and "sts" not in services and "sqs" not in services, services
    assert ("lambda", "Invoke") in {(s, o) for s, o, _ in recorder.calls}, "the decided vote triggers the poller"
    document = policy(api_policy_file("prod"))
    region = boto3.session.Session().region_name
    refused = [
        (action, resource)
        for service, operation, params in recorder.calls
        for action, resource in needed(service, operation, params, region)
        if not allowed(document, action, resource)
    ]
    assert not refused, f"the API function calls what {api_policy_file('prod')} does not grant: {refused}"
