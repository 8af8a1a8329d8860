"""Benchmarks (1)-(3) of the scale issue: a steady poll cycle against its floor and a naive loop, calls per idle cycle.

The DirectLink sandbox and moto (DynamoDB ledger, SQS events queue, Secrets Manager) each serve from
a subprocess on 127.0.0.1 (bench/memory.py's emulators), so the measured process holds only the
poller. N targets x M VIFs, 5% of them `confirming` and trusted by a rule (the rest already
confirmed), 50 ms added to every DirectLink request:

    .venv/bin/python bench/scale.py [--targets 200] [--vifs 25] [--latency-ms 50] [--workers 8,16,32] [--json]

Each worker count runs in a fresh process (a cold Lambda container; the ledger already knows the
fleet) and prints, measured in that one run:
- the steady cycle (warm clients, nothing changed: what a 1-minute schedule runs almost every time),
  median of 3, with its CPU seconds;
- the concurrency floor: the cycle's DirectLink requests x the latency / workers, and the ratio
  (goal <= 1.5x);
- a naive sequential boto3 loop in the same process (per target: DescribeVirtualInterfaces, then
  ConfirmPrivateVirtualInterface for each trusted confirming VIF; no ledger, no events), and the ratio
  naive / steady (goal >= 10x);
- (2) the steady cycle again with 5-10 ms added to every DynamoDB call (uniform), as in AWS;
- (3) the calls of an idle cycle by operation, and the DynamoDB write units it used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memory  # bench/memory.py: the emulators in subprocesses

SHARE_CONFIRMING = 0.05
EVENTS, DEAD = "vifgate-bench-scale.fifo", "vifgate-bench-scale-dlq.fifo"


def serve_directlink(targets: int, vifs: int, latency_ms: int, confirming: int = -1) -> None:
    """The sandbox: per account a gateway, a partner connection and `vifs` VIFs, 95% already confirmed."""

    from sandbox import DirectLinkSandbox, SandboxClock

    sb = DirectLinkSandbox(
        flavor="outscale", region=memory.REGION, clock=SandboxClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
    )
    sb.add_account(memory.PARTNER, access_key="AKIDMEMPARTNER000001", secret_key="partner")
    sb.add_location("PAR1", "Paris")
    sb.start()
    connections: list[str] = []
    gateways: list[str] = []
    if confirming < 0:  # else as asked (the fan-out simulation: 0, an idle fleet)
        confirming = max(1, round(vifs * SHARE_CONFIRMING))
    for t in range(targets):
        sb.add_account(memory.account(t), *memory.keys(t))
        gateway = sb.add_gateway(memory.account(t), state="available")
        connection = sb.add_connection(owner_account=memory.PARTNER, name=f"c{t}", location="PAR1")
        gateways.append(gateway)
        connections.append(connection)
        for v in range(vifs):
            vif = sb.allocate(
                connection_id=connection, owner_account=memory.account(t), name=f"v{v}", vlan=100 + v, asn=65001
            )
            if v >= confirming:  # confirmed long ago: the steady state of most of a fleet
                # Straight into the sandbox's state (its own confirm logic, no HTTP): 4,750 signed
                # requests took minutes to set up.
                params = {"virtualInterfaceId": vif["virtualInterfaceId"], "virtualGatewayId": gateway}
                sb._state.handle("ConfirmPrivateVirtualInterface", memory.account(t), params)
    sb.set_faults(latency_ms=latency_ms)
    memory._announce({"url": sb.url, "connections": connections, "gateways": gateways, "confirming": confirming})


def world_file(world: dict) -> str:
    """The world's ids in a file for the children (5,000 targets' ids are past the 128 KB an env var may hold)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="vifgate-bench-", delete=False) as file:
        json.dump(world, file)
    return file.name


def policy_text(targets: int, world: dict, rules: bool = True) -> str:
    """Each account's confirming VIFs (vlan 100..) are trusted by a confirm rule; anything else is asked about.

    `rules=False`: targets only (an idle fleet needs none; 5,000 targets with a rule each pass the
    policy document's 1,000,000-character limit).
    """
    lines = ["targets:"]
    for t in range(targets):
        lines.append(
            f"  - {{name: t{t}, provider: outscale, region: {memory.REGION}, account_id: '{memory.account(t)}', "
            f"credentials: {{secret_id: {memory.secret_id(t)}}}}}"
        )
    lines.append("rules:" if rules else "rules: []")
    high = 100 + max(1, world["confirming"]) - 1
    for t in range(targets if rules else 0):
        lines.append(
            f"  - {{name: r{t}, accounts: ['{memory.account(t)}'], connections: [{world['connections'][t]}], "
            f"vlan: {{min: 100, max: {high}}}, gateway: {world['gateways'][t]}, action: confirm}}"
        )
    return "\n".join(lines) + "\ndefault_action: ask\n"


def serve_replay(upstream: str) -> None:
    """DynamoDB in front of moto: a read answered before is answered again from memory until any write.

    moto's server handles one DynamoDB request at a time (~15-80 ms each), so 200 concurrent Queries
    queue behind each other and the emulator, not the poller, sets the cycle time. DynamoDB serves
    them in parallel in single-digit milliseconds. The replay answers a repeated read (same request
    body) with moto's own bytes, at once and in parallel; any other request goes to moto and empties
    the cache, so no answer is ever stale. The measured process still sends, receives and parses
    every byte over HTTP.
    """
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    cache: dict[bytes, tuple[int, list[tuple[str, str]], bytes]] = {}
    lock = threading.Lock()
    reads = ("DynamoDB_20120810.Query", "DynamoDB_20120810.GetItem", "DynamoDB_20120810.DescribeTable")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            operation = self.headers.get("X-Amz-Target", "")
            key = operation.encode() + b"|" + body
            with lock:
                hit = cache.get(key) if operation in reads else None
                if operation not in reads:
                    cache.clear()
            if hit is None:
                request = urllib.request.Request(upstream + self.path, data=body, method="POST")
                for name, value in self.headers.items():
                    if name.lower() not in ("host", "content-length", "connection"):
                        request.add_header(name, value)
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        hit = (answer.status, list(answer.headers.items()), answer.read())
                except urllib.error.HTTPError as error:
                    hit = (error.code, list(error.headers.items()), error.read())
                if operation in reads and hit[0] == 200:
                    with lock:
                        cache[key] = hit
            status, headers, payload = hit
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    memory._announce({"url": f"http://127.0.0.1:{server.server_address[1]}"})


class Tally:
    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.write_units = 0.0
        self.seconds: Counter = Counter()  # summed over threads, by service
        self.lock = threading.Lock()


def count_calls(tally: Tally) -> None:
    """Every AWS call any botocore client makes, by service and operation, with DynamoDB's consumed write units."""
    import botocore.client

    original = botocore.client.BaseClient._make_api_call

    def call(self, operation, params):
        service = self.meta.service_model.service_name
        if service == "dynamodb" and operation in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"):
            params = dict(params, ReturnConsumedCapacity="TOTAL")
        began = time.perf_counter()
        answer = original(self, operation, params)
        took = time.perf_counter() - began
        consumed = answer.get("ConsumedCapacity") if isinstance(answer, dict) else None
        with tally.lock:
            tally.calls[f"{service}:{operation}"] += 1
            tally.seconds[service] += took
            for entry in consumed if isinstance(consumed, list) else [consumed] if consumed else []:
                tally.write_units += float(entry.get("WriteCapacityUnits") or entry.get("CapacityUnits") or 0)
        return answer

    botocore.client.BaseClient._make_api_call = call  # type: ignore[method-assign]


class Slowed:
    """A DynamoDB client whose every call takes 5-10 ms more (uniform), as a call to AWS does."""

    def __init__(self, client, low_ms: float, high_ms: float) -> None:
        self._client, self._low, self._high = client, low_ms / 1000, high_ms / 1000

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("_") or name in ("meta", "exceptions"):
            return attr

        def slowed(*args, **kwargs):
            time.sleep(random.uniform(self._low, self._high))
            return attr(*args, **kwargs)

        return slowed


def cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def measure(targets: int, workers: int, latency_ms: int, world: dict, seed: bool) -> dict:
    import boto3

    from chalicelib import reconcile
    from chalicelib.config import parse_policy
    from chalicelib.log import logger
    from chalicelib.runtime import Runtime, Settings

    logger.setLevel("WARNING")  # the INFO lines go to stdout in Lambda; here they would be the figure's noise
    tally = Tally()
    count_calls(tally)
    policy = parse_policy(policy_text(targets, world))
    settings = Settings(config_source="bench", table_name=memory.TABLE, max_workers=workers, events_queue=EVENTS)
    figures: dict = {"workers": workers}

    def cycle(runtime: Runtime) -> tuple[float, float, Counter, float, object]:
        tally.calls.clear()
        tally.seconds.clear()
        tally.write_units = 0.0
        began_cpu, began = cpu(), time.perf_counter()
        report = reconcile.run_cycle(runtime)
        return time.perf_counter() - began, cpu() - began_cpu, Counter(tally.calls), tally.write_units, report

    if seed:
        # The fleet's first cycle: every record written, the trusted VIFs confirmed. Without the events
        # queue: moto's SQS slows down with every message it holds (thousands here), and that would be
        # the figure; an idle cycle has no events anyway.
        seeding = Runtime(replace(settings, events_queue=None), policy=policy)
        seconds, cpu_s, calls, _wu, report = cycle(seeding)
        figures["first"] = {"seconds": seconds, "cpu": cpu_s, "calls": dict(calls), "summary": report.summary()}  # type: ignore[attr-defined]
        del seeding
    runtime = Runtime(settings, policy=policy)
    cycle(runtime)  # a new process's first cycle builds its clients: a cold start, not the steady state
    if os.environ.get("BENCH_PROFILE"):  # where the steady cycle's CPU goes, to stderr
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        cycle(runtime)
        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    steady = [cycle(runtime) for _ in range(3)]
    seconds = statistics.median(s[0] for s in steady)
    calls, write_units, report = steady[-1][2], steady[-1][3], steady[-1][4]
    requests = sum(n for op, n in calls.items() if op.startswith("directconnect:"))
    floor = requests * latency_ms / 1000 / workers
    figures["steady"] = {
        "seconds": seconds,
        "cpu": statistics.median(s[1] for s in steady),
        "floor": floor,
        "ratio_to_floor": seconds / floor if floor else None,
        "calls": dict(sorted(calls.items())),
        "write_units": write_units,
        "seconds_in_calls": {k: round(v, 3) for k, v in tally.seconds.items()},
        "failed": len(report.failures),  # type: ignore[attr-defined]
        "vifs": len(report.outcomes),  # type: ignore[attr-defined]
    }

    # (2) the same cycle with AWS-like DynamoDB latency
    slowed = Runtime(
        settings,
        policy=policy,
        dynamodb=Slowed(boto3.client("dynamodb", config=runtime.ledger.client.meta.config), 5, 10),
    )
    cycle(slowed)
    with_latency = [cycle(slowed)[0] for _ in range(3)]
    figures["steady_ddb_latency"] = {"seconds": statistics.median(with_latency)}
    figures["steady_ddb_latency"]["ratio_to_floor"] = (
        figures["steady_ddb_latency"]["seconds"] / floor if floor else None
    )

    # The naive loop: one thread, one client per target, no ledger.
    clients = []
    for t in range(targets):
        access, secret = memory.keys(t)
        clients.append(
            boto3.client(
                "directconnect",
                region_name=memory.REGION,
                aws_access_key_id=access,
                aws_secret_access_key=secret,
            )
        )
    began = time.perf_counter()
    for t, client in enumerate(clients):
        for vif in client.describe_virtual_interfaces()["virtualInterfaces"]:
            trusted = vif["virtualInterfaceState"] == "confirming" and 100 <= vif["vlan"] < 100 + world["confirming"]
            if trusted:
                client.confirm_private_virtual_interface(
                    virtualInterfaceId=vif["virtualInterfaceId"], virtualGatewayId=world["gateways"][t]
                )
    figures["naive_seconds"] = time.perf_counter() - began
    figures["naive_ratio"] = figures["naive_seconds"] / seconds
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--vifs", type=int, default=25)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--workers", default="8,16,32", help="worker counts, comma-separated (VIFGATE_MAX_WORKERS)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON document too")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.serve[0] == "directlink":
            serve_directlink(*map(int, args.serve[1:]))
        elif args.serve[0] == "replay":
            serve_replay(args.serve[1])
        else:
            import cost  # bench/cost.py

            cost._cheap_moto_transactions()  # moto copies the whole table per transaction: minutes at 5,000 VIFs
            memory.serve_aws()
        return
    if args.child:
        targets, workers, latency, seed = map(int, args.child)
        world = json.loads(Path(os.environ["BENCH_WORLD"]).read_text())
        print(json.dumps(measure(targets, workers, latency, world, bool(seed))))
        return

    memory.free_port_check()
    started = time.perf_counter()
    directlink = Emulator("directlink", str(args.targets), str(args.vifs), str(args.latency_ms))
    aws = Emulator("aws")
    replay = Emulator("replay", aws.info["url"])
    try:
        memory.provision(aws.info["url"], args.targets)
        session = __import__("boto3").Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=memory.REGION
        )
        from sandbox.local import create_queues

        create_queues(session.client("sqs", endpoint_url=aws.info["url"]), EVENTS, DEAD)
        world = {k: directlink.info[k] for k in ("connections", "gateways", "confirming")}
        env = child_env(directlink, aws, replay, world)
        print(
            f"{args.targets} targets x {args.vifs} VIFs ({world['confirming']} confirming per target, trusted), "
            f"{args.latency_ms} ms per DirectLink request; emulators out of process, repeated DynamoDB reads "
            "replayed in parallel (see serve_replay)"
        )
        results = []
        for i, workers in enumerate(int(w) for w in args.workers.split(",")):
            figures = run_child([str(args.targets), str(workers), str(args.latency_ms), "1" if i == 0 else "0"], env)
            results.append(figures)
            if "first" in figures:
                first = figures["first"]
                print(
                    f"  first cycle: {first['seconds']:.1f}s wall, {first['cpu']:.1f}s CPU; "
                    f"{first['summary']['actions']}"
                )
            s, d = figures["steady"], figures["steady_ddb_latency"]
            print(
                f"  workers={workers:<3} steady {s['seconds']:.2f}s ({s['cpu']:.2f}s CPU, {s['vifs']} VIFs, "
                f"{s['failed']} failed)  floor {s['floor']:.2f}s  ratio {s['ratio_to_floor']:.2f}x (goal <= 1.5x)  |  "
                f"+5-10 ms DynamoDB: {d['seconds']:.2f}s = {d['ratio_to_floor']:.2f}x floor  |  naive sequential "
                f"{figures['naive_seconds']:.1f}s = {figures['naive_ratio']:.1f}x steady (goal >= 10x)"
            )
        idle = results[0]["steady"]
        print(f"  idle cycle calls: {idle['calls']}; DynamoDB write units {idle['write_units']:.1f}")
        print(f"  seconds inside calls (summed over threads): {idle['seconds_in_calls']}")
        per_target = {op: round(n / args.targets, 3) for op, n in idle["calls"].items()}
        print(f"  per target: {per_target}")
        if args.json:
            print(json.dumps({"targets": args.targets, "vifs": args.vifs, "runs": results}))
    finally:
        directlink.stop()
        replay.stop()
        aws.stop()
    print(f"done in {time.perf_counter() - started:.0f}s")


def Emulator(*args: str) -> memory.Emulator:
    """memory.Emulator, serving this script's world (95% of the VIFs already confirmed) and the replay."""
    return memory.Emulator(*args, script=__file__)


def child_env(directlink: memory.Emulator, aws: memory.Emulator, replay: memory.Emulator, world: dict) -> dict:
    """What a measured child needs: the emulators' endpoints (DynamoDB through the replay) and the world's ids."""
    return memory._child_env(
        {
            "AWS_ENDPOINT_URL_DIRECT_CONNECT": directlink.info["url"],
            "AWS_ENDPOINT_URL_DYNAMODB": replay.info["url"],
            "AWS_ENDPOINT_URL_SQS": aws.info["url"],
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": aws.info["url"],
            "AWS_ENDPOINT_URL_STS": aws.info["url"],
            "BENCH_WORLD": world_file(world),
        }
    )


def run_child(args: list[str], env: dict[str, str]) -> dict:
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if env.get("BENCH_PROFILE"):
        print(done.stderr[-12000:], file=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"measuring {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
