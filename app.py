"""VIF Gatekeeper on AWS Chalice: wiring only; the work lives in chalicelib."""

import os

from chalice import Chalice, ConvertToMiddleware, Rate, Response

from chalicelib import fanout, reconcile, runtime
from chalicelib import metrics as telemetry
from chalicelib.approvals.trigger import POLL_NOW_SOURCE
from chalicelib.config import ConfigError
from chalicelib.log import logger

app = Chalice(app_name="vif-gatekeeper")
app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context))
app.register_middleware(ConvertToMiddleware(telemetry.traced))  # X-Ray in Lambda only, built on first use
# Metrics come from the poll and notify functions only: the API's requests would each flush an
# empty set (and warn). One EMF blob per invocation, flushed even when the handler raises.
for _event_type in ("scheduled", "sqs"):
    app.register_middleware(ConvertToMiddleware(telemetry.metrics.log_metrics), event_type=_event_type)

# Read at import: `chalice package/deploy --stage X` imports app.py with that stage's
# environment_variables from .chalice/config.json already set.
POLL_MINUTES = int(os.environ.get("VIFGATE_POLL_MINUTES", "1"))
EVENTS_QUEUE = os.environ.get("VIFGATE_EVENTS_QUEUE", "vifgate-dev-events.fifo")
WORK_QUEUE = os.environ.get("VIFGATE_WORK_QUEUE", "vifgate-dev-work.fifo")


# What a cycle leaves for sending the outbox after its targets are polled (or given up on):
# 20 s of a normal timeout, a quarter of a short one.
FLUSH_RESERVE_SECONDS = 20


@app.schedule(Rate(POLL_MINUTES, unit=Rate.MINUTES), name="poll")
def poll(event):
    remaining = event.context.get_remaining_time_in_millis() / 1000
    flush = min(FLUSH_RESERVE_SECONDS, remaining / 4)
    try:
        current, targets = runtime.get(), None
        if event.source == POLL_NOW_SOURCE:  # an approval's "carry it out now": only the targets it names
            try:
                targets = reconcile.poll_now_targets(event.detail, current.policy)
            except ValueError as exc:  # never "everything" for an event that names nothing we know
                logger.error("poll-now event refused: nothing polled", extra={"error": str(exc)})
                telemetry.record_no_cycle(telemetry.metrics)
                return {"polled": [], "refused": str(exc)}
        if targets is None and fanout.wanted(current):
            summary = fanout.fan_out(current, POLL_MINUTES * 60, budget_seconds=remaining - 1)
            telemetry.record_no_cycle(telemetry.metrics)  # the cycles are the work functions' (one blob each)
            return summary
        report = reconcile.run_cycle(
            current, budget_seconds=remaining - flush - 1, flush_seconds=flush, targets=targets
        )
        telemetry.record_cycle(report, telemetry.metrics)
        return report.summary()
    except ConfigError as exc:
        # Fail closed and loudly: nothing was confirmed, and the invocation counts as an error.
        logger.error("invalid config: nothing confirmed", extra={"problems": exc.problems, "source": exc.source})
        telemetry.record_no_cycle(telemetry.metrics)
        raise


# Each message names a batch of targets (chalicelib/fanout.py); its cycle is an ordinary one. A message
# that is not ours, stale or polled is done (deleted): infra/template.json turns on ReportBatchItemFailures
# here too, and the answer says "no failed item" in so many words; only an exception retries it.
@app.on_sqs_message(queue=WORK_QUEUE, batch_size=1, name="work")
def work(event):
    remaining = event.context.get_remaining_time_in_millis() / 1000
    flush = min(FLUSH_RESERVE_SECONDS, remaining / 4)
    current = runtime.get()
    for record in event:  # batch_size 1: one message per invocation
        try:
            summary, report = fanout.run(
                current, record.body, POLL_MINUTES * 60, budget_seconds=remaining - flush - 1, flush_seconds=flush
            )
        except ConfigError as exc:
            logger.error("invalid config: nothing confirmed", extra={"problems": exc.problems, "source": exc.source})
            telemetry.record_no_cycle(telemetry.metrics)
            raise
        if report is None:  # dropped or skipped: no cycle ran, and the blob is still not empty
            telemetry.record_no_cycle(telemetry.metrics)
        else:
            telemetry.record_cycle(report, telemetry.metrics)
        return summary | {"batchItemFailures": []}
    return {"batchItemFailures": []}


# infra/template.json turns on ReportBatchItemFailures for this event source.
@app.on_sqs_message(queue=EVENTS_QUEUE, batch_size=10, name="notify")
def notify_chat(event):
    from chalicelib import notify  # imported here: the poll function's cold start skips chat-ops (~0.2 s)

    tally = telemetry.BatchTally()
    try:
        return notify.handle_batch(event.to_dict(), event.context, runtime.get_reader(), tally)
    finally:  # a batch that raised still reports what it delivered before
        telemetry.record_batch(tally, telemetry.metrics)


def _answer(answer) -> Response:
    return Response(body=answer.body, status_code=answer.status, headers=dict(answer.headers))


def _incoming():
    from chalicelib.approvals.web import Incoming

    request = app.current_request
    assert request is not None  # Chalice sets it for every route invocation
    body = request.raw_body or b""
    return Incoming(headers=dict(request.headers), body=body.encode() if isinstance(body, str) else body)


# The approval routes: verify, record the vote, trigger the poller for that target, answer.
# chalicelib.approvals.web is imported per route so the poll and notify functions never load it.
@app.route("/approvals/slack", methods=["POST"], content_types=["application/x-www-form-urlencoded"])
def approvals_slack():
    from chalicelib.approvals import web

    return _answer(web.slack_action(_incoming(), runtime.get_reader))


@app.route("/approvals/mattermost", methods=["POST"], content_types=["application/json"])
def approvals_mattermost():
    from chalicelib.approvals import web

    return _answer(web.mattermost_action(_incoming(), runtime.get_reader))


@app.route("/approvals/link/{token}", methods=["GET"])
def approvals_link_page(token):
    from chalicelib.approvals import web

    return _answer(web.link_page(token, runtime.get_reader))


@app.route("/approvals/link/{token}", methods=["POST"], content_types=["application/x-www-form-urlencoded"])
def approvals_link_vote(token):
    from chalicelib.approvals import web

    return _answer(web.link_vote(token, _incoming(), runtime.get_reader))


@app.route("/health")
def health():
    from chalicelib.approvals import web

    return _answer(web.health(runtime.get_reader))
