"""Cold start of the poll function: `import app` + its first client, against bare `import boto3` + one client.

Each figure is the median of fresh subprocesses (nothing cached in memory; the OS file cache is warm for
both sides alike), timed inside the child from before its first import to the client built, so the
interpreter's own start-up, the same for both, is left out. The poll side runs with the prod stage's
environment from .chalice/config.json, parses a one-target policy document as the deployed function does
after reading it from AppConfig (the read itself is a network call, left out), and builds that target's
Direct Connect client through the same DirectLinkClients a cycle uses. Goal: ratio <= 1.3.

    .venv/bin/python bench/coldstart.py [--repeat 15] [--stage prod] [--importtime]

`--importtime` also prints the poll side's 25 slowest imports (python -X importtime, self time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BARE = """
import time
t0 = time.perf_counter()
import boto3
boto3.client("directconnect", region_name="eu-west-1")
print(time.perf_counter() - t0)
"""

# The figure: the import and the first Direct Connect client, built as a cycle builds it.
POLL = """
import time
t0 = time.perf_counter()
import app
from chalicelib.config import Target
from chalicelib.directlink import DirectLinkClients
DirectLinkClients().get(Target(name="aws-hub", provider="aws", region="eu-west-1", account_id="444455556666"))
print(time.perf_counter() - t0)
"""

# The same with the policy document parsed in between, as the deployed function does on its first cycle.
POLL_WITH_POLICY = """
import time
t0 = time.perf_counter()
import app
from chalicelib.config import parse_policy
from chalicelib.directlink import DirectLinkClients
policy = parse_policy(DOCUMENT, "appconfig:vif-gatekeeper/prod/policy")
DirectLinkClients().get(policy.targets[0])
print(time.perf_counter() - t0)
"""

# What AppConfig hands the deployed function (JSON: `vifgate config push` publishes JSON).
DOCUMENT = {
    "targets": [{"name": "aws-hub", "provider": "aws", "region": "eu-west-1", "account_id": "444455556666"}],
    "rules": [
        {
            "name": "partner-prod",
            "accounts": ["444455556666"],
            "connections": ["dxcon-fg5678gh"],
            "gateway": "vgw-12345678",
            "action": "confirm",
        }
    ],
    "default_action": "ask",
}


def stage_env(stage: str) -> dict[str, str]:
    """The deployed function's environment: the global variables, then the stage's, with fake keys and a region."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIFGATE_", "POWERTOOLS_"))}
    env.update(config.get("environment_variables", {}))
    env.update(config["stages"][stage].get("environment_variables", {}))
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_REGION="eu-west-1",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
    )
    return env


def child(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )


def seconds(code: str, env: dict[str, str]) -> float:
    return float(child(code, env).stdout.strip().splitlines()[-1])


def slowest_imports(code: str, env: dict[str, str], n: int = 25) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, module) of the slowest imports, by self time."""
    rows = []
    for line in child(code, env, "-X", "importtime").stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        rows.append((int(self_us), int(cumulative), name))
    return sorted(rows, reverse=True)[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="fresh subprocesses per side (median)")
    parser.add_argument("--stage", default="prod")
    parser.add_argument("--importtime", action="store_true", help="print the poll side's slowest imports")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat: at least 1")

    env = stage_env(args.stage)
    sides = {
        "bare: import boto3 + directconnect client": BARE,
        "poll: import app + first client": POLL,
        "poll: import app + policy parsed + first client": POLL_WITH_POLICY.replace(
            "DOCUMENT", repr(json.dumps(DOCUMENT))
        ),
    }
    for code in sides.values():  # once untimed, so compiling a changed module's .pyc is not counted
        child(code, env)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeat):  # interleaved: a busy moment on the machine hits every side alike
        for name, code in sides.items():
            times[name].append(seconds(code, env))
    print(f"fresh subprocesses: {args.repeat} per side, stage {args.stage}, Python {sys.version.split()[0]}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    bare = medians["bare: import boto3 + directconnect client"]
    for name, t in times.items():
        ratio = medians[name] / bare
        shown = "" if t is times["bare: import boto3 + directconnect client"] else f"  ratio {ratio:.2f}x"
        print(f"{name:50s} median {medians[name] * 1000:6.1f} ms (min {min(t) * 1000:6.1f}){shown}")
    ratio = medians["poll: import app + first client"] / bare
    print(f"cold start ratio {ratio:.2f}x (goal <= 1.3x): {'met' if ratio <= 1.3 else 'MISSED'}")
    if args.importtime:
        print("\nslowest imports on the poll side (self ms, cumulative ms, module):")
        for self_us, cumulative, name in slowest_imports(sides["poll: import app + first client"], env):
            print(f"  {self_us / 1000:7.1f} {cumulative / 1000:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
