"""Benchmark: one poll cycle over many targets, sequential vs concurrent, on the sandbox + moto.

Prints figures and ratios measured in one run (machines are shared and noisy: compare the ratios).
    .venv/bin/python bench/poll_cycle.py [--targets 8] [--vifs 40] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import boto3
from moto import mock_aws

from chalicelib import reconcile
from chalicelib.config import parse_policy
from chalicelib.ledger import create_table
from chalicelib.runtime import Runtime, Settings
from sandbox import DirectLinkSandbox, Faults, SandboxClock
from sandbox.local import create_queues

PARTNER = "210987654321"


class Counting:
    """Counts calls by operation on a boto3 client, and the time spent in them."""

    def __init__(self, client):
        self._client, self.calls, self.seconds = client, Counter(), 0.0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                with self._lock:
                    self.calls[name] += 1
                    self.seconds += time.perf_counter() - started

        return call


def world(targets: int, vifs: int, latency_ms: int, tag: str) -> tuple[DirectLinkSandbox, str]:
    """A partner connection, `targets` accounts with a gateway and `vifs` VIFs each, and their policy."""
    sb = DirectLinkSandbox(
        clock=SandboxClock(datetime(2026, 11, 2, 9, tzinfo=UTC)), faults=Faults(latency_ms=latency_ms)
    )
    sb.add_account(PARTNER, access_key="AKIDBENCHPARTNER0001", secret_key="p")
    sb.add_location("PAR1", "Paris")
    connection = sb.add_connection(owner_account=PARTNER, name="bench", location="PAR1")
    target_lines, rule_lines = [], []
    for t in range(targets):
        account, key, secret = f"{100000000000 + t}", f"AKIDBENCH{t:011d}", f"bench-secret-{t}"
        sb.add_account(account, access_key=key, secret_key=secret)
        gateway = sb.add_gateway(account, state="available")
        for v in range(vifs):
            sb.allocate(connection_id=connection, owner_account=account, name=f"v{v}", vlan=2 + t * vifs + v, asn=65001)
        boto3.client("secretsmanager").create_secret(
            Name=f"bench/{tag}/{t}", SecretString=json.dumps({"access_key_id": key, "secret_access_key": secret})
        )
        target_lines.append(
            f"  - {{name: t{t}, provider: outscale, account_id: '{account}', "
            f"credentials: {{secret_id: bench/{tag}/{t}}}}}"
        )
        # Half the VIFs match (vlan range), half are asked about: both paths are exercised.
        low = 2 + t * vifs
        rule_lines.append(
            f"  - {{name: r{t}, accounts: ['{account}'], vlan: {{min: {low}, max: {low + vifs // 2 - 1}}}, "
            f"connections: [{connection}], gateway: {gateway}, action: confirm}}"
        )
    return sb, "targets:\n" + "\n".join(target_lines) + "\nrules:\n" + "\n".join(rule_lines) + "\n"


def timed(runtime: Runtime, dynamodb: Counting) -> tuple[float, Counter, dict, float]:
    """Wall time of one cycle, its DynamoDB calls, its summary, and the seconds spent in DynamoDB."""
    dynamodb.calls.clear()
    dynamodb.seconds = 0.0
    started = time.perf_counter()
    report = reconcile.run_cycle(runtime)
    return time.perf_counter() - started, Counter(dynamodb.calls), report.summary(), dynamodb.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--vifs", type=int, default=10, help="VIFs per target")
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=200,
        help="added to every DirectLink request (a real API call over the internet)",
    )
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="eu-west-2")
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
        del os.environ[name]
    with mock_aws():
        create_queues(boto3.client("sqs"), "bench.fifo", "bench-dlq.fifo")
        results = {}
        for workers in (1, args.targets):
            table = f"bench-{workers}"
            create_table(boto3.client("dynamodb"), table)
            sb, config = world(args.targets, args.vifs, args.latency_ms, tag=table)
            with sb:
                os.environ["AWS_ENDPOINT_URL_DIRECT_CONNECT"] = sb.url
                dynamodb = Counting(boto3.client("dynamodb"))
                settings = Settings(
                    config_source="bench",
                    table_name=table,
                    max_workers=workers,
                    events_queue="bench.fifo",
                    dry_run=True,
                )
                # One runtime across cycles, as in a warm Lambda: clients are built once.
                runtime = Runtime(settings, policy=parse_policy(config), clock=sb.clock, dynamodb=dynamodb)
                first = timed(runtime, dynamodb)  # cold clients; every VIF new: records + events written
                steady = timed(runtime, dynamodb)  # warm; nothing changed: reads only
            results[workers] = (first, steady)
    print(f"{args.targets} targets x {args.vifs} VIFs, {args.latency_ms} ms added per DirectLink request")
    for workers, (first, steady) in results.items():
        print(
            f"  workers={workers:<2}  first cycle {first[0]:6.2f}s ({sum(first[2]['events'].values())} events, "
            f"{first[1]['transact_write_items']} transactions; DynamoDB {first[3]:.2f}s summed over threads)   "
            f"steady cycle {steady[0]:6.2f}s ({dict(steady[1])}; DynamoDB {steady[3]:.2f}s summed over threads)"
        )
    sequential, concurrent = results[1][1][0], results[args.targets][1][0]
    print(f"  steady-cycle speed-up with {args.targets} workers: {sequential / concurrent:.1f}x")


if __name__ == "__main__":
    main()
