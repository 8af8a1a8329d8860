"""render() on every event type, and each chat kind's markup of the result (pure, no network)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from chalicelib import events
from chalicelib.chatops import Action, Message, mattermost, render, slack, teams
from chalicelib.chatops.messages import span
from chalicelib.models import VirtualInterface

from .conftest import AUTH_KEY, DEADLINE, FIRST_SEEN, NOW, RAW_VIF, target_event, teams_facts, vif_event

VIF_FIELDS = (
    ("VIF", "prod-par-1"),
    ("VIF id", "dxvif-fgh12345"),
    ("VLAN", "120"),
    ("ASN", "65000"),
    ("Connection", "dxcon-fg5678gh"),
    ("Location", "PAR1"),
    ("Account", "111122223333"),
    ("Target", "osc-par (eu-west-2)"),
)
REQUEST_ID = "apr-0123456789abcdef0123"
APPROVAL = {"request_id": REQUEST_ID, "min_approvals": 2}
VOTE = {"approver": "alice", "user_id": "U024BE7LH", "channel": "slack", "vote": "approve", "gateway": "vgw-12345678"}
CERTAIN = "expires at 2026-11-28 09:00 UTC (in 4d 4h)"
UNCERTAIN = "first seen at 2026-11-21 09:00 UTC; it expires at the latest at 2026-11-28 09:00 UTC, possibly earlier"


def deadline(certain: bool, at=DEADLINE) -> dict:
    return {"deadline": at, "deadline_certain": certain, "first_seen_at": FIRST_SEEN}


def changed(from_state: str, to_state: str):
    return vif_event("vif.state_changed", {"virtualInterfaceState": to_state}, **{"from": from_state, "to": to_state})


CASES = [
    pytest.param(
        vif_event("vif.discovered", state="confirming"),
        "New VIF prod-par-1",
        "info",
        ["appeared on target osc-par", "account 111122223333"],
        [("State", "confirming")],
        id="discovered",
    ),
    pytest.param(
        changed("pending", "available"),
        "VIF prod-par-1: pending → available",
        "success",
        ["went from pending to available"],
        [("State", "available")],
        id="state_changed-available",
    ),
    pytest.param(
        changed("available", "down"),
        "VIF prod-par-1: available → down",
        "warning",
        ["went from available to down"],
        [],
        id="state_changed-down",
    ),
    pytest.param(
        changed("confirming", "pending"),
        "VIF prod-par-1: confirming → pending",
        "info",
        [],
        [],
        id="state_changed-pending",
    ),
    pytest.param(
        vif_event("vif.confirmed", by="rule", rule="partner-prod", gateway="vgw-12345678"),
        "VIF confirmed: prod-par-1",
        "success",
        ["confirmed by rule partner-prod", "attached to vgw-12345678"],
        [("Rule", "partner-prod"), ("Gateway", "vgw-12345678")],
        id="confirmed-rule",
    ),
    pytest.param(
        vif_event("vif.confirmed", by="approver", approver="alice@example.com", gateway="vgw-12345678"),
        "VIF confirmed: prod-par-1",
        "success",
        ["confirmed by alice@example.com"],
        [("Approver", "alice@example.com"), ("Gateway", "vgw-12345678")],
        id="confirmed-approver",
    ),
    pytest.param(
        vif_event("vif.rejected", by="rule", rule="no-test", reason="VLAN 120 is outside 200-299."),
        "VIF rejected: prod-par-1",
        "warning",
        ["rejected by rule no-test: VLAN 120 is outside 200-299."],
        [("Reason", "VLAN 120 is outside 200-299"), ("Rule", "no-test")],
        id="rejected-rule",
    ),
    pytest.param(
        vif_event("vif.rejected", by="default_action", reason="no rule matches account 111122223333"),
        "VIF rejected: prod-par-1",
        "warning",
        ["rejected by the default action: no rule matches"],
        [("Reason", "no rule matches account 111122223333")],
        id="rejected-default",
    ),
    pytest.param(
        vif_event("vif.approval_requested", reason="no rule matches account 111122223333", **deadline(True)),
        "Approval needed: VIF prod-par-1",
        "warning",
        ["waits for confirmation: no rule matches account 111122223333.", f"It {CERTAIN}."],
        [("Reason", "no rule matches account 111122223333"), ("Deadline", CERTAIN), ("Time left", "4d 4h")],
        id="approval-certain",
    ),
    pytest.param(
        vif_event("vif.approval_requested", reason="rule ask-prod asks", rule="ask-prod", **deadline(False)),
        "Approval needed: VIF prod-par-1",
        "warning",
        [f"It was {UNCERTAIN}."],
        [("Rule", "ask-prod"), ("Deadline", UNCERTAIN), ("Time left", "at most 4d 4h")],
        id="approval-uncertain",
    ),
    pytest.param(
        vif_event(
            "vif.confirmed",
            by="approver",
            approver="alice, bob",
            approvers=["alice", "bob"],
            channel="slack",
            request_id=REQUEST_ID,
            gateway="vgw-12345678",
        ),
        "VIF confirmed: prod-par-1",
        "success",
        ["confirmed by alice and bob via Slack and attached to vgw-12345678"],
        [("Approvers", "alice and bob"), ("Voted via", "Slack"), ("Request", REQUEST_ID)],
        id="confirmed-two-approvers",
    ),
    pytest.param(
        vif_event(
            "vif.rejected",
            by="approver",
            approver="bob",
            approvers=["bob"],
            channel="link",
            request_id=REQUEST_ID,
            reason="rejected by bob",
        ),
        "VIF rejected: prod-par-1",
        "warning",
        ["was rejected by bob via a signed link."],  # once: the reason only repeats who and how
        [("Approver", "bob"), ("Voted via", "a signed link")],
        id="rejected-approver",
    ),
    pytest.param(
        vif_event("vif.approval_vote", **APPROVAL, approvals=["alice"], status="pending", **VOTE),
        "alice approved VIF prod-par-1 (1 of 2)",
        "info",
        ["was approved by alice via Slack (1 of 2 approvals); waiting for 1 more."],
        [("Approvals", "alice (1 of 2)"), ("Voted via", "Slack"), ("Gateway", "vgw-12345678")],
        id="vote-first-of-two",
    ),
    pytest.param(
        vif_event("vif.approval_vote", **APPROVAL, approvals=["alice", "bob"], status="approved", **VOTE),
        "alice approved VIF prod-par-1 (2 of 2)",
        "success",
        ["(2 of 2 approvals); confirming it with vgw-12345678 now."],
        [("Approvals", "alice and bob (2 of 2)"), ("Request", REQUEST_ID)],
        id="vote-deciding",
    ),
    pytest.param(
        vif_event(
            "vif.approval_vote",
            **APPROVAL,
            approvals=[],
            status="rejected",
            **{**VOTE, "approver": "bob", "vote": "reject", "gateway": None, "channel": "cli"},
        ),
        "bob rejected VIF prod-par-1",
        "warning",
        ["was rejected by bob via the CLI; deleting it now."],
        [("Rejected by", "bob"), ("Voted via", "the CLI")],
        id="vote-reject",
    ),
    pytest.param(
        vif_event(
            "vif.approval_expired",
            **APPROVAL,
            approvals=["alice"],
            status="expired",
            expires_at=NOW - timedelta(minutes=1),
            **deadline(True),
        ),
        "Approval request expired: VIF prod-par-1",
        "danger",
        [
            "got no decision in time: its approval request expired at 2026-11-24 04:29 UTC "
            "(approved by alice, 1 of 2 approvals).",
            f"It can still be confirmed by hand: it {CERTAIN}.",
        ],
        [("Request expired", "2026-11-24 04:29 UTC"), ("Approvals", "alice (1 of 2)"), ("Time left", "4d 4h")],
        id="approval-expired",
    ),
    pytest.param(
        vif_event(
            "vif.approval_superseded",
            {"virtualInterfaceState": "pending"},
            **APPROVAL,
            approvals=[],
            status="superseded",
            why="its state is now pending.",
        ),
        "Approval no longer needed: VIF prod-par-1",
        "info",
        ["no longer needs an approval: its state is now pending."],
        [("Why", "its state is now pending"), ("Approvals", "none (0 of 2)")],
        id="approval-superseded",
    ),
    pytest.param(
        vif_event("vif.expiry_warning", threshold_hours=72, hours_left=100.5, **deadline(True)),
        "VIF prod-par-1 expires in 4d 4h",
        "warning",
        [f"still waits for confirmation: it {CERTAIN}."],
        [("Deadline", CERTAIN), ("Time left", "4d 4h")],
        id="expiry-certain",
    ),
    pytest.param(
        vif_event("vif.expiry_warning", threshold_hours=72, hours_left=100.5, **deadline(False)),
        "VIF prod-par-1 expires in at most 4d 4h",
        "warning",
        [f"it was {UNCERTAIN}."],
        [("Deadline", UNCERTAIN), ("Time left", "at most 4d 4h")],
        id="expiry-uncertain",
    ),
    pytest.param(
        vif_event(
            "vif.expiry_warning",
            threshold_hours=4,
            hours_left=3.5,
            **deadline(True, NOW + timedelta(hours=3, minutes=30)),
        ),
        "VIF prod-par-1 expires in 3h 30m",
        "danger",
        ["expires at 2026-11-24 08:00 UTC (in 3h 30m)"],
        [("Time left", "3h 30m")],
        id="expiry-urgent",
    ),
    pytest.param(
        vif_event("vif.expired", how="state", **deadline(True, NOW - timedelta(minutes=5))),
        "VIF expired: prod-par-1",
        "danger",
        ["never confirmed and has expired", "create it again"],
        [("First seen", "2026-11-21 09:00 UTC"), ("Deadline", "2026-11-24 04:25 UTC")],
        id="expired-state",
    ),
    pytest.param(
        vif_event("vif.expired", how="disappeared", **deadline(False, NOW - timedelta(minutes=5))),
        "VIF expired: prod-par-1",
        "danger",
        ["is no longer listed: it expired"],
        [("Deadline", "2026-11-24 04:25 UTC (at the latest)")],
        id="expired-disappeared",
    ),
    pytest.param(
        vif_event("vif.disappeared", last_state="confirming"),
        "VIF gone: prod-par-1",
        "warning",
        ["no longer listed on target osc-par", "last state was confirming"],
        [],
        id="disappeared",
    ),
    pytest.param(
        vif_event("vif.reappeared", state="confirming", last_state="confirming", gone_at=NOW - timedelta(hours=2)),
        "VIF back: prod-par-1",
        "warning",
        ["listed again on target osc-par in state confirming", "reported gone at 2026-11-24 02:30 UTC"],
        [("Reported gone", "2026-11-24 02:30 UTC"), ("Last state", "confirming")],
        id="reappeared",
    ),
    pytest.param(
        vif_event(
            "vif.stuck_pending",
            {"virtualInterfaceState": "pending"},
            confirmed_at=NOW - timedelta(minutes=45),
            pending_minutes=45,
        ),
        "VIF stuck in pending: prod-par-1",
        "warning",
        ["confirmed at 2026-11-24 03:45 UTC", "after 45m"],
        [("Pending for", "45m")],
        id="stuck_pending",
    ),
]

TARGET_CASES = [
    pytest.param(
        target_event("target.failed", code="ThrottlingException", message="Rate exceeded"),
        "Polling failed: osc-par",
        "danger",
        ["osc-par (eu-west-2) failed with ThrottlingException: Rate exceeded."],
        (("Target", "osc-par"), ("Region", "eu-west-2"), ("Code", "ThrottlingException"), ("Message", "Rate exceeded")),
        id="target-failed",
    ),
    pytest.param(
        target_event("target.recovered", failed_since=NOW - timedelta(hours=2, minutes=5)),
        "Polling recovered: osc-par",
        "success",
        ["works again after failing for 2h 5m"],
        (
            ("Target", "osc-par"),
            ("Region", "eu-west-2"),
            ("Failing since", "2026-11-24 02:25 UTC"),
            ("Down for", "2h 5m"),
        ),
        id="target-recovered",
    ),
]


def _sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)", text))


@pytest.mark.parametrize("event, title, severity, says, fields", CASES)
def test_vif_messages(event, title, severity, says, fields):
    message = render(event)
    assert (message.title, message.severity) == (title, severity)
    assert (message.event_type, message.subject, message.actions) == (event.type, "dxvif-fgh12345", ())
    assert message.text.startswith("VIF prod-par-1 (dxvif-fgh12345) ")
    for words in says:
        assert words in message.text
    assert 1 <= _sentences(message.text) <= 2, message.text
    assert message.text.count("rejected by") <= 1, message.text
    assert message.fields[: len(VIF_FIELDS)] == VIF_FIELDS
    for pair in fields:
        assert pair in message.fields
    assert all(isinstance(value, str) and value for _, value in message.fields)


@pytest.mark.parametrize("event, title, severity, says, fields", TARGET_CASES)
def test_target_messages(event, title, severity, says, fields):
    message = render(event)
    assert (message.title, message.severity, message.fields, message.subject) == (title, severity, fields, "osc-par")
    for words in says:
        assert words in message.text
    assert 1 <= _sentences(message.text) <= 2


def test_every_event_type_has_a_case():
    covered = {p.values[0].type for p in CASES + TARGET_CASES}
    assert covered == set(events.EVENT_TYPES)


def test_time_left_is_counted_from_the_event_time_not_the_clock():
    later = vif_event(
        "vif.expiry_warning", time_=NOW + timedelta(days=2), threshold_hours=24, hours_left=52, **deadline(True)
    )
    message = render(later)
    assert message.title == "VIF prod-par-1 expires in 2d 4h"
    assert ("Deadline", "expires at 2026-11-28 09:00 UTC (in 2d 4h)") in message.fields


def test_a_passed_deadline_says_so():
    message = render(
        vif_event("vif.approval_requested", time_=DEADLINE + timedelta(hours=1), reason="ask", **deadline(True))
    )
    assert ("Deadline", "expires at 2026-11-28 09:00 UTC (1h ago)") in message.fields
    assert ("Time left", "none, the deadline has passed") in message.fields


def test_a_vif_without_a_name_goes_by_its_id_and_asn_long_wins():
    unnamed = {"virtualInterfaceName": None, "asnLong": 4200000000}
    message = render(vif_event("vif.discovered", unnamed, state="confirming"))
    assert message.title == "New VIF dxvif-fgh12345"
    assert message.text.startswith("VIF dxvif-fgh12345 appeared")
    labels = dict(message.fields)
    assert "VIF" not in labels and labels["ASN"] == "4200000000"


@pytest.mark.parametrize(
    "delta, text",
    [
        (timedelta(days=2, hours=4, minutes=59), "2d 4h"),
        (timedelta(days=2, minutes=30), "2d"),
        (timedelta(hours=5, minutes=30), "5h 30m"),
        (timedelta(hours=5), "5h"),
        (timedelta(minutes=45, seconds=59), "45m"),
        (timedelta(seconds=20), "under 1m"),
        (-timedelta(hours=3), "3h"),
    ],
)
def test_span(delta, text):
    assert span(delta) == text


def test_events_carry_no_auth_key():
    event = vif_event("vif.discovered", state="confirming")
    assert "authKey" not in event.data.vif
    assert AUTH_KEY not in events.to_json(event)
    # a snapshot that somehow kept the key (VIF gone, data from the ledger) loses it too
    from_snapshot = events.vif_fields("osc-par", None, dict(RAW_VIF), "eu-west-2")
    assert "authKey" not in from_snapshot["vif"] and AUTH_KEY not in repr(from_snapshot)
    assert AUTH_KEY not in repr(VirtualInterface.model_validate(RAW_VIF))


# --- the markup of each chat kind ----------------------------------------------------------------

ACTIONS = (
    Action("Approve", "primary", "https://gate.example/approvals/a?sig=1"),
    Action("Reject", "danger", "https://gate.example/approvals/r?sig=2"),
    Action("Details", "default", "https://gate.example/vifs/x"),
)


def message(**overrides) -> Message:
    return Message(
        **{
            "title": "Approval needed: VIF prod-par-1",
            "text": "VIF prod-par-1 waits.",
            "fields": (("VIF", "prod-par-1"), ("VLAN", "120")),
            "severity": "warning",
            "event_type": "vif.approval_requested",
            "subject": "dxvif-fgh12345",
            **overrides,
        }
    )


def test_slack_blocks():
    body = slack.payload(message())
    assert body["text"] == "VIF prod-par-1 waits."
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section", "context"]
    header, sentence, fields, context = body["blocks"]
    assert header["text"] == {"type": "plain_text", "text": "Approval needed: VIF prod-par-1", "emoji": False}
    assert sentence["text"] == {"type": "mrkdwn", "text": "VIF prod-par-1 waits.", "verbatim": True}
    assert [f["text"] for f in fields["fields"]] == ["*VIF*\nprod-par-1", "*VLAN*\n120"]
    assert all(f["verbatim"] for f in fields["fields"])
    assert context["elements"][0] == {
        "type": "mrkdwn",
        "text": "vif.approval_requested · dxvif-fgh12345",
        "verbatim": True,
    }
    assert (body["unfurl_links"], body["unfurl_media"]) == (False, False)


def test_slack_buttons_open_the_action_urls():
    actions = slack.payload(message(actions=ACTIONS))["blocks"][-2]
    assert actions["type"] == "actions"
    buttons = [(b["text"]["text"], b.get("style"), b["url"]) for b in actions["elements"]]
    assert buttons == [
        ("Approve", "primary", ACTIONS[0].url),
        ("Reject", "danger", ACTIONS[1].url),
        ("Details", None, ACTIONS[2].url),
    ]
    assert len({b["action_id"] for b in actions["elements"]}) == 3


def test_slack_stays_within_block_kit_limits():
    many = tuple((f"Field {i}", "x" * 2500) for i in range(23))
    body = slack.payload(message(title="T" * 400, text="y" * 5000, fields=many))
    header, sentence, *sections, _context = body["blocks"]
    assert len(header["text"]["text"]) == 150 and len(sentence["text"]["text"]) == 3000
    assert [len(s["fields"]) for s in sections] == [10, 10, 3]
    assert all(len(f["text"]) <= 2000 for s in sections for f in s["fields"])


def test_slack_escapes_what_would_ping_a_channel():
    body = slack.payload(message(text="VIF <!channel> & co waits.", fields=(("VIF", "<!here|x>"),)))
    assert body["text"] == "VIF &lt;!channel&gt; &amp; co waits."
    assert "<!" not in str(body["blocks"][1:])


def test_mattermost_attachment():
    body = mattermost.payload(message(fields=(("VIF", "prod-par-1"), ("Deadline", "x" * 60))))
    assert set(body) == {"text", "attachments"} and body["text"] == "VIF prod-par-1 waits."
    (attachment,) = body["attachments"]
    assert attachment["color"] == mattermost.COLORS["warning"]
    assert attachment["title"] == "Approval needed: VIF prod-par-1"
    assert attachment["fields"] == [
        {"title": "VIF", "value": "prod-par-1", "short": True},
        {"title": "Deadline", "value": "x" * 60, "short": False},
    ]
    assert attachment["footer"] == "vif.approval\\_requested · dxvif-fgh12345"
    assert "text" not in attachment


def test_mattermost_actions_are_links_and_mentions_are_broken():
    body = mattermost.payload(message(actions=ACTIONS, text="VIF @channel waits, ask alice@example.com."))
    assert body["attachments"][0]["text"] == (
        f"[Approve]({ACTIONS[0].url}) · [Reject]({ACTIONS[1].url}) · [Details]({ACTIONS[2].url})"
    )
    assert body["text"] == "VIF @\u200bchannel waits, ask alice@example\\.com."


@pytest.mark.parametrize(
    "text, escaped",
    [
        ("prod-par-1 (dxvif-fgh12345).", "prod-par-1 (dxvif-fgh12345)."),
        ("<!channel> & <https://evil.example|click>", "&lt;!channel&gt; &amp; &lt;https\\://evil.example\\|click&gt;"),
        ("[x](https://evil.example)", "\\[x\\](https\\://evil.example)"),
        ("![i](https://e.example/a.png)", "!\\[i\\](https\\://e.example/a.png)"),
        ("**b** _i_ ~~s~~ `c`", "\\*\\*b\\*\\* \\_i\\_ \\~\\~s\\~\\~ \\`c\\`"),
        ("# h | t", "\\# h \\| t"),
        ("\\[x\\](u)", "&#92;\\[x&#92;\\](u)"),
        ("- item", "\\- item"),
        ("12. item", "12\\. item"),
        ("a - b. 1. c", "a - b. 1. c"),
        ("&lt;", "&amp;lt;"),
        ("@all: x.@here", "@\u200ball: x.@\u200bhere"),
        # no autolink: a scheme's `://`, `www.`, an address's domain; other dots and colons stay
        ("https://evil.example/login", "https\\://evil.example/login"),
        ("see WWW.evil.example", "see WWW\\.evil.example"),
        ("ask sec@evil.example.com", "ask sec@evil\\.example\\.com"),
        ("prod-par-1.eu at 09:00", "prod-par-1.eu at 09:00"),
    ],
)
def test_mattermost_escape(text, escaped):
    assert mattermost.escape(text) == escaped


def test_teams_card():
    card = teams.payload(message())["attachments"][0]["content"]
    assert [b["type"] for b in card["body"]] == [
        "RichTextBlock",
        "RichTextBlock",
        "ColumnSet",
        "ColumnSet",
        "RichTextBlock",
    ]
    (title,) = card["body"][0]["inlines"]
    assert title == {
        "type": "TextRun",
        "text": "Approval needed: VIF prod-par-1",
        "size": "Large",
        "weight": "Bolder",
        "color": "Warning",
    }
    assert card["body"][1]["inlines"] == [{"type": "TextRun", "text": "VIF prod-par-1 waits."}]
    assert teams_facts(card) == [("VIF", "prod-par-1"), ("VLAN", "120")]
    assert card["body"][-1]["inlines"][0]["text"] == "vif.approval_requested · dxvif-fgh12345"
    assert "actions" not in card


def test_teams_actions_open_urls():
    card = teams.payload(message(actions=ACTIONS))["attachments"][0]["content"]
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Approve", "url": ACTIONS[0].url, "style": "positive"},
        {"type": "Action.OpenUrl", "title": "Reject", "url": ACTIONS[1].url, "style": "destructive"},
        {"type": "Action.OpenUrl", "title": "Details", "url": ACTIONS[2].url, "style": "default"},
    ]
