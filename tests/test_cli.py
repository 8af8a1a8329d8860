"""`vifgate` against the local cloud it ships: the DirectLink sandbox and moto's server, over HTTP."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.cli import main
from chalicelib.reconcile import ACTIONS
from sandbox import scenario
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
        "reason": f"rule partner-prod trusts account {scenario.PROD}; attached to {scenario.PROD_GATEWAY}",
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


def test_sandbox_command_prints_exports_that_poll_and_the_aws_cli_use(tmp_path):
    """What a user does by hand: start `vifgate sandbox`, paste its exports, run commands, Ctrl-C."""
    root = Path(__file__).resolve().parent.parent
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIFGATE_"))}
    clean |= {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    server = subprocess.Popen(
        [sys.executable, "-m", "chalicelib.cli", "sandbox", "--port", "0", "--aws-port", "0"],
        cwd=root,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        exports = {}
        for line in server.stdout:  # the server flushes everything once it is ready
            if line.startswith("export "):
                name, value = line.removeprefix("export ").strip().split("=", 1)
                exports[name] = value
            if line.startswith("# Ctrl-C"):
                break
        assert exports["AWS_ENDPOINT_URL_DIRECT_CONNECT"].startswith("http://127.0.0.1:")
        assert exports["AWS_ENDPOINT_URL_DYNAMODB"].startswith("http://127.0.0.1:")
        env = clean | exports
        poll = subprocess.run(
            [sys.executable, "-m", "chalicelib.cli", "poll", "--json"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert poll.returncode == 0, poll.stderr
        actions = sorted(json.loads(line)["action"] for line in poll.stdout.splitlines())
        assert actions == ["ask", "ask", "ask", "confirmed", "confirmed"]
        cli = subprocess.run(
            [
                str(Path(sys.executable).parent / "aws"),
                "directconnect",
                "describe-virtual-interfaces",
                "--output",
                "json",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        states = sorted(v["virtualInterfaceState"] for v in json.loads(cli.stdout)["virtualInterfaces"])
        assert states == ["confirming", "pending", "pending"]  # what osc-prod sees after the poll
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0 and "sandbox stopped" in err


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
