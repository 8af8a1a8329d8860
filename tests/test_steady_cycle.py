"""What an idle cycle costs: one listing per target, no ledger write, one log line per target."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from chalicelib import reconcile
from chalicelib.log import logger
from sandbox import scenario
from tests.test_reconcile import cycle, records  # noqa: F401  (the fixture, reused)

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
