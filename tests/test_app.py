"""The scheduled Lambda through chalice.test.Client: moto for AWS, the sandbox for DirectLink over HTTP."""

from __future__ import annotations

import json
import threading

import boto3
import chalice.local
import chalice.test
import pytest
from chalice.test import Client

from app import app
from chalicelib import reconcile
from chalicelib.config import ConfigError
from chalicelib.log import logger
from chalicelib.runtime import Runtime, Settings, load_policy
from sandbox import scenario
from sandbox.local import create_queues
from tests.conftest import TABLE, confirm_calls

# The stages' variables come from .chalice/config.json; these are what they name.
STAGE_TABLE = {"dev": "vifgate-dev-ledger", "prod": "vifgate-prod-ledger"}
TRUSTED = ("prod-app", "prod-db")


@pytest.fixture
def stage_world(aws, directlink):
    """Each stage's ledger table and SSM policy document, as infra/ would deploy them."""
    from chalicelib.ledger import create_table

    for stage, table in STAGE_TABLE.items():
        create_table(boto3.client("dynamodb"), table)
        create_queues(boto3.client("sqs"), f"vifgate-{stage}-events.fifo", f"vifgate-{stage}-events-dlq.fifo")
        put_config(stage, scenario.CONFIG)
    return directlink


def put_config(stage: str, text: str) -> None:
    boto3.client("ssm").put_parameter(Name=f"/vifgate/{stage}/config", Value=text, Type="SecureString", Overwrite=True)


class StageTimeoutContext(chalice.local.LambdaContext):
    """chalice.test gives every invocation 3 s; a deployed poll function has its stage's lambda_timeout (120 s)."""

    def __init__(self, function_name: str, memory_size: int, **_: object):
        super().__init__(function_name, memory_size, max_runtime_ms=120_000)


@pytest.fixture(autouse=True)
def stage_timeout(monkeypatch):
    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)


def invoke_poll(stage: str):
    with Client(app, stage_name=stage) as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        return client.lambda_.invoke("poll", event).payload


def ledger_items(table: str) -> dict[str, dict]:
    items = boto3.resource("dynamodb").Table(table).scan()["Items"]
    return {i["vif_id"]: i for i in items if not i["target"].startswith("#") and not i["vif_id"].startswith("#")}


def test_allowlisted_vifs_are_confirmed_once_and_the_rest_are_not(stage_world):
    sb = stage_world
    first = invoke_poll("prod")
    second = invoke_poll("prod")

    assert first["actions"] == {"confirmed": 2, "ask": 3}
    assert first["targets_failed"] == [] and sorted(first["targets_ok"]) == sorted(scenario.TARGETS)
    assert second["actions"] == {"none": 2, "ask": 3}, "confirmed VIFs are pending now, not confirming"
    for name, vif_id in sb.world.vif_ids.items():
        assert sb.confirm_count(vif_id) == (1 if name in TRUSTED else 0), name
        expected = "pending" if name in TRUSTED else "confirming"
        assert sb.vif(vif_id)["virtualInterfaceState"] == expected
    assert len(confirm_calls(sb)) == 2
    # DescribeVirtualGateways only where a rule would confirm: never for the lab account.
    assert {acct for op, acct in sb.calls if op == "DescribeVirtualGateways"} == {scenario.PROD, scenario.STAGING}
    prod_app = sb.world.vif_ids["prod-app"]
    assert sb.vif(prod_app)["virtualGatewayId"] == scenario.PROD_GATEWAY

    items = ledger_items(STAGE_TABLE["prod"])
    assert set(items) == set(sb.world.vif_ids.values())
    record = items[prod_app]
    assert record["confirmed_at"] and record["rule"] is None  # the second cycle saw it pending
    assert record["state"] == "pending" and record["deadline_certain"] is False
    legacy = items[sb.world.vif_ids["prod-legacy"]]
    assert legacy["last_decision"] == "ask"
    assert legacy["decision_reason"] == "vlan 250 is outside 100-199 of rule partner-prod"


def test_dry_run_stage_confirms_nothing_and_records_would_confirm(stage_world):
    sb = stage_world
    summary = invoke_poll("dev")  # dev sets VIFGATE_DRY_RUN=true
    assert summary["dry_run"] is True
    assert summary["actions"] == {"would_confirm": 2, "ask": 3}
    assert confirm_calls(sb) == []
    items = ledger_items(STAGE_TABLE["dev"])
    assert items[sb.world.vif_ids["prod-app"]]["last_decision"] == "would_confirm"
    assert "confirmed_at" not in items[sb.world.vif_ids["prod-app"]]


def test_invalid_config_fails_closed_before_any_call(stage_world):
    sb = stage_world
    put_config("prod", scenario.CONFIG.replace(scenario.PROD_GATEWAY, "vgw-xyz"))
    with pytest.raises(ConfigError) as info:
        invoke_poll("prod")
    assert "rules[0].gateway: 'vgw-xyz' is not a virtual gateway id" in str(info.value)
    assert sb.calls == [] and confirm_calls(sb) == []


def test_a_failing_target_does_not_block_the_others(stage_world):
    sb = stage_world
    # osc-staging's secret now holds a key the sandbox signs with another secret: InvalidSignature.
    boto3.client("secretsmanager").put_secret_value(
        SecretId=scenario.secret_id("osc-staging"),
        SecretString=json.dumps(
            {"access_key_id": scenario.KEYS[scenario.STAGING][0], "secret_access_key": "wrong-secret-for-staging"}
        ),
    )
    summary = invoke_poll("prod")

    [failure] = summary["targets_failed"]
    assert failure["target"] == "osc-staging" and failure["code"] == "InvalidSignatureException"
    assert "wrong-secret-for-staging" not in json.dumps(summary)
    assert sorted(summary["targets_ok"]) == ["osc-lab", "osc-prod"]
    assert summary["actions"] == {"confirmed": 2, "ask": 2}
    assert all(sb.confirm_count(sb.world.vif_ids[n]) == 1 for n in TRUSTED)


def test_a_target_failing_past_retries_is_reported(stage_world):
    sb = stage_world
    sb.set_faults(error_rate=1.0)
    summary = invoke_poll("prod")
    assert summary["targets_ok"] == []
    assert {f["code"] for f in summary["targets_failed"]} == {"DirectConnectServerException"}
    assert confirm_calls(sb) == []


def test_two_cycles_at_once_on_one_ledger_confirm_each_vif_once(aws, directlink, tmp_path):
    sb = directlink
    sb.set_faults(latency_ms=40)  # both pollers are between their reads and their claims together
    config = tmp_path / "vifgate.yaml"
    config.write_text(scenario.CONFIG)
    settings = Settings(config_source=str(config), table_name=TABLE)
    # Each poller has its own clients; sandbox.local gives moto DynamoDB's per-request atomicity.
    pollers = [
        Runtime(settings, policy=load_policy(str(config)), clock=sb.clock, dynamodb=boto3.client("dynamodb"))
        for _ in range(2)
    ]
    start = threading.Barrier(2)
    reports = [None, None]

    def run(i):
        start.wait()
        reports[i] = reconcile.run_cycle(pollers[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(confirm_calls(sb)) == 2, "one Confirm request per trusted VIF, from either poller"
    for name in TRUSTED:
        vif_id = sb.world.vif_ids[name]
        actions = sorted(o.action for r in reports for o in r.outcomes if o.virtualInterfaceId == vif_id)
        assert actions == ["confirmed", "none"], (name, actions)


def test_lambda_logs_carry_decisions_but_no_auth_key(stage_world, capsys):
    sb = stage_world
    logger.setLevel("INFO")
    invoke_poll("prod")
    logs = capsys.readouterr()
    lines = [json.loads(line) for line in logs.err.splitlines() if line.startswith("{")]
    decided = [line for line in lines if line["message"] == "vif decided"]
    assert len(decided) == 5 and {"vif_id", "target", "action", "reason", "function_name"} <= set(decided[0])
    for vif_id in sb.world.vif_ids.values():
        assert sb.vif(vif_id)["authKey"] not in logs.out + logs.err
