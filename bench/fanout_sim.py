"""Benchmark (7): the fan-out at 100, 1,000 and 5,000 targets, and what a 1-minute schedule needs.

Out of process: the DirectLink sandbox (50 ms added per request), moto (ledger, SQS work and events
queues, Secrets Manager) and the read replay of bench/scale.py serve from subprocesses on 127.0.0.1;
SQS is moto's. Per size, after the ledger learned the fleet (every VIF already confirmed: the idle
steady state), the scheduled side runs `fanout.enqueue` once per round, and W worker processes
(separate Lambda instances, each its own Runtime) each take one message at a time from the work
queue and run `fanout.run` on it, as the `work` function does:

    .venv/bin/python bench/fanout_sim.py [--sizes 100,1000,5000] [--vifs 2] [--latency-ms 50] [--workers 4] [--json]

Two rounds per size, each its own schedule slot: *cold* (new processes: every client built, every
target's keys read) and *warm* (what a warm function runs every minute). Printed per size and round:
messages, DirectLink and DynamoDB calls, the wall time from enqueue to the last message done,
worker-busy and CPU seconds, each per target, and the workers' memory. Then the growth table (the
warm round's per-target figures as ratios to the smallest size: linear growth shows as ~1.0x) and
the sizing table: WorkConcurrency and memory for a 1-minute schedule, modeled from the measured CPU
per target and AWS's latencies (see sizing()).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memory  # bench/memory.py: emulator plumbing
import scale  # bench/scale.py: the world, the replay, call counting

WORK, WORK_DLQ = "vifgate-bench-work.fifo", "vifgate-bench-work-dlq.fifo"
PERIOD = 60
PER_MESSAGE = 10  # VIFGATE_TARGETS_PER_MESSAGE's default
THREADS = 8  # VIFGATE_MAX_WORKERS of the stages
MAX_CLIENTS = 100  # DirectLink clients an instance holds: VIFGATE_MAX_CLIENTS's default (= VIFGATE_FANOUT_ABOVE)
# What the sizing models AWS with (the sandbox's latency is --latency-ms; moto's own time is not AWS's).
DYNAMODB_S = 0.010  # per call: the top of DynamoDB's 5-10 ms, for headroom
VCPU_MB = 1769  # Lambda gives one vCPU per 1,769 MB, a share of one below it
HEADROOM = 0.5  # every cycle done within half the period: room for retries, throttling and a slow minute
RSS_HEADROOM = 1.25  # memory size >= 1.25 x the modeled peak RSS
GB_SECOND = 0.0000166667  # Lambda x86 price per GB-second (us-east-1), for comparing memory sizes
MEMORY_SIZES = (128, 256, 512, 1024, 1769)


def seed(targets: int) -> dict:
    """Every VIF of the fleet recorded once (BatchWriteItem, 25 a call), so the measured cycles are idle."""
    from chalicelib import reconcile
    from chalicelib.config import parse_policy
    from chalicelib.log import logger
    from chalicelib.runtime import Runtime, Settings

    logger.setLevel("ERROR")
    world = json.loads(Path(os.environ["BENCH_WORLD"]).read_text())
    import boto3

    seeding = memory.BatchedInserts(boto3.client("dynamodb"))
    settings = Settings(config_source="bench", table_name=memory.TABLE, max_workers=32)
    runtime = Runtime(settings, policy=parse_policy(scale.policy_text(targets, world, rules=False)), dynamodb=seeding)
    began = time.perf_counter()
    report = reconcile.run_cycle(runtime)
    written = seeding.flush(memory.TABLE)
    return {"seconds": time.perf_counter() - began, "records": written, "failed": len(report.failures)}


def work(targets: int, index: int) -> dict:
    """One worker process: a message at a time until the queue stays empty, as a `work` function instance."""
    import boto3

    from chalicelib import fanout
    from chalicelib.config import parse_policy
    from chalicelib.log import logger
    from chalicelib.runtime import Runtime, Settings

    logger.setLevel("ERROR")
    world = json.loads(Path(os.environ["BENCH_WORLD"]).read_text())
    tally = scale.Tally()
    scale.count_calls(tally)
    settings = Settings(
        config_source="bench",
        table_name=memory.TABLE,
        max_workers=THREADS,
        events_queue=scale.EVENTS,
        work_queue=WORK,
    )
    text = scale.policy_text(targets, world, rules=False)
    began_cpu = scale.cpu()
    runtime = Runtime(settings, policy=parse_policy(text))
    parse_cpu = scale.cpu() - began_cpu  # once per instance (a cold start): the parsed policy is cached by its text
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=WORK)["QueueUrl"]
    ready_kb = memory._status_kb("VmRSS")  # imports, the policy of every target, no DirectLink client yet
    print("ready", flush=True)
    while sys.stdin.readline().strip() == "go":  # the parent enqueued a round
        tally.calls.clear()
        messages, busy, longest, done_at, empty, cpu = 0, 0.0, 0.0, time.time(), 0, 0.0
        while empty < 3:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages", [])
            if not got:
                empty += 1
                continue
            empty = 0
            began, began_cpu = time.perf_counter(), scale.cpu()
            # Throughput is measured here, so no message may go stale while 4 workers on 2 shared cores take
            # longer than a period over 5,000 targets: the staleness check gets an hour.
            summary, _report = fanout.run(runtime, got[0]["Body"], 3600, budget_seconds=100, flush_seconds=10)
            took = time.perf_counter() - began
            cpu += scale.cpu() - began_cpu
            sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
            busy += took
            longest = max(longest, took)
            messages += 1
            done_at = time.time()
            if summary.get("targets_failed") or summary.get("skipped") or summary.get("dropped"):
                print(json.dumps({"not polled": summary}), file=sys.stderr)
        calls = Counter({k: v for k, v in tally.calls.items() if not k.startswith("sqs:")})
        report = {
            "messages": messages,
            "busy": busy,
            "longest": longest,
            "cpu": cpu,
            "done_at": done_at,
            "calls": dict(calls),
            "ready_kb": ready_kb,
            "parse_cpu": parse_cpu,
            "rss_kb": memory._status_kb("VmRSS"),
            "peak_kb": memory._status_kb("VmHWM"),
            # DirectLink clients this instance holds (any batch may come to any instance; the cache keeps
            # at most VIFGATE_MAX_CLIENTS), and how many it built so far, the first and the rebuilt ones.
            "clients": runtime.directlink.held,
            "built": runtime.directlink.clients_built,
            "seen": len(runtime.directlink._slots),
        }
        print(json.dumps(report), flush=True)
    return {}


def simulate(size: int, args: argparse.Namespace) -> list[dict]:
    """One size: fresh emulators and ledger, the fleet seeded, then a cold and a warm round."""
    import boto3

    from chalicelib import fanout
    from sandbox.local import create_queues

    directlink = scale.Emulator("directlink", str(size), str(args.vifs), str(args.latency_ms), "0")
    aws = scale.Emulator("aws")
    replay = scale.Emulator("replay", aws.info["url"])
    workers: list[subprocess.Popen] = []
    results = []
    try:
        memory.provision(aws.info["url"], size)
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=memory.REGION)
        sqs = session.client("sqs", endpoint_url=aws.info["url"])
        create_queues(sqs, scale.EVENTS, scale.DEAD)
        work_url = create_queues(sqs, WORK, WORK_DLQ)
        world = {k: directlink.info[k] for k in ("connections", "gateways", "confirming")}
        env = scale.child_env(directlink, aws, replay, world)
        seeded = json.loads(_run([sys.executable, __file__, "--seed", str(size)], env).splitlines()[-1])
        workers = [
            subprocess.Popen(
                [sys.executable, __file__, "--work", str(size), str(i)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(args.workers)
        ]
        for worker in workers:
            assert worker.stdout is not None
            worker.stdout.readline()  # ready: policy parsed, clients not yet built (a cold start)
        names = [f"t{t}" for t in range(size)]
        for round_name, ahead in (("cold", 0), ("warm", 1)):
            # Each round is its own schedule slot (a minute apart), so its messages are not deduplicated.
            began = time.time()
            queued = fanout.enqueue(sqs, work_url, names, _now() + timedelta(minutes=ahead), PERIOD, PER_MESSAGE)
            enqueue_seconds = time.time() - began
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            reports = []
            for worker in workers:
                assert worker.stdout is not None
                reports.append(json.loads(worker.stdout.readline()))
            calls: Counter = Counter()
            for r in reports:
                calls.update(r["calls"])
            figures = {
                "targets": size,
                "vifs": args.vifs,
                "round": round_name,
                "workers": args.workers,
                "seeded": seeded,
                "messages": queued.messages,
                "refused": len(queued.refused),
                "processed": sum(r["messages"] for r in reports),
                "enqueue_seconds": enqueue_seconds,
                "wall": max(r["done_at"] for r in reports) - began,
                "busy": sum(r["busy"] for r in reports),
                "longest": max(r["longest"] for r in reports),
                "cpu": sum(r["cpu"] for r in reports),
                "calls": dict(sorted(calls.items())),
                "directlink_calls": sum(n for op, n in calls.items() if op.startswith("directconnect:")),
                "dynamodb_calls": sum(n for op, n in calls.items() if op.startswith("dynamodb:")),
                "ready_mb": max(r["ready_kb"] for r in reports) / 1024,
                "parse_cpu": max(r["parse_cpu"] for r in reports),
                "peak_mb": max(r["peak_kb"] for r in reports) / 1024,
                "clients": [r["clients"] for r in reports],
                "built": sum(r["built"] for r in reports),
                "seen": [r["seen"] for r in reports],
                "rss_mb": [r["rss_kb"] / 1024 for r in reports],
            }
            results.append(figures)
            f = figures
            print(
                f"{size:>5} targets x {args.vifs}, {round_name}: {f['messages']} messages ({f['processed']} processed, "
                f"{f['refused']} refused), enqueue {enqueue_seconds:.2f}s; DirectLink calls {f['directlink_calls']} "
                f"({f['directlink_calls'] / size:.2f}/target), DynamoDB calls {f['dynamodb_calls']} "
                f"({f['dynamodb_calls'] / size:.2f}/target); {f['wall']:.1f}s wall with {args.workers} workers "
                f"({f['wall'] / size * 1000:.1f} ms/target), {f['busy']:.1f} worker-s "
                f"({f['busy'] / size * 1000:.1f} ms/target, {f['cpu'] / size * 1000:.1f} ms CPU/target, longest "
                f"message {f['longest']:.2f}s; policy parsed in {f['parse_cpu']:.2f}s CPU at a cold start); "
                f"workers' RSS {f['ready_mb']:.0f} MB ready, peak {f['peak_mb']:.0f} MB "
                f"holding up to {max(f['clients'])} clients of the {max(f['seen'])} targets one has seen "
                f"({f['built']} clients built by all workers so far)",
                flush=True,
            )
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("stop\n")
            worker.stdin.flush()
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        directlink.stop()
        replay.stop()
        aws.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--vifs", type=int, default=2, help="VIFs per target (all already confirmed)")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="worker processes (the work function's concurrency)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON document too")
    parser.add_argument("--sizing-from", metavar="FILE", help="only the growth and sizing of a saved --json output")
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        print(json.dumps(seed(args.seed)))
        return
    if args.work:
        print(json.dumps(work(*args.work)))
        return

    if args.sizing_from:
        lines = Path(args.sizing_from).read_text().splitlines()
        saved = json.loads(next(line for line in lines if line.startswith('{"runs"')))
        growth(saved["runs"])
        sizing(saved["runs"], args.latency_ms, saved["tls"]["mb"], saved["tls"]["cpu"])
        return
    memory.free_port_check()
    started = time.perf_counter()
    ca_mb, ca_cpu = tls_costs()  # first: the parent holds nothing else yet
    print(
        f"fan-out simulation: {args.vifs} VIFs per target (all confirmed: idle), {args.latency_ms} ms per DirectLink "
        f"request, {PER_MESSAGE} targets per message, {args.workers} worker processes of {THREADS} threads; "
        "emulators out of process",
        flush=True,
    )
    results: list[dict] = []
    for size in (int(s) for s in args.sizes.split(",")):
        results += simulate(size, args)
    growth(results)
    plan = sizing(results, args.latency_ms, ca_mb, ca_cpu)
    if args.json:
        print(json.dumps({"runs": results, "tls": {"mb": ca_mb, "cpu": ca_cpu}, "sizing": plan}))
    print(f"done in {time.perf_counter() - started:.0f}s")


def growth(results: list[dict]) -> None:
    """The warm round's figures per target at each size, and their ratio to the smallest size's."""
    warm = [r for r in results if r["round"] == "warm"]
    if not warm:
        return
    base = warm[0]

    def per(r: dict, key: str) -> float:
        return r[key] / r["targets"]

    print("growth (warm round; per target, and x the smallest size's per-target figure; linear = 1.0x):")
    print("  targets | messages        | DirectLink calls | DynamoDB calls | worker-s (ms)   | CPU (ms)")
    for r in warm:
        cells = []
        for key, scale_by in (("messages", 1), ("directlink_calls", 1), ("dynamodb_calls", 1), ("busy", 1000)):
            cells.append(f"{per(r, key) * scale_by:6.2f} {per(r, key) / per(base, key):5.2f}x")
        cells.append(f"{per(r, 'cpu') * 1000:6.2f} {per(r, 'cpu') / per(base, 'cpu'):5.2f}x")
        print(f"  {r['targets']:>7} | " + " | ".join(f"{c:<15}" for c in cells))


def tls_costs(clients: int = 100) -> tuple[float, float]:
    """What each DirectLink client costs in AWS beyond the plain-HTTP sandbox: MB held, CPU seconds per new connection.

    botocore gives every client its own urllib3 pool manager and SSL context and sets the CA bundle's
    path on each connection, and urllib3 loads that bundle into the context on every new HTTPS
    connection (urllib3 issue #3623, botocore issue #3171). Measured here as they do it: the RSS the
    first load adds to a client's context, and the CPU of a load.
    """
    import boto3
    from botocore.httpsession import get_cert_path

    session = boto3.Session(aws_access_key_id="k", aws_secret_access_key="s", region_name=memory.REGION)
    built = [
        session.client("directconnect", aws_access_key_id=f"k{i}", aws_secret_access_key="s") for i in range(clients)
    ]
    contexts = [c._endpoint.http_session._manager.connection_pool_kw["ssl_context"] for c in built]  # type: ignore[attr-defined]
    bundle = get_cert_path(True)
    before, began = memory._status_kb("VmRSS"), scale.cpu()
    for context in contexts:
        context.load_verify_locations(bundle)
    return (memory._status_kb("VmRSS") - before) / 1024 / clients, (scale.cpu() - began) / clients


def sizing(results: list[dict], latency_ms: int, ca_mb: float, ca_cpu: float) -> list[dict]:
    """WorkConcurrency and memory for a 1-minute schedule, modeled from measured CPU and RSS and AWS's latencies.

    Per message of PER_MESSAGE targets over THREADS threads, at a memory size M:
      CPU      = (CPU per target (warm, the worst size measured) + one CA bundle load) x PER_MESSAGE
                 x max(1, 1769 / M) (Lambda's share of a vCPU below 1,769 MB; Python's threads use one
                 vCPU at most). The load is a new TLS connection per target per cycle: the worst case,
                 an endpoint that closed the connection while it sat idle for the minute; the sandbox
                 speaks plain HTTP, so the measured CPU has none;
      waiting  = ceil(PER_MESSAGE / THREADS) waves x (DirectLink calls per target x the latency
                 + DynamoDB calls per target x 10 ms), the waits of one wave overlapping,
      duration = CPU + waiting (no overlap counted: headroom);
    WorkConcurrency = ceil(messages x duration / (60 s x 0.5)): every cycle done in half the period.
    At 100 targets `poll` polls them itself (VIFGATE_FANOUT_ABOVE): one invocation of
    100 x CPU x max(1, 1769 / M) + ceil(100 / THREADS) waves of waiting.
    Memory: an instance's RSS when ready (imports, the policy) plus its held clients: any batch may
    reach any instance, and the cache holds at most MAX_CLIENTS (least recently used dropped, keys
    kept), so a warm instance holds min(targets, MAX_CLIENTS). A held client is what the
    cold-to-warm round added per new client at the largest size, plus its TLS context's CA bundle in
    AWS (tls_costs). The memory size must hold 1.25x that. An instance that meets more targets than
    it holds builds their clients again: the measured CPU of the larger sizes has that in it.
    """
    warm = [r for r in results if r["round"] == "warm"]
    if not warm:
        return []
    measured_cpu = max(r["cpu"] / r["targets"] for r in warm)
    cpu = measured_cpu + ca_cpu
    dl = max(r["directlink_calls"] / r["targets"] for r in warm)
    ddb = max(r["dynamodb_calls"] / r["targets"] for r in warm)
    small, big = warm[0], max(warm, key=lambda r: r["targets"])
    ready_growth = (big["ready_mb"] - small["ready_mb"]) / max(1, big["targets"] - small["targets"])
    cold = next(r for r in results if r["round"] == "cold" and r["targets"] == big["targets"])
    more = sum(big["clients"]) - sum(cold["clients"])
    if more > 0:
        http_mb = (sum(big["rss_mb"]) - sum(cold["rss_mb"])) / more
    else:  # every client built in the cold round already: the whole growth since ready, an upper bound
        http_mb = max((rss - big["ready_mb"]) / n for rss, n in zip(big["rss_mb"], big["clients"], strict=True) if n)
    per_client = http_mb + ca_mb
    waves = math.ceil(PER_MESSAGE / THREADS)
    chain = dl * latency_ms / 1000 + ddb * DYNAMODB_S
    print(
        f"sizing, 1-minute schedule (warm, worst size): {cpu * 1000:.1f} ms CPU per target on a full core "
        f"({measured_cpu * 1000:.1f} measured + {ca_cpu * 1000:.1f} loading the CA bundle for a new TLS connection); "
        f"{dl:.2f} DirectLink calls x {latency_ms} ms + {ddb:.2f} DynamoDB calls x {DYNAMODB_S * 1000:.0f} ms = "
        f"{chain * 1000:.0f} ms waiting per target, {waves} waves of {THREADS} threads per message of {PER_MESSAGE}; "
        f"RSS {big['ready_mb']:.0f} MB ready at {big['targets']} targets ({ready_growth * 1024:.1f} KB per target "
        f"of policy) + {per_client * 1024:.0f} KB per held client ({http_mb * 1024:.0f} KB measured + "
        f"{ca_mb * 1024:.0f} KB CA bundle in its TLS context)"
    )
    print(
        "  targets | how        | RSS warm | memory needed: WorkConcurrency (invocation s) | by time alone at "
        f"{' / '.join(map(str, MEMORY_SIZES))} MB ('*': the RSS does not fit)"
    )
    plan = []
    for targets in (100, 1000, 5000):
        alone = targets <= 100
        rss = big["ready_mb"] + ready_growth * (targets - big["targets"]) + per_client * min(targets, MAX_CLIENTS)
        # The smallest size (64 MB steps) that holds the RSS and, for `poll` alone, ends its cycle in time.
        needed = max(128, math.ceil(rss * RSS_HEADROOM / 64) * 64)
        while alone and needed < 10240 and _invocations(targets, needed, cpu, chain)[1] > PERIOD * HEADROOM:
            needed += 64
        for memory_mb in (needed, *MEMORY_SIZES):
            messages, duration, concurrency = _invocations(targets, memory_mb, cpu, chain)
            plan.append(
                {
                    "targets": targets,
                    "how": "poll alone" if alone else "fan-out",
                    "memory_mb": memory_mb,
                    "needed": memory_mb == needed,
                    "rss_mb": round(rss, 1),
                    "fits": memory_mb >= rss * RSS_HEADROOM,
                    "invocation_seconds": round(duration, 3),
                    "invocations": messages,
                    "work_concurrency": concurrency,
                }
            )
        how = "poll alone" if alone else f"{math.ceil(targets / PER_MESSAGE)} msgs"
        cells = [_cell(targets, m, cpu, chain, m >= rss * RSS_HEADROOM) for m in (needed, *MEMORY_SIZES)]
        print(f"  {targets:>7} | {how:<10} | {rss:>5.0f} MB | {needed} MB: {cells[0]} | " + " / ".join(cells[1:]))
    parse = big["parse_cpu"]
    print(
        f"  a new instance first parses the policy: {parse:.2f}s CPU on a full core at {big['targets']} targets "
        f"({parse * VCPU_MB / 256:.1f}s at 256 MB), once: the parsed policy is kept while its text is unchanged"
    )
    return plan


def _invocations(targets: int, memory_mb: int, cpu: float, chain: float) -> tuple[int, float, int | None]:
    """Invocations per period, seconds each, and the WorkConcurrency (None: `poll` alone), as sizing() says."""
    stretch = max(1.0, VCPU_MB / memory_mb)
    if targets <= 100:  # VIFGATE_FANOUT_ABOVE's default: poll does them itself
        return 1, cpu * targets * stretch + math.ceil(targets / THREADS) * chain, None
    messages = math.ceil(targets / PER_MESSAGE)
    duration = cpu * PER_MESSAGE * stretch + math.ceil(PER_MESSAGE / THREADS) * chain
    return messages, duration, max(1, math.ceil(messages * duration / (PERIOD * HEADROOM)))


def _cell(targets: int, memory_mb: int, cpu: float, chain: float, fits: bool) -> str:
    _messages, duration, concurrency = _invocations(targets, memory_mb, cpu, chain)
    what = ("in time" if duration <= PERIOD * HEADROOM else "LATE") if concurrency is None else concurrency
    return f"{what} ({duration:.2f}s){'' if fits else '*'}"


def _now() -> datetime:
    return datetime.now(UTC)


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{command[2:]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


if __name__ == "__main__":
    main()
