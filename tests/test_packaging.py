"""What gets deployed: dependencies in step, least-privilege policies, a python3.13 template that lints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
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


@pytest.mark.slow
def test_chalice_package_builds_a_python313_template_that_lints(tmp_path):
    """Downloads the Lambda wheels (PyPI), so it needs the package registry, like `make test` does."""
    out = tmp_path / "out"
    env = dict(os.environ, AWS_DEFAULT_REGION="eu-west-1")
    result = subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "prod", "--merge-template", "infra/template.json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed
    # Chalice only warns when a wheel is missing, and the function would fail at import in Lambda.
    assert "Could not install dependencies" not in printed, printed
    template = json.loads((out / "sam.json").read_text())
    functions = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    assert {f["Properties"]["Runtime"] for f in functions.values()} == {"python3.13"}
    assert functions["Poll"]["Properties"]["Events"]["PollEvent"]["Properties"]["Schedule"] == "rate(1 minute)"
    assert {"LedgerTable", "EventsQueue", "EventsDeadLetterQueue"} <= set(template["Resources"])
    # Partial batch failures only count when the event source mapping reports them.
    sqs_source = functions["Notify"]["Properties"]["Events"]["NotifySqsEventSource"]["Properties"]
    assert sqs_source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "vifgate-prod-events.fifo" in json.dumps(sqs_source["Queue"])
    assert functions["Notify"]["Properties"]["Timeout"] * 6 <= int(
        template["Resources"]["EventsQueue"]["Properties"]["VisibilityTimeout"]
    )
    lint = subprocess.run([str(BIN / "cfn-lint"), str(out / "sam.json")], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
