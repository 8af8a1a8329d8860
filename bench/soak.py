"""Fault soak: many poll cycles of the real reconcile code under faults, then count what survived.

One world: the DirectLink sandbox (3 accounts, a trusted and a rogue partner connection) and
in-process moto (DynamoDB ledger, SQS FIFO events queue). Each cycle, new hosted VIFs may arrive:
trusted ones (the allowlist confirms them), ones a reject rule rejects, ones the lab's ask rule asks
about, ones no rule matches (ignored) and traps (a trusted name on the rogue connection, or in the lab
account). The sandbox clock moves on between cycles, so the VIFs nobody confirms expire after 7 days.
Meanwhile:

- the sandbox throttles 30% and fails (5xx) 10% of DirectLink requests, each after some latency;
- SQS refuses 5% of SendMessageBatch calls and 5% of the entries of the others (botocore event hooks
  on each poller's own Session: nothing in chalicelib is changed);
- some cycles die (a BaseException, as in bench/fault_run.py) right after Confirm answered or on the
  ledger write that records it, and some during the flush (SQS has the events, the outbox still does);
  a dead poller is replaced by a new Runtime, as a new Lambda instance would be;
- for the middle third of the run, 4 pollers (threads, each its own Runtime and boto3 Session) run
  every cycle at once on the same ledger and queue.

Then arrivals stop and cycles go on until every eligible VIF is confirmed and the outbox is empty;
the queue is drained and checked against two references: every event the ledger committed to its
outbox (captured at the wire, from successful TransactWriteItems calls) and, per VIF, the transitions
its kind and final state imply. See Soak.problems() for what is asserted.

    .venv/bin/python bench/soak.py [--cycles 100] [--seed 1] [--json]

botocore's retry backoff is scaled down (--backoff-scale, default 0.01): its real delays (up to 4 s
per throttled retry) would make a soak of hundreds of cycles take an hour; the retries are real.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from botocore.awsrequest import AWSResponse
from botocore.retries import standard as retry_standard
from moto import mock_aws
from moto.sqs.responses import SQSResponse

from chalicelib import events, reconcile
from chalicelib.config import parse_policy
from chalicelib.directlink import DirectLinkApi
from chalicelib.ledger import OUTBOX, Ledger
from chalicelib.log import logger
from chalicelib.policy import Confirm
from chalicelib.runtime import Runtime, Settings
from sandbox import DirectLinkSandbox, SandboxClock, scenario
from sandbox.local import create_queues, provision

REGION = "eu-west-2"
TABLE, QUEUE, DLQ = "vifgate-soak", "vifgate-soak.fifo", "vifgate-soak-dlq.fifo"
PROD, STAGING, LAB, PARTNER = scenario.PROD, scenario.STAGING, scenario.LAB, scenario.PARTNER
TRUSTED_CONNECTION, ROGUE_CONNECTION = scenario.PARTNER_CONNECTION, "dxcon-rogue001"
GATEWAYS = {PROD: scenario.PROD_GATEWAY, STAGING: scenario.STAGING_GATEWAY, LAB: scenario.LAB_GATEWAY}
TARGETS = {"osc-prod": PROD, "osc-staging": STAGING, "osc-lab": LAB}
# The sandbox's own error codes for the faults it injects: such a request never reached a VIF.
INJECTED = {"ThrottlingException", "DirectConnectServerException"}

POLICY = f"""\
targets:
{
    "".join(
        f'  - {{name: {name}, provider: outscale, region: {REGION}, account_id: "{account}",'
        f" credentials: {{secret_id: {scenario.secret_id(name)}}}}}\n"
        for name, account in TARGETS.items()
    )
}rules:
  - {{name: trust-prod, accounts: ["{PROD}"], connections: [{TRUSTED_CONNECTION}], vif_name: "trust-*",
     gateway: {scenario.PROD_GATEWAY}, action: confirm}}
  - {{name: trust-staging, accounts: ["{STAGING}"], connections: [{TRUSTED_CONNECTION}], vif_name: "trust-*",
     gateway: {scenario.STAGING_GATEWAY}, action: confirm}}
  - {{name: reject-bad, accounts: ["{PROD}", "{STAGING}", "{LAB}"], vif_name: "bad-*", action: reject}}
  - {{name: ask-lab, accounts: ["{LAB}"], action: ask}}
default_action: ignore
expiry_alerts: [72h, 24h, 4h]
"""

# kind: (weight, [(owner, connection, name prefix)]); the policy above decides each the way the kind says.
KINDS: dict[str, tuple[int, list[tuple[str, str, str]]]] = {
    "eligible": (40, [(PROD, TRUSTED_CONNECTION, "trust"), (STAGING, TRUSTED_CONNECTION, "trust")]),
    "rejected": (10, [(PROD, TRUSTED_CONNECTION, "bad"), (LAB, TRUSTED_CONNECTION, "bad")]),
    "asked": (20, [(LAB, TRUSTED_CONNECTION, "lab")]),
    "ignored": (15, [(PROD, TRUSTED_CONNECTION, "other"), (STAGING, ROGUE_CONNECTION, "other")]),
    # A trusted name where the allowlist does not trust it: the rogue connection, or the lab account.
    "trap": (15, [(PROD, ROGUE_CONNECTION, "trust"), (LAB, TRUSTED_CONNECTION, "trust")]),
}


class Killed(BaseException):
    """The process dies at this line: nothing after it runs, nothing catches it."""


class Breakage:
    """Deliberately broken worlds, for the test of the checker itself (never in a real soak)."""

    SKIP_CONFIRM_EVENT = "skip-confirm-event"  # the confirm's ledger write loses its vif.confirmed
    DROP_EVENTS = "drop-events"  # SQS says Successful for an entry it never stored
    REORDER = "reorder"  # an entry is held back and sent after its VIF's later events
    NO_CLAIMS = "no-claims"  # claims always succeed: concurrent pollers may confirm twice
    CONFIRM_EVERYTHING = "confirm-everything"  # the policy's decision is ignored
    ALL = (SKIP_CONFIRM_EVENT, DROP_EVENTS, REORDER, NO_CLAIMS, CONFIRM_EVERYTHING)


@dataclass
class SoakSettings:
    """What a soak run does; the defaults are the bench's."""

    cycles: int = 100
    seed: int = 1
    arrivals: float = 2.0  # mean new VIFs per cycle (arrivals stop after 80% of the cycles)
    initial: int = 6  # VIFs of random kinds already waiting at the first cycle (besides one of each kind)
    step: timedelta | None = None  # sandbox time between cycles; default: the run covers 8.5 days
    throttle_rate: float = 0.3
    error_rate: float = 0.1
    latency_ms: int = 2
    sqs_call_refuse_rate: float = 0.05
    sqs_entry_refuse_rate: float = 0.05
    kill_rate: float = 0.2  # per Confirm: half right after its answer, half on the ledger write recording it
    flush_kill_rate: float = 0.03  # per outbox delete after SQS accepted a batch
    pollers: int = 4
    parallel: tuple[float, float] = (1 / 3, 2 / 3)  # the share of the run with `pollers` pollers at once
    settle_cycles: int = 60  # at most, after the last arrival
    backoff_scale: float = 0.01
    breakage: str | None = None

    def time_step(self) -> timedelta:
        return self.step or max(timedelta(minutes=30), timedelta(days=8.5) / max(1, self.cycles))


@dataclass
class Vif:
    vif_id: str
    kind: str
    owner: str
    target: str
    arrived_cycle: int


@dataclass
class Committed:
    sort_key: str
    event_id: str
    group: str
    type: str


@dataclass
class Soak:
    """The figures of one run and what it found wrong (problems() must be empty)."""

    settings: SoakSettings
    cycles: int = 0
    parallel_cycles: int = 0
    settle_cycles: int = 0
    wall_seconds: float = 0.0
    vifs: dict[str, int] = field(default_factory=dict)  # by kind
    final_states: dict[str, int] = field(default_factory=dict)
    confirms: int = 0  # Confirm requests applied by the sandbox
    confirm_requests: int = 0  # Confirm requests that reached a VIF (not an injected fault)
    duplicate_confirms: int = 0
    ineligible_confirmed: int = 0
    eligible_unconfirmed: int = 0
    unrecorded: int = 0  # confirmed or rejected at the sandbox, not in the ledger
    deletes: int = 0
    duplicate_deletes: int = 0
    wrong_deletes: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    directlink_requests: int = 0
    restarts: int = 0
    cycle_failures: int = 0  # target failures reported in cycle summaries
    events_expected: int = 0  # distinct event ids the ledger committed to its outbox
    events_committed_twice: int = 0
    events_received: int = 0  # messages drained from the queue
    events_duplicated: int = 0  # the same event id delivered more than once
    events_dropped_by_dedup: int = 0  # resent within SQS's 5-minute deduplication interval (as SQS does)
    events_lost: int = 0  # committed, never delivered
    events_unexpected: int = 0  # delivered, never committed
    events_parked: int = 0
    events_left_in_outbox: int = 0
    transitions_expected: int = 0  # required transitions per VIF (kind and final state)
    transitions_missing: int = 0
    transitions_duplicated: int = 0
    order_violations: int = 0  # VIFs whose events arrived in another order than the ledger committed them
    state_chain_breaks: int = 0  # VIFs whose state_changed events do not chain from discovered to the sandbox's state
    details: list[str] = field(default_factory=list)  # what each problem was, for the reader

    def problems(self) -> list[str]:
        checks = {
            "eligible VIFs not confirmed": self.eligible_unconfirmed,
            "duplicate confirms": self.duplicate_confirms,
            "ineligible VIFs confirmed": self.ineligible_confirmed,
            "confirms or rejects not recorded": self.unrecorded,
            "duplicate deletes": self.duplicate_deletes,
            "deletes of VIFs no reject rule names": self.wrong_deletes,
            "events lost": self.events_lost,
            "events duplicated": self.events_duplicated,
            "events unexpected": self.events_unexpected,
            "events left in the outbox": self.events_left_in_outbox,
            "transitions missing": self.transitions_missing,
            "transitions duplicated": self.transitions_duplicated,
            "order violations": self.order_violations,
            "state chain breaks": self.state_chain_breaks,
        }
        return [f"{name}: {count}" for name, count in checks.items() if count]

    def figures(self) -> dict[str, Any]:
        values = asdict(self)
        values["settings"] = {
            k: (str(v) if isinstance(v, timedelta) else v) for k, v in asdict(self.settings).items()
        } | {"step": str(self.settings.time_step())}
        return values


# --- fault injection outside chalicelib ------------------------------------------------------------


def _serialize_moto_sqs() -> None:
    """SQS deduplicates atomically; moto checks a deduplication id and appends without a lock."""
    if getattr(SQSResponse.call_action, "serialized", False):
        return
    lock, call_action = threading.RLock(), SQSResponse.call_action

    def serialized(self, *args, **kwargs):
        with lock:
            return call_action(self, *args, **kwargs)

    serialized.serialized = True  # type: ignore[attr-defined]
    SQSResponse.call_action = serialized  # type: ignore[method-assign]


class World:
    """The sandbox, the queue, the ground truth, and the hooks each poller's Session gets."""

    def __init__(self, settings: SoakSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self._fault_rng = random.Random(f"faults-{settings.seed}")
        self._lock = threading.Lock()
        self.clock = SandboxClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
        self.sb = DirectLinkSandbox(flavor="outscale", region=REGION, clock=self.clock, seed=settings.seed)
        self.vifs: dict[str, Vif] = {}
        self.committed: list[Committed] = []
        self.faults: Counter[str] = Counter()
        self._steps: Counter[str] = Counter()
        self.restarts = 0
        self.cycle_failures = 0
        self._vlan = 1
        self._held: list[dict[str, Any]] = []  # Breakage.REORDER's entry held back
        self.policy = parse_policy(POLICY, "soak")
        self.runtime_settings = Settings(config_source="soak", table_name=TABLE, events_queue=QUEUE, max_workers=3)

    def chance(self, rate: float) -> bool:
        with self._lock:
            return self._fault_rng.random() < rate

    def kill(self, kind: str, rate: float) -> bool:
        """Whether this step fails (dies, is refused): always the first time (so each kind happens), then at `rate`."""
        with self._lock:
            self._steps[kind] += 1
            first = self._steps[kind] == 1
        if first or self.chance(rate):
            self.count(kind)
            return True
        return False

    def count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.faults[kind] += n

    # -- the DirectLink side --

    def build(self) -> None:
        sb = self.sb
        for account, (key, secret) in scenario.KEYS.items():
            sb.add_account(account, access_key=key, secret_key=secret)
        sb.add_location("PAR1", "Paris")
        sb.add_connection(PARTNER, "partner-10g", "PAR1", connection_id=TRUSTED_CONNECTION)
        sb.add_connection(PARTNER, "unknown-port", "PAR1", connection_id=ROGUE_CONNECTION)
        for account, gateway in GATEWAYS.items():
            sb.add_gateway(account, state="available", gateway_id=gateway)

    def arrive(self, cycle: int, n: int) -> None:
        """n VIFs of random kinds; at cycle 0 also one of every kind and variant, so that each is there."""
        kinds = list(KINDS)
        weights = [KINDS[k][0] for k in kinds]
        every = [(k, v) for k in kinds for v in KINDS[k][1]] if cycle == 0 else []
        for _ in range(n):
            kind = self.rng.choices(kinds, weights)[0]
            every.append((kind, self.rng.choice(KINDS[kind][1])))
        for kind, (owner, connection, prefix) in every:
            self._vlan += 1
            wire = self.sb.allocate(connection, owner, f"{prefix}-{self._vlan}", self._vlan, 65001)
            target = next(name for name, account in TARGETS.items() if account == owner)
            vif_id = wire["virtualInterfaceId"]
            self.vifs[vif_id] = Vif(vif_id, kind, owner, target, cycle)

    # -- each poller's Session: SQS refusals, and the outbox writes the ledger committed --

    def session(self) -> boto3.Session:
        session = boto3.Session(region_name=REGION)
        session.events.register("before-parameter-build.sqs.SendMessageBatch", self._sqs_before)
        session.events.register("before-call.sqs.SendMessageBatch", self._sqs_refuse_call)
        session.events.register("after-call.sqs.SendMessageBatch", self._sqs_after)
        session.events.register("before-parameter-build.dynamodb.TransactWriteItems", self._ddb_before)
        session.events.register("after-call.dynamodb.TransactWriteItems", self._ddb_after)
        return session

    def runtime(self) -> Runtime:
        return Runtime(self.runtime_settings, policy=self.policy, clock=self.clock, session=self.session())

    def _sqs_before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        entries: list[dict[str, Any]] = params.get("Entries", [])
        rate = self.settings.sqs_call_refuse_rate
        if rate and self.kill("sqs call refused", rate):  # the first call always: every run has one
            context["soak_refuse_call"] = True
            return
        refused = [e for e in entries if self.chance(self.settings.sqs_entry_refuse_rate)][: len(entries) - 1]
        breakage = self.settings.breakage
        swallowed: list[dict[str, Any]] = []
        if breakage == Breakage.DROP_EVENTS and len(entries) > 1 and self.chance(0.5):
            swallowed = [entries[0]]
        if breakage == Breakage.REORDER and len(entries) > 1 and not self._steps["held"]:
            self._steps["held"] += 1  # once: held back until the next call, then sent after its VIF's later events
            swallowed = [entries[0]]
        with self._lock:
            release, self._held = (self._held, swallowed) if breakage == Breakage.REORDER else ([], [])
        for entry in refused + swallowed:
            entries.remove(entry)
        for i, held in enumerate(release):  # sent now, after later events of its VIF
            entries.append(dict(held, Id=f"held-{i}"))
        self.count("sqs entry refused", len(refused))
        context["soak_refused"] = refused
        context["soak_swallowed"] = swallowed

    def _sqs_refuse_call(self, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not context.get("soak_refuse_call"):
            return None
        error = {"Code": "InternalError", "Message": "injected by the soak"}
        return AWSResponse("https://sqs.soak", 500, {}, None), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": 500},
        }

    def _sqs_after(self, http_response: AWSResponse, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if http_response.status_code != 200 or context.get("soak_refuse_call"):
            return
        parsed["Successful"] = [ok for ok in parsed.get("Successful", []) if not ok["Id"].startswith("held-")]
        for entry in context.get("soak_refused", []):
            parsed.setdefault("Failed", []).append(
                {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected by the soak"}
            )
        for entry in context.get("soak_swallowed", []):  # a broken world only: said to be sent, never stored
            parsed.setdefault("Successful", []).append({"Id": entry["Id"], "MessageId": "swallowed"})

    def _ddb_before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["soak_outbox"] = [
            put["Put"]["Item"]
            for put in params.get("TransactItems", [])
            if "Put" in put and put["Put"]["Item"].get("target", {}).get("S") == OUTBOX
        ]

    def _ddb_after(self, http_response: AWSResponse, context: dict[str, Any], **_: Any) -> None:
        if http_response.status_code != 200:
            return
        with self._lock:
            for item in context.get("soak_outbox", []):
                self.committed.append(
                    Committed(item["vif_id"]["S"], item["event_id"]["S"], item["group"]["S"], item["type"]["S"])
                )


@contextlib.contextmanager
def patched(world: World) -> Iterator[None]:
    """The kills and (for the checker's test only) the breakages; the backoff scaled down."""
    s = world.settings
    confirm, save, delete = DirectLinkApi.confirm, Ledger.save, Ledger.delete_events
    claim, mark_called = Ledger.claim, Ledger.mark_called
    delay = retry_standard.ExponentialBackoff.delay_amount

    def confirm_then_die(api, vif_id, gateway_id):
        state = confirm(api, vif_id, gateway_id)
        if s.kill_rate and world.kill("kill after Confirm answered", s.kill_rate / 2):
            raise Killed
        return state

    def save_or_die(self, record, events=(), **kwargs):
        confirming = any(e.type == "vif.confirmed" for e in events)
        if confirming and s.kill_rate and world.kill("kill on the confirm's ledger write", s.kill_rate / 2):
            raise Killed
        if confirming and s.breakage == Breakage.SKIP_CONFIRM_EVENT:
            events = [e for e in events if e.type != "vif.confirmed"]
        save(self, record, events, **kwargs)

    def delete_or_die(self, sort_keys):
        if sort_keys and s.flush_kill_rate and world.kill("kill during the flush", s.flush_kill_rate):
            raise Killed
        return delete(self, sort_keys)

    def confirm_anything(vif, gateways, policy, target=None):
        decision = decide(vif, gateways, policy, target)
        if vif.state == "confirming" and vif.owner_account in GATEWAYS:
            return Confirm(rule="broken", gateway=GATEWAYS[vif.owner_account], reason="broken world")
        return decision

    decide = reconcile.decide
    patches = [
        mock.patch.object(DirectLinkApi, "confirm", confirm_then_die),
        mock.patch.object(Ledger, "save", save_or_die),
        mock.patch.object(Ledger, "delete_events", delete_or_die),
        mock.patch.object(
            retry_standard.ExponentialBackoff, "delay_amount", lambda self, ctx: delay(self, ctx) * s.backoff_scale
        ),
    ]
    if s.breakage == Breakage.NO_CLAIMS:
        # Every claim "succeeds", and the pollers meet at it: all of them go on to confirm the same VIF
        # (without the meeting, a loaded machine can run them one after the other and hide the race).
        meeting = threading.Barrier(max(1, s.pollers))

        def racing_claim(self: Ledger, *args: Any, **kwargs: Any) -> None:
            try:
                meeting.wait(timeout=2)
            except threading.BrokenBarrierError:
                meeting.reset()  # a poller with nothing to claim: the next VIF meets again

        patches += [
            mock.patch.object(Ledger, "claim", racing_claim),
            mock.patch.object(Ledger, "mark_called", lambda self, *a, **k: None),
        ]
    if s.breakage == Breakage.CONFIRM_EVERYTHING:
        patches.append(mock.patch.object(reconcile, "decide", confirm_anything))
    assert claim and mark_called  # kept for reading: the originals the no-claims breakage replaces
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


# --- running it ---------------------------------------------------------------------------------------


class Pollers:
    """Poller slots, each with its own Runtime; a killed one is replaced by a new Runtime."""

    def __init__(self, world: World, n: int) -> None:
        self.world = world
        self.runtimes = [world.runtime() for _ in range(n)]

    def cycle(self, slot: int, start: threading.Barrier | None = None) -> None:
        if start is not None:
            start.wait()
        try:
            report = reconcile.run_cycle(self.runtimes[slot])
            with self.world._lock:
                self.world.cycle_failures += len(report.failures)
        except Killed:
            self.runtimes[slot] = self.world.runtime()  # a new instance: new clients, nothing cached
            with self.world._lock:
                self.world.restarts += 1

    def all_at_once(self) -> None:
        start = threading.Barrier(len(self.runtimes))
        threads = [threading.Thread(target=self.cycle, args=(i, start)) for i in range(len(self.runtimes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def run(settings: SoakSettings | None = None, progress: Callable[[str], None] | None = None) -> Soak:
    settings = settings or SoakSettings()
    began = time.monotonic()
    result = Soak(settings)
    _serialize_moto_sqs()
    saved_level = logger.level
    logger.setLevel(logging.CRITICAL)  # thousands of cycle lines; the figures are what counts
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    try:
        with mock.patch.dict(os.environ, env), mock_aws():
            world = World(settings)
            world.build()
            world.sb.start()
            try:
                _soak(world, result, progress)
            finally:
                world.sb.stop()
    finally:
        logger.setLevel(saved_level)
    result.wall_seconds = round(time.monotonic() - began, 2)
    return result


def _soak(world: World, result: Soak, progress: Callable[[str], None] | None) -> None:
    s, sb = world.settings, world.sb
    provision(boto3.client("dynamodb"), boto3.client("secretsmanager"), TABLE)
    sqs = boto3.client("sqs")
    queue_url = create_queues(sqs, QUEUE, DLQ)
    ledger = Ledger(boto3.client("dynamodb"), TABLE)
    os.environ["AWS_ENDPOINT_URL_DIRECT_CONNECT"] = sb.url
    sb.set_faults(throttle_rate=s.throttle_rate, error_rate=s.error_rate, latency_ms=s.latency_ms)
    consumer = Consumer(sqs, queue_url)
    pollers = Pollers(world, max(1, s.pollers))
    parallel = range(int(s.cycles * s.parallel[0]), int(s.cycles * s.parallel[1]))
    last_arrival = int(s.cycles * 0.8)
    world.arrive(0, s.initial)
    with patched(world):
        for cycle in range(s.cycles):
            if 0 < cycle < last_arrival:
                world.arrive(cycle, _poisson(world.rng, s.arrivals))
            if cycle in parallel and s.pollers > 1:
                pollers.all_at_once()
                result.parallel_cycles += 1
            else:
                pollers.cycle(0)
            result.cycles += 1
            consumer.drain()
            world.clock.advance(s.time_step())
            if progress and (cycle + 1) % 10 == 0:
                progress(f"cycle {cycle + 1}/{s.cycles}: {len(world.vifs)} VIFs, {world.restarts} restarts")
        # Settle: no more arrivals, faults still on, a few minutes between cycles.
        for _ in range(s.settle_cycles):
            if _settled(world, ledger):
                break
            pollers.cycle(0)
            consumer.drain()
            result.settle_cycles += 1
            world.clock.advance(timedelta(minutes=5))
    counts, parked = ledger.outbox_counts()
    result.events_left_in_outbox, result.events_parked = counts, parked
    consumer.drain()
    received = consumer.received
    result.events_dropped_by_dedup = consumer.dropped_by_dedup
    result.faults = dict(world.faults) | {
        "directlink throttled": sb.fault_counts["throttled"],
        "directlink 5xx": sb.fault_counts["failed"],
    }
    result.directlink_requests = len(sb.requests)
    result.restarts, result.cycle_failures = world.restarts, world.cycle_failures
    records = {vif_id: r for target in TARGETS for vif_id, r in ledger.load(target).vifs.items()}
    check(result, world, records, received)


def _poisson(rng: random.Random, mean: float) -> int:
    n, p, limit = 0, 1.0, pow(2.718281828459045, -mean)
    while True:
        p *= rng.random()
        if p < limit:
            return n
        n += 1


def _settled(world: World, ledger: Ledger) -> bool:
    """The ledger has seen every VIF as the sandbox has it now, every eligible one is confirmed and recorded,
    every reject done and recorded, and the outbox is empty."""
    records = {vif_id: r for target in TARGETS for vif_id, r in ledger.load(target).vifs.items()}
    for vif in world.vifs.values():
        record = records.get(vif.vif_id)
        if not record or record.state != world.sb.vif(vif.vif_id)["virtualInterfaceState"]:
            return False
        if vif.kind == "eligible" and not (record and record.confirmed_at and record.state == "available"):
            return False
        if vif.kind == "rejected" and not (record and record.rejected_at and record.state == "rejected"):
            return False
    return ledger.outbox_counts()[0] == 0


DEDUPLICATION_SECONDS = 300  # SQS FIFO's deduplication interval


class Consumer:
    """Takes everything off the queue after each cycle, in the order FIFO hands it out (per VIF: as sent).

    moto forgets a deduplication id once its message is deleted (and scans the whole queue on every
    send, so a queue left full makes a soak quadratic); SQS keeps each id 5 minutes whatever happens
    to the message. The consumer keeps them the same 5 minutes: a message whose id was delivered less
    than 5 minutes before is one SQS would have dropped (counted apart); a later one is a duplicate.
    """

    def __init__(self, sqs, queue_url: str) -> None:
        self.sqs, self.queue_url = sqs, queue_url
        self.received: list = []
        self.dropped_by_dedup = 0
        self._delivered_at: dict[str, float] = {}

    def drain(self) -> None:
        while True:
            answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = answer.get("Messages", [])
            if not messages:
                return
            for message in messages:
                event = events.parse(message["Body"])
                now = time.monotonic()
                first = self._delivered_at.setdefault(event.id, now)
                if first != now and now - first < DEDUPLICATION_SECONDS:
                    self.dropped_by_dedup += 1
                else:
                    self.received.append(event)
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


# --- the checker ------------------------------------------------------------------------------------


def check(result: Soak, world: World, records: dict, received: list) -> None:
    """Fill result's counts from the sandbox, the ledger, the committed outbox writes and the drained queue."""
    sb, vifs = world.sb, world.vifs
    result.vifs = dict(Counter(v.kind for v in vifs.values()))
    final = {v: sb.vif(v)["virtualInterfaceState"] for v in vifs}
    result.final_states = dict(Counter(final.values()))
    note = result.details.append

    # Confirms and deletes, counted at the sandbox per VIF (requests an injected fault stopped reached no VIF).
    for vif in vifs.values():
        confirms = [r for r in sb.requests_for(vif.vif_id) if r.outcome not in INJECTED]
        deletes = [r for r in sb.requests_for(vif.vif_id, "DeleteVirtualInterface") if r.outcome not in INJECTED]
        applied = sb.confirm_count(vif.vif_id)
        result.confirms += applied
        result.confirm_requests += len(confirms)
        result.deletes += len(deletes)
        if len(confirms) > 1:
            result.duplicate_confirms += len(confirms) - 1
            note(f"{vif.vif_id} ({vif.kind}): {len(confirms)} Confirm requests: {[r.outcome for r in confirms]}")
        if len(deletes) > 1:
            result.duplicate_deletes += len(deletes) - 1
        if vif.kind != "eligible" and confirms:
            result.ineligible_confirmed += 1
            note(f"{vif.vif_id} ({vif.kind}, {vif.target}) was confirmed")
        if vif.kind != "rejected" and deletes:
            result.wrong_deletes += 1
        if vif.kind == "eligible" and (applied != 1 or final[vif.vif_id] != "available"):
            result.eligible_unconfirmed += 1
            note(f"{vif.vif_id} (eligible) is {final[vif.vif_id]} after {applied} applied Confirm(s)")
        record = records.get(vif.vif_id)
        if vif.kind == "eligible" and applied and not (record and record.confirmed_at):
            result.unrecorded += 1
        if vif.kind == "rejected" and final[vif.vif_id] == "rejected" and not (record and record.rejected_at):
            result.unrecorded += 1

    # Every event the ledger committed arrives once; nothing arrives that was not committed.
    first_commit: dict[str, Committed] = {}
    for c in sorted(world.committed, key=lambda c: c.sort_key):
        if c.event_id in first_commit:
            result.events_committed_twice += 1
        else:
            first_commit[c.event_id] = c
    delivered = Counter(e.id for e in received)
    result.events_expected = len(first_commit)
    result.events_received = len(received)
    result.events_duplicated = sum(n - 1 for n in delivered.values())
    lost = [c for c in first_commit.values() if c.event_id not in delivered]
    result.events_lost = len(lost)
    result.events_unexpected = sum(1 for e in delivered if e not in first_commit)
    for c in lost[:5]:
        note(f"lost: {c.type} of {c.group} ({c.event_id[:12]})")

    # Per VIF (FIFO group): the order received is the order committed.
    by_group: dict[str, list] = defaultdict(list)
    seen: set[str] = set()
    for e in received:
        if e.id not in seen:
            seen.add(e.id)
            by_group[e.subject].append(e)
    committed_order: dict[str, list[str]] = defaultdict(list)
    for c in sorted(first_commit.values(), key=lambda c: c.sort_key):
        committed_order[c.group].append(c.event_id)
    for group, got in by_group.items():
        ids = [e.id for e in got]
        expected = [i for i in committed_order.get(group, []) if i in set(ids)]
        if ids != expected:
            result.order_violations += 1
            note(f"order of {group}: got {[e.type for e in got]}")

    # Per VIF, the transitions its kind and final state require, each exactly once, in an order that happened.
    for vif in vifs.values():
        _transitions(result, vif, final[vif.vif_id], by_group.get(vif.vif_id, []))


def _transitions(result: Soak, vif: Vif, final: str, got: list) -> None:
    note = result.details.append
    types = Counter(e.type for e in got)
    required = {"vif.discovered": 1}
    if vif.kind == "eligible":
        required["vif.confirmed"] = 1
    if vif.kind == "rejected":
        required["vif.rejected"] = 1
    if vif.kind == "asked" or (vif.kind == "trap" and vif.owner == LAB):
        required["vif.approval_requested"] = 1
    if final == "expired":
        required["vif.expired"] = 1
    forbidden = {"vif.disappeared", "vif.reappeared"}
    forbidden |= {"vif.confirmed"} if vif.kind != "eligible" else set()
    forbidden |= {"vif.rejected"} if vif.kind != "rejected" else set()
    # An eligible VIF is asked about (notify only) when its account's gateways could not be listed: allowed once.
    asked_ok = set(required) | ({"vif.approval_requested"} if vif.kind == "eligible" else set())
    forbidden |= {"vif.approval_requested"} - asked_ok
    if vif.kind == "eligible" and types["vif.approval_requested"] > 1:
        result.transitions_duplicated += types["vif.approval_requested"] - 1
    result.transitions_expected += sum(required.values())
    for kind, n in required.items():
        if types[kind] < n:
            result.transitions_missing += n - types[kind]
            note(f"{vif.vif_id} ({vif.kind}): no {kind}")
        elif types[kind] > n:
            result.transitions_duplicated += types[kind] - n
            note(f"{vif.vif_id} ({vif.kind}): {types[kind]} x {kind}")
    for kind in forbidden:
        if types[kind]:
            result.transitions_duplicated += types[kind]
            note(f"{vif.vif_id} ({vif.kind}): unexpected {kind}")
    thresholds = Counter(e.data.threshold_hours for e in got if e.type == "vif.expiry_warning")
    result.transitions_duplicated += sum(n - 1 for n in thresholds.values())
    # The states chain: discovered in one, each change from where the last left it, ending where the sandbox is.
    if not got or got[0].type != "vif.discovered":
        if got:
            result.order_violations += 1
            note(f"{vif.vif_id}: first event {got[0].type}")
        return
    state, broken = got[0].data.state, False
    for e in got[1:]:
        if e.type == "vif.state_changed":
            broken |= e.data.from_state != state
            state = e.data.to_state
    if broken or state != final:
        result.state_chain_breaks += 1
        changes = [(e.data.from_state, e.data.to_state) for e in got if e.type == "vif.state_changed"]
        note(f"{vif.vif_id} ({vif.kind}): states {changes}, sandbox says {final}")


# --- the bench --------------------------------------------------------------------------------------


def render(r: Soak) -> str:
    s = r.settings
    faults = ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items()))
    lines = [
        f"cycles            {r.cycles} (+{r.settle_cycles} to settle; {r.parallel_cycles} with {s.pollers} pollers"
        f" at once), sandbox step {s.time_step()}, seed {s.seed}",
        f"VIFs              {sum(r.vifs.values())}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.vifs.items()))
        + "; final states "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.final_states.items())),
        f"confirms          {r.confirms} applied, {r.confirm_requests} Confirm requests reached a VIF;"
        f" duplicates {r.duplicate_confirms}; ineligible confirmed {r.ineligible_confirmed};"
        f" eligible unconfirmed {r.eligible_unconfirmed}; unrecorded {r.unrecorded}",
        f"deletes           {r.deletes}; duplicates {r.duplicate_deletes};"
        f" of VIFs no reject rule names {r.wrong_deletes}",
        f"faults            {faults}",
        f"                  of {r.directlink_requests} DirectLink requests ({s.latency_ms} ms latency each);"
        f" {r.restarts} poller restarts; {r.cycle_failures} target failures reported",
        f"events            expected {r.events_expected}, received {r.events_received}, duplicated"
        f" {r.events_duplicated}, lost {r.events_lost}, unexpected {r.events_unexpected}, left in outbox"
        f" {r.events_left_in_outbox} (parked {r.events_parked})",
        f"                  resends SQS's deduplication dropped {r.events_dropped_by_dedup};"
        f" committed twice (same id, FIFO keeps one) {r.events_committed_twice}",
        f"transitions       expected {r.transitions_expected}, missing {r.transitions_missing},"
        f" duplicated {r.transitions_duplicated}",
        f"order violations  {r.order_violations}; state chain breaks {r.state_chain_breaks}",
        f"wall time         {r.wall_seconds:.1f} s",
    ]
    problems = r.problems()
    lines.append("\nall checks hold" if not problems else "\nFAILED: " + "; ".join(problems))
    lines += [f"  {d}" for d in r.details[:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--arrivals", type=float, default=2.0, help="mean new VIFs per cycle")
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=2)
    parser.add_argument("--backoff-scale", type=float, default=0.01)
    parser.add_argument("--breakage", choices=Breakage.ALL, help="a deliberately broken world: the checks must fail")
    parser.add_argument("--json", action="store_true", help="the figures as one JSON object")
    args = parser.parse_args(argv)
    settings = SoakSettings(
        cycles=args.cycles,
        seed=args.seed,
        arrivals=args.arrivals,
        pollers=args.pollers,
        latency_ms=args.latency_ms,
        backoff_scale=args.backoff_scale,
        breakage=args.breakage,
    )
    result = run(settings, progress=None if args.json else lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result.figures(), default=str) if args.json else render(result))
    return 1 if result.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
