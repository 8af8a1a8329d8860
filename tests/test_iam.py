"""Each function's own IAM policy, least privilege: what it may call, on exactly which resources.

Policy files may use CloudFormation intrinsics (chalice embeds them verbatim into each role, see
tests/test_packaging.py); `resolve` stands in for CloudFormation here. The static tests pin every
grant; the recorded test runs the API routes and checks each AWS call they make against the file.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import boto3
import botocore.client
import chalice.test
import pytest
import yaml
from chalice.test import Client
from slack_sdk.signature import SignatureVerifier

from chalicelib import runtime
from chalicelib.approvals import tokens
from chalicelib.ledger import Ledger, create_table
from sandbox import scenario
from tests.test_app import StageTimeoutContext

ROOT = Path(__file__).resolve().parent.parent
CHALICE = ROOT / ".chalice"
STAGES = ("dev", "prod")
FUNCTIONS = {"poll": "poll", "work": "work", "notify": "notify", "api_handler": "api"}
ACCOUNT = "123456789012"  # moto's account
COMMON = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "appconfig:StartConfigurationSession",
    "appconfig:GetLatestConfiguration",
    "ssm:GetParameter",
}
# The one action list each function may hold; anything added here is a decision to review.
ACTIONS = {
    "poll": COMMON
    | {
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",  # each cycle reads its targets' own items at once (the records versions)
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",
        "dynamodb:BatchWriteItem",
        "secretsmanager:GetSecretValue",
        "sqs:GetQueueUrl",
        "sqs:SendMessage",
        "directconnect:DescribeVirtualInterfaces",
        "directconnect:DescribeVirtualGateways",
        "directconnect:ConfirmPrivateVirtualInterface",
        "directconnect:DeleteVirtualInterface",
        "sts:AssumeRole",
        # from_organization sources: the poller lists the units and their accounts (or assumes list_role_arn to).
        "organizations:ListChildren",
        "organizations:ListAccountsForParent",
    },
    "notify": COMMON
    | {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "secretsmanager:GetSecretValue",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:SendMessage",
    },
    "api": COMMON
    | {
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",
        "sqs:GetQueueUrl",
        "sqs:SendMessage",
        "secretsmanager:GetSecretValue",
    },
}
# The fan-out's worker polls as the scheduled function does, and receives its messages from the work queue.
ACTIONS["work"] = ACTIONS["poll"] | {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
# Where "*" is the only resource the service accepts.
STAR_ACTIONS = {
    "directconnect:DescribeVirtualInterfaces",
    "directconnect:DescribeVirtualGateways",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}


def stage_config(stage: str) -> dict:
    return json.loads((CHALICE / "config.json").read_text())["stages"][stage]


def policy_file(stage: str, function: str) -> str:
    return stage_config(stage)["lambda_functions"][function]["iam_policy_file"]


def policy(name: str) -> dict:
    return json.loads((CHALICE / name).read_text())


def statements(document: dict) -> list[dict]:
    found = document["Statement"]
    return [found] if isinstance(found, dict) else found


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def granted(document: dict) -> set[str]:
    return {action for s in statements(document) if s["Effect"] == "Allow" for action in as_list(s["Action"])}


def attributes(stage: str, region: str) -> dict[str, str]:
    """What CloudFormation would put in for the template's resources (names from infra/template.json)."""
    prefix = f"arn:aws:{{}}:{region}:{ACCOUNT}:"
    logs = prefix.format("logs") + "log-group:/aws/lambda/vif-gatekeeper-" + stage + "-{}:*"
    return {
        "LedgerTable.Arn": prefix.format("dynamodb") + f"table/vifgate-{stage}-ledger",
        "EventsQueue.Arn": prefix.format("sqs") + f"vifgate-{stage}-events.fifo",
        "EventsDeadLetterQueue.Arn": prefix.format("sqs") + f"vifgate-{stage}-events-dlq.fifo",
        "WorkQueue.Arn": prefix.format("sqs") + f"vifgate-{stage}-work.fifo",
        "Poll.Arn": prefix.format("lambda") + f"function:vif-gatekeeper-{stage}-poll",
        "PollLogGroup.Arn": logs.format("poll"),
        "WorkLogGroup.Arn": logs.format("work"),
        "NotifyLogGroup.Arn": logs.format("notify"),
        "ApiHandlerLogGroup.Arn": logs.format("api_handler"),
        "AWS::Partition": "aws",
        "AWS::Region": region,
        "AWS::AccountId": ACCOUNT,
        "MemberRoleName": "vif-gatekeeper-member",
        "OrgListRoleName": "vif-gatekeeper-org-list",
        "PolicyApplication.ApplicationId": "app1234",
        "PolicyEnvironment.EnvironmentId": "env1234",
        "PolicyProfile.ConfigurationProfileId": "prof123",
    }


def resolve(value: Any, stage: str, region: str = "eu-west-1") -> Any:
    """A policy document with CloudFormation's intrinsics replaced by what they stand for; unknown names fail."""
    known = attributes(stage, region)
    if isinstance(value, list):
        return [resolve(v, stage, region) for v in value]
    if isinstance(value, dict):
        if set(value) == {"Fn::GetAtt"}:
            return known[".".join(value["Fn::GetAtt"])]
        if set(value) == {"Ref"}:
            return known[value["Ref"]]
        if set(value) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: known[m.group(1)], value["Fn::Sub"])
        return {k: resolve(v, stage, region) for k, v in value.items()}
    return value


def resources_of(document: dict, action: str) -> list[str]:
    return [r for s in statements(document) if action in as_list(s["Action"]) for r in as_list(s["Resource"])]


@pytest.mark.parametrize("name", sorted(p.name for p in CHALICE.glob("policy*.json")))
def test_no_policy_file_grants_a_wildcard_action_or_star_beyond_describe_and_xray(name):
    for statement in statements(policy(name)):
        assert statement["Effect"] == "Allow", (name, statement.get("Sid"))
        assert "NotAction" not in statement and "NotResource" not in statement, (name, statement.get("Sid"))
        for action in as_list(statement["Action"]):
            assert "*" not in action and "?" not in action, f"{name}: wildcard action {action}"
        if "*" in as_list(statement["Resource"]):
            assert set(as_list(statement["Action"])) <= STAR_ACTIONS, f"{name}: Resource * for {statement['Action']}"
            assert as_list(statement["Resource"]) == ["*"], name


@pytest.mark.parametrize("stage", STAGES)
def test_every_function_has_its_own_policy_file_and_nothing_else_is_left(stage):
    files = {function: policy_file(stage, function) for function in FUNCTIONS}
    assert files == {f: f"policy-{short}-{stage}.json" for f, short in FUNCTIONS.items()}
    assert "iam_policy_file" not in stage_config(stage), "a stage-wide policy would be a fourth, shared role"
    expected = {f"policy-{short}-{s}.json" for short in FUNCTIONS.values() for s in STAGES}
    assert {p.name for p in CHALICE.glob("policy*.json")} == expected


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_function_is_granted_exactly_its_actions(stage, function):
    assert granted(policy(policy_file(stage, function))) == ACTIONS[FUNCTIONS[function]]


@pytest.mark.parametrize("stage", STAGES)
def test_only_the_pollers_touch_directlink_or_assume_roles_and_only_on_exact_resources(stage):
    for function in ("notify", "api_handler"):
        text = json.dumps(policy(policy_file(stage, function)))
        assert "directconnect:" not in text and "sts:" not in text, function
    for function in ("poll", "work"):
        poller = resolve(policy(policy_file(stage, function)), stage)
        for action in ("directconnect:ConfirmPrivateVirtualInterface", "directconnect:DeleteVirtualInterface"):
            assert resources_of(poller, action) == [f"arn:aws:directconnect:*:{ACCOUNT}:dxvif/*"], action
        assert resources_of(poller, "sts:AssumeRole") == [
            "arn:aws:iam::*:role/vif-gatekeeper-member",
            "arn:aws:iam::*:role/vif-gatekeeper-org-list",
        ]
        for action in ("organizations:ListChildren", "organizations:ListAccountsForParent"):
            assert resources_of(poller, action) == [
                "arn:aws:organizations::*:root/o-*/r-*",
                "arn:aws:organizations::*:ou/o-*/ou-*",
            ], action
        assert "organizations:" not in json.dumps(policy(policy_file(stage, "notify"))), "nor notify, nor api"
        assert "organizations:" not in json.dumps(policy(policy_file(stage, "api_handler")))


@pytest.mark.parametrize("stage", STAGES)
def test_each_function_reads_only_its_own_secrets_and_config(stage):
    sm = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:vifgate/{stage}/"
    ssm = f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/vifgate/{stage}/"
    # A secret's ARN is its name + "-" + 6 characters: `approvals-??????` is that one secret, not
    # every secret whose name merely starts with "approvals" (approvals-webhooks, approvalsbackup/...).
    own = {"poll": ["targets/*"], "work": ["targets/*"], "notify": ["chat/*", "approvals-??????", "approvals/*"]}
    own["api"] = ["approvals-??????", "approvals/*"]
    own_parameters = {"poll": ["targets/*"], "work": ["targets/*"], "notify": ["chat/*", "approvals", "approvals/*"]}
    own_parameters["api"] = ["approvals", "approvals/*"]
    appconfig = f"arn:aws:appconfig:eu-west-1:{ACCOUNT}:application/app1234/environment/env1234/configuration/prof123"
    for function, short in FUNCTIONS.items():
        document = resolve(policy(policy_file(stage, function)), stage)
        assert resources_of(document, "secretsmanager:GetSecretValue") == [sm + p for p in own[short]], function
        assert sorted(resources_of(document, "ssm:GetParameter")) == sorted(
            [ssm + "config"] + [ssm + p for p in own_parameters[short]]
        )
        granted = resources_of(document, "secretsmanager:GetSecretValue")
        for name, readable in (
            ("approvals-AbC123", short not in ("poll", "work")),
            ("approvals/slack-Xy9876", short not in ("poll", "work")),
            ("approvals-webhooks-AbC123", False),
            ("approvalsbackup/osc-prod-AbC123", False),
        ):
            assert any(fnmatchcase(sm + name, arn) for arn in granted) is readable, (function, name)
        for action in ("appconfig:StartConfigurationSession", "appconfig:GetLatestConfiguration"):
            assert resources_of(document, action) == [appconfig], (function, action)


@pytest.mark.parametrize("stage", STAGES)
def test_queues_table_and_logs_are_the_stage_own(stage):
    arns = attributes(stage, "eu-west-1")
    poll, work, notify, api = (resolve(policy(policy_file(stage, f)), stage) for f in FUNCTIONS)
    assert resources_of(poll, "sqs:SendMessage") == [arns["EventsQueue.Arn"], arns["WorkQueue.Arn"]]
    assert resources_of(work, "sqs:SendMessage") == [arns["EventsQueue.Arn"]]  # it never fans out itself
    assert resources_of(work, "sqs:ReceiveMessage") == [arns["WorkQueue.Arn"]]
    assert resources_of(notify, "sqs:SendMessage") == [arns["EventsDeadLetterQueue.Arn"]]
    assert resources_of(notify, "sqs:ReceiveMessage") == [arns["EventsQueue.Arn"]]
    # An approval's poll-now is a message on the work queue: the API function invokes no function.
    assert resources_of(api, "sqs:SendMessage") == [arns["WorkQueue.Arn"]]
    assert "lambda:" not in json.dumps(api)
    env = stage_config(stage)["environment_variables"]
    assert env["VIFGATE_WORK_QUEUE"] == f"vifgate-{stage}-work.fifo" and "VIFGATE_POLL_FUNCTION" not in env
    groups = ((poll, "PollLogGroup"), (work, "WorkLogGroup"), (notify, "NotifyLogGroup"), (api, "ApiHandlerLogGroup"))
    for document, group in groups:
        assert resources_of(document, "logs:PutLogEvents") == [arns[f"{group}.Arn"]]
        assert set(resources_of(document, "dynamodb:GetItem")) == {arns["LedgerTable.Arn"]}


def test_the_old_shared_policy_would_fail_these_checks():
    """The checks above can fail: the stage-wide policy this replaced grants notify and api DirectLink."""
    shared = {
        "Statement": [
            {"Effect": "Allow", "Action": ["directconnect:ConfirmPrivateVirtualInterface"], "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": "arn:aws:secretsmanager:*:*:secret:vifgate/prod/*",
            },
        ]
    }
    assert "*" in resources_of(shared, "directconnect:ConfirmPrivateVirtualInterface")
    assert granted(shared) != ACTIONS["api"]


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
        roles[resource.resource_name] = [resource.role.role_name, resource.role.policy.filename]
print(json.dumps(roles))
"""


@pytest.mark.parametrize("stage", STAGES)
def test_chalice_gives_each_function_its_own_role_and_policy_file(stage):
    """Chalice's own application graph (what `chalice package` builds), without packaging."""
    env = dict(os.environ, AWS_DEFAULT_REGION="eu-west-1")
    out = subprocess.run(
        [sys.executable, "-c", ROLES_SCRIPT, stage], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    roles = {name: (role, Path(file).name) for name, (role, file) in json.loads(out.stdout).items()}
    assert {name: file for name, (_, file) in roles.items()} == {
        f: f"policy-{short}-{stage}.json" for f, short in FUNCTIONS.items()
    }
    assert len({role for role, _ in roles.values()}) == len(FUNCTIONS), roles


# --- what the API function really calls -------------------------------------------------------

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
        if operation in ("BatchWriteItem", "BatchGetItem"):
            return [(f"dynamodb:{operation}", f"{prefix}:table/{table}") for table in params["RequestItems"]]
        return [(f"dynamodb:{operation}", f"{prefix}:table/{params['TableName']}")]
    if service == "ssm":
        return [(f"ssm:{operation}", f"{prefix}:parameter{params['Name']}")]
    if service == "secretsmanager":
        return [(f"secretsmanager:{operation}", f"{prefix}:secret:{params['SecretId']}-AbCdEf")]
    if service == "sqs":
        queue = params["QueueName"] if operation == "GetQueueUrl" else params["QueueUrl"].rsplit("/", 1)[1]
        action = "SendMessage" if operation == "SendMessageBatch" else operation  # IAM has no batch action
        return [(f"sqs:{action}", f"{prefix}:{queue}")]
    if service == "organizations":  # an OU's or root's ARN names the management account and the organization
        parent = params["ParentId"]
        kind = "root" if parent.startswith("r-") else "ou"
        return [(f"organizations:{operation}", f"arn:aws:organizations::{ACCOUNT}:{kind}/o-example12/{parent}")]
    if service == "sts" and operation == "AssumeRole":
        return [("sts:AssumeRole", params["RoleArn"])]
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

    # chalice.test gives 3 s: the cycle's budget would be ~1 s, and a loaded machine times a target out.
    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)
    stage = "prod"
    create_table(boto3.client("dynamodb"), f"vifgate-{stage}-ledger")
    create_queues(boto3.client("sqs"), f"vifgate-{stage}-events.fifo", f"vifgate-{stage}-events-dlq.fifo")
    create_queues(boto3.client("sqs"), f"vifgate-{stage}-work.fifo", f"vifgate-{stage}-work-dlq.fifo")
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
    assert "directconnect" not in services and "sts" not in services and "lambda" not in services, services
    sent = [p["QueueUrl"] for s, o, p in recorder.calls if (s, o) == ("sqs", "SendMessageBatch")]
    assert sent and all(url.endswith("/vifgate-prod-work.fifo") for url in sent), "a decided vote queues a poll-now"
    region = boto3.session.Session().region_name
    document = resolve(policy(policy_file("prod", "api_handler")), "prod", region)
    refused = [
        (action, resource)
        for service, operation, params in recorder.calls
        for action, resource in needed(service, operation, params, region)
        if not allowed(document, action, resource)
    ]
    assert not refused, f"the API function calls what {policy_file('prod', 'api_handler')} does not grant: {refused}"


def pollers_world(stage: str) -> None:
    """The stage's table, queues and config; targets' keys under vifgate/<stage>/targets/."""
    from sandbox.local import create_queues

    sm = boto3.client("secretsmanager")
    create_table(boto3.client("dynamodb"), f"vifgate-{stage}-ledger")
    create_queues(boto3.client("sqs"), f"vifgate-{stage}-events.fifo", f"vifgate-{stage}-events-dlq.fifo")
    create_queues(boto3.client("sqs"), f"vifgate-{stage}-work.fifo", f"vifgate-{stage}-work-dlq.fifo")
    config = approvals_config(stage)
    for target in ("osc-prod", "osc-staging", "osc-lab"):
        value = sm.get_secret_value(SecretId=scenario.secret_id(target))["SecretString"]
        sm.create_secret(Name=f"vifgate/{stage}/targets/{target}", SecretString=value)
        config = config.replace(scenario.secret_id(target), f"vifgate/{stage}/targets/{target}")
    boto3.client("ssm").put_parameter(
        Name=f"/vifgate/{stage}/config", Value=config, Type="SecureString", Overwrite=True
    )


def refused_calls(calls: list[tuple[str, str, dict]], stage: str, function: str) -> list[tuple[str, str]]:
    """The (action, resource) pairs of the recorded calls that the function's policy file does not grant."""
    region = boto3.session.Session().region_name
    document = resolve(policy(policy_file(stage, function)), stage, region)
    return [
        (action, resource)
        for service, operation, params in calls
        if service not in ("directconnect", "sts")  # signed with the target's keys, not the function's role
        for action, resource in needed(service, operation, params, region)
        if not allowed(document, action, resource)
    ]


def scheduled_event(client) -> dict:
    return client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])


def test_every_call_the_poll_function_makes_with_its_own_role_is_granted(aws, directlink, monkeypatch):
    """A poll cycle of the prod stage, targets' keys under vifgate/prod/targets/; DirectLink calls use those keys."""
    from app import app

    stage = "prod"
    pollers_world(stage)
    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)
    recorder = CallRecorder()
    recorder.install(monkeypatch)
    recorder.recording = True
    with Client(app, stage_name=stage) as client:
        answer = client.lambda_.invoke("poll", scheduled_event(client))
    recorder.recording = False
    assert answer.payload and not answer.payload.get("errorMessage"), answer.payload
    services = {service for service, _, _ in recorder.calls}
    assert {"dynamodb", "sqs", "secretsmanager", "ssm"} <= services, services
    refused = refused_calls(recorder.calls, stage, "poll")
    assert not refused, f"the poll function calls what {policy_file(stage, 'poll')} does not grant: {refused}"


def test_every_call_of_a_fan_out_and_its_work_functions_is_granted_by_each_own_policy(aws, directlink, monkeypatch):
    """Past the threshold the schedule enqueues, then each work message is polled: each function with its own role."""
    from aws_lambda_powertools.utilities import parameters

    from app import app
    from chalicelib import runtime

    stage = "prod"
    pollers_world(stage)
    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)
    monkeypatch.setenv("VIFGATE_FANOUT_ABOVE", "1")
    monkeypatch.setenv("VIFGATE_TARGETS_PER_MESSAGE", "2")
    recorder = CallRecorder()
    recorder.install(monkeypatch)
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=f"vifgate-{stage}-work.fifo")["QueueUrl"]
    with Client(app, stage_name=stage) as client:
        recorder.recording = True
        answer = client.lambda_.invoke("poll", scheduled_event(client)).payload
        recorder.recording = False
        assert answer["fanned_out"] == 3 and answer["messages"] == 2 and answer["not_enqueued"] == 0, answer
        poll_calls, recorder.calls = recorder.calls, []
        bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
        polled = []
        # Another function is another process: nothing cached, not even the policy document.
        monkeypatch.setattr(runtime, "_cached", None)
        parameters.clear_caches()
        parameters.base.DEFAULT_PROVIDERS.clear()
        recorder.recording = True
        for body in bodies:  # the event source hands each message to a work function
            event = client.events.generate_sqs_event(queue_name=f"vifgate-{stage}-work.fifo", message_bodies=[body])
            polled += client.lambda_.invoke("work", event).payload["targets_ok"]
        recorder.recording = False
    assert sorted(polled) == ["osc-lab", "osc-prod", "osc-staging"]
    assert ("sqs", "SendMessageBatch") in {(s, o) for s, o, _ in poll_calls}
    assert not {s for s, _, _ in poll_calls} & {"directconnect", "sts"}, "the scheduled function polled nothing"
    refused = refused_calls(poll_calls, stage, "poll")
    assert not refused, f"the fan-out calls what {policy_file(stage, 'poll')} does not grant: {refused}"
    assert {"dynamodb", "sqs", "secretsmanager", "ssm"} <= {s for s, _, _ in recorder.calls}
    refused = refused_calls(recorder.calls, stage, "work")
    assert not refused, f"the work function calls what {policy_file(stage, 'work')} does not grant: {refused}"


def test_only_the_pollers_list_organizations():
    """The api and notify functions read the policy too, but never list a from_organization source (no grant).

    By their wiring, not by a stage variable: chalice's test Client lets a function's own variables
    override a test's, which would have changed what every route test runs against.
    """
    source = (Path(__file__).resolve().parent.parent / "app.py").read_text()
    readers = re.findall(r"runtime\.get_reader\b", source)
    pollers = re.findall(r"runtime\.get\(\)", source)
    assert len(readers) == 6 and len(pollers) == 2, (readers, pollers)
    assert runtime.get_reader({"VIFGATE_CONFIG": "x.yaml"}).settings.list_organizations is False
    assert runtime.get({"VIFGATE_CONFIG": "x.yaml"}).settings.list_organizations is True


def test_every_call_of_a_poll_listing_an_organization_through_its_list_role_is_granted(aws, directlink, monkeypatch):
    """A from_organization source listed with list_role_arn, then its account's role assumed: each call granted."""
    from app import app

    stage = "prod"
    pollers_world(stage)
    org = boto3.client("organizations", region_name="us-east-1")
    org.create_organization(FeatureSet="ALL")
    root = org.list_roots()["Roots"][0]["Id"]
    unit = org.create_organizational_unit(ParentId=root, Name="network")["OrganizationalUnit"]["Id"]
    member = org.create_account(Email="network@example.test", AccountName="network")["CreateAccountStatus"]["AccountId"]
    org.move_account(AccountId=member, SourceParentId=root, DestinationParentId=unit)
    ssm = boto3.client("ssm")
    name = f"/vifgate/{stage}/config"
    document = yaml.safe_load(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    list_role = f"arn:aws:iam::{ACCOUNT}:role/vif-gatekeeper-org-list"
    source = {"name": "org", "ous": [unit], "role_name": "vif-gatekeeper-member", "regions": ["eu-west-2"]}
    document["targets"].append({"from_organization": source | {"list_role_arn": list_role}})
    ssm.put_parameter(Name=name, Value=yaml.safe_dump(document), Type="SecureString", Overwrite=True)
    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)
    recorder = CallRecorder()
    recorder.install(monkeypatch)
    recorder.recording = True
    with Client(app, stage_name=stage) as client:
        answer = client.lambda_.invoke("poll", scheduled_event(client)).payload
    recorder.recording = False
    # The sandbox does not know the member's keys: the target fails there, after its role was assumed.
    polled = answer["targets_ok"] + [failure["target"] for failure in answer["targets_failed"]]
    assert f"org-{member}-eu-west-2" in polled, answer
    assumed = [p["RoleArn"] for s, o, p in recorder.calls if (s, o) == ("sts", "AssumeRole")]
    assert assumed == [list_role, f"arn:aws:iam::{member}:role/vif-gatekeeper-member"]
    assert {o for s, o, _ in recorder.calls if s == "organizations"} == {"ListChildren", "ListAccountsForParent"}
    region = boto3.session.Session().region_name
    document = resolve(policy(policy_file(stage, "poll")), stage, region)
    refused = [
        (action, resource)
        for service, operation, params in recorder.calls
        if service in ("organizations", "sts")
        for action, resource in needed(service, operation, params, region)
        if not allowed(document, action, resource)
    ]
    assert not refused, f"the poll function calls what {policy_file(stage, 'poll')} does not grant: {refused}"
    assert not refused_calls(recorder.calls, stage, "poll")
