"""The notifier Lambda through chalice.test.Client: hand-built FIFO batches, moto, a local chat receiver."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import chalice.local
import chalice.test
import pytest
from chalice.test import Client
from standardwebhooks.webhooks import Webhook

from app import app
from chalicelib import events, notify
from chalicelib.ledger import create_table
from sandbox import scenario
from sandbox.local import create_queues
from tests.chatops.conftest import AUTH_KEY, vif_event
from tests.http_receiver import Answer, Receiver

SLACK_PATH = "/services/T0000/B0000/slack-path-is-a-secret"
SIGNING_SECRET = "whsec_bmV2ZXItaW4tYS1sb2ctdGhpcy1zaWduaW5nLWtleQ=="  # a 31-byte key
DLQ = "vifgate-prod-events-dlq.fifo"


class NotifyTimeoutContext(chalice.local.LambdaContext):
    """The notify function's stage timeout (60 s) instead of chalice.test's 3 s."""

    def __init__(self, function_name: str, memory_size: int, **_: object):
        super().__init__(function_name, memory_size, max_runtime_ms=60_000)


@pytest.fixture
def chat(aws, monkeypatch):
    """The prod stage's table, queues and policy, with three destinations on one local receiver."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    # chalice.test's context gives an invocation 3 s, which a loaded CI machine spent before the third
    # record (two handed back as out of time); the deployed notify function has 60 s.
    monkeypatch.setattr(chalice.test, "LambdaContext", NotifyTimeoutContext)
    monkeypatch.setattr(notify, "TIME_RESERVE_MS", 500)
    with Receiver() as receiver:
        create_table(boto3.client("dynamodb"), "vifgate-prod-ledger")
        create_queues(boto3.client("sqs"), "vifgate-prod-events.fifo", DLQ)
        secrets = boto3.client("secretsmanager")
        secrets.create_secret(
            Name="vifgate/prod/chat",
            SecretString=json.dumps(
                {
                    "slack": receiver.url + SLACK_PATH,
                    "teams": receiver.url + "/teams",
                    "hook": receiver.url + "/hook",
                    "signing": SIGNING_SECRET,
                }
            ),
        )
        chat_config = """
chat:
  destinations:
    - {name: netops-slack, kind: slack, url: {secret_id: vifgate/prod/chat, key: slack}}
    - {name: netops-teams, kind: teams, url: {secret_id: vifgate/prod/chat, key: teams},
       events: [vif.approval_requested, vif.expiry_warning]}
    - {name: audit-hook, kind: webhook, url: {secret_id: vifgate/prod/chat, key: hook},
       signing_secret: {secret_id: vifgate/prod/chat, key: signing}}
"""
        boto3.client("ssm").put_parameter(
            Name="/vifgate/prod/config", Value=scenario.CONFIG + chat_config, Type="SecureString"
        )
        yield receiver


def sqs_batch(*bodies: str, groups: list[str] | None = None) -> dict:
    """An SQS FIFO event as Lambda delivers it: distinct message ids (the generated ones share one)."""
    records = []
    for i, body in enumerate(bodies):
        group = groups[i] if groups else json.loads(body)["subject"]
        records.append(
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"handle-{i}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": str(int(time.time() * 1000)),
                    "MessageGroupId": group,
                    "MessageDeduplicationId": f"dedup-{i}",
                    "SequenceNumber": str(18800000000000000000 + i),
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-west-2:123456789012:vifgate-prod-events.fifo",
                "awsRegion": "eu-west-2",
            }
        )
    return {"Records": records}


def invoke(batch: dict) -> dict:
    with Client(app, stage_name="prod") as client:
        return client.lambda_.invoke("notify", batch).payload


def three_events():
    deadline = {"deadline": "2026-11-28T09:00:00Z", "deadline_certain": False, "first_seen_at": "2026-11-21T09:00:00Z"}
    return [
        vif_event(
            "vif.confirmed",
            {"virtualInterfaceId": "dxvif-aaaa0001"},
            by="rule",
            rule="partner-prod",
            gateway="vgw-12345678",
        ),
        vif_event(
            "vif.approval_requested",
            {"virtualInterfaceId": "dxvif-aaaa0002"},
            reason="vlan 250 is outside 100-199 of rule partner-prod",
            **deadline,
        ),
        vif_event(
            "vif.expiry_warning",
            {"virtualInterfaceId": "dxvif-aaaa0003"},
            threshold_hours=72,
            hours_left=71.5,
            **deadline,
        ),
    ]


def posts(receiver: Receiver, path: str) -> list[dict]:
    return [r.json() for r in receiver.requests if r.path == path]


def dead_letters() -> list[dict]:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=DLQ)["QueueUrl"]
    return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get("Messages", [])


def test_each_destination_gets_the_events_it_asked_for(chat):
    batch = three_events()
    assert invoke(sqs_batch(*map(events.to_json, batch))) == {"batchItemFailures": []}

    slack = posts(chat, SLACK_PATH)
    assert [m["blocks"][0]["type"] for m in slack] == ["header"] * 3 and all(m["text"] for m in slack)
    teams = posts(chat, "/teams")
    assert len(teams) == 2 and teams[0]["type"] == "message"
    assert teams[0]["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    hooks = [r for r in chat.requests if r.path == "/hook"]
    assert [json.loads(r.body)["id"] for r in hooks] == [e.id for e in batch]
    for request in hooks:
        assert request.headers["webhook-id"] == json.loads(request.body)["id"]
        Webhook(SIGNING_SECRET).verify(request.body, dict(request.headers.items()))
    assert dead_letters() == []


def test_a_failed_record_is_handed_back_and_its_retry_posts_only_what_is_missing(chat):
    batch = three_events()
    bodies = sqs_batch(*map(events.to_json, batch))
    # event 1: slack, hook. event 2: slack ok, then teams answers 500. event 3 is another VIF's.
    chat.answer(Answer(), Answer(), Answer(), Answer(status=500))
    answer = invoke(bodies)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [bodies["Records"][1]["messageId"]]
    assert [json.loads(r.body)["id"] for r in chat.requests if r.path == "/hook"] == [batch[0].id, batch[2].id]

    chat.requests.clear()
    assert invoke({"Records": [bodies["Records"][1]]}) == {"batchItemFailures": []}
    assert [r.path for r in chat.requests] == ["/teams", "/hook"], "slack already had event 2: not posted again"


def test_a_failure_holds_back_the_later_messages_of_the_same_vif(chat):
    first, second = three_events()[:2]
    later = vif_event(
        "vif.state_changed", {"virtualInterfaceId": first.subject}, **{"from": "confirming", "to": "pending"}
    )
    chat.answer(Answer(status=500))  # the first post of the first event fails
    bodies = sqs_batch(*map(events.to_json, (first, second, later)))
    failed = [f["itemIdentifier"] for f in invoke(bodies)["batchItemFailures"]]
    assert failed == [bodies["Records"][0]["messageId"], bodies["Records"][2]["messageId"]]


def test_a_destination_that_will_never_accept_goes_to_the_dead_letter_queue(chat, capsys):
    batch = three_events()[:1]
    chat.answer(Answer(), Answer(status=404))  # slack ok, the webhook is gone
    assert invoke(sqs_batch(*map(events.to_json, batch))) == {"batchItemFailures": []}
    [dead] = dead_letters()
    assert json.loads(dead["Body"])["id"] == batch[0].id
    assert dead["MessageAttributes"]["destination"]["StringValue"] == "audit-hook"
    assert "404" in dead["MessageAttributes"]["reason"]["StringValue"]
    logs = capsys.readouterr().err
    assert "chat delivery given up: message moved to the dead-letter queue" in logs and "audit-hook" in logs
    assert invoke(sqs_batch(*map(events.to_json, batch))) == {"batchItemFailures": []}
    assert len(chat.requests) == 2, "a redelivery posts nothing again: both destinations are settled"


def test_a_message_that_is_not_an_event_does_not_block_the_queue(chat):
    good = events.to_json(three_events()[0])
    answer = invoke(sqs_batch('{"hello": "world"}', good, groups=["dxvif-zzzz0000", "dxvif-aaaa0001"]))
    assert answer == {"batchItemFailures": []}
    [dead] = dead_letters()
    assert dead["Body"] == '{"hello": "world"}'
    assert dead["MessageAttributes"]["reason"]["StringValue"].startswith("not a VIF Gatekeeper event")
    assert len(posts(chat, SLACK_PATH)) == 1


def test_no_secret_in_posts_or_logs(chat, capsys):
    invoke(sqs_batch(*map(events.to_json, three_events())))
    seen = chat.bodies() + capsys.readouterr().err
    assert "delivered" in seen
    for secret in (AUTH_KEY, SIGNING_SECRET, "slack-path-is-a-secret"):
        assert secret not in seen


def test_records_not_started_in_time_go_back_to_the_queue(chat, monkeypatch):
    monkeypatch.setattr(notify, "TIME_RESERVE_MS", 10**9)
    bodies = sqs_batch(*map(events.to_json, three_events()))
    answer = invoke(bodies)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [r["messageId"] for r in bodies["Records"]]
    assert chat.requests == []
