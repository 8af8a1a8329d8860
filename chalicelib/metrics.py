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

# Poll cycle metrics (unit Count unless said). `Vifs` carries an extra `state` dimension.
CYCLE_METRICS = (
    "CyclesCompleted",
    "CycleDuration",  # Seconds
    "Confirmed",
    "Asked",
    "Rejected",
    "TargetFailures",
    "LongestTargetFailureCycles",
    "ExpiryWarnings",
    "VifsNearDeadlineUndecided",
    "EventsPending",
    "EventsParked",
)
BATCH_METRICS = ("Delivered", "Retried", "DeadLettered")


def record_cycle(report: CycleReport, into: Metrics | EphemeralMetrics, now: datetime | None = None) -> None:
    """Add a finished cycle's figures to `into`; the VIFs by state are printed at once (one blob per state)."""
    count = MetricUnit.Count
    actions = report.counts()
    into.add_metric(name="CyclesCompleted", unit=count, value=1)
    into.add_metric(name="CycleDuration", unit=MetricUnit.Seconds, value=round(report.duration_seconds or 0.0, 3))
    into.add_metric(name="Confirmed", unit=count, value=actions.get("confirmed", 0))
    into.add_metric(name="Asked", unit=count, value=actions.get("ask", 0))
    into.add_metric(name="Rejected", unit=count, value=actions.get("rejected", 0))
    into.add_metric(name="TargetFailures", unit=count, value=len(report.failures))
    into.add_metric(name="LongestTargetFailureCycles", unit=count, value=report.longest_failure_cycles())
    into.add_metric(
        name="ExpiryWarnings", unit=count, value=sum(1 for e in report.events if e.type == "vif.expiry_warning")
    )
    into.add_metric(name="VifsNearDeadlineUndecided", unit=count, value=len(report.near_deadline_undecided(now)))
    if report.delivery is not None:  # None: the outbox could not be read this cycle, so no figure
        into.add_metric(name="EventsPending", unit=count, value=report.delivery.pending)
        into.add_metric(name="EventsParked", unit=count, value=report.delivery.parked)
    for state, n in sorted(report.vif_states().items()):
        _with_dimension("Vifs", n, "state", state, into)


def record_no_cycle(into: Metrics | EphemeralMetrics) -> None:
    """A poll invocation that ran no cycle (invalid config): CyclesCompleted 0, so the blob is never empty."""
    into.add_metric(name="CyclesCompleted", unit=MetricUnit.Count, value=0)


@dataclass
class BatchTally:
    """What one notify batch did: chat posts made, records handed back to SQS, messages dead-lettered."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0


def record_batch(tally: BatchTally, into: Metrics | EphemeralMetrics) -> None:
    """Add a notify batch's figures to `into` (all three, zeros included: an alarm must see the batch)."""
    into.add_metric(name="Delivered", unit=MetricUnit.Count, value=tally.delivered)
    into.add_metric(name="Retried", unit=MetricUnit.Count, value=tally.retried)
    into.add_metric(name="DeadLettered", unit=MetricUnit.Count, value=tally.dead_lettered)


def _with_dimension(name: str, value: int, dimension: str, label: str, like: Metrics | EphemeralMetrics) -> None:
    """One metric with one more dimension, flushed on its own (EMF: one dimension value per blob)."""
    one = EphemeralMetrics(namespace=like.namespace, service=like.service)
    one.add_dimension(name=dimension, value=label)
    one.add_metric(name=name, unit=MetricUnit.Count, value=value)
    one.flush_metrics()


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
