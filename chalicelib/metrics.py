"""CloudWatch metrics (Powertools EMF, namespace VifGatekeeper) and X-Ray tracing, at the Lambdas' edge.

The metric names are a contract with the alarms in infra/template.json. Everything here reads a
finished report (a poll cycle's, a notify batch's) and writes numbers; nothing decides anything.
Tracing is built on a function's first invocation and only inside Lambda (Powertools' own rule:
not in tests, the CLI or `chalice local`), so importing app.py never loads the X-Ray SDK.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import EphemeralMetrics, Metrics, MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

    from .reconcile import CycleReport

NAMESPACE = "VifGatekeeper"
# POWERTOOLS_SERVICE_NAME is set per stage (vif-gatekeeper-<stage>); the alarms use that dimension.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "vif-gatekeeper"

metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# CloudWatch bills a custom metric for every hour it receives a value ($0.30 a month when it gets one
# each hour), zeros included. So a count is sent only when it is not zero, and the alarms on these
# counts treat missing data as not breaching (infra/template.json). CyclesCompleted is the exception:
# sent every cycle, it is the heartbeat NoSuccessfulCycle watches (missing data = breaching). The
# cycle's duration is AWS/Lambda's free `Duration`; an idle cycle therefore emits CyclesCompleted alone.
CYCLE_METRICS = (
    "CyclesCompleted",  # always
    "Confirmed",
    "Asked",
    "Rejected",
    "TargetFailures",
    "LongestTargetFailureCycles",
    "ExpiryWarnings",
    "VifsNearDeadlineUndecided",
    "VifsConfirming",
    "EventsPending",
    "EventsParked",
)
BATCH_METRICS = ("Delivered", "Retried", "DeadLettered")


def record_cycle(report: CycleReport, into: Metrics | EphemeralMetrics, now: datetime | None = None) -> None:
    """Add a finished cycle's figures to `into`: CyclesCompleted always, every other count only when not zero."""
    actions = report.counts()
    into.add_metric(name="CyclesCompleted", unit=MetricUnit.Count, value=1)
    figures = {
        "Confirmed": actions.get("confirmed", 0),
        "Asked": actions.get("ask", 0),
        "Rejected": actions.get("rejected", 0),
        "TargetFailures": len(report.failures),
        "LongestTargetFailureCycles": report.longest_failure_cycles(),
        "ExpiryWarnings": sum(1 for e in report.events if e.type == "vif.expiry_warning"),
        "VifsNearDeadlineUndecided": len(report.near_deadline_undecided(now)),
        "VifsConfirming": report.vif_states().get("confirming", 0),
    }
    if report.delivery is not None:  # None: the outbox could not be read this cycle, so no figure
        figures |= {"EventsPending": report.delivery.pending, "EventsParked": report.delivery.parked}
    _counts(figures, into)


def record_no_cycle(into: Metrics | EphemeralMetrics) -> None:
    """An invocation that ran no cycle (invalid config, a fan-out, a dropped work message): CyclesCompleted 0."""
    into.add_metric(name="CyclesCompleted", unit=MetricUnit.Count, value=0)


@dataclass
class BatchTally:
    """What one notify batch did: chat posts made, records handed back to SQS, messages dead-lettered."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0


def record_batch(tally: BatchTally, into: Metrics | EphemeralMetrics) -> None:
    """Add a notify batch's figures that are not zero to `into`; Delivered 0 when all are, so the blob is not empty."""
    figures = {"Delivered": tally.delivered, "Retried": tally.retried, "DeadLettered": tally.dead_lettered}
    nonzero = {name: value for name, value in figures.items() if value}
    for name, value in (nonzero or {"Delivered": 0}).items():
        into.add_metric(name=name, unit=MetricUnit.Count, value=value)


def _counts(figures: dict[str, int], into: Metrics | EphemeralMetrics) -> None:
    """The figures that are not zero: a count that is missing reads as zero to the alarms."""
    for name, value in figures.items():
        if value:
            into.add_metric(name=name, unit=MetricUnit.Count, value=value)


# --- tracing ------------------------------------------------------------------------------------

_tracer: Tracer | None = None


def tracing_enabled() -> bool:
    """Powertools' rule: in Lambda, not under `chalice local`/SAM local, and not POWERTOOLS_TRACE_DISABLED."""
    from aws_lambda_powertools.tracing.tracer import Tracer

    return not Tracer._is_tracer_disabled()


def tracer() -> Tracer:
    """The function's Tracer, made once: botocore only (DynamoDB, SQS, Secrets Manager, Direct Connect calls)."""
    global _tracer
    if _tracer is None:
        from aws_lambda_powertools import Tracer

        _tracer = Tracer(service=SERVICE, patch_modules=("botocore",))
    return _tracer


def traced(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A Lambda handler wrapper for ConvertToMiddleware: an X-Ray subsegment per invocation, in Lambda only.

    Responses and error texts are not put in the trace (an approval page, a chat error could hold
    data that is not ours to store); X-Ray still marks the invocation as faulted.
    """

    # ConvertToMiddleware calls this with a fresh handler at each invocation: nothing to cache here.
    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> Any:
        if not tracing_enabled():
            return handler(event, context)
        return tracer().capture_lambda_handler(handler, capture_response=False, capture_error=False)(event, context)

    return wrapper
