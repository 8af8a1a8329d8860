"""The member-account role template, the OUTSCALE EIM policy and the Makefile's deploy commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DIRECT_CONNECT = {
    "directconnect:DescribeVirtualInterfaces",
    "directconnect:DescribeVirtualGateways",
    "directconnect:ConfirmPrivateVirtualInterface",
    "directconnect:DeleteVirtualInterface",
}


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags, kept as {"Fn::X": value}."""


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


def member_role() -> dict:
    return yaml.load((ROOT / "infra/member-role.yaml").read_text(), Loader=CfnLoader)


def test_member_role_template_lints():
    lint = subprocess.run([str(BIN / "cfn-lint"), "infra/member-role.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_member_role_trusts_only_the_gatekeeper_roles_with_the_external_id():
    template = member_role()
    assert set(template["Parameters"]) == {"GatekeeperRoleArn", "WorkerRoleArn", "ExternalId", "RoleName"}
    assert template["Parameters"]["RoleName"]["Default"] == "vif-gatekeeper-member"
    assert "NoEcho" in template["Parameters"]["ExternalId"]
    role = template["Resources"]["MemberRole"]["Properties"]
    assert role["RoleName"] == {"Ref": "RoleName"}
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust == {
        "Effect": "Allow",
        "Principal": {"AWS": [{"Ref": "GatekeeperRoleArn"}, {"Ref": "WorkerRoleArn"}]},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}},
    }
    assert not re.search(r"\b\d{12}\b", json.dumps(template)), "StackSet-friendly: no account id in the template"


def test_member_role_grants_the_four_direct_connect_actions_and_decides_only_on_own_dxvifs():
    role = member_role()["Resources"]["MemberRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    actions = {a for s in statements for a in s["Action"]}
    assert actions == DIRECT_CONNECT
    for statement in statements:
        assert statement["Effect"] == "Allow"
        if statement["Resource"] == "*":
            assert set(statement["Action"]) <= {a for a in DIRECT_CONNECT if ":Describe" in a}
        else:
            assert statement["Resource"] == {
                "Fn::Sub": "arn:${AWS::Partition}:directconnect:*:${AWS::AccountId}:dxvif/*"
            }


def test_outscale_eim_policy_is_the_four_directlink_calls_only():
    document = json.loads((ROOT / "infra/outscale-eim-policy.json").read_text())
    (statement,) = document["Statement"]
    assert statement["Effect"] == "Allow" and statement["Resource"] == ["*"]
    assert set(statement["Action"]) == DIRECT_CONNECT


def test_the_poll_role_may_assume_only_the_member_role_name():
    template = json.loads((ROOT / "infra/template.json").read_text())
    assert template["Parameters"]["MemberRoleName"]["Default"] == member_role()["Parameters"]["RoleName"]["Default"]


def test_the_template_embeds_the_committed_config_schema_as_appconfig_validator():
    """AppConfig checks each version against the template's copy: it must accept from_organization entries too."""
    resources = json.loads((ROOT / "infra/template.json").read_text())["Resources"]
    (validator,) = resources["PolicyProfile"]["Properties"]["Validators"]
    assert json.loads(validator["Content"]) == json.loads((ROOT / "infra/config-schema.json").read_text())


def org_list_role() -> dict:
    return yaml.load((ROOT / "infra/org-list-role.yaml").read_text(), Loader=CfnLoader)


def test_org_list_role_template_lints():
    lint = subprocess.run([str(BIN / "cfn-lint"), "infra/org-list-role.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_org_list_role_trusts_only_the_gatekeeper_roles_and_may_only_list_units_and_their_accounts():
    template = org_list_role()
    assert set(template["Parameters"]) == {"GatekeeperRoleArn", "WorkerRoleArn", "RoleName"}
    stack = json.loads((ROOT / "infra/template.json").read_text())
    assert template["Parameters"]["RoleName"]["Default"] == stack["Parameters"]["OrgListRoleName"]["Default"]
    role = template["Resources"]["OrgListRole"]["Properties"]
    assert role["RoleName"] == {"Ref": "RoleName"}
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust == {
        "Effect": "Allow",
        "Principal": {"AWS": [{"Ref": "GatekeeperRoleArn"}, {"Ref": "WorkerRoleArn"}]},
        "Action": "sts:AssumeRole",
    }
    (statement,) = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["organizations:ListChildren", "organizations:ListAccountsForParent"]
    assert statement["Resource"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:organizations::*:root/o-*/r-*"},
        {"Fn::Sub": "arn:${AWS::Partition}:organizations::*:ou/o-*/ou-*"},
    ]
    assert not re.search(r"\b\d{12}\b", json.dumps(template)), "no account id in the template"


def test_the_work_queue_outlasts_six_work_timeouts_and_sheds_to_an_alarmed_dead_letter_queue():
    """AWS: an SQS event source's visibility timeout is at least 6x the function's timeout (throttled retries)."""
    resources = json.loads((ROOT / "infra/template.json").read_text())["Resources"]
    config = json.loads((ROOT / ".chalice/config.json").read_text())
    queue = resources["WorkQueue"]["Properties"]
    assert queue["FifoQueue"] is True and queue["ContentBasedDeduplication"] is False, "dedup ids are ours"
    for stage, settings in config["stages"].items():
        work = settings["lambda_functions"]["work"]
        assert work["iam_policy_file"] == f"policy-work-{stage}.json"
        timeout = work.get("lambda_timeout", settings.get("lambda_timeout", 60))
        assert queue["VisibilityTimeout"] >= 6 * timeout, (stage, timeout)
        assert settings["environment_variables"]["VIFGATE_WORK_QUEUE"] == f"vifgate-{stage}-work.fifo"
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["WorkDeadLetterQueue", "Arn"]}
    assert 2 <= redrive["maxReceiveCount"] <= 5 and resources["WorkDeadLetterQueue"]["Properties"]["FifoQueue"]
    alarm = resources["WorkDeadLetterQueueNotEmptyAlarm"]["Properties"]
    assert alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["WorkDeadLetterQueue", "QueueName"]}
    # A failed schedule message comes back after the visibility timeout stale, and is dropped: it never
    # reaches the DLQ, so a worker that raises is alarmed on its errors.
    errors = resources["WorkErrorsAlarm"]["Properties"]
    assert (errors["Namespace"], errors["MetricName"], errors["Threshold"]) == ("AWS/Lambda", "Errors", 1)
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Fn::Sub": "vif-gatekeeper-${Stage}-work"}}]
    work = resources["Work"]["Properties"]
    assert work["FunctionName"] == {"Fn::Sub": "vif-gatekeeper-${Stage}-work"}
    assert work["ReservedConcurrentExecutions"] == {"Ref": "WorkConcurrency"}, "the bound on DirectLink load"
    assert work["Events"]["WorkSqsEventSource"]["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert resources["WorkLogGroup"]["Properties"]["LogGroupName"] == {
        "Fn::Sub": "/aws/lambda/vif-gatekeeper-${Stage}-work"
    }


# --- Makefile ------------------------------------------------------------------------------------------------------


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, env=env or dict(os.environ), capture_output=True, text=True
    )


def test_deploy_runs_cloudformation_package_then_deploy_with_the_stage_and_alarm_topic():
    out = make(
        "-n", "deploy", "STAGE=prod", "BUCKET=my-bucket", "ALARM_TOPIC=arn:aws:sns:eu-west-1:1:ops", "REGION=eu-west-3"
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("aws ")]
    assert lines == [
        "aws cloudformation package --region eu-west-3 --template-file build/prod/sam.json --s3-bucket my-bucket"
        " --s3-prefix vif-gatekeeper-prod --output-template-file build/prod/packaged.yaml",
        "aws cloudformation deploy --region eu-west-3 --template-file build/prod/packaged.yaml"
        " --stack-name vif-gatekeeper-prod --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset"
        " --parameter-overrides Stage=prod AlarmTopicArn=arn:aws:sns:eu-west-1:1:ops",
        "aws cloudformation describe-stacks --region eu-west-3 --stack-name vif-gatekeeper-prod"
        ' --query "Stacks[0].Outputs" --output table',
    ]
    assert (
        "AWS_DEFAULT_REGION=eu-west-3 .venv/bin/chalice package --stage prod --merge-template infra/template.json"
        in (out.stdout)
    )
    assert 'grep -q "Could not install dependencies"' in out.stdout


def test_package_region_defaults_to_aws_region_then_eu_west_1():
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    assert "AWS_DEFAULT_REGION=eu-west-1 " in make("-n", "package", "STAGE=dev", env=env).stdout
    assert (
        "AWS_DEFAULT_REGION=ap-south-1 "
        in make("-n", "package", "STAGE=dev", env={**env, "AWS_REGION": "ap-south-1"}).stdout
    )


def test_a_stage_is_required():
    out = make("destroy")
    assert out.returncode != 0 and "STAGE=dev or STAGE=prod" in out.stderr


def test_without_the_aws_cli_deploy_and_destroy_say_how_to_install_it():
    out = make("destroy", "STAGE=dev", "AWS=/nonexistent/aws")
    assert out.returncode != 0
    assert "the aws CLI is needed to destroy" in out.stderr and "getting-started-install" in out.stderr


def test_destroy_deletes_the_stack_waits_and_says_the_table_is_retained(tmp_path):
    log = tmp_path / "calls"
    fake = tmp_path / "aws"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    out = make("destroy", "STAGE=dev", "REGION=eu-west-1", f"AWS={fake}")
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == [
        "cloudformation delete-stack --region eu-west-1 --stack-name vif-gatekeeper-dev",
        "cloudformation wait stack-delete-complete --region eu-west-1 --stack-name vif-gatekeeper-dev",
    ]
    assert "vifgate-dev-ledger" in out.stdout and "dynamodb delete-table" in out.stdout
