"""The poll-now trigger: the exact asynchronous Invoke (botocore Stubber: moto's Lambda needs Docker), failures
logged without secrets and answered False, the local thread, and Runtime.trigger's choice."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from chalice.app import CloudWatchEvent

from chalicelib.approvals.trigger import POLL_NOW_SOURCE, LambdaTrigger, LocalTrigger, poll_now_event
from chalicelib.runtime import Runtime, Settings

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
FUNCTION = "vif-gatekeeper-prod-poll"


def test_poll_now_event_is_eventbridge_shaped():
    event = poll_now_event(["osc-prod"], NOW)
    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
    assert (event["source"], event["detail-type"], event["time"]) == (
        POLL_NOW_SOURCE,
        "vifgate.poll-now",
        "2026-11-22T09:00:00Z",
    )
    assert event["detail"] == {"targets": ["osc-prod"]}
    parsed = CloudWatchEvent(event, context=None)  # what chalice's @app.schedule hands the poll function
    assert parsed.source == POLL_NOW_SOURCE and parsed.detail == {"targets": ["osc-prod"]}
    assert poll_now_event(["osc-prod"], NOW)["id"] != event["id"]
    json.dumps(event)


def stubbed():
    client = boto3.client("lambda", region_name="eu-west-2")
    return client, Stubber(client)


def test_lambda_trigger_invokes_the_poll_function_asynchronously():
    client, stub = stubbed()
    payload = json.dumps(poll_now_event(["osc-prod"], NOW)).encode()
    expected = {"FunctionName": FUNCTION, "InvocationType": "Event", "Payload": payload}
    stub.add_response("invoke", {"StatusCode": 202}, expected)
    trigger = LambdaTrigger(client, FUNCTION, clock=lambda: NOW)
    # The event id is random: pin it so the stub can compare the exact payload.
    with stub, pytest.MonkeyPatch.context() as mp:
        mp.setattr("chalicelib.approvals.trigger.uuid.uuid4", lambda: json.loads(payload)["id"])
        assert trigger.poll_now("osc-prod") is True
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    "code, message",
    [
        ("AccessDeniedException", "User arn:aws:sts::1:assumed-role/api is not authorized, key AKIASECRETSECRET"),
        ("ResourceNotFoundException", "Function not found: arn:aws:lambda:eu-west-2:1:function:x"),
        ("TooManyRequestsException", "Rate exceeded"),
    ],
)
def test_lambda_trigger_failure_is_logged_without_the_message_and_answers_false(caplog, capsys, code, message):
    client, stub = stubbed()
    stub.add_client_error("invoke", service_error_code=code, service_message=message, http_status_code=403)
    with stub:
        assert LambdaTrigger(client, FUNCTION, clock=lambda: NOW).poll_now("osc-prod") is False
    logged = "".join(capsys.readouterr()) + caplog.text
    assert code in logged and "osc-prod" in logged
    assert message not in logged and "AKIASECRET" not in logged


def test_lambda_trigger_unreachable_answers_false(capsys):
    class Down:
        def invoke(self, **_):
            raise EndpointConnectionError(endpoint_url="https://lambda.eu-west-2.amazonaws.com")

    assert LambdaTrigger(Down(), FUNCTION, clock=lambda: NOW).poll_now("osc-prod") is False
    assert "EndpointConnectionError" in "".join(capsys.readouterr())


def test_lambda_trigger_refuses_an_answer_that_is_not_accepted():
    client, stub = stubbed()
    stub.add_response("invoke", {"StatusCode": 200})
    with stub:
        assert LambdaTrigger(client, FUNCTION, clock=lambda: NOW).poll_now("osc-prod") is False


def test_local_trigger_runs_on_a_daemon_thread_and_survives_a_failure(capsys):
    started, release, ran = threading.Event(), threading.Event(), []

    def run(target):
        started.set()
        release.wait(5)
        ran.append((target, threading.current_thread().daemon))
        raise RuntimeError("boom")

    assert LocalTrigger(run).poll_now("osc-lab") is True  # answered while the run still waits
    assert started.wait(5) and ran == []
    release.set()
    for thread in threading.enumerate():
        if thread.name == "poll-now-osc-lab":
            thread.join(5)
    assert ran == [("osc-lab", True)] and "RuntimeError" in "".join(capsys.readouterr())


def test_runtime_trigger():
    injected = LocalTrigger(lambda target: None)
    assert Runtime(Settings(config_source="x"), trigger=injected).trigger is injected
    assert Runtime(Settings(config_source="x")).trigger is None
    settings = Settings.from_env({"VIFGATE_CONFIG": "x", "VIFGATE_POLL_FUNCTION": FUNCTION})
    trigger = Runtime(settings, session=boto3.Session(region_name="eu-west-2")).trigger
    assert isinstance(trigger, LambdaTrigger) and trigger.function_name == FUNCTION
    assert trigger.client.meta.service_model.service_name == "lambda"
    assert Settings.from_env({"VIFGATE_CONFIG": "x"}).poll_function is None
