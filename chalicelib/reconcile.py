"""One poll cycle: every target at once, decide each VIF, confirm what the policy trusts, remember.

Every transition is written with its events in one ledger transaction (the outbox); the events
leave for SQS at the end of the cycle, and whatever SQS refuses leaves with the next one.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import events, publish, transitions
from .approvals import model, service
from .approvals.model import ApprovalRequest
from .config import Policy, Target
from .directlink import DirectLinkApi, TargetError
from .ledger import ApprovalChanged, ClaimLost, TargetRecords, VifRecord, iso, parse_iso
from .log import logger
from .models import CONFIRMING, VirtualGateway, VirtualInterface
from .policy import Ask, Confirm, Decision, Ignore, Reject, decide, matching_rule
from .runtime import Runtime

# What happened to a VIF in this cycle, as `vifgate poll --json` reports it.
ACTIONS = ("confirmed", "would_confirm", "ask", "rejected", "would_reject", "ignored", "none", "failed", "unknown")
_DECIDED = {"ask": "ask", "ignore": "ignored", "none": "none"}
# A confirming VIF this close to its deadline with nothing carried out is what people must look at now.
NEAR_DEADLINE = timedelta(hours=24)
# Not awaiting anyone: carried out this cycle, left alone by the policy (ignore), or not ours to confirm.
_NOT_AWAITED = ("confirmed", "rejected", "ignored", "none")
# Outcomes that change nothing by themselves (a pending request stays "ask" every cycle): a VIF with
# one of them, no change and no event gets no log line of its own.
_QUIET = ("none", "ignored", "ask")
# How old the target item's last_polled_at may get before an idle cycle writes it again (see _mark_due).
HEARTBEAT = timedelta(minutes=10)


class Mode(Enum):
    """What a cycle may change: `check` nothing at all, `dry_run` only the ledger, `live` the VIFs too."""

    CHECK = "check"
    DRY_RUN = "dry_run"
    LIVE = "live"

    @property
    def records(self) -> bool:
        return self is not Mode.CHECK

    @property
    def acts(self) -> bool:
        return self is Mode.LIVE


class OutOfTime(Exception):
    """The cycle's budget for this target is spent: the thread does nothing more."""


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock; `None` budget means no deadline (tests, one-off runs)."""

    at: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def check(self, target: str, before: str) -> None:
        if self.passed():
            raise OutOfTime(f"{target}: out of time before {before}")


@dataclass
class Outcome:
    target: str
    virtualInterfaceId: str
    virtualInterfaceName: str | None
    ownerAccount: str | None
    connectionId: str | None
    vlan: int | None
    asn: int | None
    state: str
    action: str
    rule: str | None
    virtualGatewayId: str | None
    reason: str
    deadline: str | None = None
    deadlineCertain: bool | None = None

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class TargetFailure:
    target: str
    code: str
    message: str


@dataclass
class CycleReport:
    cycle_id: str
    started_at: datetime
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[TargetFailure] = field(default_factory=list)
    targets_ok: list[str] = field(default_factory=list)
    events: list = field(default_factory=list)
    delivery: publish.FlushReport | None = None
    # Consecutive failed cycles of each target that failed in this one (the ledger counts them).
    failed_cycles: dict[str, int] = field(default_factory=dict)
    finished_at: datetime | None = None
    duration_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def vif_states(self) -> dict[str, int]:
        """How many VIFs the targets listed in each state (as listed, before this cycle acted)."""
        return dict(Counter(o.state for o in self.outcomes))

    def longest_failure_cycles(self) -> int:
        """The longest run of consecutive failed cycles among this cycle's targets; 0 when none failed."""
        return max(self.failed_cycles.values(), default=0)

    def near_deadline_undecided(self, now: datetime | None = None) -> list[Outcome]:
        """Confirming VIFs less than 24 h from their deadline still awaiting a decision (asked, failed, dry run)."""
        at = now or self.finished_at or self.started_at
        return [
            o
            for o in self.outcomes
            if o.state == CONFIRMING
            and o.action not in _NOT_AWAITED
            and (deadline := parse_iso(o.deadline)) is not None
            and deadline - at < NEAR_DEADLINE
        ]

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.action for o in self.outcomes))

    def summary(self) -> dict:
        """What the scheduled Lambda returns and logs: counts, never VIF secrets."""
        return {
            "cycle_id": self.cycle_id,
            "started_at": iso(self.started_at),
            "dry_run": self.dry_run,
            "targets_ok": self.targets_ok,
            "targets_failed": [asdict(f) for f in self.failures],
            "actions": self.counts(),
            "events": dict(Counter(e.type for e in self.events)),
            "events_sent": self.delivery.sent if self.delivery else 0,
            "events_pending": self.delivery.pending if self.delivery else 0,
            "events_parked": self.delivery.parked if self.delivery else 0,
            "failed_cycles": self.failed_cycles,
            "duration_seconds": None if self.duration_seconds is None else round(self.duration_seconds, 3),
        }


@dataclass(eq=False)
class TargetRun:
    """One target's share of a cycle: what it may do, by when, and the clients it does it with."""

    runtime: Runtime
    policy: Policy
    target: Target
    cycle_id: str
    mode: Mode
    deadline: Deadline
    api: DirectLinkApi | None = None
    target_item: dict[str, Any] | None = None  # the target's own item, read for the whole cycle at its start

    @property
    def publishing(self) -> bool:
        """Events are built only where they are kept: a ledger to write and a queue to send to."""
        return self.mode.records and self.runtime.publishing

    def now(self) -> datetime:
        """Read at each step, never once per target: a claim made late in a long loop must not be born old."""
        return self.runtime.clock()

    def in_time(self, before: str) -> None:
        self.deadline.check(self.target.name, before)

    def save(
        self, entry: VifRecord, sighting: transitions.Sighting | None = None, approval: ApprovalRequest | None = None
    ) -> None:
        """Write a record, its events and a new approval request, unless the budget is spent (the next cycle does)."""
        self.in_time(f"writing {entry.vif_id}")
        events = sighting.events if sighting else ()
        if approval is None:  # the plain write, as before approvals (tests stand in for it with that signature)
            self.runtime.ledger.save(entry, events)
        else:
            self.runtime.ledger.save(entry, events, approval=approval)
        if sighting:
            sighting.written()

    def change_approval(self, sighting: transitions.Sighting, change: transitions.ApprovalChange | None) -> None:
        """Expire or supersede a request, conditional on its version; a vote cast meanwhile wins this cycle."""
        if change is None or not self.mode.records:
            return
        entry = sighting.entry
        self.in_time(f"updating the approval request of {entry.vif_id}")
        produced = [change.event] if change.event is not None else []
        try:
            self.runtime.ledger.update_approval(change.before, change.after, produced, require_confirming=False)
        except ApprovalChanged:
            # Someone voted (or another poller wrote) since the read: the next cycle reads it again.
            logger.info(
                "approval request changed meanwhile; the next cycle looks again",
                extra={"target": entry.target, "vif_id": entry.vif_id, "request_id": change.before.request_id},
            )
            return
        entry.approval = change.after
        sighting.emitted.extend(produced)


def run_cycle(
    runtime: Runtime,
    *,
    dry_run: bool | None = None,
    record: bool = True,
    budget_seconds: float | None = None,
    flush_seconds: float | None = None,
    targets: list[str] | None = None,
) -> CycleReport:
    """Poll every target concurrently; one target's failure is reported, never spread.

    `record=False` (vifgate check) neither writes the ledger nor calls the API's write calls.
    `budget_seconds`: targets still busy after it are reported as failed, so that the events of
    the others are still sent before the Lambda's time runs out; their threads check the same
    deadline before every claim, API write and ledger write, and do nothing more once it passed.
    `flush_seconds`: how long sending the outbox may take after that.
    `targets`: poll only these (an approval's poll-now); None polls every target.
    Raises ConfigError before anything happens when the policy is invalid.
    """
    policy = runtime.policy
    dry_run = runtime.settings.dry_run if dry_run is None else dry_run
    mode = Mode.CHECK if not record else Mode.DRY_RUN if dry_run else Mode.LIVE
    began = time.monotonic()
    report = CycleReport(cycle_id=uuid.uuid4().hex[:12], started_at=runtime.clock(), dry_run=dry_run)
    chosen = [t for t in policy.targets if targets is None or t.name in targets]
    workers = max(1, min(len(chosen), runtime.settings.max_workers))
    runtime.warm(ledger=mode.records)
    deadline = Deadline.after(budget_seconds)
    runs = [TargetRun(runtime, policy, t, report.cycle_id, mode, deadline) for t in chosen]
    if mode.records and runtime.ledger.cache is not None:
        items = _target_items(runtime, [run.target.name for run in runs])
        for run in runs:
            run.target_item = items.get(run.target.name)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll")
    futures = {run: pool.submit(_poll_target, run) for run in runs}
    wait(futures.values(), timeout=budget_seconds)
    pool.shutdown(wait=False, cancel_futures=True)  # a hung target must not hold the others' events back
    for run, future in futures.items():
        name = run.target.name
        if not future.done() or future.cancelled():  # still running, or never started (workers all busy)
            message = f"{name} did not finish within {budget_seconds:.0f}s; reported failed for this cycle"
            _failed(run, report, TargetFailure(name, "Timeout", message))
            continue
        try:
            outcomes, produced = future.result()
            report.outcomes.extend(outcomes)
            report.events.extend(produced)
            report.targets_ok.append(name)
        except OutOfTime:
            message = f"{name} ran out of its {budget_seconds:.0f}s budget; the rest waits for the next cycle"
            _failed(run, report, TargetFailure(name, "Timeout", message))
        except TargetError as exc:
            _failed(run, report, TargetFailure(name, exc.code, str(exc)))
        except (ClientError, BotoCoreError) as exc:  # the ledger itself failed for this target
            _failed(run, report, _ledger_failure(name, runtime.settings.table_name, exc))
        except Exception as exc:  # a bug must not cost the other targets their cycle
            # Only the type and the frames: an exception's text may quote the data it choked on.
            frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
            logger.error(
                "unexpected error polling a target",
                extra={"target": name, "error_type": type(exc).__name__, "frames": frames},
            )
            message = f"unexpected {type(exc).__name__} polling {name} (see the log)"
            _failed(run, report, TargetFailure(name, type(exc).__name__, message))
    if mode.records and runtime.publishing:
        report.delivery = _flush(runtime, Deadline.after(flush_seconds))
    report.finished_at, report.duration_seconds = runtime.clock(), time.monotonic() - began
    logger.info("cycle done", extra=report.summary())
    return report


def poll_now_targets(detail: object, policy: Policy) -> list[str]:
    """The targets a poll-now event names, each once; ValueError says what is wrong (then nothing is polled)."""
    names = detail.get("targets") if isinstance(detail, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("detail.targets: expected a non-empty list of target names")
    known = {t.name for t in policy.targets}
    unknown = [n for n in names if n not in known]
    if unknown:  # names are data from an event: quoted and cut short, never more than a few
        shown = ", ".join(repr(n[:64]) for n in unknown[:5])
        raise ValueError(f"detail.targets: not a target of the policy: {shown}")
    return list(dict.fromkeys(names))


def flush_outbox(runtime: Runtime, seconds: float | None) -> publish.FlushReport | None:
    """Send what the outbox holds within `seconds` (the fan-out's scheduled function, which polls nothing)."""
    return _flush(runtime, Deadline.after(seconds)) if runtime.publishing else None


def _flush(runtime: Runtime, deadline: Deadline) -> publish.FlushReport | None:
    """Send the outbox; whatever fails here stays in it for the next cycle."""
    try:
        queue = runtime.queue_url(runtime.settings.events_queue or "")
        return publish.flush(runtime.ledger, runtime.sqs, queue, out_of_time=deadline.passed)
    except (ClientError, BotoCoreError) as exc:
        logger.error(
            "events not sent this cycle; they stay in the outbox",
            extra={"queue": runtime.settings.events_queue, "error": str(exc)},
        )
        return None


def _failed(run: TargetRun, report: CycleReport, failure: TargetFailure) -> None:
    report.failures.append(failure)
    logger.error(
        "target failed", extra={"target": failure.target, "error_code": failure.code, "error": failure.message}
    )
    if not run.mode.records:
        return
    target, now = run.target, run.now()

    def failed() -> Any:
        return events.build(
            "target.failed",
            target=target.name,
            subject=target.name,
            time=now,
            facts=(iso(now),),
            region=target.region,
            code=failure.code,
            message=failure.message,
        )

    try:  # said once per failing spell: the write is conditional on no spell running
        # Without a queue the spell is still counted (the alarm's figure) but nothing is announced.
        failing = run.runtime.ledger.mark_failing(target.name, now, failed if run.publishing else None)
        report.events.extend(failing.events)
        report.failed_cycles[target.name] = failing.cycles
    except (ClientError, BotoCoreError) as exc:
        logger.error("could not record the target failure", extra={"target": target.name, "error": str(exc)})


def _ledger_failure(target: str, table: str, exc: Exception) -> TargetFailure:
    code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
    message = f"ledger table {table}: {exc}"
    if code == "ResourceNotFoundException":
        message = (
            f"ledger table {table} does not exist in this account/region (deploy infra/template.json, "
            "set VIFGATE_TABLE, or run `vifgate sandbox` for a local one)"
        )
    return TargetFailure(target, code, message)


def _target_items(runtime: Runtime, names: list[str]) -> dict[str, dict[str, Any]]:
    """Every target's own item in a few BatchGetItems; {} when that fails (each target then reads its own)."""
    try:
        return runtime.ledger.target_items(names)
    except (ClientError, BotoCoreError) as exc:
        logger.warning("target items not read at once; each target reads its own", extra={"error": str(exc)})
        return {}


def _poll_target(run: TargetRun) -> tuple[list[Outcome], list]:
    runtime, policy, target = run.runtime, run.policy, run.target
    began = time.monotonic()
    api = run.api = runtime.directlink.get(target)
    vifs = api.describe_virtual_interfaces()
    run.in_time("reading the ledger")
    now = run.now()
    known = (
        runtime.ledger.load(target.name, run.target_item) if run.mode.records else TargetRecords(target.name, {}, None)
    )

    # DescribeVirtualGateways only when some VIF may be confirmed, or an approval request needs the
    # account's gateways to choose from: most cycles have neither.
    wants_gateway = any(
        v.state == CONFIRMING and (r := matching_rule(v, policy, target)) and r.action == "confirm" for v in vifs
    ) or any(_needs_gateways(v, known.vifs.get(v.id), policy, target) for v in vifs)
    gateways = _gateways(api) if wants_gateway else {}

    outcomes, produced = [], []
    changed = 0  # VIFs that changed, were acted on or disappeared: each has a line of its own
    for vif in vifs:
        now = run.now()
        decision = decide(vif, gateways, policy, target)
        sighting = transitions.observe(
            known.vifs.get(vif.id), target.name, vif, now, known.last_polled_at, target.region, run.publishing
        )
        entry = sighting.entry
        settled = transitions.settle_claim(sighting, vif, now)
        if settled is None:
            entry.decision_reason = decision.reason
            entry.rule = getattr(decision, "rule", None)
            entry.gateway = getattr(decision, "gateway", None)
        action, reason = _DECIDED.get(decision.action, decision.action), decision.reason
        shown: Decision = decision  # what the report shows: people's decision once it is carried out
        opened: ApprovalRequest | None = None
        if settled:
            action, reason = settled, f"{settled} by an earlier cycle that could not record it; recorded now"
        elif isinstance(decision, Confirm | Reject):
            action, reason = _act(run, sighting, vif, decision)
        elif isinstance(decision, Ask):
            action, reason, shown, opened = _ask(run, sighting, vif, decision, gateways, now)
        if action not in ("confirmed", "rejected"):  # no "expires soon" for a VIF just settled
            transitions.expiry_warning(sighting, vif, now, policy)
        transitions.stuck_pending(sighting, vif, now, policy)
        if action != "unknown":  # an unknown outcome keeps what the ledger said
            entry.last_decision = action
        # Worth a line of its own: changed, acted on or asked anew (an unchanged VIF is counted in the target's line).
        noteworthy = sighting.changed or opened is not None or action not in _QUIET
        if run.mode.records and (sighting.changed or opened is not None):
            run.save(entry, sighting, approval=opened)
        how = _settled_how(entry, decision, action)
        run.change_approval(sighting, transitions.approval_followup(sighting, vif, run.now(), how))
        produced += sighting.emitted
        outcomes.append(_outcome(target.name, vif, entry, shown, action, reason))
        if not (noteworthy or sighting.emitted):
            continue
        changed += 1
        logger.info(
            "vif decided",
            extra={
                "target": target.name,
                "vif_id": vif.id,
                "state": vif.state,
                "action": action,
                "rule": entry.rule,
                "reason": reason,
            },
        )

    if run.mode.records:
        # A VIF listed but unreadable is not gone; an unreadable item without an id could be any of them.
        unreadable = api.unreadable
        listed = {v.id for v in vifs} | (unreadable or set())
        for gone in known.vifs.values() if unreadable is not None else ():
            if gone.vif_id not in listed and gone.gone_at is None:
                sighting = transitions.disappeared(gone, run.now(), target.region, run.publishing)
                changed += 1
                logger.info("vif gone", extra={"target": target.name, "vif_id": gone.vif_id, "last_state": gone.state})
                run.save(sighting.entry, sighting)
                run.change_approval(sighting, transitions.approval_followup(sighting, None, run.now()))
                produced += sighting.emitted
        if _mark_due(known, run.now()):
            run.in_time("marking the target polled")
            since = iso(known.failing_since) if known.failing_since else None
            recovered = _recovered(run) if run.publishing else None  # no queue: the spell ends without an event
            produced += runtime.ledger.mark_polled(target.name, run.now(), since, recovered)
    logger.info(
        "target polled",
        extra={
            "target": target.name,
            "vifs": len(vifs),
            "changed": changed,
            "actions": _counts(outcomes),
            "duration_ms": round((time.monotonic() - began) * 1000),
        },
    )
    return outcomes, produced


def _counts(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(Counter(o.action for o in outcomes))


def _mark_due(known: TargetRecords, now: datetime) -> bool:
    """Write the target's item only to end a failing spell, or as a heartbeat: an idle cycle writes nothing.

    `last_polled_at` only bounds a new VIF's creation time (deadline certainty, CERTAINTY_WINDOW = 15
    min): a value up to HEARTBEAT old keeps that bound true, at a tenth of the writes of a 1-minute schedule.
    """
    if known.failing_since is not None or known.failed_cycles or known.last_polled_at is None:
        return True
    return now - known.last_polled_at >= HEARTBEAT


def _recovered(run: TargetRun) -> Callable[[str], Any]:
    target = run.target

    def build(failed_since: str) -> Any:
        return events.build(
            "target.recovered",
            target=target.name,
            subject=target.name,
            time=run.now(),
            facts=(failed_since,),
            region=target.region,
            failed_since=failed_since,
        )

    return build


def _needs_gateways(vif: VirtualInterface, record: VifRecord | None, policy: Policy, target: Target) -> bool:
    """An approval request is to be opened from the account's gateways, or an approved one checked against them."""
    if vif.state != CONFIRMING:
        return False
    request = record.approval if record else None
    if request is not None and record is not None and not _replaced(request, record, policy):
        return request.status == "approved"
    # The gateways cannot change whether an ask rule or the default action asks, nor who approves.
    decision = decide(vif, {}, policy, target)
    return isinstance(decision, Ask) and bool(decision.approvers) and decision.gateways is None


def _settled_how(entry: VifRecord, decision: Decision, action: str) -> str | None:
    """How the policy, not people, settled the VIF this cycle (a pending request is then superseded)."""
    if isinstance(decision, Ask):  # people's request: carried out for them, or still theirs to answer
        return None
    if action in ("confirmed", "rejected"):
        return f"{action} by rule {entry.rule}" if entry.rule else f"{action} by default_action"
    if isinstance(decision, Ignore):
        return f"no longer asked: {decision.reason}"
    return None


def _ask(
    run: TargetRun,
    sighting: transitions.Sighting,
    vif: VirtualInterface,
    decision: Ask,
    gateways: dict[str, VirtualGateway] | None,
    now: datetime,
) -> tuple[str, str, Decision, ApprovalRequest | None]:
    """Ask people; open their approval request once; carry out what they decided.

    Returns the action, its reason, the decision to report, and a request to save with the record.
    """
    entry = sighting.entry
    request = _restate(run, sighting, vif, entry.approval, now)
    previous = None
    if request is not None and model.reopens(request, entry.seen_since or entry.first_seen_at):
        previous, request = request, None  # closed while the VIF still waits: people are asked again
    if request is None:
        if not decision.approvers:  # notify-only, as before approvals existed
            if not entry.approval_requested_at:
                transitions.approval_requested(sighting, vif, now, decision, None)
            return "ask", decision.reason, decision, None
        if decision.gateways is not None:
            choices: tuple[str, ...] = tuple(decision.gateways)
        elif gateways is None:
            why = "no approval request yet: the account's virtual gateways could not be listed this cycle"
            return "ask", f"{decision.reason}; {why}", decision, None
        else:
            choices = tuple(sorted(g.virtual_gateway_id for g in gateways.values() if g.available))
        request = model.new_request(
            target=entry.target,
            vif_id=entry.vif_id,
            spell=entry.seen_since or entry.first_seen_at,
            now=now,
            deadline=entry.deadline,
            gateways=choices,
            approvers=decision.approvers,
            min_approvals=decision.min_approvals,
            rule=decision.rule,
            replaces=previous,
        )
        if not run.mode.records:  # vifgate check: nothing is written, so nobody is asked yet
            return "ask", f"{decision.reason}; would ask {', '.join(request.approvers)} to approve", decision, None
        asked = f"approval request {request.request_id} for {', '.join(request.approvers)}"
        if previous is not None:
            return _reopen(run, sighting, vif, decision, previous, request, f"{decision.reason}; {asked}")
        transitions.approval_requested(sighting, vif, now, decision, request)
        return "ask", f"{decision.reason}; {asked}", decision, request
    if request.status in ("approved", "rejected"):
        action, reason, shown = _carry_out(run, sighting, vif, request, gateways)
        return action, reason, shown, None
    if request.status == "pending":
        return "ask", f"{decision.reason}; {request.progress()}", decision, None
    return "ask", f"{decision.reason}; approval request {request.request_id} {request.status}", decision, None


def _replaced(request: ApprovalRequest, record: VifRecord, policy: Policy) -> bool:
    """The request gives way to a new one: it is closed, or it was asked under another policy (R2)."""
    if model.reopens(request, record.seen_since or record.first_seen_at):
        return True
    return request.status != "expired" and service.stale(request, service.current_decision(policy, record)) is not None


def _restate(
    run: TargetRun,
    sighting: transitions.Sighting,
    vif: VirtualInterface,
    request: ApprovalRequest | None,
    now: datetime,
) -> ApprovalRequest | None:
    """The VIF's request, superseded first when the policy of now asks other people, or another number of them.

    Checked before a vote is carried out too: an approval counts only under the policy that asked for it.
    """
    if request is None or request.status not in ("pending", "approved", "rejected") or not run.mode.records:
        return request
    why = service.stale(request, service.current_decision(run.policy, sighting.entry))
    after = model.supersede(request, now, why, decided=True) if why else None
    if why is None or after is None:
        return request
    after = replace(after, version=request.version + 1)  # as the write leaves it: a new request follows on
    event = sighting.build(
        "vif.approval_superseded",
        now,
        vif,
        facts=(request.request_id,),
        why=why,
        **transitions.status_fields(after),
    )
    run.change_approval(sighting, transitions.ApprovalChange(request, after, event))
    return sighting.entry.approval  # superseded, or as it was when a vote wrote first (the next cycle looks again)


def _reopen(
    run: TargetRun,
    sighting: transitions.Sighting,
    vif: VirtualInterface,
    decision: Ask,
    previous: ApprovalRequest,
    request: ApprovalRequest,
    reason: str,
) -> tuple[str, str, Decision, ApprovalRequest | None]:
    """Put a new request in place of a closed one, with its ask, in one conditional write (save() only creates)."""
    entry = sighting.entry
    queued, emitted = len(sighting.events), len(sighting.emitted)
    transitions.approval_requested(sighting, vif, run.now(), decision, request)
    asked = sighting.events[queued:]
    del sighting.events[queued:]  # written with the request below, not with the record
    run.in_time(f"opening a new approval request for {entry.vif_id}")
    try:
        run.runtime.ledger.replace_approval(previous, request, asked)
    except ApprovalChanged:
        # Another poller opened it first (the same id), or the item moved on: the next cycle reads it.
        del sighting.emitted[emitted:]
        entry.approval = previous
        return "ask", f"{decision.reason}; approval request {previous.request_id} {previous.status}", decision, None
    return "ask", reason, decision, None


def _carry_out(
    run: TargetRun,
    sighting: transitions.Sighting,
    vif: VirtualInterface,
    request: ApprovalRequest,
    gateways: dict[str, VirtualGateway] | None,
) -> tuple[str, str, Decision]:
    """What people decided, done through the same claim → API → record path as a rule's decision."""
    entry = sighting.entry
    how = transitions.decided_by(request)
    decision: Confirm | Reject
    if request.status == "rejected":
        decision = Reject(rule=request.rule, reason=how)
    else:
        gateway = request.gateway
        problem = None
        if gateway is None:
            problem = "no gateway was chosen"
        elif gateways is None:
            problem = f"the account's virtual gateways could not be listed this cycle to check {gateway}"
        elif gateway not in gateways:
            problem = f"account {vif.owner_account} has no virtual gateway {gateway}"
        elif not gateways[gateway].available:
            problem = f"gateway {gateway} is {gateways[gateway].virtual_gateway_state}, not available"
        decision = Confirm(rule=request.rule or "", gateway=gateway or "", reason=how)
        if problem:
            # Nothing is called; the request stays approved and the next cycle checks again.
            return "failed", f"{how}, but {problem}; nothing was called", decision
    entry.decision_reason, entry.rule = how, request.rule
    entry.gateway = decision.gateway if isinstance(decision, Confirm) else None
    action, reason = _act(run, sighting, vif, decision, request)
    return action, reason, decision


def _gateways(api: DirectLinkApi) -> dict | None:
    """The account's gateways, or None (VIFs are then asked about, never confirmed blind)."""
    try:
        return api.describe_virtual_gateways()
    except TargetError as exc:
        logger.warning("gateways could not be listed", extra={"target": api.target.name, "error": str(exc)})
        return None


def _act(
    run: TargetRun,
    sighting: transitions.Sighting,
    vif: VirtualInterface,
    decision: Confirm | Reject,
    approval: ApprovalRequest | None = None,
) -> tuple[str, str]:
    """Confirm or reject once: claim in the ledger first, then call the API, then record at once.

    `approval`: the people's request this carries out (the events name them instead of a rule).
    """
    entry, api, ledger = sighting.entry, run.api, run.runtime.ledger
    assert api is not None
    verb = "confirm" if isinstance(decision, Confirm) else "reject"
    gateway = decision.gateway if isinstance(decision, Confirm) else None
    if not run.mode.acts:
        return f"would_{verb}", decision.reason
    run.save(entry, sighting)  # the claim needs the item to exist
    run.in_time(f"claiming {entry.vif_id}")
    try:
        ledger.claim(entry.target, entry.vif_id, run.cycle_id, run.now(), verb=verb, gateway=gateway)
    except ClaimLost as lost:
        return "none", f"not acted on: {lost} ({decision.reason})"

    if isinstance(decision, Reject):
        # A person may have confirmed it since the listing: delete only what still waits.
        run.in_time(f"re-reading {entry.vif_id}")
        try:
            current = api.describe_one(entry.vif_id)
        except TargetError as exc:
            ledger.release(entry.target, entry.vif_id, run.cycle_id)
            return "unknown", f"not rejected: could not re-read it first ({exc.code}); the next cycle looks again"
        if current is None or current.state != CONFIRMING:
            ledger.release(entry.target, entry.vif_id, run.cycle_id)
            now_state = "gone" if current is None else current.state
            return "none", f"not rejected: it is no longer confirming (now {now_state})"

    run.in_time(f"{verb}ing {entry.vif_id}")
    try:  # from here on the action may have happened: only such a claim is settled by a later cycle
        ledger.mark_called(entry.target, entry.vif_id, run.cycle_id, run.now())
    except ClaimLost as lost:
        return "none", f"not acted on: {lost} ({decision.reason})"
    state: str | None
    try:
        state = (
            api.confirm(entry.vif_id, decision.gateway) if isinstance(decision, Confirm) else api.reject(entry.vif_id)
        )
    except TargetError as exc:
        try:
            state = _took_effect(api, entry.vif_id, decision)
        except TargetError as check:
            # The answer is lost and the VIF cannot be read: keep the claim; the next cycle sees
            # whether the VIF moved (settle_claim records it) or still waits (claimed again later).
            logger.warning(
                f"{verb} outcome unknown",
                extra={"target": entry.target, "vif_id": entry.vif_id, "error": str(exc), "check_error": str(check)},
            )
            return "unknown", (
                f"{verb} answer lost ({exc.code}) and the VIF could not be read back ({check.code}); "
                "the claim is kept and the next cycle looks again"
            )
        if state is None:
            # The VIF says it did not happen: give the claim back, so it can neither block the next
            # try nor credit a later hand confirm to this rule.
            ledger.release(entry.target, entry.vif_id, run.cycle_id)
            logger.warning(f"{verb} failed", extra={"target": entry.target, "vif_id": entry.vif_id, "error": str(exc)})
            return "failed", str(exc)
        # botocore retried a call whose first answer was lost, and the retry was refused because
        # the first one had worked: the VIF says what happened.
        logger.info(f"{verb} took effect despite an error answer", extra={"vif_id": entry.vif_id, "error": str(exc)})

    now = run.now()
    if isinstance(decision, Confirm):
        # The message shows the VIF as the confirm left it (pending, on its gateway), not as it was listed.
        after = vif.model_copy(update={"virtual_interface_state": state, "virtual_gateway_id": decision.gateway})
        rule = approval.rule if approval else decision.rule
        transitions.confirmed(sighting, after, now, rule, decision.gateway, approval)
        action, reason = "confirmed", f"{decision.reason}; attached to {decision.gateway}"
    else:
        after = vif.model_copy(update={"virtual_interface_state": state})
        transitions.rejected(sighting, after, now, decision.rule, decision.reason, approval)
        action, reason = "rejected", decision.reason
    entry.last_decision = action
    try:  # at once: what was done must be on record even if the rest of the cycle fails
        run.save(entry, sighting)
    except (ClientError, BotoCoreError, OutOfTime) as exc:
        # The claim stays: the next cycle finds the VIF moved and records it (settle_claim).
        logger.error(
            f"{verb} done but not recorded; the next cycle records it",
            extra={"target": entry.target, "vif_id": entry.vif_id, "error": str(exc)},
        )
    return action, reason


def _took_effect(api: DirectLinkApi, vif_id: str, decision: Confirm | Reject) -> str | None:
    """The VIF's state if the action happened, None if it did not; TargetError if the VIF cannot be read."""
    now = api.describe_one(vif_id)
    if now is None:
        return "deleted" if isinstance(decision, Reject) else None  # a rejected VIF may already be gone
    if isinstance(decision, Confirm):
        done = now.state in transitions.CONFIRMED_STATES and now.virtual_gateway_id == decision.gateway
    else:
        done = now.state == transitions.REJECTED_STATE
    return now.state if done else None


def _outcome(target: str, vif: VirtualInterface, entry, decision: Decision, action: str, reason: str) -> Outcome:
    return Outcome(
        target=target,
        virtualInterfaceId=vif.id,
        virtualInterfaceName=vif.virtual_interface_name,
        ownerAccount=vif.owner_account,
        connectionId=vif.connection_id,
        vlan=vif.vlan,
        asn=vif.customer_asn,
        state=vif.state,
        action=action,
        rule=getattr(decision, "rule", None) or None,
        virtualGatewayId=getattr(decision, "gateway", None) or None,
        reason=reason,
        deadline=entry.deadline if vif.state == CONFIRMING else None,
        deadlineCertain=entry.deadline_certain if vif.state == CONFIRMING else None,
    )
