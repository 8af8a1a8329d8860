"""Benchmark: peak memory and CPU of a poll cycle over many targets, each with its own keys.

The emulators run OUT of the measured process: the DirectLink sandbox and moto (ledger, events
queue, one Secrets Manager secret of keys per target) each serve from their own subprocess on
127.0.0.1. Each size is measured in a fresh child process, so peaks do not mix:

    .venv/bin/python bench/memory.py [--sizes 10,100,200] [--vifs 25] [--baseline REV] [--baseline-sizes 10,100]
                                     [--no-baseline] [--latency-ms 0] [--workers 8]

Per size and implementation it prints the child's peak RSS (VmHWM, reset between phases) for
- cold:    the first cycle of a new process (every client built; the ledger already knows the VIFs),
- steady:  the next cycle (warm clients, nothing changed), as a warm Lambda runs most minutes,
- refresh: a cycle whose clock is an hour later, so every target's keys are due to be read again,
with the wall time and the CPU seconds of the child (the emulators' CPU is not counted).
`--baseline REV` also runs the client cache of chalicelib/directlink.py at git revision REV (the
default is the last one that built a boto3 Session per target) with today's DirectLinkApi, and
prints the ratios. The endpoints are plain HTTP: a client that talks HTTPS also loads the CA bundle
into its own SSL context, about 0.65 MB more per client that this benchmark does not show.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import types
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The last revision whose DirectLinkClients built one boto3.Session per target (and per refresh).
BASELINE_REV = "46d46cb^"
PARTNER = "210987654321"
REGION = "eu-west-2"
TABLE = "vifgate-bench-memory"
SHIFT_SECONDS = 3600  # later than any refresh interval: every target's keys are due
MB = 1024 * 1024


def account(t: int) -> str:
    return f"{100000000000 + t}"


def keys(t: int) -> tuple[str, str]:
    return f"AKIDMEM{t:013d}", f"bench-memory-secret-{t}"


def secret_id(t: int) -> str:
    return f"vifgate/bench-memory/t{t}"


def policy_text(targets: int, vifs: int, connections: list[str], gateways: list[str]) -> str:
    """One target per account, keys from its own secret; half of each account's VIFs match a confirm rule."""
    lines = ["targets:"]
    for t in range(targets):
        lines.append(
            f"  - {{name: t{t}, provider: outscale, region: {REGION}, account_id: '{account(t)}', "
            f"credentials: {{secret_id: {secret_id(t)}}}}}"
        )
    lines.append("rules:")
    for t in range(targets):
        lines.append(
            f"  - {{name: r{t}, accounts: ['{account(t)}'], connections: [{connections[t]}], "
            f"vlan: {{min: 100, max: {100 + vifs // 2 - 1}}}, gateway: {gateways[t]}, action: confirm}}"
        )
    return "\n".join(lines) + "\ndefault_action: ask\n"


# ---- the emulators, each in its own subprocess ---------------------------------------------------


def serve_directlink(targets: int, vifs: int, latency_ms: int) -> None:
    """The sandbox with `targets` accounts (own access key each), a partner connection and a gateway per account."""
    from sandbox import DirectLinkSandbox, Faults, SandboxClock

    sb = DirectLinkSandbox(
        flavor="outscale",
        region=REGION,
        clock=SandboxClock(datetime(2026, 11, 2, 9, tzinfo=UTC)),
        faults=Faults(latency_ms=latency_ms),
    )
    sb.add_account(PARTNER, access_key="AKIDMEMPARTNER000001", secret_key="partner")
    sb.add_location("PAR1", "Paris")
    connections, gateways = [], []
    for t in range(targets):
        sb.add_account(account(t), *keys(t))
        gateways.append(sb.add_gateway(account(t), state="available"))
        # A connection per account: VLANs are unique per connection, and 200 x 25 exceeds 4094.
        connection = sb.add_connection(owner_account=PARTNER, name=f"c{t}", location="PAR1")
        connections.append(connection)
        for v in range(vifs):
            sb.allocate(connection_id=connection, owner_account=account(t), name=f"v{v}", vlan=100 + v, asn=65001)
    sb.start()
    _announce({"url": sb.url, "connections": connections, "gateways": gateways})


def serve_aws() -> None:
    """moto's server (with the ledger's DynamoDB atomicity, see sandbox.local)."""
    from sandbox.local import MotoServer  # also serializes moto's DynamoDB requests (one lock)

    _narrow_moto_queries()
    moto = MotoServer(0)
    moto.start()
    _announce({"url": moto.url})


def _narrow_moto_queries() -> None:
    """Make moto's Query read one partition, as DynamoDB does.

    moto 5.2 sorts every item of the table on each Query: with 5000 VIFs in the ledger a cycle's
    200 Queries took most of a minute, all of it in the emulator. Only the emulator's speed changes:
    the same items come back in the same order. Runs under sandbox.local's DynamoDB lock.
    """
    from moto.dynamodb.models.table import Table

    query = Table.query

    def narrowed(self, hash_key, *args, **kwargs):
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if index_name or hash_key is None or not self.range_key_attr:
            return query(self, hash_key, *args, **kwargs)
        partition = list(self.items.get(hash_key, {}).values())
        self.all_items = lambda: sorted(partition, key=lambda x: (x.hash_key, x.range_key))
        try:
            return query(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    Table.query = narrowed  # type: ignore[method-assign]


def _announce(info: dict) -> None:
    """Tell the parent where to find us, then serve until it closes our stdin (or dies)."""
    print(json.dumps(info), flush=True)
    sys.stdin.read()


class Emulator:
    """A serving subprocess of this script; its first stdout line says where it listens."""

    def __init__(self, *args: str, script: str = __file__):
        self.process = subprocess.Popen(
            [sys.executable, script, "--serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env({}),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"emulator {args[0]} did not start (exit {self.process.wait()})")
        self.info = json.loads(line)

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _child_env(endpoints: dict[str, str]) -> dict[str, str]:
    """Nothing from the host's AWS configuration; moto's fake keys for AWS; the emulators' endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIFGATE_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONPATH=str(ROOT),
        POWERTOOLS_LOG_LEVEL="ERROR",
        **endpoints,
    )
    return env


def provision(aws_url: str, targets: int) -> None:
    import boto3

    from chalicelib.ledger import create_table

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    create_table(session.client("dynamodb", endpoint_url=aws_url), TABLE)
    secrets = session.client("secretsmanager", endpoint_url=aws_url)
    for t in range(targets):
        access_key, secret_key = keys(t)
        secrets.create_secret(
            Name=secret_id(t), SecretString=json.dumps({"access_key_id": access_key, "secret_access_key": secret_key})
        )


# ---- the measured child ------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next phase's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count_sessions() -> list[int]:
    """Count botocore sessions built in this process (every boto3.Session builds one)."""
    import botocore.session

    count = [0]
    init = botocore.session.Session.__init__

    def counting(self, *args, **kwargs):
        count[0] += 1
        init(self, *args, **kwargs)

    botocore.session.Session.__init__ = counting  # type: ignore[method-assign]
    return count


def _baseline_module(rev: str) -> types.ModuleType:
    """chalicelib/directlink.py at `rev`, its client cache serving today's DirectLinkApi."""
    import chalicelib.directlink as current

    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:chalicelib/directlink.py"], capture_output=True, text=True, check=True
    ).stdout
    spec = importlib.util.spec_from_loader("chalicelib._directlink_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "chalicelib"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:chalicelib/directlink.py", "exec"), module.__dict__)
    # The cycle catches today's TargetError and calls today's API; only client building is the old one.
    module.DirectLinkApi, module.TargetError = current.DirectLinkApi, current.TargetError  # type: ignore[attr-defined]
    return module


class BatchedInserts:
    """A DynamoDB client for the seeding cycle: new records go in by BatchWriteItem, 25 to a call.

    The seeding cycle writes each VIF's first record with UpdateItem (SET every field); on an item
    that does not exist yet that is the same as a Put. moto answers a single write in 10-20 ms, so
    5000 of them took minutes; the same items in 200 batches take seconds. Every other call is sent.
    """

    def __init__(self, client) -> None:
        self._client, self._items, self._lock = client, [], threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def update_item(self, **request):
        expression = request.get("UpdateExpression", "")
        names, values = request.get("ExpressionAttributeNames", {}), request.get("ExpressionAttributeValues", {})
        sets = [part.split(" = ") for part in expression.removeprefix("SET ").split(", ")]
        plain = expression.startswith("SET ") and "ConditionExpression" not in request
        if not plain or any(len(s) != 2 or s[0] not in names or s[1] not in values for s in sets):
            return self._client.update_item(**request)
        item = dict(request["Key"]) | {names[name]: values[value] for name, value in sets}
        with self._lock:
            self._items.append({"PutRequest": {"Item": item}})
        return {}

    def flush(self, table: str) -> int:
        for start in range(0, len(self._items), 25):
            pending: dict = {table: self._items[start : start + 25]}
            while pending:
                pending = self._client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
        return len(self._items)


class ShiftedTime:
    """Stands in for the `time` module of the client cache: its wall clock can be moved forward."""

    def __init__(self) -> None:
        self.shift = 0.0

    def time(self) -> float:
        return time.time() + self.shift

    def __getattr__(self, name: str):
        return getattr(time, name)


def measure(targets: int, vifs: int, implementation: str, workers: int, world: dict, *, phases: int = 3) -> dict:
    """Up to three cycles in this (fresh) process; returns the figures of each."""
    sessions = _count_sessions()
    import boto3

    from chalicelib import reconcile
    from chalicelib.config import parse_policy
    from chalicelib.log import logger
    from chalicelib.runtime import Runtime, Settings

    logger.setLevel("ERROR")  # one line per target failure would be noise here; failures are counted below
    if implementation == "current":
        import chalicelib.directlink as module
    else:
        module = _baseline_module(implementation)
    shifted = ShiftedTime()
    module.time = shifted  # type: ignore[attr-defined]
    policy = parse_policy(policy_text(targets, vifs, world["connections"], world["gateways"]))
    # Dry run: the VIFs stay `confirming`, so every measured cycle sees the same fleet. No events
    # queue: the seeding cycle would otherwise write each record in a transaction, which moto
    # answers by copying the whole table (minutes at 5000 VIFs); a steady cycle has no events anyway.
    settings = Settings(config_source="bench", table_name=TABLE, max_workers=workers, dry_run=True)
    seeding = BatchedInserts(boto3.client("dynamodb")) if phases == 1 else None
    runtime = Runtime(settings, policy=policy, dynamodb=seeding)
    runtime._directlink = module.DirectLinkClients(base_session=lambda: runtime.session)  # type: ignore[attr-defined]
    figures: dict = {"baseline_mb": _status_kb("VmRSS") / 1024, "phases": {}}
    resettable = _reset_peak()
    for phase in ("cold", "steady", "refresh")[:phases]:
        if phase == "refresh":
            shifted.shift = SHIFT_SECONDS
        if resettable:
            _reset_peak()
        built, cpu, started = sessions[0], _cpu(), time.perf_counter()
        report = reconcile.run_cycle(runtime)
        if seeding is not None:
            seeding.flush(TABLE)
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        peak = _status_kb("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        figures["phases"][phase] = {
            "seconds": seconds,
            "cpu": cpu,
            "peak_mb": peak / 1024,
            "rss_mb": _status_kb("VmRSS") / 1024,
            "sessions": sessions[0] - built,
            "vifs": len(report.outcomes),
            "failed": [f"{f.target}: {f.message}" for f in report.failures][:3],
            "failed_count": len(report.failures),
        }
        del report  # a Lambda drops the last cycle's report; held here it would count in the next peak
    figures["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["threads"] = threading.active_count()
    return figures


# ---- the parent -------------------------------------------------------------------------------------


def run_child(args: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"measuring {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port_check() -> None:
    """Fail early and clearly when loopback sockets are not available."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,200", help="target counts, comma-separated")
    parser.add_argument("--vifs", type=int, default=25, help="VIFs per target")
    parser.add_argument("--workers", type=int, default=8, help="the poller's threads (VIFGATE_MAX_WORKERS)")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every DirectLink request")
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of directlink.py to compare with")
    parser.add_argument(
        "--baseline-sizes",
        default="10,100",
        help="sizes to measure the baseline at (at 200 it needs ~2 GB and two minutes more)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="measure the current code only")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        if args.serve[0] == "directlink":
            serve_directlink(*map(int, args.serve[1:]))
        else:
            serve_aws()
        return
    if args.child:
        targets, vifs, implementation, workers, phases = args.child
        world = json.loads(os.environ["BENCH_WORLD"])
        print(json.dumps(measure(int(targets), int(vifs), implementation, int(workers), world, phases=int(phases))))
        return

    sizes = sorted({int(s) for s in args.sizes.split(",")})
    free_port_check()
    largest = sizes[-1]
    started = time.perf_counter()
    directlink = Emulator("directlink", str(largest), str(args.vifs), str(args.latency_ms))
    aws = Emulator("aws")
    try:
        provision(aws.info["url"], largest)
        world = {"connections": directlink.info["connections"], "gateways": directlink.info["gateways"]}
        endpoints = {
            "AWS_ENDPOINT_URL_DIRECT_CONNECT": directlink.info["url"],
            "AWS_ENDPOINT_URL_DYNAMODB": aws.info["url"],
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": aws.info["url"],
            "AWS_ENDPOINT_URL_STS": aws.info["url"],
            "BENCH_WORLD": json.dumps(world),
        }
        env = _child_env(endpoints)
        # The ledger learns every VIF once, so each measured "cold" cycle is a new process on a known fleet.
        seeded = run_child([str(largest), str(args.vifs), "current", str(args.workers), "1"], env)
        print(
            f"ledger seeded: {largest} targets x {args.vifs} VIFs in {seeded['phases']['cold']['seconds']:.1f}s "
            f"(emulators out of process; {args.workers} workers; {args.latency_ms} ms added per DirectLink request)"
        )
        baseline_sizes = set() if args.no_baseline else {int(s) for s in args.baseline_sizes.split(",")}
        results: dict[tuple[str, int], dict] = {}
        for size in sizes:
            for implementation in ["current"] + ([args.baseline] if size in baseline_sizes else []):
                results[implementation, size] = figures = run_child(
                    [str(size), str(args.vifs), implementation, str(args.workers), "3"], env
                )
                print(_line(implementation, size, args.vifs, figures), flush=True)
        if baseline_sizes & set(sizes):
            print("old / current:")
            for size in sorted(baseline_sizes & set(sizes)):
                old, new = results[args.baseline, size], results["current", size]
                print(
                    f"  {size:>4} targets: peak {_ratio(old, new, 'peak_mb')}; "
                    f"CPU cold {_ratio(old, new, 'cpu', 'cold')}, refresh {_ratio(old, new, 'cpu', 'refresh')}"
                )
    finally:
        directlink.stop()
        aws.stop()
    print(f"done in {time.perf_counter() - started:.0f}s")


def _line(implementation: str, size: int, vifs: int, figures: dict) -> str:
    name = "current" if implementation == "current" else f"old ({implementation})"
    phases = figures["phases"]
    peak, imports = figures["maxrss_mb"], figures["baseline_mb"]
    parts = [f"{name:<16} {size:>4} x {vifs}: process peak {peak:6.1f} MB (after imports {imports:.0f} MB)"]
    for phase in ("cold", "steady", "refresh"):
        p = phases[phase]
        failed = f", {p['failed_count']} FAILED: {p['failed']}" if p["failed_count"] else ""
        parts.append(
            f"    {phase:<8} peak {p['peak_mb']:6.1f} MB  {p['seconds']:6.2f}s wall  {p['cpu']:6.2f}s CPU  "
            f"{p['sessions']:>4} sessions  {p['vifs']} VIFs{failed}"
        )
    return "\n".join(parts)


def _ratio(old: dict, new: dict, key: str, phase: str | None = None) -> str:
    if phase is None:
        a, b = old["maxrss_mb"], new["maxrss_mb"]
    else:
        a, b = old["phases"][phase][key], new["phases"][phase][key]
    return f"{a / b:.1f}x" if b else "n/a"


if __name__ == "__main__":
    main()
