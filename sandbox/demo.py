"""`vifgate demo`: the sandbox, two poll cycles with time passing between them, and what happened."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from html import unescape as html_unescape
from typing import Any

import boto3

from chalicelib import events
from chalicelib.chatops import Message, render, slack
from chalicelib.cli import format_table
from chalicelib.config import Policy
from chalicelib.reconcile import CycleReport, run_cycle
from chalicelib.runtime import Runtime, Settings, load_policy

from . import scenario
from .local import EVENTS_QUEUE, LocalCloud


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 74 - len(text)))


def run_demo() -> int:
    started = time.monotonic()
    saved = dict(os.environ)
    with LocalCloud(api_port=0) as cloud:  # the approval routes too, on any free port
        os.environ.update(cloud.env())
        try:
            settings = Settings.from_env()
            runtime = Runtime(settings, policy=load_policy(settings.config_source), clock=cloud.clock)
            _heading("The world")
            print(f"Partner {scenario.PARTNER} owns connection {cloud.world.connection_id} (10Gbps, Equinix PA3)")
            print(f"and allocated {len(cloud.world.vif_ids)} hosted VIFs to three of our accounts:")
            print(f"  osc-prod    {scenario.PROD}  gateway {scenario.PROD_GATEWAY} available")
            print(f"  osc-staging {scenario.STAGING}  gateway {scenario.STAGING_GATEWAY} pending")
            print(f"  osc-lab     {scenario.LAB}  no rule for this account")
            print("Policy (APPROVALS_CONFIG in sandbox/scenario.py):")
            print(policy_summary(runtime.policy))

            _heading(f"Cycle 1 at {cloud.clock.now():%Y-%m-%d %H:%M} UTC")
            first = run_cycle(runtime)
            print(format_table(first))

            cloud.clock.advance(timedelta(minutes=10))
            late = scenario.allocate_late_arrival(cloud.directlink, cloud.world)
            _heading(f"Cycle 2 at {cloud.clock.now():%Y-%m-%d %H:%M} UTC (10 minutes later)")
            print(f"Meanwhile the partner allocated {late} (prod-cache, vlan 103); confirmed VIFs came up.")
            second = run_cycle(runtime)
            print(format_table(second))

            cloud.clock.advance(timedelta(days=4))
            _heading(f"Cycle 3 at {cloud.clock.now():%Y-%m-%d %H:%M} UTC (4 days later)")
            print("Nobody answered the approval requests; the VIFs left waiting are 3 days from expiry.")
            third = run_cycle(runtime)
            print(format_table(third))

            _summary(runtime, [first, second, third], cloud)
            received = _events(cloud, [first, second, third])
            _approvals(runtime, cloud, received)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    print(f"\nDemo finished in {time.monotonic() - started:.1f}s. Nothing left running.")
    return 0


ACCOUNT_NAMES = {scenario.PROD: "PROD", scenario.STAGING: "STAGING", scenario.LAB: "LAB"}


def policy_summary(policy: Policy) -> str:
    """One line per rule, naming the connections it trusts: only the connection says who allocated a VIF."""
    width = max((len(rule.name) for rule in policy.rules), default=0) + 1
    lines = []
    for rule in policy.rules:
        accounts = "/".join(ACCOUNT_NAMES.get(a, a) for a in rule.accounts)
        if rule.any_connection:
            trusted = "any connection (any_connection: true)"
        elif rule.connections is not None:
            trusted = "connection " + "/".join(rule.connections)
        else:
            trusted = "any connection"
        conditions = [f"account {accounts} on {trusted}"]
        if rule.vlan is not None:
            conditions.append(f"vlan {rule.vlan.min}-{rule.vlan.max}")
        if rule.asn is not None:
            conditions.append("asn " + "/".join(map(str, rule.asn)))
        if rule.vif_name is not None:
            conditions.append(f"name {rule.vif_name}")
        then = f"confirm with {rule.gateway}" if rule.action == "confirm" else rule.action
        lines.append(f"  {rule.name + ':':<{width}} {', '.join(conditions)} -> {then}")
    lines.append(f"  {'default_action:':<{width}} {policy.default_action}")
    if policy.default_approvers and policy.approvals is not None:
        who = ", ".join(policy.approvals.resolve(policy.default_approvers))
        needed = policy.default_min_approvals or 1
        lines.append(f"  {'approvers:':<{width}} {who} ({needed} approval needed, from Slack, a link or the CLI)")
    return "\n".join(lines)


def _events(cloud: LocalCloud, reports: list[CycleReport]) -> list[Any]:
    """What reached the events queue, then what people would read in chat for a few of them."""
    _heading("Events on the queue (SQS FIFO, one message group per VIF)")
    received = _drain(cloud)  # CloudEvents: each type is its own generated model
    produced = {e.id for r in reports for e in r.events}
    arrived = [e.id for e in received]
    lost, twice = len(produced - set(arrived)), len(arrived) - len(set(arrived))
    print(
        f"{len(received)} events received; {len(produced)} produced by the three cycles, {lost} lost, "
        f"{twice} received twice:"
    )
    for type_name, count in sorted(Counter(e.type for e in received).items()):
        print(f"  {count:>3}  {type_name}")

    _heading("What people read in chat (a few of them)")
    shown = set()
    for event in received:
        if event.type in ("vif.approval_requested", "vif.confirmed", "vif.expiry_warning") and event.type not in shown:
            shown.add(event.type)
            print(terminal(render(event)))
            print()
    return received


_MARKS = {"info": "i", "success": "+", "warning": "!", "danger": "!!"}


def terminal(message: Message, *, fields: bool = True) -> str:
    """A chat message as a person would read it, in the terminal; `fields=False` for title and text only."""
    lines = [
        f"[{_MARKS[message.severity]}] {_printable(message.title)}",
        textwrap.fill(_printable(message.text), width=100, initial_indent="    ", subsequent_indent="    "),
    ]
    if fields:
        label_width = max((len(label) for label, _ in message.fields), default=0)
        lines += [f"    {label:<{label_width}}  {_printable(str(value))}" for label, value in message.fields]
    return "\n".join(lines)


def _printable(text: str) -> str:
    """Names chosen by the allocator are data: no control character reaches the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _summary(runtime: Runtime, reports: list[CycleReport], cloud: LocalCloud) -> None:
    _heading("What happened")
    by_action = defaultdict(list)
    for report in reports:
        for o in report.outcomes:
            by_action[o.action].append(o)
    for o in by_action["confirmed"]:
        print(
            f"  confirmed  {o.virtualInterfaceId} {o.virtualInterfaceName:<12} ({o.target}) by rule {o.rule} "
            f"with {o.virtualGatewayId}"
        )
    asked = {o.virtualInterfaceId: o for o in reports[-1].outcomes if o.action == "ask"}
    for o in asked.values():
        certainty = "" if o.deadlineCertain else " (at the latest; it was already waiting at the first poll)"
        print(f"  ask        {o.virtualInterfaceId} {o.virtualInterfaceName:<12} ({o.target}): {o.reason}")
        print(f"             expires {o.deadline}{certainty}")
    failed = [f for r in reports for f in r.failures]
    for f in failed:
        print(f"  FAILED     {f.target}: {f.message}")
    confirms = sum(cloud.directlink.confirm_count(v) for v in cloud.world.vif_ids.values())
    print(
        f"\nConfirm calls sent to DirectLink: {confirms} "
        f"(one per trusted VIF; the ledger claim stops repeats). Targets failed: {len(failed)}."
    )


# --- approvals: one request approved from Slack, one rejected through its link ------------------


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request to the local routes over HTTP on 127.0.0.1 (never through a proxy): status and body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def slack_request(request_id: str, user_id: str, action: str, at: datetime) -> tuple[bytes, dict[str, str]]:
    """A click on an approval message's button as Slack posts it: the block_actions payload, form-encoded and signed.

    Slack signs `v0:{timestamp}:{raw body}` with HMAC-SHA256 and the app's signing secret.
    """
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.lower(), "team_id": "TSANDBOX01"},
        "api_app_id": "ASANDBOX01",
        "container": {"type": "message", "message_ts": f"{at.timestamp():.6f}"},
        "actions": [
            {
                "type": "button",
                "action_id": action,
                "block_id": "vifgate-decision",
                "value": request_id,
                "action_ts": f"{at.timestamp():.6f}",
            }
        ],
        "state": {"values": {}},
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(at.timestamp()))
    digest = hmac.new(
        scenario.SLACK_SIGNING_SECRET.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256
    ).hexdigest()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest}",
    }
    return body, headers


def _buttons(message: Message) -> str:
    """The interactive part of the Slack message, as the person sees it."""
    shown = []
    for block in slack.payload(message, buttons=True)["blocks"]:
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            if element["type"] == "static_select":
                options = ", ".join(o["value"] for o in element["options"])
                shown.append(f"a gateway menu ({options})")
            elif element["type"] == "button":
                asks = f', asks "{element["confirm"]["title"]["text"]}" first' if "confirm" in element else ""
                shown.append(f"[{element['text']['text']}] ({element['action_id']}{asks})")
    return "Slack buttons: " + "  ".join(shown) if shown else "no buttons (notify-only)"


def _page_text(html: str) -> str:
    """The heading and first sentence of a page the routes served."""
    heading = re.search(r"<h1>(.*?)</h1>", html, re.S)
    first = re.search(r"<p[^>]*>(.*?)</p>", html, re.S)
    parts = [_printable(re.sub(r"<[^>]+>", "", m.group(1))) for m in (heading, first) if m]
    return html_unescape(" — ".join(parts))


def _state(cloud: LocalCloud, vif_id: str) -> str:
    return str(cloud.directlink.vif(vif_id)["virtualInterfaceState"])


def _drain(cloud: LocalCloud) -> list[Any]:
    sqs = boto3.client("sqs", endpoint_url=cloud.aws_url)
    url = sqs.get_queue_url(QueueName=EVENTS_QUEUE)["QueueUrl"]
    received: list[Any] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            received.append(events.parse(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return received


def _approvals(runtime: Runtime, cloud: LocalCloud, requested: list[Any]) -> None:
    from chalicelib.cli import request_links

    assert cloud.api is not None
    world, ledger = cloud.world, runtime.ledger
    _heading("Approvals: alice approves prod-legacy from Slack, bob rejects lab-bench through his link")
    print(f"The approval routes run on {cloud.api.url} (the Chalice app, as `vifgate sandbox` serves them).")
    legacy, lab = world.vif_ids["prod-legacy"], world.vif_ids["lab-bench"]
    asked = {e.subject: e for e in requested if e.type == "vif.approval_requested"}
    print("\nWhat netops read in Slack when the gatekeeper asked about prod-legacy:\n")
    message = render(asked[legacy])
    print(terminal(message))
    print(f"    {_buttons(message)}")

    found = ledger.approval_for_vif(legacy)
    assert found is not None, "the cycle made no approval request for prod-legacy"
    request = found[0]
    body, headers = slack_request(
        request.request_id, scenario.APPROVERS["alice"]["slack"], "vifgate_approve", cloud.clock.now()
    )
    status, answer = _http("POST", f"{cloud.api.url}/approvals/slack", body, headers)
    print(
        f"\nalice ({scenario.APPROVERS['alice']['slack']}) clicks Approve. Slack posts the block_actions payload, "
        f"signed with the app's signing secret\n(X-Slack-Signature: v0=HMAC-SHA256 of v0:timestamp:body):"
    )
    print(f"  POST /approvals/slack -> {status} {_printable(answer)}")
    cloud.settle()  # the route triggered the poller for osc-prod; it confirms in the background
    print(f"  the poller, triggered for {request.target}: {legacy} is now {_state(cloud, legacy)}")

    found = ledger.approval_for_vif(lab)
    assert found is not None, "the cycle made no approval request for lab-bench"
    request = found[0]
    made = request_links(runtime, request, cloud.clock.now())
    assert made is not None, "the sandbox's policy has base_url and signing_key"
    link = made[0]["bob"]
    path = link.removeprefix(cloud.api.url)
    shown = path[: len("/approvals/link/") + 10] + "…"
    print(f"\nbob opens his link to lab-bench (from `vifgate approvals`, or the Teams card): {shown}")
    status, page = _http("GET", link)
    print(f"  GET  {shown} -> {status}: {_page_text(page)}  (a GET changes nothing)")
    status, page = _http("POST", link, b"action=reject", {"Content-Type": "application/x-www-form-urlencoded"})
    print(f"  POST {shown} action=reject -> {status}: {_page_text(page)}")
    cloud.settle()
    print(f"  the poller, triggered for {request.target}: {lab} is now {_state(cloud, lab)}")
    status, page = _http("POST", link, b"action=reject", {"Content-Type": "application/x-www-form-urlencoded"})
    print(f"  the same link again -> {status}: {_page_text(page)}")

    _heading("What people read in chat about these decisions")
    for event in _drain(cloud):
        if event.subject in (legacy, lab):
            print(terminal(render(event)))
            print()

    _heading("The ledger's audit trail")
    for vif in (legacy, lab):
        found = ledger.approval_for_vif(vif)
        assert found is not None
        request, record = found
        name = record.snapshot.get("virtualInterfaceName", "")
        done = (
            f"confirmed at {record.confirmed_at} with {record.gateway}"
            if record.confirmed_at
            else f"rejected at {record.rejected_at}"
            if record.rejected_at
            else f"still {record.state}"
        )
        print(f"{vif} {name}: request {request.request_id} {request.status}; the VIF was {done}")
        for entry in request.trail:
            via = f" via {entry.channel}" if entry.channel else ""
            user = f" ({entry.user_id})" if entry.user_id else ""
            gateway = f" with {entry.gateway}" if entry.gateway else ""
            print(f"  {entry.at}  {entry.who}{user}{via}: {entry.what}{gateway} -> {entry.outcome}")
    confirms = cloud.directlink.confirm_count(legacy)
    deletes = sum(1 for op, _account in cloud.directlink.calls if op == "DeleteVirtualInterface")
    print(f"\nConfirm calls for {legacy}: {confirms}; Delete calls: {deletes} (each decision carried out once).")
