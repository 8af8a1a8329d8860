"""`vifgate demo`: the sandbox, two poll cycles with time passing between them, and what happened."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from datetime import timedelta

from chalicelib.cli import format_table
from chalicelib.reconcile import CycleReport, run_cycle
from chalicelib.runtime import Runtime, Settings, load_policy

from . import scenario
from .local import LocalCloud


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
            print("  partner-prod:    account PROD, vlan 100-199, asn 65001/65002 -> confirm with", scenario.PROD_GATEWAY)
            print("  partner-staging: account STAGING, name stg-*              -> confirm with", scenario.STAGING_GATEWAY)
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

            _summary(runtime, [first, second], cloud)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    print(f"\nDemo finished in {time.monotonic() - started:.1f}s. Nothing left running.")
    return 0


def _summary(runtime: Runtime, reports: list[CycleReport], cloud: LocalCloud) -> None:
    _heading("What happened")
    by_action = defaultdict(list)
    for report in reports:
        for o in report.outcomes:
            by_action[o.action].append(o)
    for o in by_action["confirmed"]:
        print(f"  confirmed  {o.virtualInterfaceId} {o.virtualInterfaceName:<12} ({o.target}) by rule {o.rule} "
              f"with {o.virtualGatewayId}")
    asked = {o.virtualInterfaceId: o for o in reports[-1].outcomes if o.action == "ask"}
    for o in asked.values():
        certainty = "" if o.deadlineCertain else " (at the latest; it was already waiting at the first poll)"
        print(f"  ask        {o.virtualInterfaceId} {o.virtualInterfaceName:<12} ({o.target}): {o.reason}")
        print(f"             expires {o.deadline}{certainty}")
    failed = [f for r in reports for f in r.failures]
    for f in failed:
        print(f"  FAILED     {f.target}: {f.message}")
    confirms = sum(cloud.directlink.confirm_count(v) for v in cloud.world.vif_ids.values())
    print(f"\nConfirm calls sent to DirectLink: {confirms} "
          f"(one per trusted VIF; the ledger claim stops repeats). Targets failed: {len(failed)}.")
