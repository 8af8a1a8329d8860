"""One poll cycle: every target at once, decide each VIF, confirm what the policy trusts, remember.

Every transition is written with its events in one ledger transaction (the outbox); the events
leave for SQS at the end of the cycle, and whatever SQS refuses leaves with the next one.
"""

from __future__ import annotations

import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError

from . import events, publish, transitions
from .config import Policy, Target
from .directlink import DirectLinkApi, TargetError
from .ledger import ClaimLost, TargetRecords, iso
from .log import logger
from .models import CONFIRMING, VirtualInterface
from .policy import Ask, Confirm, Decision, Reject, decide, matching_rule
from .runtime import Runtime

# What happened to a VIF in this cycle, as `vifgate poll --json` reports it.
ACTIONS = ("confirmed", "would_confirm", "ask", "rejected", "would_reject", "ignored", "none", "failed")
_DECIDED = {"ask": "ask", "ignore": "ignored", "none": "none"}


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

    @property
    def ok(self) -> bool:
        return not self.failures

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
        }


def run_cycle(
    runtime: Runtime, *, dry_run: bool | None = None, record: bool = True, budget_seconds: float | None = None
) -> CycleReport:
    """Poll every target concurrently; one target's failure is reported, never spread.

    `record=False` (vifgate check) neither writes the ledger nor calls the API's write calls.
    `budget_seconds`: targets still busy after it are reported as failed, so that the events of
    the others are still sent before the Lambda's time runs out.
    Raises ConfigError before anything happens when the policy is invalid.
    """
    policy = runtime.policy
    dry_run = runtime.settings.dry_run if dry_run is None else dry_run
    report = CycleReport(cycle_id=uuid.uuid4().hex[:12], started_at=runtime.clock(), dry_run=dry_run)
    workers = max(1, min(len(policy.targets), runtime.settings.max_workers))
    runtime.warm(ledger=record)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll")
    futures = {
        t: pool.submit(_poll_target, runtime, policy, t, report.cycle_id, dry_run or not record, record)
        for t in policy.targets
    }
    wait(futures.values(), timeout=budget_seconds)
    pool.shutdown(wait=False, cancel_futures=True)  # a hung target must not hold the others' events back
    for target, future in futures.items():
        if not future.done():
            failure = TargetFailure(
                target.name,
                "Timeout",
                f"{target.name} did not finish within {budget_seconds:.0f}s; reported failed for this cycle",
            )
            _failed(runtime, report, target, failure, record)
            continue
        try:
            outcomes, produced = future.result()
            report.outcomes.extend(outcomes)
            report.events.extend(produced)
            report.targets_ok.append(target.name)
        except TargetError as exc:
            _failed(runtime, report, target, TargetFailure(target.name, exc.code, str(exc)), record)
        except (ClientError, BotoCoreError) as exc:  # the ledger itself failed for this target
            _failed(runtime, report, target, _ledger_failure(target.name, runtime.settings.table_name, exc), record)
        except Exception as exc:  # a bug must not cost the other targets their cycle
            # Only the type and the frames: an exception's text may quote the data it choked on.
            logger.error(
                "unexpected error polling a target",
                extra={
                    "target": target.name,
                    "error_type": type(exc).__name__,
                    "frames": [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)],
                },
            )
            _failed(
                runtime,
                report,
                target,
                TargetFailure(
                    target.name,
                    type(exc).__name__,
                    f"unexpected {type(exc).__name__} polling {target.name} (see the log)",
                ),
                record,
            )
    if record and runtime.publishing:
        report.delivery = _flush(runtime)
    logger.info("cycle done", extra=report.summary())
    return report


def _flush(runtime: Runtime) -> publish.FlushReport | None:
    """Send the outbox; whatever fails here stays in it for the next cycle."""
    try:
        return publish.flush(runtime.ledger, runtime.sqs, runtime.queue_url(runtime.settings.events_queue))
    except (ClientError, BotoCoreError) as exc:
        logger.error(
            "events not sent this cycle; they stay in the outbox",
            extra={"queue": runtime.settings.events_queue, "error": str(exc)},
        )
        return None


def _failed(runtime: Runtime, report: CycleReport, target: Target, failure: TargetFailure, record: bool) -> None:
    report.failures.append(failure)
    logger.error(
        "target failed", extra={"target": failure.target, "error_code": failure.code, "error": failure.message}
    )
    if not (record and runtime.publishing):
        return
    try:
        if runtime.ledger.failing_since(target.name) is None:  # say it once per failing spell
            now = runtime.clock()
            event = events.build(
                "target.failed",
                target=target.name,
                subject=target.name,
                time=now,
                facts=(iso(now),),
                region=target.region,
                code=failure.code,
                message=failure.message,
            )
            runtime.ledger.mark_failing(target.name, now, [event])
            report.events.append(event)
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


def _poll_target(
    runtime: Runtime, policy: Policy, target: Target, cycle_id: str, dry_run: bool, record: bool
) -> tuple[list[Outcome], list]:
    api = runtime.directlink.get(target)
    vifs = api.describe_virtual_interfaces()
    now = runtime.clock()
    known = runtime.ledger.load(target.name) if record else TargetRecords(target.name, {}, None)

    # DescribeVirtualGateways only when some VIF may be confirmed: most cycles have none.
    wants_gateway = any(
        v.state == CONFIRMING and (r := matching_rule(v, policy, target)) and r.action == "confirm" for v in vifs
    )
    gateways = _gateways(api) if wants_gateway else {}

    publishing = record and runtime.publishing  # `vifgate check` builds no events it would not keep
    outcomes, produced = [], []
    for vif in vifs:
        decision = decide(vif, gateways, policy, target)
        sighting = transitions.observe(
            known.vifs.get(vif.id), target.name, vif, now, known.last_polled_at, target.region, publishing
        )
        entry = sighting.entry
        entry.decision_reason = decision.reason
        entry.rule = getattr(decision, "rule", None)
        entry.gateway = getattr(decision, "gateway", None)
        action, reason = _DECIDED.get(decision.action, decision.action), decision.reason
        if isinstance(decision, Confirm | Reject):
            action, reason = _act(runtime, api, sighting, vif, decision, cycle_id, dry_run, record, now)
        elif isinstance(decision, Ask) and not entry.approval_requested_at:
            entry.approval_requested_at = iso(now)
            sighting.emit(
                "vif.approval_requested",
                now,
                vif,
                reason=decision.reason,
                rule=decision.rule,
                **sighting.deadline_fields(),
            )
        if action not in ("confirmed", "rejected"):  # no "expires soon" for a VIF just settled
            transitions.expiry_warning(sighting, vif, now, policy)
        transitions.stuck_pending(sighting, vif, now, policy)
        entry.last_decision = action
        if record and sighting.changed:
            runtime.ledger.save(entry, sighting.events)
        produced += sighting.emitted
        outcomes.append(_outcome(target.name, vif, entry, decision, action, reason))
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

    if record:
        listed = {v.id for v in vifs}
        for gone in known.vifs.values():
            if gone.vif_id not in listed and gone.gone_at is None:
                sighting = transitions.disappeared(gone, now, target.region, publishing)
                runtime.ledger.save(sighting.entry, sighting.events)
                produced += sighting.emitted
        recovered = []
        if known.failing_since is not None and publishing:
            recovered = [
                events.build(
                    "target.recovered",
                    target=target.name,
                    subject=target.name,
                    time=now,
                    facts=(iso(known.failing_since),),
                    region=target.region,
                    failed_since=known.failing_since,
                )
            ]
        runtime.ledger.mark_polled(target.name, now, recovered)
        produced += recovered
    return outcomes, produced


def _gateways(api: DirectLinkApi) -> dict | None:
    """The account's gateways, or None (VIFs are then asked about, never confirmed blind)."""
    try:
        return api.describe_virtual_gateways()
    except TargetError as exc:
        logger.warning("gateways could not be listed", extra={"target": api.target.name, "error": str(exc)})
        return None


def _act(
    runtime: Runtime,
    api: DirectLinkApi,
    sighting: transitions.Sighting,
    vif: VirtualInterface,
    decision: Confirm | Reject,
    cycle_id: str,
    dry_run: bool,
    record: bool,
    now: datetime,
) -> tuple[str, str]:
    """Confirm or reject once: claim in the ledger first, then call the API."""
    entry = sighting.entry
    verb = "confirm" if isinstance(decision, Confirm) else "reject"
    if dry_run:
        return f"would_{verb}", decision.reason
    if record:
        runtime.ledger.save(entry, sighting.events)  # the claim needs the item to exist
        sighting.written()
        try:
            runtime.ledger.claim(entry.target, entry.vif_id, cycle_id, now)
        except ClaimLost:
            return "none", f"another poller is acting on it or has already ({decision.reason})"
    try:
        if verb == "confirm":
            api.confirm(entry.vif_id, decision.gateway)
        else:
            api.reject(entry.vif_id)
    except TargetError as exc:
        if not _took_effect(api, entry.vif_id, decision):
            if record and not exc.retryable:  # a definite no: let the next cycle try again
                runtime.ledger.release(entry.target, entry.vif_id, cycle_id)
            logger.warning(f"{verb} failed", extra={"target": entry.target, "vif_id": entry.vif_id, "error": str(exc)})
            return "failed", str(exc)
        # botocore retried a call whose first answer was lost, and the retry was refused because
        # the first one had worked: the VIF says what happened.
        logger.info(f"{verb} took effect despite an error answer", extra={"vif_id": entry.vif_id, "error": str(exc)})
    if isinstance(decision, Confirm):
        entry.confirmed_at = iso(now)
        sighting.emit("vif.confirmed", now, vif, by="rule", rule=decision.rule, gateway=decision.gateway)
        action, reason = "confirmed", f"{decision.reason}; attached to {decision.gateway}"
    else:
        sighting.emit(
            "vif.rejected",
            now,
            vif,
            by="rule" if decision.rule else "default_action",
            rule=decision.rule,
            reason=decision.reason,
        )
        action, reason = "rejected", decision.reason
    if record:  # at once: what was done must be on record even if the rest of the cycle fails
        entry.last_decision = action
        try:
            runtime.ledger.save(entry, sighting.events)
            sighting.written()
        except (ClientError, BotoCoreError) as exc:
            logger.error(
                f"{verb} done but not recorded; the next cycle sees the new state",
                extra={"target": entry.target, "vif_id": entry.vif_id, "error": str(exc)},
            )
    return action, reason


def _took_effect(api: DirectLinkApi, vif_id: str, decision: Confirm | Reject) -> bool:
    now = api.describe_one(vif_id)
    if now is None:
        return isinstance(decision, Reject)  # a rejected VIF may already be gone
    if isinstance(decision, Confirm):
        return now.state in ("pending", "available") and now.virtual_gateway_id == decision.gateway
    return now.state in ("rejected", "deleting", "deleted")


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
        rule=getattr(decision, "rule", None),
        virtualGatewayId=getattr(decision, "gateway", None),
        reason=reason,
        deadline=entry.deadline if vif.state == CONFIRMING else None,
        deadlineCertain=entry.deadline_certain if vif.state == CONFIRMING else None,
    )
