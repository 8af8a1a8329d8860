"""The confirm path under crashes, lost answers, slow targets and overlapping pollers.

Each test is a defect an outside review found: a confirm that worked but was never recorded, a claim
born expired, a thread acting after its cycle returned, a reject that deleted a VIF someone had just
confirmed, a failing spell ended without its event, a broken page read as "every VIF is gone".
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import boto3
import pytest

from chalicelib import reconcile
from chalicelib.config import parse_policy
from chalicelib.directlink import DirectLinkApi, TargetError
from chalicelib.ledger import CLAIM_TTL, Ledger, iso
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from tests.conftest import TABLE, confirm_calls
from tests.test_target_spells import failed_event


class Killed(BaseException):
    """The process dies here: nothing after this line runs, nothing catches it (not an Exception)."""


def runtime_for(directlink, config: str = scenario.CONFIG, clock=None) -> Runtime:
    settings = Settings(config_source="test", table_name=TABLE, events_queue="q.fifo", max_workers=1)
    return Runtime(settings, policy=parse_policy(config), clock=clock or directlink.clock)


def cycle(directlink, **options):
    return reconcile.run_cycle(runtime_for(directlink), **options)


def records(target: str = "osc-prod"):
    return Ledger(boto3.client("dynamodb"), TABLE).load(target)


def by_name(report):
    return {o.virtualInterfaceName: o for o in report.outcomes}


def of_type(report, type_name: str) -> list:
    return [e for e in report.events if e.type == type_name]


def killed_cycle(directlink, runtime=None):
    with pytest.raises(Killed):
        reconcile.run_cycle(runtime or runtime_for(directlink))


def client_as(directlink, account: str):
    key, secret = scenario.KEYS[account]
    return boto3.client(
        "directconnect",
        endpoint_url=directlink.url,
        region_name="eu-west-2",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def unavailable(api, operation: str) -> TargetError:
    return TargetError(api.target.name, operation, "ServiceUnavailable", "try later", retryable=True)


def answer_with(patch, vif_id: str, **fields) -> None:
    """The API answers these fields for one VIF (as AWS or a partner's rename would), the rest as it is."""
    page = DirectLinkApi._page

    def changed(api, **params):
        items, token = page(api, **params)
        for item in items:
            if item.get("virtualInterfaceId") == vif_id:
                item.update(fields)
        return items, token

    patch.setattr(DirectLinkApi, "_page", changed)


# --- a confirm that worked but was not recorded ---------------------------------------------------


def kill_after_claim(monkeypatch):
    claim = Ledger.claim

    def claim_then_die(self, *args, **kwargs):
        claim(self, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(Ledger, "claim", claim_then_die)


def kill_in_flight(monkeypatch):
    """The sandbox applies Confirm; the process dies before it reads the answer."""
    confirm = DirectLinkApi.confirm

    def confirm_then_die(api, vif_id, gateway_id):
        confirm(api, vif_id, gateway_id)
        raise Killed

    monkeypatch.setattr(DirectLinkApi, "confirm", confirm_then_die)


def kill_after_the_answer(monkeypatch):
    """Confirm answered `pending`; the process dies on the ledger write that records it."""
    save = Ledger.save

    def save_unless_confirmed(self, record, events=()):
        if record.confirmed_at:
            raise Killed
        save(self, record, events)

    monkeypatch.setattr(Ledger, "save", save_unless_confirmed)


@pytest.mark.parametrize("kill", [kill_in_flight, kill_after_the_answer])
def test_a_confirm_killed_before_it_was_recorded_is_recorded_by_the_next_cycle(aws, directlink, monkeypatch, kill):
    with monkeypatch.context() as patch:
        kill(patch)
        killed_cycle(directlink)
    prod_app = directlink.world.vif_ids["prod-app"]
    assert directlink.vif(prod_app)["virtualInterfaceState"] == "pending"
    assert records().vifs[prod_app].confirmed_at is None, "the crash lost the record"

    directlink.clock.advance(timedelta(minutes=1))
    report = cycle(directlink)
    assert by_name(report)["prod-app"].action == "confirmed"
    confirmed = [e for e in of_type(report, "vif.confirmed") if e.subject == prod_app]
    assert len(confirmed) == 1 and confirmed[0].data.gateway == scenario.PROD_GATEWAY
    assert confirmed[0].data.rule == "partner-prod"
    assert records().vifs[prod_app].confirmed_at == iso(directlink.clock.now())
    assert directlink.confirm_count(prod_app) == 1
    assert of_type(cycle(directlink), "vif.confirmed") == [], "recorded once"


def test_a_claim_left_by_a_dead_poller_says_whose_it_is_and_is_taken_over_after_it_lapses(aws, directlink, monkeypatch):
    runtime = runtime_for(directlink)
    with monkeypatch.context() as patch:
        kill_after_claim(patch)
        killed_cycle(directlink, runtime)
    prod_app = directlink.world.vif_ids["prod-app"]
    claim = records().vifs[prod_app].claim
    assert claim is not None and claim.verb == "confirm" and claim.gateway == scenario.PROD_GATEWAY

    directlink.clock.advance(timedelta(minutes=1))
    held = by_name(cycle(directlink))["prod-app"]
    assert held.action == "none"
    assert f"claimed by poller cycle {claim.by}" in held.reason and f"until {claim.until}" in held.reason
    assert "if that poller stopped" in held.reason
    assert confirm_calls(directlink) == [] or directlink.confirm_count(prod_app) == 0

    directlink.clock.advance(CLAIM_TTL)
    taken = by_name(cycle(directlink))["prod-app"]
    assert taken.action == "confirmed" and directlink.confirm_count(prod_app) == 1


def test_a_lost_answer_and_an_unreadable_vif_is_unknown_and_keeps_the_claim(aws, directlink, monkeypatch):
    """Confirm worked, its answer was lost, and the follow-up read was throttled: not "failed"."""
    confirm = DirectLinkApi.confirm

    def confirm_then_lose_everything(api, vif_id, gateway_id):
        confirm(api, vif_id, gateway_id)
        directlink.set_faults(throttle_rate=1.0)  # the follow-up describe is throttled to the end
        raise TargetError(
            api.target.name, "confirm_private_virtual_interface", "ReadTimeoutError", "lost", retryable=True
        )

    with monkeypatch.context() as patch:
        patch.setattr(DirectLinkApi, "confirm", confirm_then_lose_everything)
        first = by_name(cycle(directlink))
    directlink.set_faults(throttle_rate=0.0)
    prod_app = directlink.world.vif_ids["prod-app"]
    assert first["prod-app"].action == "unknown", first["prod-app"].reason
    assert "the claim is kept" in first["prod-app"].reason
    assert records().vifs[prod_app].claim is not None

    directlink.clock.advance(timedelta(minutes=1))
    second = cycle(directlink)
    assert by_name(second)["prod-app"].action == "confirmed"
    assert [e.subject for e in of_type(second, "vif.confirmed")].count(prod_app) == 1
    assert directlink.confirm_count(prod_app) == 1


def test_the_confirmed_event_shows_the_vif_as_the_confirm_left_it(aws, directlink):
    report = cycle(directlink)
    confirmed = {e.data.vif["virtualInterfaceName"]: e.data.vif for e in of_type(report, "vif.confirmed")}
    assert confirmed["prod-app"]["virtualInterfaceState"] == "pending"
    assert confirmed["prod-app"]["virtualGatewayId"] == scenario.PROD_GATEWAY


# --- claims and budgets -------------------------------------------------------------------------


def test_a_claim_reads_the_clock_when_it_is_made(aws, directlink, monkeypatch):
    """In a long target loop, a claim stamped with the loop's start was born (nearly) expired."""
    started, origin = time.monotonic(), directlink.clock.now()

    def fast_clock():  # ten minutes pass for every real second
        return origin + timedelta(seconds=(time.monotonic() - started) * 600)

    decide = reconcile.decide

    def slow_decide(*args, **kwargs):  # a long loop: many VIFs before this one
        time.sleep(0.5)
        return decide(*args, **kwargs)

    claimed = []
    claim = Ledger.claim

    def spy(self, target, vif_id, claimant, now, **kwargs):
        claimed.append((vif_id, fast_clock() - now))
        return claim(self, target, vif_id, claimant, now, **kwargs)

    monkeypatch.setattr(reconcile, "decide", slow_decide)
    monkeypatch.setattr(Ledger, "claim", spy)
    reconcile.run_cycle(runtime_for(directlink, clock=fast_clock))
    assert len(claimed) == 2
    assert all(age < timedelta(minutes=1) for _, age in claimed), f"claims stamped in the past: {claimed}"


def test_a_thread_past_its_budget_does_nothing_more(aws, directlink, monkeypatch):
    """The gateway listing of osc-prod outlives the cycle; its thread must not confirm afterwards."""
    listed = DirectLinkApi.describe_virtual_gateways
    release = threading.Event()

    def slow_for_prod(api):
        if api.target.name == "osc-prod":
            release.wait(20)
        return listed(api)

    monkeypatch.setattr(DirectLinkApi, "describe_virtual_gateways", slow_for_prod)
    report = reconcile.run_cycle(runtime_for(directlink), budget_seconds=3)
    assert ("osc-prod", "Timeout") in [(f.target, f.code) for f in report.failures]
    release.set()
    for thread in threading.enumerate():
        if thread.name.startswith("poll"):
            thread.join(10)
    time.sleep(0.2)
    prod = {directlink.world.vif_ids[n] for n in ("prod-app", "prod-db")}
    assert [vif for vif in prod if directlink.confirm_count(vif)] == []
    assert all(records().vifs[v].claim is None for v in prod if v in records().vifs)


# --- reject -------------------------------------------------------------------------------------


def test_reject_rereads_the_vif_and_spares_one_a_person_confirmed_meanwhile(aws, directlink, monkeypatch):
    config = scenario.CONFIG.replace("default_action: ask", "default_action: reject")
    lab_bench = directlink.world.vif_ids["lab-bench"]
    listed = DirectLinkApi.describe_virtual_interfaces

    person = client_as(directlink, scenario.LAB)

    def list_then_a_person_confirms(api):
        vifs = listed(api)
        if api.target.name == "osc-lab":  # in the console, between our listing and our delete
            person.confirm_private_virtual_interface(
                virtualInterfaceId=lab_bench, virtualGatewayId=scenario.LAB_GATEWAY
            )
        return vifs

    monkeypatch.setattr(DirectLinkApi, "describe_virtual_interfaces", list_then_a_person_confirms)
    report = reconcile.run_cycle(runtime_for(directlink, config))
    outcome = by_name(report)["lab-bench"]
    assert outcome.action == "none" and "no longer confirming (now pending)" in outcome.reason
    assert directlink.vif(lab_bench)["virtualInterfaceState"] == "pending"
    assert [e for e in of_type(report, "vif.rejected") if e.subject == lab_bench] == []
    assert [acct for op, acct in directlink.calls if op == "DeleteVirtualInterface" and acct == scenario.LAB] == []


# --- failing spells -----------------------------------------------------------------------------


def test_a_spell_started_by_an_overlapping_poller_is_not_ended_silently(aws, directlink, monkeypatch):
    """Poller A read the target as healthy; poller B then marked it failing; B's spell ends with its event.

    An idle cycle writes nothing (last_polled_at is a heartbeat), so A's success leaves B's spell alone
    rather than ending it: the next cycle reads the spell and ends it, with target.recovered naming it.
    """
    runtime = runtime_for(directlink)
    reconcile.run_cycle(runtime)
    load = Ledger.load
    other_spell = directlink.clock.now() - timedelta(seconds=30)

    def load_then_another_poller_fails_it(self, target, item=None):
        known = load(self, target, item)
        if target == "osc-lab":
            self.mark_failing(target, other_spell, lambda: failed_event(target, other_spell))
        return known

    with monkeypatch.context() as patched:
        patched.setattr(Ledger, "load", load_then_another_poller_fails_it)
        directlink.clock.advance(timedelta(minutes=1))
        report = reconcile.run_cycle(runtime)
    assert of_type(report, "target.recovered") == []
    assert records("osc-lab").failing_since == other_spell, "not ended without its event"
    directlink.clock.advance(timedelta(minutes=1))
    report = reconcile.run_cycle(runtime)
    recovered = of_type(report, "target.recovered")
    assert [(e.subject, e.data.failed_since) for e in recovered] == [("osc-lab", other_spell)]
    assert records("osc-lab").failing_since is None


# --- broken pages and reappearance --------------------------------------------------------------


def test_a_broken_page_fails_the_target_and_announces_nothing_gone(aws, directlink, monkeypatch):
    cycle(directlink)
    directlink.clock.advance(timedelta(minutes=1))
    monkeypatch.setattr(DirectLinkApi, "_call", lambda api, operation, **params: {"ResponseMetadata": {}})
    report = cycle(directlink)
    assert sorted((f.target, f.code) for f in report.failures) == [
        (t, "MalformedAnswer") for t in sorted(scenario.TARGETS)
    ]
    assert of_type(report, "vif.disappeared") == [] and of_type(report, "vif.expired") == []
    assert all(r.gone_at is None for r in records().vifs.values())


def hide(monkeypatch, vif_id: str):
    listed = DirectLinkApi.describe_virtual_interfaces
    monkeypatch.setattr(
        DirectLinkApi, "describe_virtual_interfaces", lambda api: [v for v in listed(api) if v.id != vif_id]
    )


def test_a_vif_seen_again_is_announced_and_a_second_disappearance_is_a_new_event(aws, directlink, monkeypatch):
    legacy = directlink.world.vif_ids["prod-legacy"]
    cycle(directlink)
    with monkeypatch.context() as patch:
        hide(patch, legacy)
        directlink.clock.advance(timedelta(minutes=1))
        first_gone = [e for e in of_type(cycle(directlink), "vif.disappeared") if e.subject == legacy]
    directlink.clock.advance(timedelta(minutes=1))
    back = [e for e in of_type(cycle(directlink), "vif.reappeared") if e.subject == legacy]
    assert len(back) == 1 and back[0].data.state == "confirming" and back[0].data.last_state == "confirming"
    with monkeypatch.context() as patch:
        hide(patch, legacy)
        directlink.clock.advance(timedelta(minutes=1))
        second_gone = [e for e in of_type(cycle(directlink), "vif.disappeared") if e.subject == legacy]
    assert len(first_gone) == len(second_gone) == 1
    assert first_gone[0].id != second_gone[0].id, "FIFO deduplication would drop the second"


def test_the_flush_has_its_own_deadline(aws, directlink):
    """Sending the outbox stops at its own deadline; what is left goes with the next cycle."""
    from sandbox.local import create_queues

    create_queues(boto3.client("sqs"), "q.fifo", "q-dlq.fifo")
    runtime = runtime_for(directlink)
    late = reconcile.run_cycle(runtime, flush_seconds=0)
    assert late.delivery.sent == 0 and late.delivery.pending == len(late.events) > 0
    next_cycle = reconcile.run_cycle(runtime)
    assert next_cycle.delivery.sent == len(late.events) + len(next_cycle.events)


# --- found by an independent review of this change ----------------------------------------------


def test_a_confirm_known_not_to_have_happened_leaves_no_claim_to_credit_a_persons_confirm(aws, directlink, monkeypatch):
    prod_app = directlink.world.vif_ids["prod-app"]

    def refuse(api, vif_id, gateway_id):
        raise unavailable(api, "confirm_private_virtual_interface")

    with monkeypatch.context() as patch:
        patch.setattr(DirectLinkApi, "confirm", refuse)
        assert by_name(cycle(directlink))["prod-app"].action == "failed"
    assert records().vifs[prod_app].claim is None, "read back as still confirming: the claim is given back"
    ask = scenario.CONFIG.replace(
        "    gateway: vgw-0a1b2c3d\n    action: confirm", "    gateway: vgw-0a1b2c3d\n    action: ask"
    )
    directlink.clock.advance(timedelta(minutes=1))
    assert by_name(reconcile.run_cycle(runtime_for(directlink, ask)))["prod-app"].action == "ask"
    client_as(directlink, scenario.PROD).confirm_private_virtual_interface(
        virtualInterfaceId=prod_app, virtualGatewayId=scenario.PROD_GATEWAY
    )  # a person, by hand
    directlink.clock.advance(timedelta(days=2))
    report = reconcile.run_cycle(runtime_for(directlink, ask))
    assert by_name(report)["prod-app"].action == "none"
    assert [e for e in of_type(report, "vif.confirmed") if e.subject == prod_app] == []


def test_a_claim_that_never_reached_the_api_is_never_settled(aws, directlink, monkeypatch):
    """Killed between the claim and the call: a later hand confirm is not the gatekeeper's."""
    prod_app = directlink.world.vif_ids["prod-app"]
    with monkeypatch.context() as patch:
        kill_after_claim(patch)
        killed_cycle(directlink)
    client_as(directlink, scenario.PROD).confirm_private_virtual_interface(
        virtualInterfaceId=prod_app, virtualGatewayId=scenario.PROD_GATEWAY
    )
    directlink.clock.advance(timedelta(minutes=1))
    report = cycle(directlink)
    assert by_name(report)["prod-app"].action == "none"
    assert [e for e in of_type(report, "vif.confirmed") if e.subject == prod_app] == []


def test_a_partners_withdrawal_is_not_recorded_as_our_reject(aws, directlink, monkeypatch):
    config = scenario.CONFIG.replace("default_action: ask", "default_action: reject")
    lab = directlink.world.vif_ids["lab-bench"]

    def refuse(api, vif_id):
        raise unavailable(api, "delete_virtual_interface")

    with monkeypatch.context() as patch:
        patch.setattr(DirectLinkApi, "reject", refuse)
        assert by_name(reconcile.run_cycle(runtime_for(directlink, config)))["lab-bench"].action == "failed"
    client_as(directlink, scenario.PARTNER).delete_virtual_interface(virtualInterfaceId=lab)  # withdrawn
    directlink.clock.advance(timedelta(minutes=1))
    report = reconcile.run_cycle(runtime_for(directlink, config))
    assert by_name(report)["lab-bench"].action != "rejected"
    assert [e for e in of_type(report, "vif.rejected") if e.subject == lab] == []
    assert not records("osc-lab").vifs[lab].rejected_at


def test_a_vif_that_cannot_be_read_is_not_announced_gone(aws, directlink, monkeypatch):
    legacy = directlink.world.vif_ids["prod-legacy"]
    cycle(directlink)
    with monkeypatch.context() as patch:
        answer_with(patch, legacy, virtualInterfaceName="x" * 2000)
        directlink.clock.advance(timedelta(minutes=1))
        report = cycle(directlink)
    gone = [e for e in report.events if e.subject == legacy and e.type in ("vif.disappeared", "vif.expired")]
    assert gone == [] and records().vifs[legacy].gone_at is None


def test_a_vif_that_reappears_in_another_state_records_the_change(aws, directlink, monkeypatch):
    legacy = directlink.world.vif_ids["prod-legacy"]
    cycle(directlink)
    with monkeypatch.context() as patch:
        hide(patch, legacy)
        directlink.clock.advance(timedelta(minutes=1))
        cycle(directlink)
    client_as(directlink, scenario.PROD).confirm_private_virtual_interface(
        virtualInterfaceId=legacy, virtualGatewayId=scenario.PROD_GATEWAY
    )
    directlink.clock.advance(timedelta(minutes=5))
    back = cycle(directlink)
    changed = [e for e in of_type(back, "vif.state_changed") if e.subject == legacy]
    assert [(e.data.from_state, e.data.to_state) for e in changed] == [("confirming", "available")]
    assert records().vifs[legacy].state == "available"
    with monkeypatch.context() as patch:
        hide(patch, legacy)
        directlink.clock.advance(timedelta(minutes=1))
        again = cycle(directlink)
    assert [e for e in of_type(again, "vif.expired") if e.subject == legacy] == []


@pytest.mark.parametrize("state", ["down", "testing"])
def test_a_confirm_killed_in_flight_is_recorded_when_aws_shows_the_vif_bgp_down(aws, directlink, monkeypatch, state):
    prod_app = directlink.world.vif_ids["prod-app"]
    with monkeypatch.context() as patch:
        kill_in_flight(patch)
        killed_cycle(directlink)
    answer_with(monkeypatch, prod_app, virtualInterfaceState=state)
    directlink.clock.advance(timedelta(minutes=1))
    report = cycle(directlink)
    assert [e.subject for e in of_type(report, "vif.confirmed")].count(prod_app) == 1
    assert records().vifs[prod_app].confirmed_at


def test_without_an_events_queue_ending_a_spell_writes_no_event(aws, directlink):
    """The ledger still records the spell's end; no event is built where no queue will send it."""
    ledger = Ledger(boto3.client("dynamodb"), TABLE)
    since = directlink.clock.now() - timedelta(minutes=5)
    ledger.mark_failing("osc-lab", since, lambda: failed_event("osc-lab", since))
    ledger.delete_events([item.sort_key for item in ledger.pending_events()])
    settings = Settings(config_source="test", table_name=TABLE, max_workers=1)  # no events queue
    report = reconcile.run_cycle(Runtime(settings, policy=parse_policy(scenario.CONFIG), clock=directlink.clock))
    assert report.events == [] and ledger.pending_events() == []
    assert records("osc-lab").failing_since is None
