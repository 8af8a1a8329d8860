"""`vifgate demo`: the sandbox, two poll cycles with time passing between them, and what happened."""

from __future__ import annotations

import os
import textwrap
import time
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import boto3

from chalicelib import events
from chalicelib.chatops import Message, render
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
    with LocalCloud() as cloud:
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
            print("Policy (CONFIG in sandbox/scenario.py):")
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
            _events(cloud, [first, second, third])
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
    return "\n".join(lines)


def _events(cloud: LocalCloud, reports: list[CycleReport]) -> None:
    """What reached the events queue, then what people would read in chat for a few of them."""
    _heading("Events on the queue (SQS FIFO, one message group per VIF)")
    sqs = boto3.client("sqs", endpoint_url=cloud.aws_url)
    url = sqs.get_queue_url(QueueName=EVENTS_QUEUE)["QueueUrl"]
    received: list[Any] = []  # CloudEvents: each type is its own generated model
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            received.append(events.parse(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
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
