"""What an idle cycle costs: one listing per target, no ledger write, one log line per target."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import boto3
import pytest

from chalicelib import reconcile
from chalicelib.approvals import service
from chalicelib.config import Target, parse_policy
from chalicelib.directlink import DirectLinkClients
from chalicelib.ledger import Ledger
from chalicelib.log import logger
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from tests.approvals.test_cycle import APPROVALS
from tests.conftest import TABLE
from tests.test_reconcile import CountingClient, cycle, records  # noqa: F401  (the fixture, reused)

WRITES = ("update_item", "put_item", "transact_write_items", "batch_write_item", "delete_item")


def writes(calls) -> dict[str, int]:
    return {name: calls[name] for name in WRITES if calls[name]}


@pytest.fixture
def lines(capsys):
    """The JSON log lines the poller printed since the last call."""
    logger.setLevel(logging.INFO)

    def read() -> list[dict]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    return read


def test_an_idle_cycle_writes_nothing_to_the_ledger(cycle, directlink):  # noqa: F811
    cycle()
    directlink.clock.advance(timedelta(minutes=1))
    cycle()  # settles what the first cycle left (confirmed VIFs now pending → available)
    for _ in range(3):
        directlink.clock.advance(timedelta(minutes=1))
        cycle.dynamodb.calls.clear()
        report = cycle()
        assert report.ok
        assert writes(cycle.dynamodb.calls) == {}, "an idle cycle wrote to the ledger"
        assert cycle.dynamodb.calls["query"] == len(scenario.TARGETS), "one read per target"


def test_the_target_item_is_written_again_as_a_heartbeat_within_the_certainty_window(cycle, directlink):  # noqa: F811
    cycle()
    marked = records("osc-prod").last_polled_at
    directlink.clock.advance(reconcile.HEARTBEAT - timedelta(minutes=1))
    cycle()
    assert records("osc-prod").last_polled_at == marked, "not yet due"
    directlink.clock.advance(timedelta(minutes=1))
    cycle()
    assert records("osc-prod").last_polled_at == directlink.clock.now()
    assert reconcile.HEARTBEAT < reconcile.transitions.CERTAINTY_WINDOW


def test_a_vif_arriving_between_heartbeats_still_has_a_certain_deadline(cycle, directlink):  # noqa: F811
    cycle()
    for _ in range(9):  # nine idle minutes: the target item still says the first poll
        directlink.clock.advance(timedelta(minutes=1))
        cycle()
    scenario.allocate_late_arrival(directlink, directlink.world)
    assert {o.virtualInterfaceName: o for o in cycle().outcomes}["prod-cache"].deadlineCertain is True


def test_a_failing_spell_still_ends_at_the_first_good_cycle(cycle, directlink):  # noqa: F811
    cycle()
    directlink.set_faults(error_rate=1.0)
    directlink.clock.advance(timedelta(minutes=1))
    failed = cycle()
    assert not failed.ok and records(failed.failures[0].target).failing_since is not None
    directlink.set_faults(error_rate=0.0)
    directlink.clock.advance(timedelta(minutes=1))
    cycle()
    for target in scenario.TARGETS:
        assert records(target).failing_since is None


def test_an_idle_cycle_logs_one_line_per_target_and_none_per_vif(cycle, directlink, lines):  # noqa: F811
    cycle()
    directlink.clock.advance(timedelta(minutes=1))
    cycle()
    lines()
    directlink.clock.advance(timedelta(minutes=1))
    cycle()
    logged = lines()
    polled = [line for line in logged if line["message"] == "target polled"]
    assert sorted(line["target"] for line in polled) == sorted(scenario.TARGETS)
    assert all(line["vifs"] >= 1 and sum(line["actions"].values()) == line["vifs"] for line in polled)
    assert [line for line in logged if line["message"] == "vif decided"] == []


def test_a_vif_that_changes_gets_its_own_line(cycle, directlink, lines):  # noqa: F811
    cycle()
    lines()
    directlink.clock.advance(timedelta(minutes=1))
    late = scenario.allocate_late_arrival(directlink, directlink.world)
    cycle()
    decided = [line for line in lines() if line["message"] == "vif decided"]
    assert late in {line["vif_id"] for line in decided}


# --- a warm runtime: what carries over between cycles -------------------------------------------------


@pytest.fixture
def warm(aws, directlink):
    """Cycles on one Runtime, as a warm Lambda runs them: clients, listings and ledger reads carry over."""
    dynamodb = CountingClient(boto3.client("dynamodb"))
    settings = Settings(config_source="test", table_name=TABLE, events_queue="q.fifo", max_workers=4)
    runtime = Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock, dynamodb=dynamodb)

    def run() -> reconcile.CycleReport:
        directlink.clock.advance(timedelta(minutes=1))
        return reconcile.run_cycle(runtime)

    run.runtime, run.dynamodb = runtime, dynamodb  # type: ignore[attr-defined]
    return run


def test_a_vote_between_cycles_is_carried_out_by_the_next_warm_cycle(aws, directlink):
    text = scenario.CONFIG.replace("default_action: ask\n", "default_action: ask\ndefault_approvers: [alice]\n")
    text += APPROVALS
    settings = Settings(config_source="test", table_name=TABLE, events_queue="q.fifo", max_workers=2)
    runtime = Runtime(settings, policy=parse_policy(text), clock=directlink.clock)
    reconcile.run_cycle(runtime)
    directlink.clock.advance(timedelta(minutes=1))
    reconcile.run_cycle(runtime)  # warm: the pending request is in every cache now
    pending = Ledger(boto3.client("dynamodb"), TABLE).approvals("pending")
    request, record = next((r, v) for r, v in pending if r.gateways)
    result = service.record_vote(
        Ledger(boto3.client("dynamodb"), TABLE),  # the API function's own ledger, as in a deployment
        parse_policy(text),
        request.request_id,
        approver="alice",
        user_id=None,
        channel="slack",
        vote="approve",
        gateway=request.gateways[0],
        clock=directlink.clock,
        publishing=True,
    )
    assert result.request.status == "approved"
    directlink.clock.advance(timedelta(minutes=1))
    report = reconcile.run_cycle(runtime)
    [done] = [o for o in report.outcomes if o.virtualInterfaceId == record.vif_id]
    assert done.action == "confirmed" and directlink.confirm_count(record.vif_id) == 1
    directlink.clock.advance(timedelta(minutes=1))
    again = reconcile.run_cycle(runtime)
    assert directlink.confirm_count(record.vif_id) == 1, "confirmed exactly once"
    assert [o.action for o in again.outcomes if o.virtualInterfaceId == record.vif_id] == ["none"]


def test_the_target_line_counts_what_changed_and_how_long_it_took(warm, directlink, lines):
    warm()
    warm()
    lines()
    late = scenario.allocate_late_arrival(directlink, directlink.world)
    warm()
    logged = lines()
    polled = {line["target"]: line for line in logged if line["message"] == "target polled"}
    assert sorted(polled) == sorted(scenario.TARGETS)
    assert polled["osc-prod"]["changed"] == 1 and polled["osc-lab"]["changed"] == 0
    assert all(isinstance(line["duration_ms"], int) for line in polled.values())
    assert [line["vif_id"] for line in logged if line["message"] == "vif decided"] == [late]


def test_the_shared_sts_and_secrets_clients_pool_a_connection_per_worker(aws):
    clients = DirectLinkClients(base_session=boto3.Session, pool=32)
    target = Target.model_validate(
        {
            "name": "osc-prod",
            "provider": "outscale",
            "region": "eu-west-2",
            "account_id": scenario.PROD,
            "credentials": {"secret_id": scenario.secret_id("osc-prod")},
        }
    )
    clients._keys(target)
    [secrets] = clients._shared.values()
    assert secrets.meta.config.max_pool_connections == 32
    assert DirectLinkClients(pool=4)._shared_config.max_pool_connections == 10, "never fewer than botocore's 10"
