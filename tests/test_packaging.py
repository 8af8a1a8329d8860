"""What gets deployed: dependencies in step, least-privilege policies, a python3.13 template that lints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from chalicelib.ledger import table_definition

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LAMBDA_RUNTIME_PROVIDES = {"boto3"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_txt_is_pyproject_dependencies_minus_the_runtime():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    expected = sorted(r.replace(" ", "") for r in project if _name(r) not in LAMBDA_RUNTIME_PROVIDES)
    assert sorted(r.replace(" ", "") for r in requirements) == expected


def test_python_version_is_a_lambda_runtime_that_can_still_be_created():
    assert (ROOT / ".python-version").read_text().strip() == "3.13.0"
    assert sys.version_info >= (3, 12), "the suite must run on the interpreter that packages the app"


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_stage_config_names_its_appconfig_store_service_and_metrics_namespace(stage):
    config = json.loads((ROOT / ".chalice/config.json").read_text())
    assert config["autogen_policy"] is False and config["xray"] is True
    env = {**config["environment_variables"], **config["stages"][stage]["environment_variables"]}
    assert env["VIFGATE_CONFIG"] == f"appconfig:vif-gatekeeper-{stage}/{stage}/policy"
    assert env["POWERTOOLS_SERVICE_NAME"] == f"vif-gatekeeper-{stage}"  # the alarms' `service` dimension
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "VifGatekeeper"
    assert env["VIFGATE_TABLE"] == f"vifgate-{stage}-ledger"
    assert env["VIFGATE_EVENTS_QUEUE"] == f"vifgate-{stage}-events.fifo"
    assert int(env["VIFGATE_POLL_MINUTES"]) >= 1


def test_infra_table_matches_the_table_the_code_creates():
    template = json.loads((ROOT / "infra/template.json").read_text())
    table = template["Resources"]["LedgerTable"]["Properties"]
    code = table_definition("x")
    assert table["KeySchema"] == code["KeySchema"]
    assert table["AttributeDefinitions"] == code["AttributeDefinitions"]
    assert table["BillingMode"] == code["BillingMode"]


def test_poll_rate_comes_from_the_stage_variable():
    code = "import app; h = app.app.event_sources[0]; print(h.schedule_expression.to_string())"
    env = dict(os.environ, VIFGATE_POLL_MINUTES="5")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rate(5 minutes)"


# --- the package itself (slow: downloads the Lambda wheels and boto3 from the package registry) --------------

FUNCTIONS = {"Poll": "poll", "Work": "work", "Notify": "notify", "APIHandler": "api_handler"}
ROLES = {"Poll": "PollRole", "Work": "WorkRole", "Notify": "NotifyRole", "APIHandler": "ApiHandlerRole"}
STAR_ACTIONS = {
    "directconnect:DescribeVirtualInterfaces",
    "directconnect:DescribeVirtualGateways",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "cloudwatch:DescribeAlarms",
}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """`make package STAGE=prod`, built once for this module; its output directory."""
    out = tmp_path_factory.mktemp("package") / "prod"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_DEFAULT_REGION"] = "eu-west-1"
    result = subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "prod", "--merge-template", "infra/template.json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed
    # Chalice only warns when a wheel is missing, and the function would fail at import in Lambda.
    assert "Could not install dependencies" not in printed, printed
    slimmed = subprocess.run(
        [sys.executable, "infra/slim_package.py", str(out / "deployment.zip")], cwd=ROOT, capture_output=True, text=True
    )
    assert slimmed.returncode == 0, slimmed.stderr
    size = (out / "deployment.zip").stat().st_size
    print(f"deployment.zip: {size} bytes ({size / 1e6:.2f} MB)")
    return out


@pytest.mark.slow
def test_the_zip_leaves_out_what_the_lambda_runtime_provides(package):
    """aws-xray-sdk pulls botocore in: bundled, it would shadow the runtime's and add 16 MB."""
    with zipfile.ZipFile(package / "deployment.zip") as zipped:
        top = {name.split("/")[0] for name in zipped.namelist()}
    assert not top & {"botocore", "boto3", "s3transfer", "urllib3", "dateutil", "jmespath", "six.py"}, top
    assert {"app.py", "chalicelib", "pydantic", "aws_lambda_powertools", "aws_xray_sdk", "wrapt"} <= top
    assert (package / "deployment.zip").stat().st_size <= 6_000_000


@pytest.fixture(scope="module")
def template(package):
    return json.loads((package / "sam.json").read_text())


@pytest.mark.slow
def test_the_packaged_template_lints(package):
    lint = subprocess.run([str(BIN / "cfn-lint"), str(package / "sam.json")], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.slow
def test_functions_are_python313_named_traced_and_wired(template):
    resources = template["Resources"]
    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(functions) == set(FUNCTIONS)
    for logical, name in FUNCTIONS.items():
        props = functions[logical]["Properties"]
        assert props["Runtime"] == "python3.13" and props["Tracing"] == "Active"
        assert props["FunctionName"] == {"Fn::Sub": f"vif-gatekeeper-${{Stage}}-{name}"}
        group = resources[f"{'ApiHandler' if logical == 'APIHandler' else logical}LogGroup"]["Properties"]
        assert group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/vif-gatekeeper-${{Stage}}-{name}"}
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert props["Environment"]["Variables"]["VIFGATE_CONFIG"] == "appconfig:vif-gatekeeper-prod/prod/policy"
    assert functions["Poll"]["Properties"]["Events"]["PollEvent"]["Properties"]["Schedule"] == "rate(1 minute)"
    # Partial batch failures only count when the event source mapping reports them.
    sqs_source = functions["Notify"]["Properties"]["Events"]["NotifySqsEventSource"]["Properties"]
    assert sqs_source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "vifgate-prod-events.fifo" in json.dumps(sqs_source["Queue"])
    assert functions["Notify"]["Properties"]["Timeout"] * 6 <= int(
        resources["EventsQueue"]["Properties"]["VisibilityTimeout"]
    )
    # The fan-out's worker: one message at a time, from the stage's work queue, at most WorkConcurrency at once.
    work = functions["Work"]["Properties"]
    work_source = work["Events"]["WorkSqsEventSource"]["Properties"]
    assert work_source["BatchSize"] == 1 and "vifgate-prod-work.fifo" in json.dumps(work_source["Queue"])
    assert work["ReservedConcurrentExecutions"] == {"Ref": "WorkConcurrency"}
    assert work["Timeout"] * 6 <= int(resources["WorkQueue"]["Properties"]["VisibilityTimeout"])
    assert work["Environment"]["Variables"]["VIFGATE_WORK_QUEUE"] == "vifgate-prod-work.fifo"


@pytest.mark.slow
def test_each_role_holds_its_policy_file_verbatim_and_no_star_beyond_describe_and_xray(template):
    resources = template["Resources"]
    for logical, name in FUNCTIONS.items():
        assert resources[logical]["Properties"]["Role"] == {"Fn::GetAtt": [ROLES[logical], "Arn"]}
        documents = [p["PolicyDocument"] for p in resources[ROLES[logical]]["Properties"]["Policies"]]
        short = "api" if name == "api_handler" else name
        assert documents == [json.loads((ROOT / f".chalice/policy-{short}-prod.json").read_text())], logical
        if name not in ("poll", "work"):  # the two that poll
            assert "directconnect:" not in json.dumps(documents) and "sts:" not in json.dumps(documents)
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not [a for a in actions if "*" in a], logical
                if "*" in json.dumps(statement["Resource"]):
                    star = (
                        [r for r in statement["Resource"] if r == "*"]
                        if isinstance(statement["Resource"], list)
                        else []
                    )
                    if star or statement["Resource"] == "*":
                        assert set(actions) <= STAR_ACTIONS, (logical, actions)


@pytest.mark.slow
def test_appconfig_validator_is_the_committed_schema_and_alarms_exist(template):
    resources = template["Resources"]
    (validator,) = resources["PolicyProfile"]["Properties"]["Validators"]
    assert validator["Type"] == "JSON_SCHEMA"
    assert json.loads(validator["Content"]) == json.loads((ROOT / "infra/config-schema.json").read_text())
    alarms = {k for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms == {
        "DeadLetterQueueNotEmptyAlarm",
        "PollErrorsAlarm",
        "TargetFailingAlarm",
        "NoSuccessfulCycleAlarm",
        "VifNearDeadlineUndecidedAlarm",
        "WorkDeadLetterQueueNotEmptyAlarm",
        "WorkErrorsAlarm",
    }
    assert resources["NoSuccessfulCycleAlarm"]["Properties"]["TreatMissingData"] == "breaching"
    (monitor,) = resources["PolicyEnvironment"]["Properties"]["Monitors"]
    assert monitor["AlarmArn"] == {"Fn::GetAtt": ["PollErrorsAlarm", "Arn"]}
    outputs = {"PollRoleArn", "WorkRoleArn", "WorkQueueUrl", "ApiUrl", "AppConfigApplicationId"}
    assert outputs <= set(template["Outputs"])


CLEAN_IMPORT = """
import importlib, json, sys
sys.path[:0] = sys.argv[1:3]
handlers = json.loads(sys.argv[3])
for handler in handlers:
    module, name = handler.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name)), handler
for module in ("chalicelib.notify", "chalicelib.approvals.web", "chalicelib.reconcile", "chalicelib.configstore"):
    importlib.import_module(module)
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("app", "chalicelib", "boto3"))))
print(json.dumps([getattr(sys.modules[m], "__file__", "") for m in ("app", "boto3")]))
"""


@pytest.fixture(scope="module")
def lambda_runtime_boto3(tmp_path_factory):
    """boto3 and botocore alone, from the package registry: what the Lambda runtime provides besides the zip."""
    target = tmp_path_factory.mktemp("runtime")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(target), "boto3"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return target


@pytest.mark.slow
def test_every_handler_imports_from_the_unzipped_package_alone(package, template, lambda_runtime_boto3, tmp_path):
    code = tmp_path / "task"
    with zipfile.ZipFile(package / "deployment.zip") as archive:
        archive.extractall(code)
    handlers = [template["Resources"][f]["Properties"]["Handler"] for f in FUNCTIONS]
    assert sorted(handlers) == ["app.app", "app.notify_chat", "app.poll", "app.work"]
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["prod"]["environment_variables"]
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "eu-west-1", **stage_env}
    # -I -S: no user site, no site-packages, no PYTHONPATH; the dev venv is nowhere on sys.path.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CLEAN_IMPORT, str(code), str(lambda_runtime_boto3), json.dumps(handlers)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = json.loads(result.stdout.splitlines()[-1])
    assert files[0].startswith(str(code)) and files[1].startswith(str(lambda_runtime_boto3)), files
