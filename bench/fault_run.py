"""Fault run: kill the poller at four points of a confirm, lose answers, serve broken pages; count.

Each mode runs its own world (sandbox + in-process moto: DynamoDB ledger, SQS FIFO events queue)
with 30 VIFs the policy trusts and 15 it does not. The fault fires on several confirms; a killed
"process" is replaced by a fresh runtime a minute later on the sandbox clock, and cycles go on
until every trusted VIF is confirmed and recorded. Then the queue is drained and compared with
what should have happened:

    .venv/bin/python bench/fault_run.py            (about a minute)

A kill is a BaseException raised at that line: nothing after it runs and nothing catches it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from moto import mock_aws

from chalicelib import events, reconcile
from chalicelib.config import parse_policy
from chalicelib.directlink import DirectLinkApi, TargetError
from chalicelib.ledger import Ledger
from chalicelib.log import logger
from chalicelib.runtime import Runtime, Settings
from sandbox import DirectLinkSandbox, SandboxClock, scenario
from sandbox.local import create_queues, provision

TABLE, QUEUE, DLQ = "vifgate-faults", "vifgate-faults.fifo", "vifgate-faults-dlq.fifo"
TRUSTED, UNTRUSTED = 30, 15
KILL_AT = {1, 4, 9, 16, 25}  # which occurrences of the faulty step fail (several process lives)
MAX_CYCLES = 40


class Killed(BaseException):
    """The process dies at this line."""


@dataclass
class Result:
    mode: str
    faults: int = 0
    cycles: int = 0
    confirm_calls: int = 0
    duplicate_confirms: int = 0
    untrusted_confirmed: int = 0
    unconfirmed: int = 0
    unrecorded: int = 0
    lost: int = 0
    duplicated: int = 0
    false_gone: int = 0


class Trigger:
    """Counts occurrences of a step and says when one must fail."""

    def __init__(self) -> None:
        self.seen, self.fired = 0, 0

    def __call__(self) -> bool:
        self.seen += 1
        if self.seen in KILL_AT:
            self.fired += 1
            return True
        return False


# --- the faults ---------------------------------------------------------------------------------


@contextlib.contextmanager
def after_the_claim(trigger: Trigger) -> Iterator[None]:
    claim = Ledger.claim

    def claim_then_die(self, *args, **kwargs):
        claim(self, *args, **kwargs)
        if trigger():
            raise Killed

    with mock.patch.object(Ledger, "claim", claim_then_die):
        yield


@contextlib.contextmanager
def confirm_in_flight(trigger: Trigger) -> Iterator[None]:
    """The endpoint applies Confirm; the process dies before it reads the answer."""
    confirm = DirectLinkApi.confirm

    def confirm_then_die(api, vif_id, gateway_id):
        state = confirm(api, vif_id, gateway_id)
        if trigger():
            raise Killed
        return state

    with mock.patch.object(DirectLinkApi, "confirm", confirm_then_die):
        yield


@contextlib.contextmanager
def after_the_answer(trigger: Trigger) -> Iterator[None]:
    """Confirm answered; the process dies on the ledger write that records it."""
    save = Ledger.save

    def save_or_die(self, record, events=()):
        if record.confirmed_at and any(e.type == "vif.confirmed" for e in events) and trigger():
            raise Killed
        save(self, record, events)

    with mock.patch.object(Ledger, "save", save_or_die):
        yield


@contextlib.contextmanager
def during_the_flush(trigger: Trigger) -> Iterator[None]:
    """SQS accepted a batch; the process dies before the outbox forgets it (everything is sent again)."""
    delete = Ledger.delete_events

    def die_or_delete(self, sort_keys):
        if trigger():
            raise Killed
        return delete(self, sort_keys)

    with mock.patch.object(Ledger, "delete_events", die_or_delete):
        yield


@contextlib.contextmanager
def answer_lost_and_read_throttled(trigger: Trigger) -> Iterator[None]:
    """Confirm worked, its answer was lost, and the read-back was throttled past every retry."""
    confirm, describe_one = DirectLinkApi.confirm, DirectLinkApi.describe_one
    lost: set[str] = set()

    def confirm_and_lose(api, vif_id, gateway_id):
        state = confirm(api, vif_id, gateway_id)
        if trigger():
            lost.add(vif_id)
            raise TargetError(
                api.target.name, "confirm_private_virtual_interface", "ReadTimeoutError", "no answer", retryable=True
            )
        return state

    def throttled(api, vif_id):
        if vif_id in lost:
            lost.discard(vif_id)
            raise TargetError(
                api.target.name, "describe_virtual_interfaces", "ThrottlingException", "Rate exceeded", retryable=True
            )
        return describe_one(api, vif_id)

    with (
        mock.patch.object(DirectLinkApi, "confirm", confirm_and_lose),
        mock.patch.object(DirectLinkApi, "describe_one", throttled),
    ):
        yield


def broken_page(body: dict) -> Callable[[Trigger], contextlib.AbstractContextManager]:
    """Every other listing of osc-prod is what botocore makes of an HTML / empty / truncated 200."""

    @contextlib.contextmanager
    def serve(trigger: Trigger) -> Iterator[None]:
        call = DirectLinkApi._call

        def sometimes_broken(api, operation, **params):
            if (
                operation == "describe_virtual_interfaces"
                and api.target.name == "osc-prod"
                and not params
                and trigger.seen % 2 == 0
            ):
                trigger.seen += 1
                trigger.fired += 1
                return dict(body)
            if operation == "describe_virtual_interfaces" and not params and api.target.name == "osc-prod":
                trigger.seen += 1
            return call(api, operation, **params)

        with mock.patch.object(DirectLinkApi, "_call", sometimes_broken):
            yield

    return serve


MODES: dict[str, Callable[[Trigger], contextlib.AbstractContextManager]] = {
    "kill after the claim": after_the_claim,
    "kill with Confirm in flight": confirm_in_flight,
    "kill after the answer": after_the_answer,
    "kill during the flush": during_the_flush,
    "answer lost + read throttled": answer_lost_and_read_throttled,
    "200 with HTML (no list)": broken_page({"ResponseMetadata": {"HTTPStatusCode": 200}}),
    "200 with null list": broken_page({"virtualInterfaces": None, "ResponseMetadata": {}}),
}


# --- one mode -----------------------------------------------------------------------------------


def world() -> tuple[DirectLinkSandbox, list[str], list[str]]:
    sb = DirectLinkSandbox(
        flavor="outscale", region="eu-west-2", clock=SandboxClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
    )
    for account, (key, secret) in scenario.KEYS.items():
        sb.add_account(account, access_key=key, secret_key=secret)
    sb.add_location("PAR1", "Paris")
    connection = sb.add_connection(
        owner_account=scenario.PARTNER, name="p", location="PAR1", connection_id=scenario.PARTNER_CONNECTION
    )
    sb.add_gateway(scenario.PROD, state="available", gateway_id=scenario.PROD_GATEWAY)
    sb.add_gateway(scenario.LAB, state="available", gateway_id=scenario.LAB_GATEWAY)
    trusted = [
        sb.allocate(connection, scenario.PROD, f"prod-{i}", 100 + i, 65001)["virtualInterfaceId"]
        for i in range(TRUSTED)
    ]
    untrusted = [
        sb.allocate(connection, scenario.PROD, f"legacy-{i}", 300 + i, 65001)["virtualInterfaceId"]
        for i in range(UNTRUSTED // 3)
    ]
    untrusted += [
        sb.allocate(connection, scenario.LAB, f"lab-{i}", 400 + i, 65020)["virtualInterfaceId"]
        for i in range(UNTRUSTED - len(untrusted))
    ]
    return sb, trusted, untrusted


def run_mode(name: str, fault: Callable[[Trigger], contextlib.AbstractContextManager]) -> Result:
    result, trigger = Result(name), Trigger()
    with mock_aws():
        sb, trusted, untrusted = world()
        sb.start()
        try:
            provision(boto3.client("dynamodb"), boto3.client("secretsmanager"), TABLE)
            sqs = boto3.client("sqs")
            queue_url = create_queues(sqs, QUEUE, DLQ)
            settings = Settings(config_source="faults", table_name=TABLE, events_queue=QUEUE, max_workers=1)
            with mock.patch.dict("os.environ", {"AWS_ENDPOINT_URL_DIRECT_CONNECT": sb.url}):
                policy = parse_policy(scenario.CONFIG.replace("default_action: ask", "default_action: ignore"))
                runtime = Runtime(settings, policy=policy, clock=sb.clock)
                ledger = Ledger(boto3.client("dynamodb"), TABLE)
                with fault(trigger):
                    for result.cycles in range(1, MAX_CYCLES + 1):
                        try:
                            reconcile.run_cycle(runtime)
                        except Killed:
                            runtime = Runtime(settings, policy=policy, clock=sb.clock)  # a new process
                        sb.clock.advance(timedelta(minutes=1))
                        recorded = ledger.load("osc-prod").vifs
                        if result.cycles > max(KILL_AT) and all(
                            recorded.get(v) and recorded[v].confirmed_at for v in trusted
                        ):
                            break
                for _ in range(2):  # settle: pending -> available, outbox drained
                    reconcile.run_cycle(runtime)
                    sb.clock.advance(timedelta(minutes=1))
            result.faults = trigger.fired
            received = drain(sqs, queue_url)
            count(result, sb, trusted, untrusted, ledger.load("osc-prod").vifs, received)
        finally:
            sb.stop()
    return result


def drain(sqs, queue_url: str) -> list:
    received = []
    while True:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = answer.get("Messages", [])
        if not messages:
            return received
        for message in messages:
            received.append(events.parse(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def count(result: Result, sb, trusted: list[str], untrusted: list[str], recorded: dict, received: list) -> None:
    confirms = {v: sb.confirm_count(v) for v in trusted + untrusted}
    result.confirm_calls = sum(confirms.values())
    result.duplicate_confirms = sum(n - 1 for n in confirms.values() if n > 1)
    result.untrusted_confirmed = sum(1 for v in untrusted if confirms[v])
    result.unconfirmed = sum(1 for v in trusted if not confirms[v])
    result.unrecorded = sum(1 for v in trusted if not (recorded.get(v) and recorded[v].confirmed_at))
    ids = Counter(e.id for e in received)
    # A VIF's transitions happen once each; target.failed/recovered come once per failing spell.
    by_meaning = Counter(
        (e.type, e.subject, getattr(e.data, "from_state", None), getattr(e.data, "to_state", None))
        for e in received
        if e.type.startswith("vif.")
    )
    result.duplicated = sum(n - 1 for n in ids.values() if n > 1) + sum(n - 1 for n in by_meaning.values() if n > 1)
    expected = [("vif.discovered", v) for v in trusted + untrusted] + [("vif.confirmed", v) for v in trusted]
    got = {(e.type, e.subject) for e in received}
    left = {e.subject for e in received if e.type == "vif.state_changed" and e.data.from_state == "confirming"}
    arrived = {e.subject for e in received if e.type == "vif.state_changed" and e.data.to_state == "available"}
    result.lost = sum(1 for key in expected if key not in got) + sum(
        (v not in left) + (v not in arrived) for v in trusted
    )
    result.false_gone = sum(1 for e in received if e.type in ("vif.disappeared", "vif.expired"))


def main() -> int:
    logger.setLevel(logging.CRITICAL)
    # moto's keys and region; nothing here reaches a real cloud.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="eu-west-2")
    columns = (
        "mode",
        "faults",
        "cycles",
        "confirm calls",
        "dup confirms",
        "untrusted confirmed",
        "not confirmed",
        "not recorded",
        "events lost",
        "events duplicated",
        "false gone",
    )
    print(f"{TRUSTED} trusted + {UNTRUSTED} untrusted VIFs per mode; confirms expected: {TRUSTED}\n")
    print(" | ".join(columns))
    bad = 0
    for name, fault in MODES.items():
        r = run_mode(name, fault)
        figures = (
            r.faults,
            r.cycles,
            r.confirm_calls,
            r.duplicate_confirms,
            r.untrusted_confirmed,
            r.unconfirmed,
            r.unrecorded,
            r.lost,
            r.duplicated,
            r.false_gone,
        )
        print(" | ".join([r.mode, *map(str, figures)]))
        bad += r.confirm_calls != TRUSTED or any(figures[3:])
    print(
        "\nall modes: every trusted VIF confirmed once and recorded, nothing lost or doubled"
        if not bad
        else f"\n{bad} mode(s) missed"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
