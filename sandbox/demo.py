"""`vifgate demo`: the sandbox, two poll cycles with time passing between them, and what happened."""

from __future__ import annotations

import os
import textwrap
import time
from collections import Counter, defaultdict
from datetime import timedelta

import boto3

from chalicelib import events
from chalicelib.chatops import Message, render
from chalicelib.cli import format_table
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
            print(f"Policy: {cloud.config_path}")
            print(
                "  partner-prod:    account PROD, vlan 100-199, asn 65001/65002 -> confirm with", scenario.PROD_GATEWAY
            )
            print(
                "  partner-staging: account STAGING, name stg-*              -> confirm with", scenario.STAGING_GATEWAY
            )
            print("  default_action:  ask")

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


def _events(cloud: LocalCloud, reports: list[CycleReport]) -> None:
    """What reached the events queue, then what people would read in chat for a few of them."""
    _heading("Events on the queue (SQS FIFO, one message group per VIF)")
    sqs = boto3.client("sqs", endpoint_url=cloud.aws_url)
    url = sqs.get_queue_url(QueueName=EVENTS_QUEUE)["QueueUrl"]
    received = []
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


def terminal(message: Message) -> str:
    """A chat message as a person would read it, in the terminal."""
    lines = [
        f"[{_MARKS[message.severity]}] {message.title}",
        textwrap.fill(message.text, width=100, initial_indent="    ", subsequent_indent="    "),
    ]
    label_width = max((len(label) for label, _ in message.fields), default=0)
    lines += [f"    {label:<{label_width}}  {value}" for label, value in message.fields]
    return "\n".join(lines)


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
