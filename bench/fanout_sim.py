"""Benchmark (7): the fan-out at 100, 1,000 and 5,000 targets, and what a 1-minute schedule needs.

The DirectLink sandbox, moto (ledger, SQS work and events queues, Secrets Manager) and the read
replay of bench/scale.py serve from subprocesses on 127.0.0.1. Per size, after the ledger learned
the fleet (every VIF already confirmed: the idle steady state), the scheduled side runs
`fanout.enqueue` once, and W worker processes (separate Lambda instances) each take one message at
a time from the work queue and run `fanout.run` on it, as the `work` function does:

    .venv/bin/python bench/fanout_sim.py [--sizes 100,1000,5000] [--vifs 2] [--latency-ms 50] [--workers 4]

Printed per size: messages, DirectLink and DynamoDB calls, the wall time from enqueue to the last
message done, worker-busy seconds, and each per target, so linear growth shows as flat per-target
figures. Then the sizing table: workers and memory for a 1-minute schedule from the measured
worker-seconds per target.
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
        config_source="bench", table_name=memory.TABLE, max_workers=8, events_queue=scale.EVENTS, work_queue=WORK
    )
    runtime = Runtime(settings, policy=parse_policy(scale.policy_text(targets, world, rules=False)))
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=WORK)["QueueUrl"]
    print("ready", flush=True)
    while sys.stdin.readline().strip() == "go":  # the parent enqueued a round
        tally.calls.clear()
        messages, busy, done_at, empty, cpu = 0, 0.0, time.time(), 0, 0.0
        while empty < 3:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages", [])
            if not got:
                empty += 1
                continue
            empty = 0
            began, began_cpu = time.perf_counter(), scale.cpu()
            # Throughput is measured here, so no message may go stale while 4 workers on 2 shared cores take
            # longer than two periods over 5,000 targets: the staleness check gets an hour.
            summary, _report = fanout.run(runtime, got[0]["Body"], 3600, budget_seconds=100, flush_seconds=10)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
            busy += time.perf_counter() - began
            cpu += scale.cpu() - began_cpu
            messages += 1
            done_at = time.time()
            if summary.get("targets_failed") or summary.get("skipped") or summary.get("dropped"):
                print(json.dumps({"not polled": summary}), file=sys.stderr)
        calls = Counter({k: v for k, v in tally.calls.items() if not k.startswith("sqs:")})
        report = {"messages": messages, "busy": busy, "cpu": cpu, "done_at": done_at, "calls": dict(calls)}
        print(json.dumps(report), flush=True)
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--vifs", type=int, default=2, help="VIFs per target (all already confirmed)")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="worker processes (the work function's concurrency)")
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        print(json.dumps(seed(args.seed)))
        return
    if args.work:
        print(json.dumps(work(*args.work)))
        return

    import boto3

    from chalicelib import fanout
    from sandbox.local import create_queues

    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    started = time.perf_counter()
    for size in sizes:
        directlink = scale.Emulator("directlink", str(size), str(args.vifs), str(args.latency_ms), "0")
        aws = scale.Emulator("aws")
        replay = scale.Emulator("replay", aws.info["url"])
        workers: list[subprocess.Popen] = []
        try:
            memory.provision(aws.info["url"], size)
            session = boto3.Session(
                aws_access_key_id="testing", aws_secret_access_key="testing", region_name=memory.REGION
            )
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
                # Each round is its own schedule slot (a minute apart): a new process's first cycle
                # builds clients and reads keys; the next one is what a warm function runs every minute.
                began = time.time()
                queued = fanout.enqueue(sqs, work_url, names, _now() + timedelta(minutes=ahead), PERIOD, 10)
                enqueue_seconds = time.time() - began
                for worker in workers:
                    assert worker.stdin is not None
                    worker.stdin.write("go\n")
                    worker.stdin.flush()
                reports = []
                for worker in workers:
                    assert worker.stdout is not None
                    reports.append(json.loads(worker.stdout.readline()))
                wall = max(r["done_at"] for r in reports) - began
                calls: Counter = Counter()
                for r in reports:
                    calls.update(r["calls"])
                figures = {
                    "targets": size,
                    "round": round_name,
                    "seeded": seeded,
                    "messages": queued.messages,
                    "refused": len(queued.refused),
                    "processed": sum(r["messages"] for r in reports),
                    "enqueue_seconds": enqueue_seconds,
                    "wall": wall,
                    "busy": sum(r["busy"] for r in reports),
                    "cpu": sum(r["cpu"] for r in reports),
                    "calls": dict(sorted(calls.items())),
                }
                results.append(figures)
                dl = sum(n for op, n in calls.items() if op.startswith("directconnect:"))
                ddb = sum(n for op, n in calls.items() if op.startswith("dynamodb:"))
                print(
                    f"{size:>5} targets x {args.vifs}, {round_name}: {figures['messages']} messages "
                    f"({figures['processed']} processed, {figures['refused']} refused), enqueue "
                    f"{enqueue_seconds:.2f}s; DirectLink calls {dl} ({dl / size:.2f}/target), DynamoDB calls {ddb} "
                    f"({ddb / size:.2f}/target); {wall:.1f}s wall with {args.workers} workers "
                    f"({wall / size * 1000:.1f} ms/target), {figures['busy']:.1f} worker-s "
                    f"({figures['busy'] / size * 1000:.1f} ms/target, "
                    f"{figures['cpu'] / size * 1000:.1f} ms CPU/target)",
                    flush=True,
                )
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("stop\n")
                worker.stdin.flush()
        finally:
            for worker in workers:
                worker.kill()
            directlink.stop()
            replay.stop()
            aws.stop()
    print(json.dumps(results))
    sizing(results, args.latency_ms)
    print(f"done in {time.perf_counter() - started:.0f}s")


def sizing(results: list[dict], latency_ms: int) -> None:
    """Workers and memory for a 1-minute schedule, from the warm round's measured time and CPU per target.

    Lambda gives a function CPU in proportion to its memory (1,769 MB = one vCPU): the CPU measured
    here on a full core takes 1769/MB times as long there, on top of the waiting. A cycle must end
    within half the period (headroom for retries and throttling); DynamoDB's own latency (5-10 ms a
    call, ~1.1 calls per target over 8 threads) adds about 1 ms per target to what was measured.
    """
    warm = [r for r in results if r["round"] == "warm"]
    wait = max((r["busy"] - r["cpu"]) / r["targets"] for r in warm) + 1.1 * 0.0075 / 8
    cpu = max(r["cpu"] / r["targets"] for r in warm)
    print(
        f"sizing (1-minute schedule; per target, warm, worst size: {wait * 1000:.1f} ms waiting, "
        f"{cpu * 1000:.1f} ms CPU on a full core):"
    )
    print("  targets | 256 MB | 512 MB | 1024 MB   (WorkConcurrency needed so every cycle ends in 30 s)")
    for targets in (100, 1000, 5000):
        cells = []
        for memory_mb in (256, 512, 1024):
            seconds = targets * (wait + cpu * max(1.0, 1769 / memory_mb))
            cells.append(f"{max(1, math.ceil(seconds / (PERIOD / 2))):>6}")
        print(f"  {targets:>7} | " + " | ".join(cells))


def _now() -> datetime:
    return datetime.now(UTC)


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{command[2:]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


if __name__ == "__main__":
    main()
