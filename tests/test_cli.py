"""`vifgate` against the local cloud it ships: the DirectLink sandbox and moto's server, over HTTP."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from chalicelib import events
from chalicelib.cli import main
from chalicelib.reconcile import ACTIONS
from sandbox import SandboxClock, scenario
from sandbox.local import LocalCloud
from tests.conftest import confirm_calls

REQUIRED = {"target", "virtualInterfaceId", "ownerAccount", "state", "action", "rule", "virtualGatewayId", "reason"}


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    with LocalCloud(workdir=tmp_path) as local:
        for name, value in local.env().items():
            monkeypatch.setenv(name, value)
        yield local


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in out.splitlines()]
    return {r["virtualInterfaceName"]: r for r in rows}


def test_poll_json_prints_one_object_per_vif(cloud, capsys):
    code, out, err = run(capsys, "poll", "--json")
    assert code == 0, err
    rows = json_lines(out)
    assert set(rows) == set(cloud.world.vif_ids)
    for row in rows.values():
        assert set(row) >= REQUIRED and row["action"] in ACTIONS
    expected = {
        "target": "osc-prod",
        "ownerAccount": scenario.PROD,
        "state": "confirming",
        "action": "confirmed",
        "rule": "partner-prod",
        "virtualGatewayId": scenario.PROD_GATEWAY,
        "reason": (
            f"account {scenario.PROD} on trusted connection {scenario.PARTNER_CONNECTION} matches rule partner-prod; "
            f"attached to {scenario.PROD_GATEWAY}"
        ),
    }
    assert {k: rows["prod-app"][k] for k in expected} == expected
    assert rows["lab-bench"]["action"] == "ask" and rows["lab-bench"]["rule"] is None
    assert rows["lab-bench"]["reason"] == f"no rule matches account {scenario.LAB}"
    assert rows["stg-app"]["reason"].endswith("but that gateway is pending, not available")
    assert rows["prod-legacy"]["deadlineCertain"] is False


def test_poll_table_reads_well(cloud, capsys):
    code, out, _ = run(capsys, "poll")
    assert code == 0
    header, *_lines = out.splitlines()
    assert header.split()[:7] == ["TARGET", "VIF", "NAME", "OWNER", "VLAN", "STATE", "ACTION"]
    assert "live: 3 ask, 2 confirmed; targets OK: " in out


def test_dry_run_confirms_nothing(cloud, capsys):
    code, out, _ = run(capsys, "poll", "--dry-run", "--json")
    assert code == 0
    assert json_lines(out)["prod-app"]["action"] == "would_confirm"
    assert confirm_calls(cloud.directlink) == []


def test_invalid_config_exits_2_names_the_field_and_confirms_nothing(cloud, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(scenario.CONFIG.replace("max: 199", "max: 5000"))
    code, out, err = run(capsys, "poll", "--config", str(bad), "--json")
    assert code == 2 and out == ""
    assert f"invalid config {bad}" in err
    assert "rules[0].vlan.max: Input should be less than or equal to 4094 (got 5000)" in err
    assert "Nothing was confirmed." in err
    assert cloud.directlink.calls == []


def test_missing_config_file_exits_2(cloud, capsys, tmp_path):
    code, _, err = run(capsys, "poll", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "No such file or directory" in err


def test_a_failing_target_exits_1_and_says_which(cloud, capsys, tmp_path):
    config = tmp_path / "one-bad.yaml"
    config.write_text(
        scenario.CONFIG.replace(
            f"secret_id: {scenario.secret_id('osc-lab')}", "secret_id: vifgate/sandbox/does-not-exist"
        )
    )
    code, out, _err = run(capsys, "poll", "--config", str(config))
    assert code == 1
    assert "FAILED osc-lab: get_secret_value on osc-lab failed: ResourceNotFoundException" in out
    assert "2 confirmed" in out  # the other targets went on


def test_check_shows_what_each_vif_would_get_and_changes_nothing(cloud, capsys):
    code, out, _ = run(capsys, "check")
    assert code == 0
    assert out.startswith(
        "config OK: 3 target(s), 2 rule(s), default_action ask; confirm rules trust 2 account(s) and 2 gateway(s)"
    )
    assert "would_confirm" in out and "what-if (nothing changed)" in out
    assert confirm_calls(cloud.directlink) == []
    code, out, _ = run(capsys, "poll", "--json")  # the ledger was not touched by check
    assert json_lines(out)["prod-app"]["action"] == "confirmed"


def test_check_offline_only_validates(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(scenario.CONFIG)
    assert run(capsys, "check", "--offline", "--config", str(config))[0] == 0
    config.write_text(scenario.CONFIG.replace("default_action: ask", "default_action: confirm"))
    code, _, err = run(capsys, "check", "--offline", "--config", str(config))
    assert code == 2 and "default_action: Input should be 'ask', 'ignore' or 'reject' (got 'confirm')" in err


def test_no_secret_reaches_output_or_logs_even_at_debug(cloud, capsys, caplog):
    auth_keys = [cloud.directlink.vif(v)["authKey"] for v in cloud.world.vif_ids.values()]
    assert all(auth_keys)
    secret_keys = [secret for _key, secret in scenario.KEYS.values()]
    root, botocore = logging.getLogger(), logging.getLogger("botocore")
    levels = root.level, botocore.level
    root.setLevel(logging.DEBUG)
    botocore.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            outputs = [run(capsys, "-v", "poll", "--json"), run(capsys, "-v", "poll"), run(capsys, "-v", "check")]
    finally:
        root.setLevel(levels[0])
        botocore.setLevel(levels[1])
    seen = "\n".join(out + err for _code, out, err in outputs) + "\n".join(r.getMessage() for r in caplog.records)
    assert "vif decided" in seen and len(caplog.records) > 50, "the logs were really captured"
    for secret in auth_keys + secret_keys:
        assert secret not in seen


def test_demo_tells_the_story(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Cycle 1" in out and "Cycle 2" in out
    policy = out.split("Policy (")[1].split("\n== ")[0]
    # The connection is the trust anchor: only it says who allocated a hosted VIF.
    assert f"partner-prod:    account PROD on connection {scenario.PARTNER_CONNECTION}" in policy
    assert f"partner-staging: account STAGING on connection {scenario.PARTNER_CONNECTION}" in policy
    assert f"on trusted connection {scenario.PARTNER_CONNECTION} matches rule partner-prod" in out
    summary = out.split("== What happened")[1].splitlines()
    confirmed = [line.split()[2] for line in summary if line.startswith("  confirmed  dxvif-")]
    assert confirmed == ["prod-app", "prod-db", "prod-cache"]  # the last one allocated between the cycles
    assert "vlan 250 is outside 100-199 of rule partner-prod" in out
    assert "but that gateway is pending, not available" in out
    assert f"no rule matches account {scenario.LAB}" in out
    assert "Confirm calls sent to DirectLink: 3" in out
    assert "18 events received; 18 produced by the three cycles, 0 lost, 0 received twice:" in out
    assert "[!] Approval needed: VIF" in out and "[+] VIF confirmed: prod-app" in out
    assert "expires in at most 2d 23h" in out and "possibly earlier" in out  # the expiry warning


ROOT = Path(__file__).resolve().parent.parent
VIFGATE = [sys.executable, "-m", "chalicelib.cli"]
FIVE_DAYS = 5 * 86400


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """No AWS or vifgate settings from the developer's shell; temp files go where the test can see them."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIFGATE_"))}
    none = str(tmp_path / "none")
    return env | {"AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none, "TMPDIR": str(scratch)}


class Sandbox:
    """`vifgate sandbox` in a subprocess, its output read as it comes."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [*VIFGATE, "sandbox", "--port", "0", "--aws-port", "0", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        """The first output line containing text; fails the test after timeout or when the sandbox exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := next((line for line in self.lines if text in line), None):
                return found
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"{text!r} not in the sandbox's output: {''.join(self.lines)}{self.process.stderr.read()}")

    def env_file(self) -> Path:
        """The file the `source FILE` step names: printed once the sandbox is ready."""
        return Path(shlex.split(self.wait_for("source "))[1])

    def stop(self, signum: int) -> str:
        """Send signum and return stderr once the sandbox exited."""
        self.process.send_signal(signum)
        _, err = self.process.communicate(timeout=30)
        self._reader.join(timeout=5)
        return err


def _sourced(env_file: Path, command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run command in bash after `source env_file`, as a person does in their second terminal."""
    script = f"source {shlex.quote(str(env_file))} && exec {shlex.join(command)}"
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _expiry_warnings(env: dict[str, str]) -> list:
    sqs = boto3.client(
        "sqs",
        endpoint_url=env["AWS_ENDPOINT_URL_SQS"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    url = sqs.get_queue_url(QueueName=env["VIFGATE_EVENTS_QUEUE"])["QueueUrl"]
    received = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            received.append(events.parse(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return [e for e in received if e.type == "vif.expiry_warning"]


def test_poll_follows_the_sandbox_clock_not_the_wall_clock(monkeypatch, tmp_path, capsys):
    """Move the sandbox 5 days on over HTTP, as a person does: deadlines and warnings follow its time."""
    start = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    with LocalCloud(workdir=tmp_path, clock=SandboxClock(start)) as local:
        for name, value in local.env().items():
            monkeypatch.setenv(name, value)
        code, out, err = run(capsys, "poll", "--json")
        assert code == 0, err
        assert json_lines(out)["prod-legacy"]["deadline"] == "2025-03-08T09:00:00Z"  # first seen + 7 days
        assert _expiry_warnings(local.env()) == []

        request = urllib.request.Request(
            f"{local.directlink.url}/_sandbox/clock", data=json.dumps({"advanceSeconds": FIVE_DAYS}).encode()
        )
        urllib.request.urlopen(request, timeout=10).close()
        code, out, err = run(capsys, "poll", "--json")
        assert code == 0, err
        warnings = _expiry_warnings(local.env())
    waiting = {r["virtualInterfaceId"] for r in json_lines(out).values() if r["action"] == "ask"}
    assert {w.subject for w in warnings} == waiting and len(waiting) == 3
    for warning in warnings:
        assert warning.time == start + timedelta(days=5)
        assert (warning.data.threshold_hours, warning.data.hours_left) == (72, 48)


@pytest.mark.parametrize(
    "where, why",
    [
        ("dead", "Connection refused"),  # the sandbox was stopped
        ("wrong-path", "Not Found"),
        ("file", "is not an http:// URL"),
    ],
)
def test_an_unreadable_sandbox_clock_is_a_clear_error(cloud, capsys, unused_port, where, why):
    url = {
        "dead": f"http://127.0.0.1:{unused_port}/_sandbox/clock",
        "wrong-path": f"{cloud.directlink.url}/_sandbox/time",
        "file": "file:///etc/hostname",
    }[where]
    os.environ["VIFGATE_CLOCK"] = url  # the cloud fixture's monkeypatch restores it
    code, out, err = run(capsys, "poll")
    assert code == 2 and out == ""
    assert "VIFGATE_CLOCK: " in err and why in err and "Traceback" not in err
    assert "Nothing was confirmed." in err
    assert confirm_calls(cloud.directlink) == []


@pytest.fixture
def unused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sandbox_writes_an_env_file_to_source_and_removes_its_files_on_sigterm(tmp_path):
    """What a person does by hand: `vifgate sandbox`, `source` the file it names, run commands, stop it."""
    env = _clean_env(tmp_path)
    sandbox = Sandbox(tmp_path, env)
    try:
        env_file = sandbox.env_file()
        assert env_file == tmp_path / ".vifgate-sandbox.env"  # the default: in the current directory
        show = [sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"]
        exported = json.loads(_sourced(env_file, show, env, tmp_path).stdout)
        assert exported["AWS_ENDPOINT_URL_DIRECT_CONNECT"].startswith("http://127.0.0.1:")
        assert exported["AWS_ENDPOINT_URL_DYNAMODB"].startswith("http://127.0.0.1:")
        assert exported["VIFGATE_CLOCK"] == exported["AWS_ENDPOINT_URL_DIRECT_CONNECT"] + "/_sandbox/clock"
        policy_file = Path(exported["VIFGATE_CONFIG"])
        assert policy_file.is_file()

        poll = _sourced(env_file, [*VIFGATE, "poll", "--json"], env, tmp_path)
        assert poll.returncode == 0, poll.stderr
        actions = sorted(json.loads(line)["action"] for line in poll.stdout.splitlines())
        assert actions == ["ask", "ask", "ask", "confirmed", "confirmed"]
        aws = [str(Path(sys.executable).parent / "aws"), "directconnect", "describe-virtual-interfaces"]
        cli = _sourced(env_file, [*aws, "--output", "json"], env, tmp_path)
        assert cli.returncode == 0, cli.stderr
        states = sorted(v["virtualInterfaceState"] for v in json.loads(cli.stdout)["virtualInterfaces"])
        assert states == ["confirming", "pending", "pending"]  # what osc-prod sees after the poll
        sandbox.wait_for("[+] VIF confirmed: prod-app")  # the sandbox shows the chat messages

        # Five days on, by the sandbox's clock: the next poll warns about the VIFs still waiting.
        assert not any("expires in" in line for line in sandbox.lines)
        request = urllib.request.Request(exported["VIFGATE_CLOCK"], data=b'{"advanceSeconds": %d}' % FIVE_DAYS)
        urllib.request.urlopen(request, timeout=10).close()
        poll = _sourced(env_file, [*VIFGATE, "poll"], env, tmp_path)
        assert poll.returncode == 0, poll.stderr
        sandbox.wait_for("[!] VIF prod-legacy expires in at most 1d 23h")
    finally:
        err = sandbox.stop(signal.SIGTERM)
    assert sandbox.process.returncode == 0, err
    assert "Traceback" not in err and "sandbox stopped" in err
    assert not env_file.exists() and not policy_file.exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # no temp dir left behind


def test_sandbox_stops_cleanly_on_ctrl_c_and_removes_the_env_file_it_was_given(tmp_path):
    env = _clean_env(tmp_path)
    chosen = tmp_path / "sub dir" / "sb.env"
    chosen.parent.mkdir()
    sandbox = Sandbox(tmp_path, env, "--env-file", str(chosen))
    try:
        assert sandbox.env_file() == chosen and chosen.is_file()
    finally:
        err = sandbox.stop(signal.SIGINT)
    assert sandbox.process.returncode == 0, err
    assert "Traceback" not in err and "sandbox stopped" in err
    assert not chosen.exists() and list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("flag", ["--port", "--aws-port"])
def test_a_busy_port_is_one_line_naming_it(tmp_path, flag):
    env = _clean_env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": "0", "--aws-port": "0", flag: str(port)}
        done = subprocess.run(
            [*VIFGATE, "sandbox", *(x for item in ports.items() for x in item)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert done.stderr == f"vifgate sandbox: port {port} is in use (another sandbox?); pick another with {flag}\n"
    assert not (tmp_path / ".vifgate-sandbox.env").exists() and list((tmp_path / "tmp").iterdir()) == []


def test_a_missing_ledger_table_is_explained(cloud, capsys):
    code, out, _ = run(capsys, "poll", "--table", "no-such-table")
    assert code == 1
    assert (
        "FAILED osc-prod: ledger table no-such-table does not exist in this account/region "
        "(deploy infra/template.json, set VIFGATE_TABLE, or run `vifgate sandbox` for a local one)"
    ) in out
    assert confirm_calls(cloud.directlink) == []


def test_schema_command_prints_the_published_schema(capsys):
    code, out, _ = run(capsys, "schema")
    root = Path(__file__).resolve().parent.parent
    assert code == 0 and out == (root / "docs/events.schema.json").read_text()
