"""The poll cycle and its ledger, on the sandbox clock: deadlines, certainty, claims, rejects, reads."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from chalicelib import reconcile
from chalicelib.config import parse_policy
from chalicelib.ledger import CLAIM_TTL, ClaimLost, Ledger, VifRecord, iso
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from tests.conftest import TABLE, confirm_calls


class CountingClient:
    """Counts the calls made through a boto3 client, by operation."""

    def __init__(self, client):
        self._client, self.calls = client, Counter()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if callable(attr):
            self.calls[name] += 1
        return attr


@pytest.fixture
def cycle(aws, directlink, tmp_path):
    """A function that runs one cycle on the scenario, on the sandbox's clock, with a given policy text."""
    dynamodb = CountingClient(boto3.client("dynamodb"))

    def run(config: str = scenario.CONFIG, workers: int = 8, **options):
        settings = Settings(config_source="test", table_name=TABLE, max_workers=workers)
        runtime = Runtime(settings, policy=parse_policy(config), clock=directlink.clock, dynamodb=dynamodb)
        return reconcile.run_cycle(runtime, **options)

    run.dynamodb = dynamodb
    return run


def records(target: str):
    return Ledger(boto3.client("dynamodb"), TABLE).load(target)


def by_name(report):
    return {o.virtualInterfaceName: o for o in report.outcomes}


def test_deadline_is_uncertain_at_the_first_poll_and_certain_for_later_arrivals(cycle, directlink):
    first_poll = directlink.clock.now()
    first = by_name(cycle())
    assert first["prod-legacy"].deadline == iso(first_poll + timedelta(days=7))
    assert first["prod-legacy"].deadlineCertain is False

    directlink.clock.advance(timedelta(minutes=1))
    late = scenario.allocate_late_arrival(directlink, directlink.world)
    second = by_name(cycle())
    assert second["prod-cache"].deadline == iso(directlink.clock.now() + timedelta(days=7))
    assert second["prod-cache"].deadlineCertain is True
    assert second["prod-legacy"].deadline == first["prod-legacy"].deadline, "kept from the first sighting"
    assert records("osc-prod").vifs[late].deadline_certain is True


def test_after_a_long_gap_a_new_vif_deadline_is_uncertain(cycle, directlink):
    cycle()
    directlink.clock.advance(timedelta(hours=6))  # the poller was down for hours
    scenario.allocate_late_arrival(directlink, directlink.world)
    assert by_name(cycle())["prod-cache"].deadlineCertain is False


def test_state_since_and_gone_are_recorded(cycle, directlink):
    cycle()
    prod_app = directlink.world.vif_ids["prod-app"]
    confirmed_at = records("osc-prod").vifs[prod_app].state_since
    directlink.clock.advance(timedelta(minutes=5))  # pending -> available after 60 s
    cycle()
    record = records("osc-prod").vifs[prod_app]
    assert record.state == "available" and record.state_since == iso(directlink.clock.now())
    assert record.state_since > confirmed_at and record.confirmed_at == confirmed_at

    directlink.clock.advance(timedelta(days=8))  # unconfirmed VIFs expire
    report = by_name(cycle())
    assert report["prod-legacy"].state == "expired" and report["prod-legacy"].action == "none"


def test_throttling_and_server_errors_are_retried_in_standard_mode(cycle, directlink):
    # One worker keeps the order of requests, and so the seeded faults, the same on every run.
    directlink.set_faults(throttle_rate=0.3, error_rate=0.3)
    report = cycle(workers=1)
    assert report.failures == []
    assert report.counts() == {"confirmed": 2, "ask": 3}
    assert directlink.fault_counts["throttled"] > 0 and directlink.fault_counts["failed"] > 0
    assert all(directlink.confirm_count(directlink.world.vif_ids[n]) == 1 for n in ("prod-app", "prod-db"))


def test_one_query_per_target_per_cycle(cycle):
    """A new runtime has no copies: one BatchGetItem of the targets' items (their records versions, see
    test_record_cache), then one Query per target."""
    cycle()
    assert cycle.dynamodb.calls["query"] == len(scenario.TARGETS)
    assert cycle.dynamodb.calls["get_item"] == 0 and cycle.dynamodb.calls["batch_get_item"] == 1


def test_a_reject_rule_rejects_the_vif(cycle, directlink):
    config = scenario.CONFIG.replace("default_action: ask", "default_action: reject")
    report = by_name(cycle(config))
    assert report["lab-bench"].action == "rejected"
    assert directlink.vif(directlink.world.vif_ids["lab-bench"])["virtualInterfaceState"] == "rejected"
    assert report["prod-app"].action == "confirmed"


def test_dry_run_reject_is_only_reported(cycle, directlink):
    config = scenario.CONFIG.replace("default_action: ask", "default_action: reject")
    report = by_name(cycle(config, dry_run=True))
    assert report["lab-bench"].action == "would_reject"
    assert directlink.vif(directlink.world.vif_ids["lab-bench"])["virtualInterfaceState"] == "confirming"
    assert [op for op, _ in directlink.calls if op.startswith(("Confirm", "Delete"))] == []


def test_a_refused_confirm_is_failed_and_retried_next_cycle(aws, directlink, monkeypatch):
    """The gateway is deleted between DescribeVirtualGateways and Confirm: the API refuses."""
    from chalicelib.directlink import DirectLinkApi

    listed = DirectLinkApi.describe_virtual_gateways

    def list_then_delete(api):
        answer = listed(api)
        if api.target.name == "osc-prod":  # other targets list their gateways concurrently
            directlink.set_gateway_state(scenario.PROD_GATEWAY, "deleting")
        return answer

    settings = Settings(config_source="test", table_name=TABLE)
    runtime = Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock)
    with monkeypatch.context() as patch:
        patch.setattr(DirectLinkApi, "describe_virtual_gateways", list_then_delete)
        refused = by_name(reconcile.run_cycle(runtime))
    assert refused["prod-app"].action == "failed", refused["prod-app"].reason
    assert refused["prod-app"].reason.startswith(
        "confirm_private_virtual_interface on osc-prod failed: DirectConnectClientException: "
    )
    assert "deleting" in refused["prod-app"].reason

    directlink.set_gateway_state(scenario.PROD_GATEWAY, "available")  # recreated
    assert by_name(reconcile.run_cycle(runtime))["prod-app"].action == "confirmed", "the claim was released"
    assert len(confirm_calls(directlink)) == 4  # two refused, then two accepted


def test_claims(aws):
    ledger = Ledger(boto3.client("dynamodb"), TABLE)
    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    record = VifRecord(target="t", vif_id="dxvif-1", first_seen_at=iso(now), state="confirming", state_since=iso(now))
    with pytest.raises(ClaimLost):
        ledger.claim("t", "dxvif-1", "a", now)  # no record yet: nothing to claim
    ledger.save(record)
    ledger.claim("t", "dxvif-1", "a", now)
    with pytest.raises(ClaimLost):
        ledger.claim("t", "dxvif-1", "b", now + timedelta(seconds=1))
    ledger.release("t", "dxvif-1", "b")  # not b's claim: stays
    with pytest.raises(ClaimLost):
        ledger.claim("t", "dxvif-1", "b", now + timedelta(seconds=2))
    ledger.claim("t", "dxvif-1", "b", now + CLAIM_TTL + timedelta(seconds=1))  # a died: its claim expired
    ledger.release("t", "dxvif-1", "b")
    ledger.claim("t", "dxvif-1", "c", now)
    record.confirmed_at = iso(now)
    ledger.save(record)
    with pytest.raises(ClaimLost):
        ledger.claim("t", "dxvif-1", "d", now + timedelta(days=1))  # confirmed once, forever
    stale = VifRecord(target="t", vif_id="dxvif-1", first_seen_at=iso(now), state="pending", state_since=iso(now))
    ledger.save(stale)  # an older copy without confirmed_at must not erase it
    assert ledger.load("t").vifs["dxvif-1"].confirmed_at == iso(now)


def test_a_hung_target_is_reported_and_the_others_still_finish(aws, directlink, monkeypatch):
    """A target that does not answer within the budget fails this cycle; the cycle returns in time.

    The budget leaves the healthy targets ample time even on a loaded machine (a 2 s budget failed
    one run in four there); the hung one waits far longer than the budget, until it is released.
    """
    from chalicelib.directlink import DirectLinkApi

    released = threading.Event()
    listed = DirectLinkApi.describe_virtual_interfaces

    def hang_for_lab(api):
        if api.target.name == "osc-lab":
            released.wait(60)
        return listed(api)

    monkeypatch.setattr(DirectLinkApi, "describe_virtual_interfaces", hang_for_lab)
    settings = Settings(config_source="test", table_name=TABLE)
    runtime = Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock)
    started = time.monotonic()
    report = reconcile.run_cycle(runtime, budget_seconds=6)
    elapsed = time.monotonic() - started
    released.set()
    for thread in threading.enumerate():  # let the hung one finish inside moto, not after it
        if thread.name.startswith("poll"):
            thread.join(10)
    assert 6 <= elapsed < 15, "returned at the budget, not when the hung target gave up"
    assert [(f.target, f.code) for f in report.failures] == [("osc-lab", "Timeout")]
    assert sorted(report.targets_ok) == ["osc-prod", "osc-staging"] and report.counts()["confirmed"] == 2
    assert records("osc-lab").vifs == {}, "the released thread wrote nothing after its budget"


def test_an_unexpected_error_in_one_target_is_contained_and_not_echoed(aws, directlink, monkeypatch, capsys):
    original = reconcile.decide

    def explode_for_lab(vif, *args, **kwargs):
        if vif.owner_account == scenario.LAB:
            raise ValueError("could not handle authKey=bgp-secret-in-an-error")
        return original(vif, *args, **kwargs)

    monkeypatch.setattr(reconcile, "decide", explode_for_lab)
    settings = Settings(config_source="test", table_name=TABLE)
    report = reconcile.run_cycle(Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock))
    assert [(f.target, f.code) for f in report.failures] == [("osc-lab", "ValueError")]
    assert report.failures[0].message == "unexpected ValueError polling osc-lab (see the log)"
    assert report.counts()["confirmed"] == 2
    logs = capsys.readouterr().err
    assert "unexpected error polling a target" in logs and "bgp-secret-in-an-error" not in logs


def test_when_gateways_cannot_be_listed_nothing_is_confirmed_blind(aws, directlink, monkeypatch):
    from chalicelib.directlink import DirectLinkApi, TargetError

    def refuse(api):
        raise TargetError(api.target.name, "describe_virtual_gateways", "AccessDenied", "not allowed", retryable=False)

    monkeypatch.setattr(DirectLinkApi, "describe_virtual_gateways", refuse)
    settings = Settings(config_source="test", table_name=TABLE)
    report = reconcile.run_cycle(Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock))
    prod_app = by_name(report)["prod-app"]
    assert report.failures == [] and prod_app.action == "ask"
    assert prod_app.reason.endswith("but the account's virtual gateways could not be listed this cycle")
    assert confirm_calls(directlink) == []


def test_a_confirm_whose_answer_was_lost_is_recognised(aws, directlink, monkeypatch):
    """botocore retried a Confirm that had worked; the retry was refused. The VIF tells the truth."""
    from chalicelib.directlink import DirectLinkApi, TargetError

    confirm = DirectLinkApi.confirm

    def confirm_then_lose_the_answer(api, vif_id, gateway_id):
        confirm(api, vif_id, gateway_id)
        raise TargetError(
            api.target.name,
            "confirm_private_virtual_interface",
            "DirectConnectClientException",
            f"Virtual interface {vif_id} is in state pending",
            retryable=False,
        )

    monkeypatch.setattr(DirectLinkApi, "confirm", confirm_then_lose_the_answer)
    settings = Settings(config_source="test", table_name=TABLE, events_queue="q.fifo")
    report = reconcile.run_cycle(Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock))
    assert by_name(report)["prod-app"].action == "confirmed"
    assert sorted(e.data.vif["virtualInterfaceName"] for e in report.events if e.type == "vif.confirmed") == [
        "prod-app",
        "prod-db",
    ]
    assert records("osc-prod").vifs[directlink.world.vif_ids["prod-app"]].confirmed_at is not None


def test_unreadable_vifs_are_skipped_and_named_without_their_content(capsys):
    from chalicelib.config import Target
    from chalicelib.directlink import DirectLinkApi

    class Answer:
        def describe_virtual_interfaces(self, **_):
            return {
                "virtualInterfaces": [
                    {"virtualInterfaceState": "confirming", "authKey": "bgp-secret-of-a-broken-vif"},
                    {
                        "virtualInterfaceId": "dxvif-ok000001",
                        "virtualInterfaceState": "confirming",
                        "vlan": "not-a-vlan",
                        "authKey": "bgp-secret-two",
                    },
                    {"virtualInterfaceId": "dxvif-ok000002", "virtualInterfaceState": "confirming"},
                ]
            }

    target = Target(name="t", provider="aws", region="eu-west-1", account_id=scenario.PROD)
    vifs = DirectLinkApi(target, Answer()).describe_virtual_interfaces()
    assert [v.id for v in vifs] == ["dxvif-ok000002"]
    logs = capsys.readouterr().err
    assert logs.count("unreadable virtual interface skipped") == 2 and '"vlan"' in logs
    assert "bgp-secret" not in logs
