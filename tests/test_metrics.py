"""The metrics a poll cycle and a notify batch emit (Powertools EMF), and how app.py flushes them."""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from aws_lambda_powertools.metrics import EphemeralMetrics
from chalice.test import Client

from app import app
from chalicelib import metrics as telemetry
from chalicelib import reconcile
from chalicelib.config import parse_policy
from chalicelib.directlink import DirectLinkApi, TargetError
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from sandbox.local import create_queues
from tests.conftest import TABLE
from tests.http_receiver import Answer
from tests.test_app import invoke_poll, stage_timeout, stage_world  # noqa: F401 (fixtures)
from tests.test_notify import SLACK_PATH, chat, invoke, sqs_batch, three_events  # noqa: F401 (fixtures)

SERVICE = "vif-gatekeeper-test"

# prod-app (vlan 101) is confirmed, prod-db (vlan 102) asked, prod-legacy ignored; the lab fails.
CONFIG = f"""\
targets:
  - {{name: osc-prod, provider: outscale, region: eu-west-2, account_id: "{scenario.PROD}",
     credentials: {{secret_id: {scenario.secret_id("osc-prod")}}}}}
  - {{name: osc-lab, provider: outscale, region: eu-west-2, account_id: "{scenario.LAB}",
     credentials: {{secret_id: {scenario.secret_id("osc-lab")}}}}}
rules:
  - name: app-only
    accounts: ["{scenario.PROD}"]
    connections: [{scenario.PARTNER_CONNECTION}]
    vlan: {{min: 101, max: 101}}
    gateway: {scenario.PROD_GATEWAY}
    action: confirm
  - name: db-asks
    accounts: ["{scenario.PROD}"]
    vlan: {{min: 102, max: 102}}
    action: ask
default_action: ignore
expiry_alerts: [24h]
"""
# The same targets with nothing to do: the first sighting only (it starts the VIFs' deadlines).
WATCH_ONLY = CONFIG.split("rules:")[0] + "default_action: ignore\n"


def emf_values(blob: dict) -> dict[str, tuple[float, str]]:
    """{metric: (value, unit)} of one EMF blob (one value each), checked to be in our namespace."""
    [directive] = blob["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == telemetry.NAMESPACE
    return {m["Name"]: (_one(blob[m["Name"]]), m["Unit"]) for m in directive["Metrics"]}


def _one(value: float | list) -> float:
    if isinstance(value, list):  # Powertools writes a list of the values added in the invocation
        [value] = value
    return value


def emf_blobs(stdout: str) -> list[dict]:
    blobs = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and '"_aws"' in line:
            blobs.append(json.loads(line))
    return blobs


def runtime_for(directlink, config: str) -> Runtime:
    settings = Settings(config_source="test", table_name=TABLE, events_queue="q.fifo", max_workers=1)
    return Runtime(settings, policy=parse_policy(config), clock=directlink.clock)


@pytest.fixture
def lab_down(monkeypatch):
    """The lab fails while `down` holds it; a test may clear it to let the lab answer again."""
    listed, down = DirectLinkApi.describe_virtual_interfaces, {"osc-lab"}

    def failing_for_lab(api):
        if api.target.name in down:
            raise TargetError("osc-lab", "DescribeVirtualInterfaces", "Throttling", "slow down", retryable=True)
        return listed(api)

    monkeypatch.setattr(DirectLinkApi, "describe_virtual_interfaces", failing_for_lab)
    return down


def test_a_cycle_emits_its_figures(aws, directlink, lab_down, capsys):
    create_queues(boto3.client("sqs"), "q.fifo", "q-dlq.fifo")
    clock = directlink.clock
    reconcile.run_cycle(runtime_for(directlink, WATCH_ONLY))  # the lab's 1st failed cycle; deadlines start
    clock.advance(timedelta(minutes=1))
    reconcile.run_cycle(runtime_for(directlink, WATCH_ONLY), targets=["osc-lab"])  # 2nd
    clock.advance(timedelta(days=6, hours=1))  # 23 h left for every prod VIF
    capsys.readouterr()

    report = reconcile.run_cycle(runtime_for(directlink, CONFIG))  # 3rd: confirm one, ask one
    into = EphemeralMetrics(namespace=telemetry.NAMESPACE, service=SERVICE)
    telemetry.record_cycle(report, into)
    blob = into.serialize_metric_set()
    values = emf_values(blob)

    assert blob["service"] == SERVICE
    assert blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert values == {  # Rejected, EventsPending and EventsParked are 0: not sent (a zero is billed too)
        "CyclesCompleted": (1.0, "Count"),
        "Confirmed": (1.0, "Count"),
        "Asked": (1.0, "Count"),
        "TargetFailures": (1.0, "Count"),
        "LongestTargetFailureCycles": (3.0, "Count"),
        "ExpiryWarnings": (2.0, "Count"),  # prod-db and prod-legacy; prod-app was confirmed
        "VifsNearDeadlineUndecided": (1.0, "Count"),  # prod-db: asked; ignored and confirmed ones do not count
        "VifsConfirming": (3.0, "Count"),  # as listed, before this cycle confirmed prod-app
    }
    assert emf_blobs(capsys.readouterr().out) == [], "nothing flushed on its own: one blob per invocation"


def test_an_idle_cycle_sends_only_the_heartbeat_and_the_waiting_vifs(aws, directlink):
    """Before: 13 metrics every cycle, zeros included, each billed $0.30 a month; now what is not zero."""
    create_queues(boto3.client("sqs"), "q.fifo", "q-dlq.fifo")
    reconcile.run_cycle(runtime_for(directlink, WATCH_ONLY))  # first sighting: discovered events
    directlink.clock.advance(timedelta(minutes=1))
    report = reconcile.run_cycle(runtime_for(directlink, WATCH_ONLY))  # nothing changed
    assert report.events == [] and report.failures == []
    waiting = report.vif_states()["confirming"]
    into = EphemeralMetrics(namespace=telemetry.NAMESPACE, service=SERVICE)
    telemetry.record_cycle(report, into)
    assert emf_values(into.serialize_metric_set()) == {
        "CyclesCompleted": (1.0, "Count"),
        "VifsConfirming": (float(waiting), "Count"),  # the sandbox's VIFs left waiting (ignored)
    }


def test_a_notify_batch_that_did_nothing_still_flushes_one_figure():
    into = EphemeralMetrics(namespace=telemetry.NAMESPACE, service=SERVICE)
    telemetry.record_batch(telemetry.BatchTally(), into)
    assert emf_values(into.serialize_metric_set()) == {"Delivered": (0.0, "Count")}
    into = EphemeralMetrics(namespace=telemetry.NAMESPACE, service=SERVICE)
    telemetry.record_batch(telemetry.BatchTally(retried=2), into)
    assert emf_values(into.serialize_metric_set()) == {"Retried": (2.0, "Count")}


def test_every_alarm_on_our_metrics_reads_missing_data_as_the_figure_zero_would_give():
    """Counts are sent only when not zero: an alarm must read missing data as not breaching, except
    NoSuccessfulCycle on CyclesCompleted, sent every cycle, where missing data means no cycle ran."""
    template = json.loads((Path(__file__).parents[1] / "infra" / "template.json").read_text())
    alarms = {
        name: r["Properties"]
        for name, r in template["Resources"].items()
        if r.get("Type") == "AWS::CloudWatch::Alarm" and r["Properties"].get("Namespace") == telemetry.NAMESPACE
    }
    assert alarms, "the template alarms on our metrics"
    for name, alarm in alarms.items():
        assert alarm["MetricName"] in telemetry.CYCLE_METRICS + telemetry.BATCH_METRICS, name
        if alarm["MetricName"] == "CyclesCompleted":
            assert (alarm["ComparisonOperator"], alarm["TreatMissingData"]) == ("LessThanThreshold", "breaching")
        else:
            assert alarm["ComparisonOperator"].startswith("GreaterThan") and alarm["TreatMissingData"] in (
                "notBreaching",
                "missing",
            ), name


def test_a_target_that_answers_again_counts_from_zero(aws, directlink, lab_down, monkeypatch):
    create_queues(boto3.client("sqs"), "q.fifo", "q-dlq.fifo")
    for _ in range(2):
        report = reconcile.run_cycle(runtime_for(directlink, WATCH_ONLY))
        directlink.clock.advance(timedelta(minutes=1))
    assert report.longest_failure_cycles() == 2
    lab_down.clear()  # the lab answers again
    report = reconcile.run_cycle(runtime_for(directlink, WATCH_ONLY))
    assert report.failures == [] and report.longest_failure_cycles() == 0
    assert [e.type for e in report.events if e.type.startswith("target.")] == ["target.recovered"]
    with monkeypatch.context() as patch:
        patch.setattr(DirectLinkApi, "describe_virtual_interfaces", _throttled)
        report = reconcile.run_cycle(runtime_for(directlink, WATCH_ONLY))
    assert report.failed_cycles == {"osc-prod": 1, "osc-lab": 1}, "a new spell starts at one"
    assert sorted(e.subject for e in report.events if e.type == "target.failed") == ["osc-lab", "osc-prod"]


def _throttled(api):
    raise TargetError(api.target.name, "DescribeVirtualInterfaces", "Throttling", "slow down", retryable=True)


def test_a_notify_batch_emits_delivered_retried_and_dead_lettered_once(chat, capsys):  # noqa: F811
    """Through app.py's handler: one EMF blob for the invocation, with the batch's three counts."""
    confirmed, asked = three_events()[:2]
    # confirmed → slack ok, webhook 404 (dead-lettered); asked → slack 500 (the record is retried).
    chat.answer(Answer(), Answer(status=404), Answer(status=500))
    capsys.readouterr()
    answer = invoke(sqs_batch(*map(json.dumps, map(_as_dict, (confirmed, asked)))))
    assert len(answer["batchItemFailures"]) == 1
    blobs = emf_blobs(capsys.readouterr().out)
    assert len(blobs) == 1, blobs
    assert emf_values(blobs[0]) == {
        "Delivered": (1.0, "Count"),
        "Retried": (1.0, "Count"),
        "DeadLettered": (1.0, "Count"),
    }
    assert blobs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]


def _as_dict(event) -> dict:
    from chalicelib import events

    return json.loads(events.to_json(event))


def test_each_poll_invocation_flushes_one_blob_of_cycle_metrics(stage_world, capsys):  # noqa: F811
    for _ in range(2):  # the second invocation must not carry the first one's figures
        capsys.readouterr()
        invoke_poll("prod")
        blobs = emf_blobs(capsys.readouterr().out)
        cycle = [b for b in blobs if "CyclesCompleted" in b]
        assert len(cycle) == 1, blobs
        figures = emf_values(cycle[0])
        assert figures["CyclesCompleted"] == (1.0, "Count") and "TargetFailures" not in figures
        assert blobs == cycle, "one blob per invocation"


def test_a_poll_with_an_invalid_config_still_says_no_cycle_completed(stage_world, capsys):  # noqa: F811
    from tests.test_app import put_config

    put_config("prod", "targets: []\nrules: nonsense\n")
    capsys.readouterr()
    with Client(app, stage_name="prod") as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        with pytest.raises(Exception, match="config"):
            client.lambda_.invoke("poll", event)
    [blob] = emf_blobs(capsys.readouterr().out)
    assert emf_values(blob) == {"CyclesCompleted": (0.0, "Count")}


def test_api_requests_emit_no_metrics_and_no_warning(stage_world, capsys):  # noqa: F811
    with warnings.catch_warnings(record=True) as caught, Client(app, stage_name="prod") as client:
        warnings.simplefilter("always")
        for _ in range(2):
            client.http.get("/health")
    assert emf_blobs(capsys.readouterr().out) == []
    assert [str(w.message) for w in caught if "metrics" in str(w.message).lower()] == []


def test_tracing_is_off_outside_lambda_and_never_loads_the_xray_sdk():
    import subprocess
    import sys

    code = (
        "import sys, app\n"
        "from chalicelib import metrics\n"
        "assert not metrics.tracing_enabled()\n"
        "print('aws_xray_sdk' in sys.modules)\n"
    )
    root = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.stdout.strip() == "False" and out.stderr == ""


TRACED = """
import json, os, socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(5)
os.environ.update(
    LAMBDA_TASK_ROOT="/var/task",
    AWS_XRAY_DAEMON_ADDRESS=f"127.0.0.1:{sock.getsockname()[1]}",
    _X_AMZN_TRACE_ID="Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
)
from chalicelib import metrics

def handler(event, context):
    return {"answer": "ANSWER-NOT-FOR-THE-TRACE"}

class Context:
    function_name, aws_request_id = "vif-gatekeeper-test-poll", "request-1"

for _ in range(2):
    metrics.traced(handler)({}, Context())
import aws_xray_sdk.core.patcher as patcher
print(json.dumps(sorted(patcher._PATCHED_MODULES)))
for _ in range(2):  # each datagram: the daemon protocol's header line, then one subsegment
    print(sock.recv(65536).decode().split("\\n")[-1])
"""


def test_in_lambda_the_handler_is_traced_with_botocore_only_and_no_response(tmp_path):
    """A real X-Ray SDK sending to a UDP 'daemon' on loopback: one subsegment, ColdStart, no response body."""
    import subprocess
    import sys

    root = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, "-c", TRACED], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    patched, *sent = out.stdout.strip().splitlines()
    assert json.loads(patched) == ["botocore"]
    segments = [json.loads(line) for line in sent]
    assert [(s["name"], s["annotations"]["ColdStart"]) for s in segments] == [
        ("## handler", True),
        ("## handler", False),
    ]
    assert "ANSWER-NOT-FOR-THE-TRACE" not in out.stdout
