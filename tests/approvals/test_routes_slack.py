"""POST /approvals/slack through chalice.test.Client: Slack-signed clicks on moto and the sandbox."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import boto3
import pytest

from chalicelib.approvals import web
from sandbox import scenario
from tests.approvals.routes_world import (
    ALICE,
    APPROVALS_SECRET,
    BOB,
    CAROL,
    SIGNING_KEY,
    SLACK_SECRET,
    STRANGER_SLACK,
    RouteWorld,
    build,
    slack_body,
    slack_headers,
)
from tests.http_receiver import Receiver

ROUTE = "/approvals/slack"
SIX_MINUTES = 6 * 60


@pytest.fixture
def world(aws, directlink) -> Iterator[RouteWorld]:
    built = build(directlink)
    yield built
    built.settle()  # no triggered cycle may outlive moto and the sandbox


@pytest.fixture
def receiver(monkeypatch):
    """Slack's response_url played on 127.0.0.1; only this test lets the route post to plain http on loopback."""
    with Receiver() as rx:
        monkeypatch.setattr(web, "response_url_allowed", lambda url: url.startswith(rx.url + "/"))
        yield rx


def post(world: RouteWorld, body: bytes, headers: dict[str, str]):
    return world.client.http.post(ROUTE, headers=headers, body=body)


def signed(world: RouteWorld, body: bytes, **kwargs):
    return post(world, body, slack_headers(body, at=world.now().timestamp(), **kwargs))


def test_a_signed_approve_records_one_vote_confirms_once_and_updates_the_message(world, receiver):
    request, _ = world.request("prod-legacy")
    vif_id = world.vif_id("prod-legacy")
    assert request.status == "pending" and request.approvers == ("alice", "bob") and request.min_approvals == 1

    response = signed(world, slack_body(request.request_id, response_url=f"{receiver.url}/actions/T1/1/abc"))
    world.settle()

    assert response.status_code == 200, response.body
    assert response.json_body["status"] == "approved"
    after, record = world.request("prod-legacy")
    assert [(v.approver, v.user_id, v.channel, v.vote) for v in after.votes] == [
        ("alice", ALICE["slack"], "slack", "approve")
    ]
    assert world.targets == ["osc-prod"], "the poller is triggered once, for the VIF's own target"
    assert world.sb.confirm_count(vif_id) == 1
    assert world.sb.vif(vif_id)["virtualGatewayId"] == scenario.PROD_GATEWAY
    assert record.confirmed_at is not None
    [update] = receiver.requests
    assert update.path == "/actions/T1/1/abc"
    assert update.json().get("replace_original") is True
    assert "alice" in update.body.decode()


@pytest.mark.parametrize(
    "case",
    [
        "tampered body",
        "wrong secret",
        "stale timestamp",
        "future timestamp",
        "missing timestamp",
        "missing signature",
        "no headers",
        "non-numeric timestamp",
        "timestamp in other digits",
        "signed timestamp with a sign",
        "signature not hex",
        "signature with non-ASCII",
    ],
)
def test_a_request_slack_did_not_sign_is_refused_401_and_changes_nothing(world, receiver, case):
    request, _ = world.request("prod-legacy")
    body = slack_body(request.request_id, response_url=f"{receiver.url}/actions/T1/1/abc")
    now = world.now().timestamp()
    headers = slack_headers(body, at=now)
    if case == "tampered body":
        body = slack_body(request.request_id, user=BOB["slack"], response_url=f"{receiver.url}/actions/T1/1/abc")
    elif case == "wrong secret":
        headers = slack_headers(body, at=now, secret="another-apps-signing-secret-0000")
    elif case == "stale timestamp":
        headers = slack_headers(body, at=now - SIX_MINUTES)
    elif case == "future timestamp":
        headers = slack_headers(body, at=now + SIX_MINUTES)
    elif case == "missing timestamp":
        del headers["X-Slack-Request-Timestamp"]
    elif case == "missing signature":
        del headers["X-Slack-Signature"]
    elif case == "no headers":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    elif case == "non-numeric timestamp":
        headers["X-Slack-Request-Timestamp"] = "soon"
    elif case == "timestamp in other digits":
        headers["X-Slack-Request-Timestamp"] = "".join(chr(0x0660 + int(d)) for d in str(int(now)))  # Arabic-Indic
    elif case == "signed timestamp with a sign":
        # int() reads "+1700000000" and "1_700_000_000": Slack never sends them, so neither may pass,
        # even correctly signed over that very text.
        timestamp = f"+{int(now)}"
        digest = hmac.new(SLACK_SECRET.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
        headers.update({"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}"})
    elif case == "signature not hex":
        headers["X-Slack-Signature"] = "v0=" + "z" * 64
    elif case == "signature with non-ASCII":
        headers["X-Slack-Signature"] = "v0=" + "é" * 64
    before = world.state()

    response = post(world, body, headers)

    assert response.status_code == 401, (case, response.body)
    assert set(response.json_body) == {"error"}
    assert world.state() == before, "nothing written, nothing called, nothing triggered"
    assert receiver.requests == [], "an unsigned request gets no answer posted anywhere"


def test_the_window_is_five_minutes_both_ways(world):
    """Four minutes either way passes the clock check (and is then refused only for its unknown request)."""
    now = world.now().timestamp()
    for skew in (-240, 240):
        body = slack_body("apr-00000000000000000000")
        response = post(world, body, slack_headers(body, at=now + skew))
        assert response.status_code == 404, (skew, response.body)


def test_a_replayed_request_is_refused_409_and_changes_nothing(world, receiver):
    request, _ = world.request("prod-legacy")
    body = slack_body(request.request_id, response_url=f"{receiver.url}/actions/T1/1/abc")
    headers = slack_headers(body, at=world.now().timestamp())

    first = post(world, body, headers)
    world.settle()
    before = world.state()
    again = post(world, body, headers)

    assert first.status_code == 200 and again.status_code == 409, again.body
    assert world.state() == before
    assert world.sb.confirm_count(world.vif_id("prod-legacy")) == 1
    # The replay was signed: the person sees why, ephemerally, under the message.
    refusal = receiver.requests[-1].json()
    assert refusal["response_type"] == "ephemeral" and refusal["replace_original"] is False
    assert refusal["text"] == again.json_body["error"]


@pytest.mark.parametrize(
    "user, why",
    [(STRANGER_SLACK, "not an approver"), (CAROL["slack"], "carol may not decide")],
    ids=["stranger", "carol"],
)
def test_a_person_who_may_not_decide_is_refused_403(world, receiver, user, why):
    request, _ = world.request("prod-legacy")
    before = world.state()
    response = signed(world, slack_body(request.request_id, user=user, response_url=f"{receiver.url}/actions/x"))
    assert response.status_code == 403 and why in response.json_body["error"], response.body
    assert world.state() == before
    assert [r.json()["response_type"] for r in receiver.requests] == ["ephemeral"]


def test_an_unknown_request_is_refused_404(world):
    before = world.state()
    response = signed(world, slack_body("apr-ffffffffffffffffffff"))
    assert response.status_code == 404 and set(response.json_body) == {"error"}
    assert world.state() == before


@pytest.mark.parametrize("action", ["vifgate_gateway", "vifgate-0"], ids=["gateway select", "link button"])
def test_choosing_a_gateway_or_opening_a_link_button_changes_nothing(world, action):
    request, _ = world.request("prod-legacy")
    before = world.state()
    response = signed(world, slack_body(request.request_id, action=action, gateway=scenario.PROD_GATEWAY))
    assert response.status_code == 200, response.body
    assert world.state() == before


def test_an_action_that_is_not_ours_is_refused_400(world):
    request, _ = world.request("prod-legacy")
    before = world.state()
    response = signed(world, slack_body(request.request_id, action="approve_everything"))
    assert response.status_code == 400 and "not an approval action" in response.json_body["error"]
    assert world.state() == before


def test_the_chosen_gateway_goes_with_the_vote(world):
    request, _ = world.request("lab-bench")
    response = signed(world, slack_body(request.request_id, gateway=scenario.LAB_GATEWAY))
    world.settle()
    assert response.status_code == 200, response.body
    after, _ = world.request("lab-bench")
    assert after.votes[0].gateway == scenario.LAB_GATEWAY
    assert world.sb.vif(world.vif_id("lab-bench"))["virtualGatewayId"] == scenario.LAB_GATEWAY


def test_a_gateway_not_offered_is_refused_and_changes_nothing(world):
    request, _ = world.request("prod-legacy")
    before = world.state()
    response = signed(world, slack_body(request.request_id, gateway=scenario.LAB_GATEWAY))
    assert 400 <= response.status_code < 500 and response.status_code != 401, response.body
    assert world.state() == before


def test_a_reject_deletes_the_vif_once(world):
    request, _ = world.request("lab-bench")
    response = signed(world, slack_body(request.request_id, user=BOB["slack"], action="vifgate_reject"))
    world.settle()
    assert response.status_code == 200 and response.json_body["status"] == "rejected", response.body
    assert world.targets == ["osc-lab"]
    assert [op for op, _ in world.writes()] == ["DeleteVirtualInterface"]
    assert world.sb.vif(world.vif_id("lab-bench"))["virtualInterfaceState"] == "rejected"


def test_a_failed_trigger_still_answers_success_and_says_the_schedule_carries_it_out(world):
    world.trigger_works = False
    request, _ = world.request("prod-legacy")
    response = signed(world, slack_body(request.request_id))
    assert response.status_code == 200, response.body
    assert "next scheduled cycle" in response.json_body["summary"]
    assert world.request("prod-legacy")[0].status == "approved"
    assert world.writes() == [], "nothing is confirmed until a cycle runs"


def test_a_response_url_off_slack_is_never_called(world):
    """The real check: a body may name any URL, and the function must not become a proxy to it."""
    request, _ = world.request("prod-legacy")
    with Receiver() as rx:
        response = signed(world, slack_body(request.request_id, response_url=f"{rx.url}/actions/T1/1/abc"))
        world.settle()
    assert response.status_code == 200
    assert rx.requests == []


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://hooks.slack.com/actions/T0001/123/abc", True),
        ("https://hooks.slack.com:443/actions/T0001/123/abc", True),
        ("http://hooks.slack.com/actions/T0001/123/abc", False),
        ("https://hooks.slack.com.evil.example/actions/x", False),
        ("https://evil.example/hooks.slack.com/actions/x", False),
        ("https://hooks.slack.com@evil.example/actions/x", False),
        ("https://user:pw@hooks.slack.com/actions/x", False),
        ("https://hooks.slack.com:8443/actions/x", False),
        ("https://hooks.slack.com:99999/actions/x", False),
        ("https://[::1]/actions/x", False),
        ("file:///etc/passwd", False),
        ("", False),
    ],
)
def test_response_url_allowed(url, allowed):
    assert web.response_url_allowed(url) is allowed


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        b"payload=not-json",
        b"payload=%5B%5D",  # a list
        b"nothing=here",
        b"payload=1&payload=2",
        b"payload=" + json.dumps({"type": "block_actions", "user": {"id": 5}, "actions": []}).encode(),
        b"payload=" + json.dumps({"type": "view_submission", "user": {"id": "UALICE01"}}).encode(),
        b"payload=" + json.dumps({"type": "block_actions", "user": {"id": "UALICE01"}, "actions": [{}]}).encode(),
        b"payload=" + json.dumps({"type": "block_actions", "user": {"id": "UALICE01"}, "actions": []}).encode(),
        b"payload=" + b"%5B" * 50_000,  # nested past what json.loads recurses
    ],
    ids=range(10),
)
def test_a_signed_but_malformed_body_is_refused_400_and_changes_nothing(world, body):
    before = world.state()
    response = signed(world, body)
    assert response.status_code == 400, response.body
    assert set(response.json_body) == {"error"}
    assert world.state() == before


def test_a_huge_body_is_refused_400(world):
    body = b"payload=" + b"a" * (web.SLACK_MAX_BODY + 1)
    assert signed(world, body).status_code == 400


def test_an_unreadable_signing_secret_answers_503_without_it(world, capsys):
    boto3.client("secretsmanager").delete_secret(SecretId=APPROVALS_SECRET, ForceDeleteWithoutRecovery=True)
    request, _ = world.request("prod-legacy")
    before = world.state()
    response = signed(world, slack_body(request.request_id))
    assert response.status_code == 503, response.body
    assert "Slack signing secret" in response.json_body["error"]
    assert world.state() == before
    logs = capsys.readouterr().err
    assert "secret unavailable" in logs
    for secret in (SLACK_SECRET, SIGNING_KEY):
        assert secret not in logs + response.body.decode()


def test_two_approvals_needed_one_decides_nothing_the_second_confirms_once(aws, directlink):
    from tests.approvals.routes_world import CONFIG

    config = CONFIG.replace("default_approvers: [netops]", "default_approvers: [netops]\ndefault_min_approvals: 2")
    world = build(directlink, config=config)
    request, _ = world.request("prod-legacy")
    vif_id = world.vif_id("prod-legacy")

    first = signed(world, slack_body(request.request_id))
    again = signed(world, slack_body(request.request_id))  # alice twice counts once
    assert first.status_code == 200 and first.json_body["summary"] == "approved by alice, 1 of 2", first.body
    assert again.status_code == 409 and "alice already voted on this request (approve)" in again.json_body["error"]
    assert world.targets == [] and world.writes() == [], "nothing to carry out yet: the poller is not triggered"

    second = signed(world, slack_body(request.request_id, user=BOB["slack"]))
    world.settle()
    assert second.status_code == 200 and second.json_body["status"] == "approved", second.body
    assert world.targets == ["osc-prod"]
    assert world.sb.confirm_count(vif_id) == 1


def test_the_buttons_chat_renders_are_the_ones_the_route_takes(world):
    """The Approve button of the message people see, clicked: its action_id and value are what the route reads."""
    from chalicelib.chatops import messages
    from chalicelib.chatops import slack as slack_chat

    request, record = world.request("prod-legacy")
    message = messages.approval_status(request, record.snapshot, request.target, "eu-west-2", world.now())
    elements = [
        element
        for block in slack_chat.payload(message, buttons=True)["blocks"]
        for element in block.get("elements", [])
        if isinstance(element, dict)
    ]
    [approve] = [e for e in elements if e.get("action_id") == slack_chat.APPROVE]

    response = signed(world, slack_body(approve["value"], action=approve["action_id"]))
    world.settle()

    assert response.status_code == 200, response.body
    assert world.sb.confirm_count(world.vif_id("prod-legacy")) == 1


def test_a_bug_answers_500_without_detail_and_logs_its_type_and_frames(world, monkeypatch, capsys):
    from chalicelib.approvals import service

    def broken(*args, **kwargs):
        raise KeyError("text that may quote the request: UALICE01 " + SLACK_SECRET)

    monkeypatch.setattr(service, "record_vote", broken)
    request, _ = world.request("prod-legacy")
    before = world.state()

    response = signed(world, slack_body(request.request_id))

    assert response.status_code == 500 and response.json_body == {"error": "internal error"}
    assert world.state() == before
    [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines() if '"unexpected error"' in x]
    assert line["error_type"] == "KeyError" and any("broken" in frame for frame in line["frames"])
    assert SLACK_SECRET not in json.dumps(line) and "may quote" not in json.dumps(line)
