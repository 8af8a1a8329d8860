"""An approval's poll-now polls only the targets it names: as a work message (deployed) or a poll event."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import boto3
import chalice.local
import chalice.test
import pytest
from chalice.test import Client

from app import app
from chalicelib import reconcile
from chalicelib.approvals import tokens
from chalicelib.approvals.trigger import POLL_NOW_SOURCE, poll_now_event
from chalicelib.config import parse_policy
from chalicelib.ledger import create_table
from sandbox import scenario
from sandbox.local import create_queues
from tests.test_app import StageTimeoutContext
from tests.test_iam import SIGNING_KEY
from tests.test_iam import prod_world as prod_world  # a fixture: the prod stage after one cycle asked for approvals

POLICY = parse_policy(scenario.CONFIG)


@pytest.fixture
def prod_stage(aws, directlink, monkeypatch):
    """The prod stage's table, queues and SSM policy document, as infra/ would deploy them."""
    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)
    create_table(boto3.client("dynamodb"), "vifgate-prod-ledger")
    create_queues(boto3.client("sqs"), "vifgate-prod-events.fifo", "vifgate-prod-events-dlq.fifo")
    create_queues(boto3.client("sqs"), "vifgate-prod-work.fifo", "vifgate-prod-work-dlq.fifo")
    boto3.client("ssm").put_parameter(
        Name="/vifgate/prod/config", Value=scenario.CONFIG, Type="SecureString", Overwrite=True
    )
    return directlink


def invoke_poll(event: dict) -> dict:
    with Client(app, stage_name="prod") as client:
        return client.lambda_.invoke("poll", event).payload


def accounts_called(sb) -> set[str]:
    return {account for _op, account in sb.calls}


def test_poll_now_polls_only_the_named_target(prod_stage):
    sb = prod_stage
    event = poll_now_event(["osc-lab"], sb.clock.now())
    assert event["source"] == POLL_NOW_SOURCE
    summary = invoke_poll(event)
    assert summary["targets_ok"] == ["osc-lab"] and summary["targets_failed"] == []
    assert summary["actions"] == {"ask": 1}
    assert accounts_called(sb) == {scenario.LAB}


def test_a_scheduled_event_still_polls_every_target(prod_stage):
    sb = prod_stage
    with Client(app, stage_name="prod") as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        summary = client.lambda_.invoke("poll", event).payload
    assert sorted(summary["targets_ok"]) == sorted(scenario.TARGETS)
    assert accounts_called(sb) == {scenario.PROD, scenario.STAGING, scenario.LAB}


@pytest.mark.parametrize(
    "detail",
    [
        {"targets": ["osc-nowhere"]},
        {"targets": ["osc-lab", "osc-nowhere"]},  # one unknown name: nothing, not "the rest"
        {"targets": "osc-lab"},
        {"targets": []},
        {"targets": [None]},
        {},
    ],
    ids=["unknown", "one-unknown", "not-a-list", "empty", "not-names", "missing"],
)
def test_a_poll_now_naming_no_known_target_polls_nothing(prod_stage, detail):
    sb = prod_stage
    event = poll_now_event(["osc-lab"], sb.clock.now()) | {"detail": detail}
    summary = invoke_poll(event)
    assert summary["polled"] == [] and summary["refused"].startswith("detail.targets: ")
    assert sb.calls == [], "nothing polled"


@pytest.mark.parametrize(
    "detail, expected",
    [
        ({"targets": ["osc-lab"]}, ["osc-lab"]),
        ({"targets": ["osc-lab", "osc-prod", "osc-lab"]}, ["osc-lab", "osc-prod"]),  # each once
    ],
)
def test_poll_now_targets(detail, expected):
    assert reconcile.poll_now_targets(detail, POLICY) == expected


@pytest.mark.parametrize(
    "detail, message",
    [
        ({"targets": ["x" * 500]}, "detail.targets: not a target of the policy: '" + "x" * 64 + "'"),
        (["osc-lab"], "detail.targets: expected a non-empty list of target names"),
        ({"targets": [1]}, "detail.targets: expected a non-empty list of target names"),
    ],
)
def test_poll_now_targets_refuses_with_a_short_reason(detail, message):
    with pytest.raises(ValueError) as refused:
        reconcile.poll_now_targets(detail, POLICY)
    assert str(refused.value) == message


def test_a_vote_through_the_api_lands_on_the_work_queue_and_a_work_function_carries_it_out(prod_world, directlink):
    """The route answers at once; the poll-now is a work message; the worker polls that target alone and confirms."""
    app_, pending = prod_world
    sb = directlink
    lab = pending["lab-bench"]
    link = tokens.mint_link(SIGNING_KEY, lab.request_id, "alice", datetime.now(UTC) + timedelta(hours=1))
    before = len(sb.calls)
    with Client(app_, stage_name="prod") as client:
        answer = client.http.post(
            f"/approvals/link/{link}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urlencode({"action": "approve"}).encode(),
        )
        assert answer.status_code == 200, answer.body[:300]
        assert sb.calls[before:] == [], "the API function polls nothing itself"
        sqs = boto3.client("sqs")
        url = sqs.get_queue_url(QueueName="vifgate-prod-work.fifo")["QueueUrl"]
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
        assert [(json.loads(m["Body"])["reason"], json.loads(m["Body"])["targets"]) for m in messages] == [
            ("poll-now", ["osc-lab"])
        ]
        event = client.events.generate_sqs_event(
            queue_name="vifgate-prod-work.fifo", message_bodies=[messages[0]["Body"]]
        )
        summary = client.lambda_.invoke("work", event).payload
    assert summary["reason"] == "poll-now" and summary["targets_ok"] == ["osc-lab"], summary
    assert {account for _op, account in sb.calls[before:]} == {scenario.LAB}, "that target and no other"
    assert ("ConfirmPrivateVirtualInterface", scenario.LAB) in sb.calls[before:], "the approved VIF is confirmed"
