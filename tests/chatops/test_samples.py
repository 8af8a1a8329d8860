"""`vifgate notify-test`'s samples: one event of every kind, rendered in every chat format, sent to one destination."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from standardwebhooks.webhooks import Webhook

from chalicelib import events
from chalicelib.chatops import mattermost, render, slack, teams, webhook
from chalicelib.chatops.samples import SAMPLE_ACCOUNT, UnknownDestination, sample_events, send_samples
from chalicelib.config import parse_policy
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario

from .conftest import NOW, Answer

SLACK_PATH = "/services/T0000/B0000/sample-slack-path-is-a-secret"
TEAMS_PATH = "/teams/sample-teams-path-is-a-secret"
HOOK_PATH = "/hook/sample-hook-path-is-a-secret"
SIGNING = "whsec_bmV2ZXItaW4tYS1sb2ctdGhpcy1zaWduaW5nLWtleQ=="
SECRETS = (SLACK_PATH, TEAMS_PATH, HOOK_PATH, SIGNING, "bmV2ZXItaW4tYS1sb2ctdGhpcy1zaWduaW5nLWtleQ")


def test_there_is_one_sample_of_every_event_type_and_it_is_plainly_fake():
    samples = sample_events(NOW)
    assert [e.type for e in samples] == list(events.EVENT_TYPES)
    for event in samples:
        body = events.to_json(event)
        assert events.parse(body) == event  # what the queue would carry, valid as any real event
        data = event.data
        assert data.target == "sample-target"
        if event.type.startswith("vif."):
            assert data.account == SAMPLE_ACCOUNT and data.vif["virtualInterfaceName"] == "sample-vif"
            assert "authKey" not in data.vif


@pytest.mark.parametrize("event", sample_events(NOW), ids=lambda e: e.type)
def test_every_sample_renders_in_every_chat_format(event):
    message = render(event)
    assert message.title and "sample-" in message.text + "".join(str(value) for _, value in message.fields)
    slack_body = slack.payload(message)
    assert slack_body["blocks"] and slack_body["text"]
    assert mattermost.payload(message)["attachments"]
    card = teams.payload(message, None, NOW)["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and card["body"]
    body, headers = webhook.request(event, SIGNING, time.time())
    Webhook(SIGNING).verify(body, dict(headers))  # raises when the signature does not match
    assert json.loads(body)["type"] == event.type
    if event.type == "vif.approval_requested":
        assert message.decision is not None, "the sample shows the approval part of the message"


@pytest.fixture
def destinations(aws, receiver):
    """Three configured destinations on the local receiver, their URLs and signing key in Secrets Manager."""
    secrets = boto3.client("secretsmanager")
    values = {
        "slack": receiver.url + SLACK_PATH,
        "teams": receiver.url + TEAMS_PATH,
        "hook": receiver.url + HOOK_PATH,
        "signing": SIGNING,
    }
    secrets.create_secret(Name="vifgate/test/chat/samples", SecretString=json.dumps(values))
    chat = """
chat:
  destinations:
    - {name: netops-slack, kind: slack, url: {secret_id: vifgate/test/chat/samples, key: slack},
       events: [vif.approval_requested, target.*]}
    - {name: netops-teams, kind: teams, url: {secret_id: vifgate/test/chat/samples, key: teams}}
    - {name: audit-hook, kind: webhook, url: {secret_id: vifgate/test/chat/samples, key: hook},
       signing_secret: {secret_id: vifgate/test/chat/samples, key: signing}}
"""
    settings = Settings(config_source="test", table_name="unused", max_workers=1)
    return Runtime(settings, policy=parse_policy(scenario.CONFIG + chat), clock=lambda: NOW)


@pytest.mark.parametrize(("name", "path"), [("netops-slack", SLACK_PATH), ("netops-teams", TEAMS_PATH)])
def test_one_message_of_each_kind_reaches_the_named_destination_only(destinations, receiver, capsys, name, path):
    results = send_samples(destinations, name)
    assert [(r.event_type, r.sent, r.error) for r in results] == [(t, True, None) for t in events.EVENT_TYPES]
    assert [r.path for r in receiver.requests] == [path] * len(events.EVENT_TYPES)
    if name == "netops-slack":  # its filter takes asks and target events; the rest are sent all the same
        wanted = [r.event_type for r in results if r.subscribed]
        assert wanted == ["vif.approval_requested", "target.failed", "target.recovered"]
    seen = receiver.bodies() + "".join(capsys.readouterr())
    assert "sample-vif" in receiver.bodies()
    for secret in SECRETS:
        assert secret not in seen


def test_a_webhook_gets_every_kind_signed(destinations, receiver):
    send_samples(destinations, "audit-hook")
    verifier = Webhook(SIGNING)
    types = []
    for request in receiver.requests:
        assert request.path == HOOK_PATH
        types.append(verifier.verify(request.body, dict(request.headers))["type"])
    assert types == list(events.EVENT_TYPES)


def test_a_refused_post_is_reported_and_the_other_samples_still_go(destinations, receiver, capsys):
    receiver.answer(Answer(status=404))  # the first sample's post is refused
    results = send_samples(destinations, "netops-teams")
    first, *rest = results
    assert not first.sent and "netops-teams (teams)" in (first.error or "") and "404" in (first.error or "")
    assert all(r.sent for r in rest) and len(receiver.requests) == len(events.EVENT_TYPES)
    seen = "".join(r.error or "" for r in results) + "".join(capsys.readouterr())
    for secret in SECRETS:
        assert secret not in seen


def test_an_unknown_destination_is_named_with_the_configured_ones(destinations, receiver):
    with pytest.raises(UnknownDestination) as refused:
        send_samples(destinations, "netops-slak")
    assert str(refused.value) == (
        "no chat destination named 'netops-slak' in the policy; configured: audit-hook, netops-slack, netops-teams"
    )
    assert receiver.requests == []


def test_without_chat_destinations_the_error_says_so(aws):
    settings = Settings(config_source="test", table_name="unused", max_workers=1)
    runtime = Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=lambda: NOW)
    with pytest.raises(UnknownDestination, match=r"configured: none \(the policy has no chat.destinations\)"):
        send_samples(runtime, "netops-slack")


def test_the_cli_sends_the_samples_and_exits_by_what_happened(destinations, receiver, capsys, tmp_path):
    from chalicelib import cli

    config = tmp_path / "policy.yaml"
    config.write_text(
        scenario.CONFIG
        + "chat:\n  destinations:\n    - {name: netops-teams, kind: teams, "
        + "url: {secret_id: vifgate/test/chat/samples, key: teams}}\n"
    )
    assert cli.main(["notify-test", "--config", str(config), "netops-teams"]) == 0
    out = capsys.readouterr().out
    assert f"{len(events.EVENT_TYPES)} of {len(events.EVENT_TYPES)} samples posted to netops-teams" in out
    assert len(receiver.requests) == len(events.EVENT_TYPES)
    receiver.answer(Answer(status=500))
    assert cli.main(["notify-test", "--config", str(config), "netops-teams"]) == 1
    assert cli.main(["notify-test", "--config", str(config), "nope"]) == 2
    seen = "".join(capsys.readouterr())
    assert "FAILED" in seen and "configured: netops-teams" in seen
    for secret in SECRETS:
        assert secret not in seen
