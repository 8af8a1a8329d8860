"""GET /health: whether the config is valid, with a count of its problems, never their text or a secret."""

from __future__ import annotations

import boto3
import pytest
from chalice.test import Client

from app import app
from chalicelib import runtime
from chalicelib.approvals import web
from sandbox import scenario
from tests.approvals.routes_world import CONFIG, CONFIG_PARAMETER, STAGE


@pytest.fixture
def parameter(aws):
    def put(text: str) -> None:
        boto3.client("ssm").put_parameter(Name=CONFIG_PARAMETER, Value=text, Type="SecureString", Overwrite=True)

    return put


def get_health():
    with Client(app, stage_name=STAGE) as client:
        return client.http.get("/health")


def test_a_valid_config_is_healthy(parameter):
    parameter(CONFIG)
    response = get_health()
    assert response.status_code == 200
    assert response.json_body == {"ok": True, "config": "valid", "problems": 0}


def test_an_invalid_config_answers_503_with_a_count_and_logs_the_problems(parameter, capsys):
    # Two problems: a gateway id that is not one, and a secret pasted where a reference belongs.
    pasted = "xoxb-1234567890-pasted-into-the-config"
    text = CONFIG.replace(scenario.PROD_GATEWAY, "vgw-xyz").replace(
        "slack_signing_secret: {secret_id: vifgate/prod/approvals, key: slack}", f"slack_signing_secret: {pasted}"
    )
    parameter(text)

    response = get_health()

    assert response.status_code == 503
    assert response.json_body == {"ok": False, "config": "invalid", "problems": 2}
    body = response.body.decode()
    assert "vgw-xyz" not in body and "gateway" not in body and pasted not in body
    logs = capsys.readouterr().err
    assert "rules[0].gateway" in logs, "the problems themselves go to the log"
    assert pasted not in logs


def test_a_config_that_cannot_be_read_is_unhealthy(aws):
    response = get_health()  # no SSM parameter at all
    assert response.status_code == 503
    assert response.json_body == {"ok": False, "config": "invalid", "problems": 1}


def test_no_config_source_is_unhealthy():
    """Without VIFGATE_CONFIG the route still answers, and says so."""
    answer = web.health(lambda: runtime.get({}))
    assert answer.status == 503
    assert answer.body == {"ok": False, "config": "invalid", "problems": 1}
