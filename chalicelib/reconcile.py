"""One poll cycle: every target at once, decide each VIF, confirm what the policy trusts, remember."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError

from .config import Policy, Target
from .directlink import DirectLinkApi, TargetError
from .ledger import CERTAINTY_WINDOW, EXPIRY, ClaimLost, TargetRecords, VifRecord, iso
from .log import logger
from .models import CONFIRMING, VirtualInterface
from .policy import Confirm, Decision, Reject, decide, matching_rule
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

    @property
    def ok(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.action for o in self.outcomes))

    def summary(self) -> dict:
        """What the scheduled Lambda returns and logs: counts, never VIF secrets."""
        return {"cycle_id": self.cycle_id, "started_at": iso(self.started_at), "dry_run": self.dry_run,
                "targets_ok": self.targets_ok, "targets_failed": [asdict(f) for f in self.failures],
                "actions": self.counts()}


def run_cycle(runtime: Runtime, *, dry_run: bool | None = None, record: bool = True) -> CycleReport:
    """Poll every target concurrently; one target's failure is reported, never spread.

    `record=False` (vifgate check) neither writes the ledger nor calls the API's write calls.
    Raises ConfigError before anything happens when the policy is invalid.
    """
    policy = runtime.policy
    dry_run = runtime.settings.dry_run if dry_run is None else dry_run
    report = CycleReport(cycle_id=uuid.uuid4().hex[:12], started_at=runtime.clock(), dry_run=dry_run)
    workers = max(1, min(len(policy.targets), runtime.settings.max_workers))
    runtime.warm(ledger=record)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll") as pool:
        futures = {t.name: pool.submit(_poll_target, runtime, policy, t, report.cycle_id, dry_run or not record, record)
                   for t in policy.targets}
    for name, future in futures.items():
        try:
            report.outcomes.extend(future.result())
            report.targets_ok.append(name)
        except TargetError as exc:
            report.failures.append(TargetFailure(name, exc.code, str(exc)))
            logger.error("target failed", extra={"target": name, "error_code": exc.code, "error": str(exc)})
        except (ClientError, BotoCoreError) as exc:  # the ledger itself failed for this target
            failure = _ledger_failure(name, runtime.settings.table_name, exc)
            report.failures.append(failure)
            logger.error("ledger failed", extra={"target": name, "error": failure.message})
    logger.info("cycle done", extra=report.summary())
    return report


def _ledger_failure(target: str, table: str, exc: Exception) -> TargetFailure:
    code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
    message = f"ledger table {table}: {exc}"
    if code == "ResourceNotFoundException":
        message = (f"ledger table {table} does not exist in this account/region (deploy infra/template.json, "
                   "set VIFGATE_TABLE, or run `vifgate sandbox` for a local one)")
    return TargetFailure(target, code, message)


def _poll_target(runtime: Runtime, policy: Policy, target: Target, cycle_id: str, dry_run: bool,
                 record: bool) -> list[Outcome]:
    api = runtime.directlink.get(target)
    vifs = api.describe_virtual_interfaces()
    now = runtime.clock()
    known = runtime.ledger.load(target.name) if record else TargetRecords(target.name, {}, None)

    # DescribeVirtualGateways only when some VIF may be confirmed: most cycles have none.
    wants_gateway = any(v.state == CONFIRMING and (r := matching_rule(v, policy, target)) and r.action == "confirm"
                        for v in vifs)
    gateways = api.describe_virtual_gateways() if wants_gateway else {}

    outcomes = []
    for vif in vifs:
        decision = decide(vif, gateways, policy, target)
        entry = _observe(known, target.name, vif, now, decision)
        action, reason = _DECIDED.get(decision.action, decision.action), decision.reason
        if isinstance(decision, Confirm | Reject):
            action, reason = _act(runtime, api, entry, decision, cycle_id, dry_run, record)
        if record:
            entry.last_decision = action
            runtime.ledger.save(entry)
        outcomes.append(_outcome(target.name, vif, entry, decision, action, reason))
        logger.info("vif decided", extra={"target": target.name, "vif_id": vif.id, "state": vif.state,
                                          "action": action, "rule": getattr(decision, "rule", None),
                                          "reason": reason})

    if record:
        listed = {v.id for v in vifs}
        for gone in known.vifs.values():
            if gone.vif_id not in listed and gone.gone_at is None:
                gone.gone_at = iso(now)
                runtime.ledger.save(gone)
        runtime.ledger.mark_polled(target.name, now)
    return outcomes


def _observe(known: TargetRecords, target: str, vif: VirtualInterface, now: datetime,
             decision: Decision) -> VifRecord:
    """Fold this sighting into the VIF's record: first seen, state since, deadline."""
    entry = known.vifs.get(vif.id)
    if entry is None:
        entry = VifRecord(target=target, vif_id=vif.id, first_seen_at=iso(now), state=vif.state,
                          state_since=iso(now))
        if vif.state == CONFIRMING:
            # No creation time in the API: the deadline counts from our first sighting, and is
            # certain only if the previous poll of this target was recent enough.
            entry.deadline = iso(now + EXPIRY)
            entry.deadline_certain = (known.last_polled_at is not None
                                      and now - known.last_polled_at <= CERTAINTY_WINDOW)
    elif entry.state != vif.state:
        entry.state, entry.state_since = vif.state, iso(now)
    entry.gone_at = None
    entry.snapshot = vif.snapshot()
    entry.decision_reason = decision.reason
    entry.rule = getattr(decision, "rule", None)
    entry.gateway = getattr(decision, "gateway", None)
    return entry


def _act(runtime: Runtime, api: DirectLinkApi, entry: VifRecord, decision: Confirm | Reject,
         cycle_id: str, dry_run: bool, record: bool) -> tuple[str, str]:
    """Confirm or reject once: claim in the ledger first, then call the API."""
    verb = "confirm" if isinstance(decision, Confirm) else "reject"
    if dry_run:
        return f"would_{verb}", decision.reason
    if record:
        runtime.ledger.save(entry)  # the claim needs the item to exist
        try:
            runtime.ledger.claim(entry.target, entry.vif_id, cycle_id, runtime.clock())
        except ClaimLost:
            return "none", f"another poller is acting on it or has already ({decision.reason})"
    try:
        if isinstance(decision, Confirm):
            state = api.confirm(entry.vif_id, decision.gateway)
        else:
            state = api.reject(entry.vif_id)
    except TargetError as exc:
        if record and not exc.retryable:  # a definite no: let the next cycle try again
            runtime.ledger.release(entry.target, entry.vif_id, cycle_id)
        logger.warning(f"{verb} failed", extra={"target": entry.target, "vif_id": entry.vif_id, "error": str(exc)})
        return "failed", str(exc)
    entry.state, entry.state_since = state or entry.state, iso(runtime.clock())
    if isinstance(decision, Confirm):
        entry.confirmed_at = entry.state_since
        return "confirmed", f"{decision.reason}; attached to {decision.gateway}"
    return "rejected", decision.reason


def _outcome(target: str, vif: VirtualInterface, entry: VifRecord, decision: Decision, action: str,
             reason: str) -> Outcome:
    return Outcome(
        target=target, virtualInterfaceId=vif.id, virtualInterfaceName=vif.virtual_interface_name,
        ownerAccount=vif.owner_account, connectionId=vif.connection_id, vlan=vif.vlan, asn=vif.customer_asn,
        state=vif.state, action=action, rule=getattr(decision, "rule", None),
        virtualGatewayId=getattr(decision, "gateway", None), reason=reason,
        deadline=entry.deadline if vif.state == CONFIRMING else None,
        deadlineCertain=entry.deadline_certain if vif.state == CONFIRMING else None)
