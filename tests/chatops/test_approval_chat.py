"""An approval request in each chat kind: real Slack buttons, signed Mattermost actions, per-approver Teams links.

And the answers the approval routes give (approval_status, request_update), and the rule that a link
(a bearer credential) never reaches an event, the generic webhook or a log line.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from datetime import timedelta

import pytest
from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, Option, StaticSelectElement

from chalicelib import events
from chalicelib.approvals import model, tokens
from chalicelib.chatops import ApprovalLinks, Notifier, RetryLater, SecretUnavailable, mattermost, render, slack, teams
from chalicelib.chatops.messages import approval_status
from chalicelib.config import Destination, SecretRef

from .conftest import DEADLINE, FIRST_SEEN, NOW, RAW_VIF, vif_event

KEY = "chat-tests-approvals-signing-key-0123456789"
BASE_URL = "https://gate.example.com"
TTL = timedelta(hours=24)
LINKS = ApprovalLinks(base_url=BASE_URL, link_ttl=TTL, read_key=lambda: KEY)
REQUEST_ID = "apr-0123456789abcdef0123"
GATEWAYS = ["vgw-12345678", "vgw-87654321"]
APPROVERS = ["alice", "bob", "carol"]
SNAPSHOT = {k: v for k, v in RAW_VIF.items() if k != "authKey"}


def requested(**overrides):
    """vif.approval_requested as the cycle builds it for a request of three approvers, two approvals needed."""
    data = {
        "reason": "rule ask-prod asks",
        "rule": "ask-prod",
        "deadline": DEADLINE,
        "deadline_certain": True,
        "first_seen_at": FIRST_SEEN,
        "request_id": REQUEST_ID,
        "approvers": APPROVERS,
        "min_approvals": 2,
        "gateways": GATEWAYS,
        "expires_at": DEADLINE,
        **overrides,
    }
    return vif_event("vif.approval_requested", **data)


def gateways(count: int) -> list[str]:
    return [f"vgw-{i:08x}" for i in range(1, count + 1)]


# --- the words, the same in every chat -----------------------------------------------------------


def test_the_request_says_who_decides_how_many_until_when_and_the_cli_that_decides():
    message = render(requested())
    fields = dict(message.fields)
    assert fields["Who decides"] == "alice, bob or carol; 2 approvals needed by 2026-11-28 09:00 UTC"
    assert fields["Gateways"] == "vgw-12345678 or vgw-87654321"
    assert fields["From a terminal"] == (
        "vifgate approve dxvif-fgh12345 --gateway ID --as NAME, or vifgate reject dxvif-fgh12345 --as NAME"
    )
    assert message.decision is not None and message.decision.request_id == REQUEST_ID


def test_a_notify_only_ask_has_no_request_and_no_cli_line():
    message = render(requested(request_id=None, approvers=[], min_approvals=None, gateways=[], expires_at=None))
    assert message.decision is None
    assert not {"Who decides", "From a terminal"} & set(dict(message.fields))


def test_no_gateway_to_confirm_with_is_said():
    fields = dict(render(requested(gateways=[])).fields)
    assert fields["Gateway"] == "none available to confirm with: confirm by hand, or add one to the rule"
    assert "--gateway" not in fields["From a terminal"]


def test_an_id_the_gatekeeper_did_not_write_gives_no_button():
    assert render(requested(request_id="apr-<!channel>")).decision is None
    message = render(requested(gateways=["vgw-12345678", "<!here>", "vgw-XYZ"]))
    assert message.decision is not None and message.decision.gateways == ("vgw-12345678",)


# --- Slack: Block Kit buttons --------------------------------------------------------------------


def _decision_block(body: dict) -> dict:
    (block,) = [b for b in body["blocks"] if b["type"] == "actions"]
    return block


def test_slack_buttons_are_block_kit_that_slack_sdk_validates():
    body = slack.payload(render(requested()), buttons=True)
    block = _decision_block(body)
    parsed = Block.parse(block)
    assert isinstance(parsed, ActionsBlock) and parsed.block_id == slack.DECISION_BLOCK
    assert parsed.to_dict() == block  # to_dict() validates every length and required field
    select, approve, reject = parsed.elements
    assert isinstance(select, StaticSelectElement) and select.action_id == "vifgate_gateway"
    options = Option.parse_all(select.options)
    assert [o.value for o in options] == GATEWAYS
    assert [o["text"]["text"] for o in block["elements"][0]["options"]] == GATEWAYS
    assert isinstance(approve, ButtonElement) and isinstance(reject, ButtonElement)
    assert (approve.action_id, approve.value, approve.style, approve.url) == (
        "vifgate_approve",
        REQUEST_ID,
        "primary",
        None,
    )
    assert (reject.action_id, reject.value, reject.style, reject.url) == ("vifgate_reject", REQUEST_ID, "danger", None)
    # Deleting cannot be undone: Slack asks the person once more.
    confirm = block["elements"][2]["confirm"]
    assert reject.confirm is not None and confirm["text"]["type"] == "plain_text"
    assert confirm["text"]["text"] == "VIF dxvif-fgh12345 will be deleted; the partner must create it again."
    # The buttons come after the fields and before the footer line.
    assert [b["type"] for b in body["blocks"]][-2:] == ["actions", "context"]


def test_slack_one_gateway_needs_no_choice():
    elements = _decision_block(slack.payload(render(requested(gateways=GATEWAYS[:1])), buttons=True))["elements"]
    assert [e["action_id"] for e in elements] == ["vifgate_approve", "vifgate_reject"]


def test_slack_without_a_gateway_offers_only_reject():
    elements = _decision_block(slack.payload(render(requested(gateways=[])), buttons=True))["elements"]
    assert [e["action_id"] for e in elements] == ["vifgate_reject"]


def test_slack_lists_at_most_100_gateways_and_says_so():
    body = slack.payload(render(requested(gateways=gateways(130))), buttons=True)
    select = Block.parse(_decision_block(body)).elements[0]
    assert len(select.options) == 100
    assert "30 more gateways are not listed" in json.dumps(body["blocks"][-2])


def test_slack_without_approval_links_keeps_todays_message():
    body = slack.payload(render(requested()))
    assert not [b for b in body["blocks"] if b["type"] == "actions"]
    assert "vifgate approve dxvif-fgh12345" in json.dumps(body)


# --- Mattermost: integration actions with signed tokens ------------------------------------------


def _actions(body: dict) -> list[dict]:
    return body["attachments"][0].get("actions", [])


def test_mattermost_buttons_carry_tokens_that_verify():
    body = mattermost.payload(render(requested()), LINKS.signer())
    actions = _actions(body)
    assert [(a["id"], a["name"], a["style"]) for a in actions] == [
        ("approve0", "Approve with vgw-12345678", "primary"),
        ("approve1", "Approve with vgw-87654321", "primary"),
        ("reject", "Reject", "danger"),
    ]
    grants = []
    for action in actions:
        assert action["integration"]["url"] == f"{BASE_URL}/approvals/mattermost"
        assert set(action["integration"]["context"]) == {"token"}
        grants.append(tokens.read_action(KEY, action["integration"]["context"]["token"], NOW))
    assert [(g.request_id, g.action, g.gateway, g.expires_at) for g in grants] == [
        (REQUEST_ID, "approve", "vgw-12345678", DEADLINE),
        (REQUEST_ID, "approve", "vgw-87654321", DEADLINE),
        (REQUEST_ID, "reject", None, DEADLINE),
    ]
    # valid as long as the request, not a moment longer; and only with our key
    with pytest.raises(tokens.TokenError) as expired:
        tokens.read_action(KEY, actions[0]["integration"]["context"]["token"], DEADLINE)
    assert expired.value.status == 410
    with pytest.raises(tokens.TokenError):
        tokens.read_action(
            "another-key-of-enough-length-0123456789", actions[0]["integration"]["context"]["token"], NOW
        )


def test_mattermost_one_gateway_one_approve():
    actions = _actions(mattermost.payload(render(requested(gateways=GATEWAYS[:1])), LINKS.signer()))
    assert [a["name"] for a in actions] == ["Approve", "Reject"]
    assert tokens.read_action(KEY, actions[0]["integration"]["context"]["token"], NOW).gateway == GATEWAYS[0]


@pytest.mark.parametrize("count, approves", [(5, 5), (6, 0), (0, 0)])
def test_mattermost_more_than_five_gateways_point_to_the_cli_or_a_link(count, approves):
    body = mattermost.payload(render(requested(gateways=gateways(count))), LINKS.signer())
    actions = _actions(body)
    assert len(actions) == approves + 1 and actions[-1]["name"] == "Reject"
    text = body["attachments"][0].get("text", "")
    if count > 5:
        assert "6 gateways to choose from: approve with vifgate approve dxvif-fgh12345 --gateway ID --as NAME" in text
        assert "from your own link (vifgate approvals lists them)" in text
    elif count == 0:
        assert "No gateway is available to confirm with" in text
    else:
        assert "text" not in body["attachments"][0]


def test_mattermost_without_approval_links_has_no_buttons():
    body = mattermost.payload(render(requested()))
    assert _actions(body) == [] and "vifgate approve dxvif" in json.dumps(body)


# --- Teams: one signed link per approver ---------------------------------------------------------


def _open_urls(card: dict) -> list[dict]:
    return [a for b in card["body"] if b["type"] == "ActionSet" for a in b["actions"]]


def test_teams_has_one_link_per_approver_that_acts_for_that_approver_only():
    card = teams.payload(render(requested()), LINKS.signer(), NOW)["attachments"][0]["content"]
    links = _open_urls(card)
    assert [a["title"] for a in links] == ["Review as alice", "Review as bob", "Review as carol"]
    for approver, action in zip(APPROVERS, links, strict=True):
        assert action["type"] == "Action.OpenUrl"
        prefix = f"{BASE_URL}/approvals/link/"
        assert action["url"].startswith(prefix)
        grant = tokens.read_link(KEY, action["url"].removeprefix(prefix), NOW)
        assert (grant.request_id, grant.approver, grant.expires_at) == (REQUEST_ID, approver, NOW + TTL)
        # a link token is not a Mattermost action token
        with pytest.raises(tokens.TokenError):
            tokens.read_action(KEY, action["url"].removeprefix(prefix), NOW)


def test_teams_links_never_outlive_the_request():
    soon = NOW + timedelta(hours=2)
    card = teams.card(render(requested(expires_at=soon)), LINKS.signer(), NOW)
    token = _open_urls(card)[0]["url"].rsplit("/", 1)[1]
    assert tokens.read_link(KEY, token, NOW).expires_at == soon
    late = teams.card(render(requested(expires_at=soon)), LINKS.signer(), soon)
    assert _open_urls(late) == [] and "has expired" in json.dumps(late)


def test_teams_past_twenty_approvers_says_where_the_rest_find_theirs():
    many = [f"person{i:02d}" for i in range(25)]
    card = teams.card(render(requested(approvers=many)), LINKS.signer(), NOW)
    assert len(_open_urls(card)) == 20
    assert all(len(b["actions"]) <= 5 for b in card["body"] if b["type"] == "ActionSet")
    assert "5 more approvers: find your link with vifgate approvals" in json.dumps(card)


def test_teams_without_approval_links_has_no_links():
    card = teams.card(render(requested()))
    assert _open_urls(card) == [] and "/approvals/" not in json.dumps(card)


# --- through the notifier: links only where they belong ------------------------------------------

URL = SecretRef(parameter="/chat/url")
SIGNING = SecretRef(secret_id="webhook-signing")
KINDS = {
    "slack": {"kind": "slack", "url": URL},
    "mattermost": {"kind": "mattermost", "url": URL},
    "teams": {"kind": "teams", "url": URL},
    "webhook": {"kind": "webhook", "url": URL, "signing_secret": SIGNING},
}
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def notifier(receiver, links: ApprovalLinks | None = LINKS) -> Notifier:
    secrets = {URL: f"{receiver.url}/hooks/x", SIGNING: WEBHOOK_SECRET}
    destinations = [Destination(name=f"ops-{kind}", events=["*"], **spec) for kind, spec in KINDS.items()]
    return Notifier(destinations, secrets.__getitem__, sleep=lambda _: None, approvals=links, clock=lambda: NOW)


def _tokens_in(text: str) -> set[str]:
    """Every signed token in a text: `<base64url>.<base64url>` of a link or an action."""
    return set(re.findall(r"[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{40,}", text))


def test_links_reach_chat_but_never_the_event_the_webhook_or_a_log_line(receiver, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    event = requested()
    sender = notifier(receiver)
    for destination in sender.destinations:
        sender.send(event, destination)
    by_kind = {kind: request.json() for kind, request in zip(KINDS, receiver.requests, strict=True)}
    minted = _tokens_in(json.dumps(by_kind["mattermost"])) | _tokens_in(json.dumps(by_kind["teams"]))
    assert len(minted) == 3 + 3  # two approves and a reject; three approvers' links
    assert _decision_block(by_kind["slack"])["elements"][1]["value"] == REQUEST_ID
    # the generic webhook gets the event itself, and the event holds no link and no token
    assert by_kind["webhook"] == json.loads(events.to_json(event))
    logs = capsys.readouterr()
    for text in (json.dumps(by_kind["webhook"]), events.to_json(event), caplog.text, logs.out, logs.err):
        assert "/approvals/link/" not in text and not _tokens_in(text)
        assert KEY not in text


def test_slack_gets_no_buttons_without_a_slack_signing_secret(receiver):
    sender = notifier(receiver, replace(LINKS, slack=False))
    sender.send(requested(), sender.destinations[0])
    assert not [b for b in receiver.requests[0].json()["blocks"] if b["type"] == "actions"]


def test_an_unreadable_signing_key_leaves_the_buttons_out_and_still_delivers(receiver, capsys):
    def missing() -> str:
        raise LookupError("approvals-key: ResourceNotFoundException")

    sender = notifier(receiver, replace(LINKS, read_key=missing))
    for destination in sender.destinations[:3]:
        sender.send(requested(), destination)
    slack_body, mattermost_body, teams_body = (request.json() for request in receiver.requests)
    assert not [b for b in slack_body["blocks"] if b["type"] == "actions"]
    assert _actions(mattermost_body) == []
    assert _open_urls(teams_body["attachments"][0]["content"]) == []
    bodies = receiver.bodies()
    assert "/approvals/" not in bodies and "vifgate approve dxvif-fgh12345" in bodies
    assert capsys.readouterr().err.count("approval buttons left out: cannot read the approvals signing_key") == 3


def test_a_weak_signing_key_leaves_the_buttons_out(receiver, capsys):
    sender = notifier(receiver, replace(LINKS, read_key=lambda: "weak-key-x9"))
    sender.send(requested(), sender.destinations[2])
    assert "/approvals/link/" not in receiver.bodies()
    assert "vifgate approve dxvif-fgh12345" in receiver.bodies()
    err = capsys.readouterr().err
    assert "signing_key is too short" in err and "weak-key-x9" not in err


def test_a_secret_store_that_fails_for_now_retries_the_message(receiver):
    def throttled() -> str:
        raise SecretUnavailable("ThrottlingException")

    sender = notifier(receiver, replace(LINKS, read_key=throttled))
    with pytest.raises(RetryLater, match="approvals signing_key right now"):
        sender.send(requested(), sender.destinations[1])
    assert receiver.requests == []


def test_other_events_never_read_the_key(receiver):
    reads: list[int] = []
    sender = notifier(receiver, replace(LINKS, read_key=lambda: reads.append(1) or KEY))
    sender.send(vif_event("vif.discovered", state="confirming"), sender.destinations[2])
    assert reads == []


def test_the_key_is_never_in_a_repr():
    assert KEY not in repr(LINKS) and KEY not in repr(LINKS.signer())


# --- the routes' answers -------------------------------------------------------------------------


def new_request(min_approvals: int = 2, gateways_: tuple[str, ...] = tuple(GATEWAYS)) -> model.ApprovalRequest:
    return model.new_request(
        target="osc-par",
        vif_id="dxvif-fgh12345",
        spell="2026-11-21T09:00:00Z",
        now=NOW - timedelta(hours=1),
        deadline="2026-11-28T09:00:00Z",
        gateways=gateways_,
        approvers=APPROVERS,
        min_approvals=min_approvals,
        rule="ask-prod",
    )


def vote(request, approver, how="approve", gateway=GATEWAYS[1], channel="slack"):
    return model.cast_vote(
        request, approver=approver, user_id="U1", channel=channel, vote=how, gateway=gateway, now=NOW
    )


def status(request, **kw):
    return approval_status(request, SNAPSHOT, "osc-par", "eu-west-2", NOW, **kw)


PENDING = new_request()
ONE = vote(PENDING, "alice")
BOTH = vote(ONE, "bob", gateway=None)
REJECTED = vote(ONE, "bob", "reject", None)


@pytest.mark.parametrize(
    "request_, title, line, open_",
    [
        (
            PENDING,
            "Approval needed: VIF prod-par-1",
            "Waiting for 2 approvals from alice, bob or carol, until 2026-11-28 09:00 UTC",
            True,
        ),
        (ONE, "Approval needed: VIF prod-par-1", "Approved by alice (1 of 2) · waiting for 1 more", True),
        (BOTH, "Approved: VIF prod-par-1", "Approved by alice and bob · confirming with vgw-87654321 now", False),
        (REJECTED, "Rejected: VIF prod-par-1", "Rejected by bob · deleting it now", False),
        (
            model.expire(ONE, DEADLINE),
            "Approval request expired: VIF prod-par-1",
            "Expired at 2026-11-28 09:00 UTC without a decision · Approved by alice (1 of 2)",
            False,
        ),
        (
            model.supersede(PENDING, NOW, "its state is now pending"),
            "Approval no longer needed: VIF prod-par-1",
            "No longer needed: its state is now pending",
            False,
        ),
    ],
    ids=["pending", "one-of-two", "approved", "rejected", "expired", "superseded"],
)
def test_approval_status(request_, title, line, open_):
    message = status(request_)
    assert (message.title, message.text) == (title, line)
    assert (message.decision is not None) == open_
    fields = dict(message.fields)
    assert fields["VIF"] == "prod-par-1" and fields["Target"] == "osc-par (eu-west-2)"
    assert fields["Request"] == PENDING.request_id
    assert ("Who decides" in fields) == open_
    assert message.subject == "dxvif-fgh12345"


def test_approval_status_takes_a_last_word_from_the_caller():
    message = status(BOTH, note="the next scheduled cycle carries it out.")
    assert message.text.endswith("confirming with vgw-87654321 now · the next scheduled cycle carries it out")


def test_approval_status_with_the_one_gateway_names_it():
    one = vote(vote(new_request(gateways_=("vgw-12345678",)), "alice", gateway=None), "carol", gateway=None)
    assert status(one).text == "Approved by alice and carol · confirming with vgw-12345678 now"


def test_slack_request_update_replaces_the_message_and_keeps_buttons_while_open():
    open_update = slack.request_update(status(ONE))
    assert open_update["replace_original"] is True
    assert open_update["text"] == "Approved by alice (1 of 2) · waiting for 1 more"
    block = _decision_block(open_update)
    assert Block.parse(block).to_dict() == block
    assert {e.get("value") for e in block["elements"] if e["type"] == "button"} == {PENDING.request_id}
    closed = slack.request_update(status(BOTH))
    assert closed["replace_original"] is True and not [b for b in closed["blocks"] if b["type"] == "actions"]
    assert not [b for b in slack.request_update(status(ONE), open=False)["blocks"] if b["type"] == "actions"]


def test_mattermost_request_update():
    closed = mattermost.request_update(status(REJECTED))
    assert closed["update"]["message"] == "Rejected by bob · deleting it now"
    (attachment,) = closed["update"]["props"]["attachments"]
    assert "actions" not in attachment and attachment["title"] == "Rejected: VIF prod-par-1"
    # Open without a signer: no props, so Mattermost keeps the post's own card and buttons.
    assert mattermost.request_update(status(ONE)) == {
        "update": {"message": "Approved by alice (1 of 2) · waiting for 1 more"}
    }
    fresh = mattermost.request_update(status(ONE), signer=LINKS.signer())
    actions = fresh["update"]["props"]["attachments"][0]["actions"]
    grant = tokens.read_action(KEY, actions[0]["integration"]["context"]["token"], NOW)
    assert (grant.request_id, grant.action) == (PENDING.request_id, "approve")


# --- the runtime hands the notifier the approvals section ------------------------------------------


def runtime_for(document: str, resolve):
    from chalicelib.config import parse_policy
    from chalicelib.runtime import Runtime, Settings

    return Runtime(
        Settings(config_source="test"), policy=parse_policy(document, "test"), resolve=resolve, clock=lambda: NOW
    )


def test_the_runtime_notifier_mints_with_the_approvals_key():
    from sandbox import scenario

    reads: list[SecretRef] = []

    def resolve(ref: SecretRef) -> str:
        reads.append(ref)
        return scenario.SIGNING_KEY

    notifier_ = runtime_for(scenario.APPROVALS_CONFIG, resolve).notifier
    assert notifier_.approvals is not None and notifier_.approvals.base_url == scenario.LOCAL_API
    assert notifier_.approvals.slack is True and notifier_.clock() == NOW
    assert reads == []  # read per message, not when the notifier is built
    signer = notifier_.approvals.signer()
    token = signer.link(render(requested()).decision, "alice", NOW).rsplit("/", 1)[1]
    assert tokens.read_link(scenario.SIGNING_KEY, token, NOW).approver == "alice"
    assert reads == [SecretRef(secret_id=scenario.APPROVALS_SECRET, key="signing_key")]


def test_without_approvals_the_runtime_notifier_has_no_links():
    from sandbox import scenario

    assert runtime_for(scenario.CONFIG, lambda ref: "").notifier.approvals is None


@pytest.mark.parametrize("request_", [PENDING, ONE, BOTH, REJECTED], ids=["pending", "one", "approved", "rejected"])
def test_each_field_once(request_):
    for message in (status(request_), render(requested())):
        labels = [label for label, _ in message.fields]
        assert len(labels) == len(set(labels)), labels
    # nobody has decided yet: the request names who may, not "Approvers"
    assert "Approvers" not in dict(render(requested()).fields)
