"""Benchmark: what a poll cycle calls and writes, and the monthly bill that follows from it.

Runs real cycles on the DirectLink sandbox (50 ms added per request) and moto, counts every AWS
call by service and operation, sizes the DynamoDB items read and written to get read and write
request units, measures the log bytes and the wall time, then prices a month at a 1-minute
schedule with the list prices below (us-east-1, on-demand, free tiers ignored):

    .venv/bin/python bench/cost.py [--targets 1,100] [--vifs 25] [--latency-ms 50] [--workers 8]

The first cycle onboards every VIF; the figures priced are those of an idle cycle (nothing
changed), which is what a 1-minute schedule runs almost every time. Everything priced is measured
in that cycle: the calls, the units, the log bytes (with the metrics blob), the metrics it emits
(chalicelib/metrics.py, run on the cycle's report) and the CPU time of our code (the process's,
less the emulators' own, timed inside every call moto answers). Lambda time is modeled from them as
AWS would run it: DirectLink requests at --latency-ms, DynamoDB calls at 7.5 ms, other AWS calls at
20 ms, spread over the workers, plus that CPU. Past --fanout-above targets the scheduled function
enqueues --per-message targets per SQS message and a worker invocation polls each batch: its SQS
requests, invocations and per-worker time are priced too, as is the idle long polling of the SQS
event sources (Lambda's pollers) on the events queue and, when fanned out, the work queue.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import botocore.client  # noqa: E402
import botocore.exceptions  # noqa: E402
from aws_lambda_powertools.metrics import EphemeralMetrics  # noqa: E402
from moto import mock_aws  # noqa: E402

from chalicelib import metrics as telemetry  # noqa: E402
from chalicelib import reconcile  # noqa: E402
from chalicelib.config import parse_policy  # noqa: E402
from chalicelib.ledger import create_table  # noqa: E402
from chalicelib.runtime import Runtime, Settings  # noqa: E402
from sandbox import DirectLinkSandbox, Faults, SandboxClock  # noqa: E402
from sandbox.local import create_queues  # noqa: E402

CYCLES_PER_MONTH = 730 * 60  # a 1-minute schedule, 730 hours a month
MEMORY_GB = 256 / 1024  # the stages' lambda_memory_size
DYNAMODB_LATENCY_S = 0.0075  # per call in AWS (5-10 ms); in-process moto answers in ~0
OTHER_AWS_LATENCY_S = 0.020  # SQS, Secrets Manager, STS per call
EMULATED = frozenset({"dynamodb", "sqs", "secretsmanager", "sts", "ssm"})  # moto, in this process
# Lambda's SQS event source polls each queue with long polls whether messages come or not: about
# 5 pollers x 3 ReceiveMessage a minute (20 s waits). Modeled; AWS does not publish an exact figure.
ESM_RECEIVES_PER_MINUTE = 15
PARTNER = "210987654321"
TABLE = "vifgate-bench-cost"
QUEUE = "vifgate-bench-cost.fifo"

# List prices assumed (USD, us-east-1, x86, on-demand; checked 2026-11). Free tiers are ignored.
PRICES = {
    "lambda_gb_second": 0.0000166667,
    "lambda_request": 0.20 / 1e6,
    "dynamodb_wru": 0.625 / 1e6,
    "dynamodb_rru": 0.125 / 1e6,
    "sqs_fifo_request": 0.50 / 1e6,
    "logs_gb_ingested": 0.50,
    "custom_metric_month": 0.30,
    "alarm_month": 0.10,
    "secret_month": 0.40,
    "secrets_api_call": 0.05 / 10_000,
    "appconfig_request": 0.0000002,
}
# GetLatestConfiguration once a minute per warm function reading the config (poll, notify when
# messages flow, api when people vote): priced for the poll function's one call per cycle.
APPCONFIG_CALLS_PER_CYCLE = 1


def alarms_in_template() -> int:
    """The alarms infra/template.json creates (each $0.10 a month)."""
    template = json.loads((ROOT / "infra" / "template.json").read_text())
    return sum(1 for r in template["Resources"].values() if r.get("Type") == "AWS::CloudWatch::Alarm")


@dataclass
class Tally:
    """Every AWS call made through botocore, and the DynamoDB units it consumed."""

    calls: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    read_units: float = 0.0
    written_keys: list = field(default_factory=list)  # (key, transactional) of each item written
    emulator_cpu: float = 0.0  # CPU seconds spent inside calls moto answered (not our code's)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.read_units = 0.0
            self.written_keys = []
            self.emulator_cpu = 0.0


def item_bytes(value: Any) -> int:
    """An item's size by DynamoDB's rules, near enough: names and values in UTF-8, numbers ~ digits/2."""
    if isinstance(value, dict) and len(value) == 1:
        (kind, inner), *_ = value.items()
        if kind == "S":
            return len(inner.encode())
        if kind == "N":
            return len(inner) // 2 + 1
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "M":
            return 3 + sum(len(k.encode()) + 1 + item_bytes(v) for k, v in inner.items())
        if kind == "L":
            return 3 + sum(1 + item_bytes(v) for v in inner)
        if kind == "SS":
            return sum(len(s.encode()) for s in inner)
        if kind == "B":
            return len(inner)
    return sum(len(k.encode()) + item_bytes(v) for k, v in value.items())


def _cheap_moto_transactions() -> None:
    """moto deep-copies the whole table before every transaction (its rollback): onboarding 2,500
    VIFs took most of an hour in the emulator. One poller's transactions are never refused here
    (measure() checks it), so the copy is skipped; only the emulator's speed changes."""
    import moto.dynamodb.models as models

    class _NoCopy:
        @staticmethod
        def deepcopy(value: Any) -> Any:
            return value

    models.copy = _NoCopy  # type: ignore[assignment]


def counting(tally: Tally):
    """Patch botocore so every client (ours, Powertools', the sandbox's) is counted."""
    original = botocore.client.BaseClient._make_api_call

    def call(self, operation, params):
        service = self.meta.service_model.service_name
        began = time.thread_time()
        try:
            answer = original(self, operation, params)
        except botocore.exceptions.ClientError:
            with tally.lock:
                tally.refused[(service, operation)] += 1
            raise
        finally:
            if service in EMULATED:
                spent = time.thread_time() - began
                with tally.lock:
                    tally.emulator_cpu += spent
        with tally.lock:
            tally.calls[(service, operation)] += 1
            if service == "dynamodb" and operation in ("Query", "GetItem"):
                items = answer.get("Items") or ([answer["Item"]] if answer.get("Item") else [])
                size = sum(item_bytes(i) for i in items)
                units = max(1, math.ceil(size / 4096))
                tally.read_units += units if params.get("ConsistentRead") else units / 2
            elif service == "dynamodb" and operation == "BatchGetItem":
                # Priced per item read, each rounded up to 4 KB (not per call, unlike a Query's pages).
                for table, request in params["RequestItems"].items():
                    for item in answer.get("Responses", {}).get(table, []):
                        units = max(1, math.ceil(item_bytes(item) / 4096))
                        tally.read_units += units if request.get("ConsistentRead") else units / 2
            elif service == "dynamodb" and operation in ("UpdateItem", "PutItem"):
                tally.written_keys.append((params["TableName"], params.get("Key") or _key(params["Item"]), False))
            elif service == "dynamodb" and operation == "TransactWriteItems":
                for entry in params["TransactItems"]:
                    (kind, body), *_ = entry.items()
                    if kind != "ConditionCheck":
                        tally.written_keys.append((body["TableName"], body.get("Key") or _key(body["Item"]), True))
        return answer

    return call, original


def _key(item: dict) -> dict:
    return {name: item[name] for name in ("target", "vif_id") if name in item}


def write_units(tally: Tally) -> float:
    """Each written item's size after the cycle, rounded up to 1 KB; transactions cost double."""
    dynamodb = boto3.client("dynamodb")
    units = 0.0
    for table, key, transactional in tally.written_keys:
        item = dynamodb.get_item(TableName=table, Key=key).get("Item") or key
        units += max(1, math.ceil(item_bytes(item) / 1024)) * (2 if transactional else 1)
    return units


def world(targets: int, vifs: int, confirmed: bool = False) -> tuple[DirectLinkSandbox, str]:
    """`targets` accounts with `vifs` VIFs each, all trusted: new ones the first cycle confirms, or, with
    `confirmed`, VIFs someone confirmed already (`available`), which the first cycle only records: the
    same steady state at a fraction of the emulator's time (no claim, Confirm and settle per VIF)."""
    sb = DirectLinkSandbox(clock=SandboxClock(datetime(2026, 11, 2, 9, tzinfo=UTC)), faults=Faults())
    sb.add_account(PARTNER, access_key="AKIDCOSTPARTNER00001", secret_key="p")
    sb.add_location("PAR1", "Paris")
    connection = sb.add_connection(owner_account=PARTNER, name="bench", location="PAR1")
    lines = ["targets:"]
    rules = ["rules:"]
    secrets = boto3.client("secretsmanager")
    for t in range(targets):
        account, key, secret = f"{100000000000 + t}", f"AKIDCOST{t:012d}", f"cost-secret-{t}"
        sb.add_account(account, access_key=key, secret_key=secret)
        gateway = sb.add_gateway(account, state="available")
        for v in range(vifs):
            vif = sb.allocate(
                connection_id=connection, owner_account=account, name=f"v{v}", vlan=2 + t * vifs + v, asn=65001
            )
            if confirmed:  # the sandbox has no public call for "someone else confirmed it"
                sb._state._vifs[vif["virtualInterfaceId"]].move("available", sb.clock.now())
        secrets.create_secret(
            Name=f"vifgate/bench/targets/t{t}",
            SecretString=json.dumps({"access_key_id": key, "secret_access_key": secret}),
        )
        lines.append(
            f"  - {{name: t{t}, provider: outscale, account_id: '{account}', "
            f"credentials: {{secret_id: vifgate/bench/targets/t{t}}}}}"
        )
        rules.append(
            f"  - {{name: r{t}, accounts: ['{account}'], connections: [{connection}], "
            f"gateway: {gateway}, action: confirm}}"
        )
    return sb, "\n".join(lines + rules) + "\n"


@dataclass
class Cycle:
    seconds: float
    calls: Counter
    read_units: float
    write_units: float
    log_bytes: int  # the cycle's log lines and its EMF metrics blob
    events: int
    cpu_seconds: float  # our code's: the process's CPU less what the emulators spent inside their calls
    metrics: list[str]  # the custom metrics the cycle's report emits (chalicelib/metrics.py)


def run(runtime: Runtime, tally: Tally, *, units: bool = True) -> Cycle:
    tally.reset()
    logs = io.StringIO()
    started, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stderr(logs):
        report = reconcile.run_cycle(runtime)
    seconds = time.perf_counter() - started
    cpu_seconds = max(0.0, time.process_time() - cpu - tally.emulator_cpu)
    calls = Counter(tally.calls)
    written = write_units(tally) if units else float("nan")
    into = EphemeralMetrics(namespace=telemetry.NAMESPACE, service="vif-gatekeeper-bench")
    telemetry.record_cycle(report, into)
    blob = into.serialize_metric_set()
    names = [m["Name"] for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    log_bytes = len(logs.getvalue().encode()) + len(json.dumps(blob, separators=(",", ":")).encode()) + 1
    return Cycle(seconds, calls, tally.read_units, written, log_bytes, len(report.events), cpu_seconds, names)


def measure(
    targets: int, vifs: int, latency_ms: int, workers: int, idle_cycles: int = 3, confirmed: bool = True
) -> tuple[Cycle, Cycle]:
    tally = Tally()
    _cheap_moto_transactions()
    patched, original = counting(tally)
    botocore.client.BaseClient._make_api_call = patched  # type: ignore[method-assign]
    try:
        with mock_aws():
            create_table(boto3.client("dynamodb"), TABLE)
            create_queues(boto3.client("sqs"), QUEUE, "vifgate-bench-cost-dlq.fifo")
            sb, config = world(targets, vifs, confirmed)
            with sb:
                os.environ["AWS_ENDPOINT_URL_DIRECT_CONNECT"] = sb.url
                settings = Settings(config_source="bench", table_name=TABLE, max_workers=workers, events_queue=QUEUE)
                policy = parse_policy(config)
                # Onboarding happens once and is not priced: run it without latency and without the
                # outbox (moto's outbox queries grow with the table: 2,500 events took most of an hour).
                onboarding = Runtime(replace(settings, events_queue=None), policy=policy, clock=sb.clock)
                first = run(onboarding, tally, units=False)
                sb.set_faults(latency_ms=latency_ms)
                runtime = Runtime(settings, policy=policy, clock=sb.clock)  # a warm Lambda: clients built once
                idle = first
                for _ in range(idle_cycles):
                    sb.clock.advance(timedelta(seconds=60))
                    idle = run(runtime, tally)
    finally:
        botocore.client.BaseClient._make_api_call = original  # type: ignore[method-assign]
    transactions_refused = tally.refused[("dynamodb", "TransactWriteItems")]
    assert not transactions_refused, f"{transactions_refused} transactions refused: moto's rollback copy is needed"
    return first, idle


@dataclass(frozen=True)
class Deployment:
    workers: int  # threads per invocation (VIFGATE_MAX_WORKERS)
    fanout_above: int  # VIFGATE_FANOUT_ABOVE: more targets than this are fanned out
    per_message: int  # VIFGATE_TARGETS_PER_MESSAGE
    latency_s: float  # per DirectLink request


def lambda_seconds(idle: Cycle, targets: int, workers: int, latency_s: float) -> float:
    """How long the idle cycle of `targets` runs on Lambda: AWS latencies over the workers, plus our CPU."""
    per = Counter()
    for (service, _), n in idle.calls.items():
        per[service] += n
    waiting = (
        per["directconnect"] * latency_s
        + per["dynamodb"] * DYNAMODB_LATENCY_S
        + sum(n for service, n in per.items() if service not in ("directconnect", "dynamodb")) * OTHER_AWS_LATENCY_S
    )
    return waiting / max(1, min(workers, targets)) + idle.cpu_seconds


def monthly(idle: Cycle, targets: int, deployment: Deployment, alarms: int) -> dict[str, float]:
    """USD per month for a 1-minute schedule, from one idle cycle's measured calls, CPU, logs and metrics."""
    n = CYCLES_PER_MONTH
    secret_calls = sum(k for (service, _), k in idle.calls.items() if service == "secretsmanager")
    sqs_calls = sum(k for (service, _), k in idle.calls.items() if service == "sqs")
    queues = 1  # the events queue's event source polls all month
    if targets > deployment.fanout_above:  # the scheduled function enqueues; workers poll the batches
        messages = math.ceil(targets / deployment.per_message)
        per_worker = replace(idle, cpu_seconds=idle.cpu_seconds / messages)
        share = Counter({key: math.ceil(k / messages) for key, k in idle.calls.items()})
        seconds = messages * lambda_seconds(
            replace(per_worker, calls=share), deployment.per_message, deployment.workers, deployment.latency_s
        )
        seconds += math.ceil(messages / 10) * OTHER_AWS_LATENCY_S  # the scheduled function's SendMessageBatch
        invocations = 1 + messages
        # SendMessageBatch per 10 messages; the event source's receive and delete per message
        sqs_calls += math.ceil(messages / 10) + 2 * messages
        queues += 1
    else:
        seconds = lambda_seconds(idle, targets, deployment.workers, deployment.latency_s)
        invocations = 1
    return {
        "lambda": n * (invocations * PRICES["lambda_request"] + seconds * MEMORY_GB * PRICES["lambda_gb_second"]),
        "dynamodb": n * (idle.write_units * PRICES["dynamodb_wru"] + idle.read_units * PRICES["dynamodb_rru"]),
        "sqs": (n * sqs_calls + queues * ESM_RECEIVES_PER_MINUTE * n) * PRICES["sqs_fifo_request"],
        "appconfig": n * APPCONFIG_CALLS_PER_CYCLE * PRICES["appconfig_request"],
        "logs": n * idle.log_bytes / 1e9 * PRICES["logs_gb_ingested"],
        "metrics": len(idle.metrics) * PRICES["custom_metric_month"],
        "alarms": alarms * PRICES["alarm_month"],
        "secrets (api calls)": n * secret_calls * PRICES["secrets_api_call"],
        "secrets (storage, one per OUTSCALE target)": targets * PRICES["secret_month"],
    }


def _calls(cycle: Cycle) -> str:
    return ", ".join(f"{service}.{op} {n}" for (service, op), n in sorted(cycle.calls.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="1,100", help="comma-separated target counts")
    parser.add_argument("--vifs", type=int, default=25, help="VIFs per target")
    parser.add_argument("--latency-ms", type=int, default=50, help="added to every DirectLink request")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--onboard",
        choices=("recorded", "confirmed"),
        default="confirmed",
        help="confirmed: the VIFs are new and the first cycle confirms them, as in production; recorded: they are "
        "available already and the first cycle only records them (~3x faster, but the records lack the claim and "
        "confirmation fields: 4 RRU per target instead of 5)",
    )
    parser.add_argument("--fanout-above", type=int, default=100, help="VIFGATE_FANOUT_ABOVE of the stages")
    parser.add_argument("--per-message", type=int, default=10, help="VIFGATE_TARGETS_PER_MESSAGE")
    args = parser.parse_args()
    deployment = Deployment(args.workers, args.fanout_above, args.per_message, args.latency_ms / 1000)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="eu-west-2")
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
        del os.environ[name]
    print(f"prices assumed (USD): {json.dumps(PRICES)}")
    print(f"{args.vifs} VIFs per target, {args.latency_ms} ms per DirectLink request, {args.workers} workers")
    for targets in (int(t) for t in args.targets.split(",")):
        first, idle = measure(targets, args.vifs, args.latency_ms, args.workers, confirmed=args.onboard == "recorded")
        print(f"\n{targets} target(s)")
        print(f"  onboarding cycle ({args.onboard}; no latency, no outbox): {first.seconds:.2f}s; {_calls(first)}")
        print(
            f"  idle cycle:  {idle.seconds:.2f}s, {idle.events} events, {idle.read_units:.1f} RRU, "
            f"{idle.write_units:.0f} WRU, {idle.log_bytes} log bytes; {_calls(idle)}"
        )
        print(
            f"  per target per idle cycle: {sum(idle.calls.values()) / targets:.2f} calls, "
            f"{idle.read_units / targets:.2f} RRU, {idle.write_units / targets:.2f} WRU, "
            f"{idle.log_bytes / targets:.0f} log bytes, {idle.cpu_seconds / targets * 1000:.1f} ms CPU (ours)"
        )
        fanned = targets > deployment.fanout_above
        print(
            f"  metrics emitted: {', '.join(idle.metrics)}; Lambda modeled "
            f"{'fanned out, ' + str(math.ceil(targets / args.per_message)) + ' worker invocations' if fanned else ''}"
            f" {lambda_seconds(idle, targets, args.workers, deployment.latency_s):.2f}s in one invocation"
        )
        bill = monthly(idle, targets, deployment, alarms_in_template())
        without_secrets = sum(v for k, v in bill.items() if not k.startswith("secrets (storage"))
        print("  monthly at a 1-minute schedule: " + ", ".join(f"{k} ${v:.2f}" for k, v in bill.items()))
        print(
            f"  total ${sum(bill.values()):.2f} with one secret per OUTSCALE target; "
            f"${without_secrets:.2f} for AWS member accounts (roles, no secret)"
        )


if __name__ == "__main__":
    main()
