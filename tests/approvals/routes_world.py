"""The world the route tests share: the prod stage's app on moto, the sandbox, and approval requests made by a cycle.

The chalice test Client sets the prod stage's environment variables on every request, so the
runtime the routes get is `runtime.get_reader()` of that environment: the tests build it once with the
same variables, give it the sandbox's clock and a trigger that runs the poller for one target,
and every request of the test reuses it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from chalice.test import Client

from app import app
from chalicelib import reconcile, runtime
from chalicelib.approvals.model import ApprovalRequest
from chalicelib.approvals.trigger import LocalTrigger
from chalicelib.ledger import VifRecord, create_table
from chalicelib.runtime import Runtime
from sandbox import DirectLinkSandbox, scenario
from sandbox.local import create_queues

STAGE = "prod"
PROD_ENV: dict[str, str] = json.loads((Path(__file__).parents[2] / ".chalice/config.json").read_text())["stages"][
    STAGE
]["environment_variables"]
TABLE = PROD_ENV["VIFGATE_TABLE"]
# The stage reads AppConfig; in-process tests read its ssm: twin (tests/conftest.py stage_config_through_ssm).
CONFIG_PARAMETER = f"/vifgate/{STAGE}/config"
PROD_ENV["VIFGATE_CONFIG"] = f"ssm:{CONFIG_PARAMETER}"
APPROVALS_SECRET = "vifgate/prod/approvals"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a Slack signing secret's shape: 32 hex-ish characters
SIGNING_KEY = "test-approvals-signing-key-0123456789-abcdef"  # at least 32 characters
ALICE = {"name": "alice", "slack": "UALICE01", "mattermost": "alice" + "0" * 21}
BOB = {"name": "bob", "slack": "UBOB0001", "mattermost": "bob" + "0" * 23}
CAROL = {"name": "carol", "slack": "UCAROL01", "mattermost": "carol" + "0" * 21}  # an approver, not of these VIFs
STRANGER_SLACK, STRANGER_MATTERMOST = "USTRANGER1", "x" * 26

APPROVALS = f"""\
default_approvers: [netops]
approvals:
  approvers:
    - {{name: alice, slack: {ALICE["slack"]}, mattermost: {ALICE["mattermost"]}}}
    - {{name: bob, slack: {BOB["slack"]}, mattermost: {BOB["mattermost"]}}}
    - {{name: carol, slack: {CAROL["slack"]}, mattermost: {CAROL["mattermost"]}}}
  groups: {{netops: [alice, bob]}}
  base_url: https://gatekeeper.example.com
  signing_key: {{secret_id: {APPROVALS_SECRET}, key: signing_key}}
  slack_signing_secret: {{secret_id: {APPROVALS_SECRET}, key: slack}}
"""
# The scenario's policy plus approvers for its default action: prod-legacy (vlan outside the
# prod rule, one available gateway) and lab-bench (no rule) get approval requests.
CONFIG = scenario.CONFIG + APPROVALS


@dataclass
class RouteWorld:
    sb: DirectLinkSandbox
    runtime: Runtime
    client: Client
    targets: list[str] = field(default_factory=list)
    trigger_works: bool = True
    calls_before: int = 0  # the sandbox's calls of the first cycle (it confirms the trusted VIFs)
    _done: list[threading.Event] = field(default_factory=list)

    # --- the trigger the routes call: LocalTrigger running one target's cycle -----------------

    def poll_now(self, target: str) -> bool:
        self.targets.append(target)
        if not self.trigger_works:
            return False
        done = threading.Event()

        def run(name: str) -> object:
            try:
                return reconcile.run_cycle(self.runtime, targets=[name])
            finally:
                done.set()

        self._done.append(done)
        return LocalTrigger(run).poll_now(target)

    def settle(self, timeout: float = 20.0) -> None:
        """Wait for every cycle the routes triggered to finish."""
        for done in self._done:
            assert done.wait(timeout), "a triggered cycle did not finish"

    # --- reading the world ----------------------------------------------------------------------

    def vif_id(self, name: str) -> str:
        return self.sb.world.vif_ids[name]

    def request(self, name: str) -> tuple[ApprovalRequest, VifRecord]:
        found = self.runtime.ledger.approval_for_vif(self.vif_id(name))
        assert found is not None, f"no approval request for {name}"
        return found

    def items(self) -> list[dict[str, Any]]:
        """Every ledger item (records, pointers, outbox), in a stable order: what 'nothing changed' compares."""
        items = boto3.resource("dynamodb").Table(TABLE).scan(ConsistentRead=True)["Items"]
        return sorted(items, key=lambda i: (i["target"], i["vif_id"]))

    def writes(self) -> list[tuple[str, str]]:
        """DirectLink write calls the sandbox received since the world was built."""
        return [(op, acct) for op, acct in self.sb.calls[self.calls_before :] if not op.startswith("Describe")]

    def state(self) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[str]]:
        return self.items(), self.writes(), list(self.targets)

    # --- signed requests ------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.runtime.clock()


def slack_headers(body: bytes, *, at: float, secret: str = SLACK_SECRET) -> dict[str, str]:
    """What Slack sends: v0 HMAC-SHA256 of `v0:{timestamp}:{body}` with the app's signing secret."""
    timestamp = str(int(at))
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest}",
    }


def slack_body(
    request_id: str,
    *,
    user: str = ALICE["slack"],
    action: str = "vifgate_approve",
    gateway: str | None = None,
    response_url: str | None = None,
) -> bytes:
    """A block_actions payload as Slack posts it for a click on one of the request's buttons."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "team_id": "T0001"},
        "api_app_id": "A0001",
        "container": {"type": "message", "message_ts": "1700000000.000100"},
        "actions": [
            {
                "action_id": action,
                "block_id": "vifgate-actions",
                "value": request_id,
                "type": "button",
                "action_ts": "1700000000.000200",
            }
        ],
        "state": {"values": {}},
    }
    if gateway is not None:
        payload["state"] = {
            "values": {
                "vifgate-gateway": {
                    "vifgate_gateway": {
                        "type": "static_select",
                        "selected_option": {"text": {"type": "plain_text", "text": gateway}, "value": gateway},
                    }
                }
            }
        }
    if response_url is not None:
        payload["response_url"] = response_url
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def build(sb: DirectLinkSandbox, *, config: str = CONFIG) -> RouteWorld:
    """The prod stage's resources in moto, the policy in SSM, the secrets, and one cycle run (it asks)."""
    create_table(boto3.client("dynamodb"), TABLE)
    create_queues(boto3.client("sqs"), PROD_ENV["VIFGATE_EVENTS_QUEUE"], PROD_ENV["VIFGATE_EVENTS_DLQ"])
    boto3.client("ssm").put_parameter(Name=CONFIG_PARAMETER, Value=config, Type="SecureString", Overwrite=True)
    boto3.client("secretsmanager").create_secret(
        Name=APPROVALS_SECRET, SecretString=json.dumps({"slack": SLACK_SECRET, "signing_key": SIGNING_KEY})
    )
    rt = runtime.get_reader({**os.environ, **PROD_ENV})
    rt.clock = sb.clock
    world = RouteWorld(sb, rt, Client(app, stage_name=STAGE))
    rt.trigger = world  # type: ignore[misc]  # the routes call world.poll_now
    reconcile.run_cycle(rt)
    world.calls_before = len(sb.calls)
    return world
