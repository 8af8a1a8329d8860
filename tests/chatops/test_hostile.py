"""Strings a partner or the API chooses (VIF name, connection, location, states, error texts) reach chat as text.

Each renderer gets every event type with every field the API fills set to one hostile string, and the
payload is checked for live markup the way that chat's parser would see it.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from chalicelib import events
from chalicelib.approvals import model, tokens
from chalicelib.chatops import ApprovalLinks, Message, approval_status, mattermost, render, slack, teams, webhook
from chalicelib.chatops.messages import VALUE_MAX

from .conftest import DEADLINE, FIRST_SEEN, NOW, RAW_VIF

HOSTILE = {
    "slack-channel": "<!channel>",
    "slack-here": "<!here>",
    "slack-user": "<@U024BE7LH>",
    "at-all": "@all",
    "at-channel": "@channel",
    "at-here-after-dot": "x.@here",
    "at-after-colon": "note:@all",
    "slack-link": "<https://evil.example|click>",
    "md-link": "[x](https://evil.example)",
    "md-image": "![i](https://evil.example/a.png)",
    "md-reflink": "[x][1]",
    "escaped-backslash-link": "\\[x\\](https://evil.example)",
    "bold": "**bold**",
    "emphasis": "_em_ and *em*",
    "strike": "~~gone~~",
    "heading": "# h",
    "code": "`code`",
    "fence": "```\nfence\n```",
    "table": "| a | b |\n|---|---|",
    "list": "- item",
    "ordered-list": "1. item",
    "quote": "> quoted",
    "indented": "    code block",
    "html": "<b>bold</b><img src=x>",
    "already-escaped": "&lt;!channel&gt; &amp;",
    "controls": "prod\x00\x07\x1b[31mred\x7f\x85-1\r\nnext\tcol",
    "bidi": "\u202eevil\u202c\u2066x\u2069\u200e\u061c",
    "zero-width": "a\u200bb\u200cc\u200dd\u2060e\ufeff",
    "line-separators": "a\u2028b\u2029c",
    "long": "N" * 500_000,
}
# What each chat accepts (documented limits), checked on what we send.
SLACK_TEXT, SLACK_HEADER, SLACK_FIELD = 3000, 150, 2000
MATTERMOST_POST = 16383  # runes in a post message; a longer webhook text is split into several posts
TEAMS_MESSAGE = 28 * 1024  # bytes of a Teams message, card included

DEADLINE_DATA = {"deadline": DEADLINE, "deadline_certain": True, "first_seen_at": FIRST_SEEN}
REQUEST = {"request_id": "apr-0123456789abcdef0123"}
GATEWAYS = ["vgw-12345678", "vgw-87654321"]
# Buttons and links as the notifier adds them when approvals are configured.
KEY = "hostile-tests-approvals-signing-key-0123456789"
SIGNER = ApprovalLinks(base_url="https://gate.example.com", link_ttl=timedelta(hours=24), read_key=lambda: KEY).signer()


def open_request(value: str) -> dict[str, Any]:
    """An open request whose approvers and gateways include `value`."""
    return {
        **REQUEST,
        "approvers": [value, "alice"],
        "min_approvals": 2,
        "gateways": [value, *GATEWAYS],
        "expires_at": DEADLINE,
    }


APPROVAL = {**REQUEST, "min_approvals": 2}


def vote(value: str, how: str) -> dict[str, Any]:
    """A vote cast by someone called `value` from a chat user called `value`."""
    return {"approver": value, "user_id": value, "channel": "mattermost", "vote": how, "gateway": "vgw-12345678"}


def hostile_events(value: str) -> list[Any]:
    """Every event type, with each string the API or a person supplies set to `value`."""
    snapshot = {
        **{k: v for k, v in RAW_VIF.items() if k != "authKey"},
        "virtualInterfaceName": value,
        "connectionId": value,
        "location": value,
        "virtualInterfaceState": value,
    }
    # From a snapshot: the ledger and the queue carry what was stored, whatever its length.
    common = events.vif_fields("osc-par", None, snapshot, "eu-west-2")

    def vif(type_name: str, **data: Any) -> Any:
        return events.build(
            type_name, target="osc-par", subject=RAW_VIF["virtualInterfaceId"], time=NOW, **common, **data
        )

    def target(type_name: str, **data: Any) -> Any:
        return events.build(type_name, target="osc-par", subject="osc-par", time=NOW, region="eu-west-2", **data)

    built = [
        vif("vif.discovered", state=value),
        vif("vif.state_changed", **{"from": value, "to": value}),
        vif("vif.confirmed", by="approver", approver=value, gateway="vgw-12345678"),
        vif(
            "vif.confirmed",
            by="approver",
            approver=value,
            approvers=[value, value],
            channel="slack",
            gateway="vgw-1",
            **REQUEST,
        ),
        vif("vif.rejected", by="approver", approver=value, reason=value),
        vif("vif.rejected", by="approver", approver=value, approvers=[value], channel="link", reason=value, **REQUEST),
        vif("vif.approval_requested", reason=value, rule=value, **DEADLINE_DATA),
        vif("vif.approval_requested", reason=value, rule=value, **DEADLINE_DATA, **open_request(value)),
        vif("vif.approval_vote", **APPROVAL, approvals=[value], status="pending", **vote(value, "approve")),
        vif("vif.approval_vote", **APPROVAL, approvals=[value, value], status="approved", **vote(value, "approve")),
        vif("vif.approval_vote", **APPROVAL, approvals=[], status="rejected", **vote(value, "reject")),
        vif("vif.approval_expired", **APPROVAL, approvals=[value], status="expired", expires_at=NOW, **DEADLINE_DATA),
        vif("vif.approval_superseded", **APPROVAL, approvals=[value], status="superseded", why=value),
        vif("vif.expiry_warning", threshold_hours=72, hours_left=100.5, **DEADLINE_DATA),
        vif("vif.expired", how="state", **DEADLINE_DATA),
        vif("vif.disappeared", last_state=value),
        vif("vif.reappeared", state=value, last_state=value, gone_at=NOW - timedelta(hours=1)),
        vif("vif.stuck_pending", confirmed_at=NOW - timedelta(minutes=45), pending_minutes=45),
        target("target.failed", code=value, message=value),
        target("target.recovered", failed_since=NOW - timedelta(hours=2)),
    ]
    assert {e.type for e in built} == set(events.EVENT_TYPES)  # a new type must join this table
    return built


CASES = [
    pytest.param(value, event, id=f"{name}-{event.type}")
    for name, value in HOSTILE.items()
    for event in hostile_events(value)
]


def _strings(node: Any, key: str | None = None):
    """(key, string) for every string in a JSON-like tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


def _no_invisible(text: str) -> None:
    bad = [hex(ord(c)) for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    assert not bad, f"control or invisible characters reach chat: {bad[:5]}"


# --- the message, before any markup ----------------------------------------------------------------


@pytest.mark.parametrize("value, event", CASES)
def test_the_message_is_one_short_printable_line_per_string(value, event):
    message = render(event)
    strings = [message.title, message.text, message.subject, *(s for pair in message.fields for s in pair)]
    for text in strings:
        _no_invisible(text)
    # a few values and our words; each platform's own limit is checked on its payload below
    assert len(message.title) <= 4 * VALUE_MAX and len(message.text) <= 8 * VALUE_MAX
    assert all(len(v) <= 2 * VALUE_MAX for _, v in message.fields)


# --- Slack ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, event", CASES)
def test_slack_shows_partner_strings_as_text(value, event):
    body = slack.payload(render(event), buttons=True)
    assert body["unfurl_links"] is False and body["unfurl_media"] is False
    _slack_is_text(body)


def _slack_is_text(body: dict) -> None:
    texts: list[tuple[str, str]] = [("text", body["text"])]
    for block in body["blocks"]:
        if block["type"] == "actions":
            _slack_buttons_carry_only_our_ids(block)
            continue
        objects = [block["text"]] if "text" in block else []
        objects += block.get("fields", []) + [e for e in block.get("elements", []) if "type" in e]
        for obj in objects:
            if obj.get("type") == "mrkdwn":
                assert obj.get("verbatim") is True, obj  # no auto-linked URLs, channels or mentions
                if block["type"] == "section" and "fields" in block:
                    label, value = re.fullmatch(r"\*([^*\n]+)\*\n([^\n]*)", obj["text"]).groups()
                    texts += [("label", label), ("value", value)]
                else:
                    texts.append(("mrkdwn", obj["text"]))
            elif block["type"] == "header":
                # plain_text is never parsed for links or mentions; emoji shortcodes stay text too
                assert obj["type"] == "plain_text" and obj["emoji"] is False
                assert len(obj["text"]) <= SLACK_HEADER
                _no_invisible(obj["text"])
    for _, text in texts:
        # `<` opens every Slack link, mention and command; `&` only in the three entities
        assert "<" not in text and ">" not in text, text[:200]
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), text[:200]
        assert len(text) <= SLACK_TEXT
        _no_invisible(text)
    assert all(len(f["text"]) <= SLACK_FIELD for b in body["blocks"] for f in b.get("fields", []))


def _slack_buttons_carry_only_our_ids(block: dict) -> None:
    """Values and options hold the request id and gateway ids; every label is plain text."""
    for element in block["elements"]:
        if element["type"] == "button":
            assert element["value"] == REQUEST["request_id"] and "url" not in element
            labels = [element["text"]] + (
                [element["confirm"][k] for k in ("title", "text", "confirm", "deny")] if "confirm" in element else []
            )
        else:
            assert element["type"] == "static_select"
            assert [o["value"] for o in element["options"]] == GATEWAYS
            labels = [element["placeholder"]] + [o["text"] for o in element["options"]]
        for label in labels:
            assert label["type"] == "plain_text" and label["emoji"] is False
            _no_invisible(label["text"])


# --- Mattermost ----------------------------------------------------------------------------------

# Mattermost (marked in the web app, commonmark in the mobile app, its own parser on the server for
# mentions) with Slack compatibility: after our escapes are taken out, none of these may remain.
_MM_ESCAPED = re.compile(r"\\[\\`*_{}\[\]()#+\-.!|~>:]|&(?:amp|lt|gt|#\d+);")
_MM_LIVE = re.compile(r"[\\`*_\[\]#|~<>&]|(?<![^\W_])@(?=[\w.:-])")
_MM_LINE_START = re.compile(r"^(?:[-+=]|\d+[.)]|\s)")


def _mattermost_strings(body: dict) -> list[str]:
    (attachment,) = body["attachments"]
    fields = [f["value"] for f in attachment["fields"]] + [f["title"] for f in attachment["fields"]]
    extra = [attachment["text"]] if "text" in attachment else []
    return [body["text"], attachment["fallback"], attachment["title"], attachment["footer"], *fields, *extra]


def _mattermost_actions_carry_only_tokens(body: dict) -> None:
    for action in body["attachments"][0].get("actions", []):
        assert re.fullmatch(r"Approve|Approve with vgw-[0-9a-f]{8}|Reject", action["name"]), action["name"]
        grant = tokens.read_action(KEY, action["integration"]["context"]["token"], NOW)
        assert grant.request_id == REQUEST["request_id"] and grant.gateway in (None, *GATEWAYS)


@pytest.mark.parametrize("value, event", CASES)
def test_mattermost_shows_partner_strings_as_text(value, event):
    message = render(event)
    body = mattermost.payload(message, SIGNER)
    _mattermost_actions_carry_only_tokens(body)
    _mattermost_is_text(body, message)


def _mattermost_is_text(body: dict, message: Message) -> None:
    for text in _mattermost_strings(body):
        live = _MM_LIVE.findall(_MM_ESCAPED.sub("", text))
        assert not live, f"live markup {live} in {text[:200]!r}"
        assert not _MM_LINE_START.match(text), text[:80]  # no list, heading underline or code indent
        _no_invisible(text.replace("\u200b", ""))  # our own mention breaker is the one allowed
    assert len(body["text"]) <= MATTERMOST_POST
    # and it still reads as the message: undoing the escapes gives the plain text back
    assert _mattermost_unescape(body["text"]) == message.text


def _mattermost_unescape(text: str) -> str:
    return html.unescape(re.sub(r"\\(.)", r"\1", text.replace("@\u200b", "@")))


def test_mattermost_breaks_every_mention_the_server_would_see():
    # The server splits words on anything but letters, digits and `:.-_@`, then on `.-:`
    text = mattermost.escape("@all x.@here note:@channel -@all _@all (@all) alice@example.com")
    assert text.count("@\u200b") == 6 and "alice@example\\.com" in text  # no mention; no mailto link either


# --- Teams ---------------------------------------------------------------------------------------


def _elements(node: Any):
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for v in node.values():
            yield from _elements(v)
    elif isinstance(node, list):
        for v in node:
            yield from _elements(v)


@pytest.mark.parametrize("value, event", CASES)
def test_teams_puts_partner_strings_only_where_markdown_is_not_parsed(value, event):
    message = render(event)
    _teams_is_text(teams.payload(message, SIGNER, NOW), message)


def _teams_is_text(body: dict, message: Message) -> None:
    card = body["attachments"][0]["content"]
    for element in _elements(card["body"]):
        if element["type"] == "Action.OpenUrl":
            # only approvers whose config-shaped name a link can carry get one
            assert element["title"] == "Review as alice", element["title"][:80]
            token = element["url"].removeprefix("https://gate.example.com/approvals/link/")
            assert tokens.read_link(KEY, token, NOW).approver == "alice"
    types = {e["type"] for e in _elements(card["body"])}
    # TextBlock and FactSet values are Markdown in Teams; a TextRun's text never is.
    assert not types & {"TextBlock", "FactSet"}, types
    runs = [e["text"] for e in _elements(card["body"]) if e["type"] == "TextRun"]
    for key, text in _strings(card["body"]):
        if key == "text":
            assert text in runs
        _no_invisible(text)
    assert message.title in runs and message.text in runs
    assert all(value_ in runs for _, value_ in message.fields)
    assert len(json.dumps(body).encode()) <= TEAMS_MESSAGE


# --- the routes' answers: the request as it stands --------------------------------------------------


def hostile_requests(value: str) -> list[model.ApprovalRequest]:
    """A request at each status, whose approvers, voters, target, VIF and reasons all carry `value`."""
    base = model.ApprovalRequest(
        request_id=REQUEST["request_id"],
        target=value,
        vif_id=value,
        created_at="2026-11-24T03:30:00Z",
        expires_at="2026-11-28T09:00:00Z",
        gateways=(value, *GATEWAYS),
        approvers=(value, "alice"),
        min_approvals=2,
        rule=value,
    )

    def voted(*votes: str) -> tuple[model.Vote, ...]:
        return tuple(model.Vote(value, value, "slack", how, GATEWAYS[0], "2026-11-24T04:00:00Z") for how in votes)

    def trail(outcome: str) -> tuple[model.TrailEntry, ...]:
        return (model.TrailEntry("2026-11-24T04:00:00Z", value, value, "slack", "supersede", None, outcome),)

    return [
        base,
        replace(base, votes=voted("approve")),
        replace(base, status="approved", gateway=value, votes=voted("approve", "approve")),
        replace(base, status="rejected", votes=voted("reject")),
        replace(base, status="expired", votes=voted("approve")),
        replace(base, status="superseded", trail=trail(f"superseded: {value}")),
        replace(base, status=value),
    ]


@pytest.mark.parametrize("value", [pytest.param(v, id=k) for k, v in HOSTILE.items()])
def test_the_routes_answers_show_hostile_names_as_text(value):
    snapshot = {**{k: v for k, v in RAW_VIF.items() if k != "authKey"}, "virtualInterfaceName": value}
    for request in hostile_requests(value):
        message = approval_status(request, snapshot, value, value, NOW, note=value)
        for text in [message.title, message.text, message.subject, *(s for pair in message.fields for s in pair)]:
            _no_invisible(text)
        assert len(message.text) <= 8 * VALUE_MAX and all(len(v) <= 2 * VALUE_MAX for _, v in message.fields)
        _slack_is_text(slack.request_update(message))
        update = mattermost.request_update(message, signer=SIGNER)["update"]
        as_post = {"text": update["message"], "attachments": update["props"]["attachments"]}
        _mattermost_actions_carry_only_tokens(as_post)
        _mattermost_is_text(as_post, message)


# --- generic webhook -----------------------------------------------------------------------------

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize("value", [pytest.param(v, id=k) for k, v in HOSTILE.items()])
def test_the_webhook_carries_the_event_as_valid_json(value):
    for event in hostile_events(value):
        body, _ = webhook.request(event, SECRET, now=NOW.timestamp())
        assert json.loads(body) == json.loads(events.to_json(event))
        assert events.parse(body) == event


def test_escapes_are_undone_by_each_chat():
    """The common case stays readable: a name with a dash and a dot is left alone everywhere."""
    plain = "prod-par-1.eu (dxvif-fgh12345) waits: 2026-11-28 09:00 UTC"
    assert slack.escape(plain) == plain
    assert mattermost.escape(plain) == plain
    assert html.unescape(slack.escape("<a & b>")) == "<a & b>"


@pytest.mark.parametrize(
    "value",
    [
        "partner https://evil.example/login?next=approve",
        "HTTP://EVIL.EXAMPLE",
        "ftp://files.evil.example/x",
        "see www.evil.example now",
        "WWW.Evil.Example",
        "mail security@evil.example",
        "mattermost://evil",
    ],
)
def test_mattermost_turns_no_bare_url_or_address_into_a_link(value):
    """marked (web) and the mobile app autolink schemes, `www.` and e-mail addresses in plain text."""
    text = mattermost.escape(value)
    assert not re.search(r"[A-Za-z][A-Za-z0-9+.-]*://", text), text
    assert not re.search(r"(?i)www\.", text), text
    assert not re.search(r"[\w.+-]@[\w-]+\.\w", text), text
    assert _mattermost_unescape(text) == value
