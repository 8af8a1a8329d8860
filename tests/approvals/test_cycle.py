"""The poll cycle's share of approvals: open one request, carry out what people decide, expire, supersede.

moto for the ledger, the sandbox over HTTP for DirectLink (real boto3), the sandbox's clock for time.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import boto3
import pytest

from chalicelib import reconcile
from chalicelib.approvals import service
from chalicelib.approvals.model import Refused
from chalicelib.config import parse_policy
from chalicelib.directlink import DirectLinkApi, TargetError
from chalicelib.ledger import Ledger
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from tests.conftest import TABLE

APPROVALS = """\
approvals:
  approvers:
    - {name: alice}
    - {name: bob}
    - {name: carol}
  groups: {netops: [alice, bob]}
  signing_key: {secret_id: vifgate/test/approvals, key: signing}
"""
OTHER_GATEWAY = "vgw-77778888"


def ask_rule(*, approvers: str = "[netops]", extra: str = "", action: str = "ask") -> str:
    """A rule for prod-legacy (vlan 250, outside partner-prod's 100-199), first in the list."""
    return (
        f"  - name: legacy\n"
        f'    accounts: ["{scenario.PROD}"]\n'
        f"    vlan: {{min: 200, max: 299}}\n"
        f"    action: {action}\n" + (f"    approvers: {approvers}\n" if action == "ask" else "") + extra
    )


def config(rule: str = "", default_approvers: str | None = None) -> str:
    text = scenario.CONFIG.replace("rules:\n", "rules:\n" + rule, 1)
    if default_approvers:
        text = text.replace("default_action: ask\n", f"default_action: ask\ndefault_approvers: {default_approvers}\n")
    return text + APPROVALS


LEGACY = config(ask_rule(extra=f"    gateway: {scenario.PROD_GATEWAY}\n"))
TWO_NEEDED = config(ask_rule(extra=f"    gateway: {scenario.PROD_GATEWAY}\n    min_approvals: 2\n"))


def runtime_for(directlink, text: str) -> Runtime:
    settings = Settings(config_source="test", table_name=TABLE, events_queue="q.fifo", max_workers=1)
    return Runtime(settings, policy=parse_policy(text), clock=directlink.clock)


def cycle(directlink, text: str = LEGACY, **options):
    return reconcile.run_cycle(runtime_for(directlink, text), **options)


def ledger() -> Ledger:
    return Ledger(boto3.client("dynamodb"), TABLE)


def record_of(directlink, name: str, target: str = "osc-prod"):
    return ledger().load(target).vifs[directlink.world.vif_ids[name]]


def outcome(report, name: str):
    return next(o for o in report.outcomes if o.virtualInterfaceName == name)


def of_type(report, type_name: str, subject: str | None = None) -> list:
    return [e for e in report.events if e.type == type_name and (subject is None or e.subject == subject)]


def vote(directlink, request_id: str, approver: str, choice: str = "approve", *, text: str = LEGACY, **options):
    return service.record_vote(
        ledger(),
        parse_policy(text),
        request_id,
        approver=approver,
        user_id=options.get("user_id"),
        channel=options.get("channel", "slack"),
        vote=choice,
        gateway=options.get("gateway"),
        clock=directlink.clock,
        publishing=True,
    )


def client_as(directlink, account: str):
    key, secret = scenario.KEYS[account]
    return boto3.client(
        "directconnect",
        endpoint_url=directlink.url,
        region_name="eu-west-2",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


class Since:
    """The sandbox's calls from now on (the opening cycle confirms prod-app and prod-db by rule)."""

    def __init__(self, directlink):
        self.directlink, self.mark = directlink, len(directlink.calls)

    def of(self, operation: str) -> list[str]:
        return [account for op, account in self.directlink.calls[self.mark :] if op == operation]

    def confirms(self) -> list[str]:
        return self.of("ConfirmPrivateVirtualInterface")

    def deletes(self) -> list[str]:
        return self.of("DeleteVirtualInterface")


def opened(directlink, text: str = LEGACY, name: str = "prod-legacy", target: str = "osc-prod"):
    """One cycle that opens the request; returns it and a mark on the sandbox's calls after that cycle."""
    cycle(directlink, text)
    request = record_of(directlink, name, target).approval
    assert request is not None and request.status == "pending"
    return request, Since(directlink)


# --- opening the request ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name, target, expected",
    [
        # the rule's gateway
        (LEGACY, "prod-legacy", "osc-prod", (scenario.PROD_GATEWAY,)),
        # the rule's gateways list, as written (not filtered: checked when carried out)
        (
            config(ask_rule(extra=f"    gateways: [{scenario.PROD_GATEWAY}, {OTHER_GATEWAY}]\n")),
            "prod-legacy",
            "osc-prod",
            (scenario.PROD_GATEWAY, OTHER_GATEWAY),
        ),
        # neither: the owner account's gateways that are available (lab's pending one is left out)
        (config(default_approvers="[carol]"), "lab-bench", "osc-lab", ("vgw-1ab00001", scenario.LAB_GATEWAY)),
    ],
    ids=["rule-gateway", "rule-gateways", "account-available"],
)
def test_one_request_is_opened_once_with_the_gateways_to_choose_from(directlink, aws, text, name, target, expected):
    directlink.add_gateway(scenario.LAB, state="available", gateway_id="vgw-1ab00001")
    directlink.add_gateway(scenario.LAB, state="pending", gateway_id="vgw-1ab00002")
    first = cycle(directlink, text)
    vif_id = directlink.world.vif_ids[name]
    request = record_of(directlink, name, target).approval
    assert request is not None and request.status == "pending"
    assert request.gateways == expected
    assert request.vif_id == vif_id and request.target == target
    [asked] = of_type(first, "vif.approval_requested", vif_id)
    assert asked.data.request_id == request.request_id
    assert asked.data.gateways == list(request.gateways) and asked.data.approvers == list(request.approvers)
    assert asked.data.min_approvals == 1 and asked.data.expires_at is not None
    assert outcome(first, name).action == "ask" and request.request_id in outcome(first, name).reason

    directlink.clock.advance(timedelta(minutes=1))
    second = cycle(directlink, text)
    assert of_type(second, "vif.approval_requested") == [], "opened once"
    assert record_of(directlink, name, target).approval.request_id == request.request_id
    assert ledger().approval(request.request_id)[0].request_id == request.request_id


def test_default_approvers_with_group_expanded(directlink, aws):
    request, _ = opened(directlink, config(default_approvers="[netops, carol]"), "lab-bench", "osc-lab")
    assert request.approvers == ("alice", "bob", "carol") and request.rule is None


def test_a_failed_gateway_lookup_opens_no_request_this_cycle_and_says_so(directlink, aws, monkeypatch):
    text = config(default_approvers="[carol]")

    def refuse(api):
        raise TargetError(api.target.name, "DescribeVirtualGateways", "ServiceUnavailable", "try later", retryable=True)

    with monkeypatch.context() as patch:
        patch.setattr(DirectLinkApi, "describe_virtual_gateways", refuse)
        first = cycle(directlink, text)
    lab = outcome(first, "lab-bench")
    assert lab.action == "ask" and "virtual gateways could not be listed" in lab.reason
    assert record_of(directlink, "lab-bench", "osc-lab").approval is None
    assert of_type(first, "vif.approval_requested", directlink.world.vif_ids["lab-bench"]) == []

    directlink.clock.advance(timedelta(minutes=1))
    second = cycle(directlink, text)
    [asked] = of_type(second, "vif.approval_requested", directlink.world.vif_ids["lab-bench"])
    assert asked.data.gateways == [scenario.LAB_GATEWAY]


def test_a_vif_asked_before_approvers_existed_gets_its_request_and_one_new_ask(directlink, aws):
    legacy = directlink.world.vif_ids["prod-legacy"]
    before = cycle(directlink, scenario.CONFIG)  # no approvers: notify-only, as ever
    [notified] = of_type(before, "vif.approval_requested", legacy)
    assert notified.data.request_id is None and record_of(directlink, "prod-legacy").approval is None

    directlink.clock.advance(timedelta(minutes=1))
    after = cycle(directlink)
    [asked] = of_type(after, "vif.approval_requested", legacy)
    assert asked.data.request_id == record_of(directlink, "prod-legacy").approval.request_id
    assert asked.id != notified.id, "FIFO deduplication must not drop the ask that opens the request"
    directlink.clock.advance(timedelta(minutes=1))
    assert of_type(cycle(directlink), "vif.approval_requested") == []


def test_a_check_asks_nobody_and_writes_no_request(directlink, aws):
    report = cycle(directlink, record=False)  # vifgate check
    legacy = outcome(report, "prod-legacy")
    assert legacy.action == "ask" and legacy.reason.endswith("; would ask alice, bob to approve")
    assert report.events == [] and ledger().approvals(status=None) == []


def test_without_approvers_nothing_changes(directlink, aws):
    report = cycle(directlink, scenario.CONFIG)
    assert all(r.approval is None for r in ledger().load("osc-prod").vifs.values())
    assert all(e.data.request_id is None for e in of_type(report, "vif.approval_requested"))
    # DescribeVirtualGateways only where a rule would confirm: never for the lab account.
    assert scenario.LAB not in {account for op, account in directlink.calls if op == "DescribeVirtualGateways"}


# --- carrying out ----------------------------------------------------------------------------------------


def test_an_approved_request_is_confirmed_once_and_names_the_approver_and_channel(directlink, aws):
    request, since = opened(directlink)
    legacy = request.vif_id
    vote(directlink, request.request_id, "alice", channel="mattermost")
    assert directlink.confirm_count(legacy) == 0, "a vote alone calls nothing"

    report = cycle(directlink)
    assert directlink.confirm_count(legacy) == 1 and since.confirms() == [scenario.PROD]
    assert directlink.vif(legacy)["virtualGatewayId"] == scenario.PROD_GATEWAY
    result = outcome(report, "prod-legacy")
    assert result.action == "confirmed" and "approved by alice via mattermost" in result.reason
    assert result.virtualGatewayId == scenario.PROD_GATEWAY and result.rule == "legacy"
    [done] = of_type(report, "vif.confirmed", legacy)
    assert done.data.by == "approver" and done.data.approver == "alice" and done.data.approvers == ["alice"]
    assert done.data.channel == "mattermost" and done.data.request_id == request.request_id
    assert done.data.gateway == scenario.PROD_GATEWAY and done.data.rule == "legacy"
    entry = record_of(directlink, "prod-legacy")
    assert entry.confirmed_at and entry.last_decision == "confirmed" and entry.approval.status == "approved"

    directlink.clock.advance(timedelta(minutes=1))
    later = cycle(directlink)
    assert directlink.confirm_count(legacy) == 1 and of_type(later, "vif.confirmed") == []
    assert of_type(later, "vif.approval_superseded") == [], "an approved request stays approved"


def test_a_rejected_request_is_deleted_once_by_the_approver(directlink, aws):
    request, since = opened(directlink)
    vote(directlink, request.request_id, "bob", "reject", channel="link")
    report = cycle(directlink)
    assert since.deletes() == [scenario.PROD] and since.confirms() == []
    assert directlink.vif(request.vif_id)["virtualInterfaceState"] == "rejected"
    [done] = of_type(report, "vif.rejected", request.vif_id)
    assert done.data.by == "approver" and done.data.approver == "bob" and done.data.channel == "link"
    assert done.data.reason == "rejected by bob via link" and done.data.request_id == request.request_id
    assert outcome(report, "prod-legacy").action == "rejected"
    directlink.clock.advance(timedelta(minutes=1))
    cycle(directlink)
    assert since.deletes() == [scenario.PROD]


def test_two_approvals_needed_one_does_nothing_at_the_api(directlink, aws):
    request, since = opened(directlink, TWO_NEEDED)
    vote(directlink, request.request_id, "alice", text=TWO_NEEDED)
    report = cycle(directlink, TWO_NEEDED)
    result = outcome(report, "prod-legacy")
    assert result.action == "ask" and "1 of 2" in result.reason
    assert since.confirms() == [] and of_type(report, "vif.confirmed") == []

    vote(directlink, request.request_id, "bob", channel="cli", text=TWO_NEEDED)
    report = cycle(directlink, TWO_NEEDED)
    [done] = of_type(report, "vif.confirmed", request.vif_id)
    assert done.data.approvers == ["alice", "bob"] and done.data.approver == "alice, bob"
    assert done.data.channel == "cli" and since.confirms() == [scenario.PROD]


def test_an_approval_racing_the_cycles_own_confirm_confirms_once(directlink, aws):
    request, since = opened(directlink)
    vote(directlink, request.request_id, "alice")
    start = threading.Barrier(2)
    reports = []

    def poll():
        runtime = runtime_for(directlink, LEGACY)
        start.wait()
        reports.append(reconcile.run_cycle(runtime))

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(reports) == 2
    assert directlink.confirm_count(request.vif_id) == 1
    assert since.confirms() == [scenario.PROD]
    confirmed = [e for r in reports for e in of_type(r, "vif.confirmed", request.vif_id)]
    assert len(confirmed) == 1 and confirmed[0].data.by == "approver"
    actions = sorted(outcome(r, "prod-legacy").action for r in reports)
    assert actions == ["confirmed", "none"]


def test_an_approved_gateway_that_is_not_available_is_not_called(directlink, aws):
    request, since = opened(directlink)
    vote(directlink, request.request_id, "alice")
    directlink.set_gateway_state(scenario.PROD_GATEWAY, "pending")
    report = cycle(directlink)
    result = outcome(report, "prod-legacy")
    assert result.action == "failed"
    gateway = scenario.PROD_GATEWAY
    assert (
        result.reason
        == f"approved by alice via slack, but gateway {gateway} is pending, not available; nothing was called"
    )
    assert since.confirms() == [] and record_of(directlink, "prod-legacy").claim is None

    directlink.set_gateway_state(scenario.PROD_GATEWAY, "available")
    assert outcome(cycle(directlink), "prod-legacy").action == "confirmed"
    assert directlink.confirm_count(request.vif_id) == 1


def test_an_approved_confirm_killed_in_flight_is_credited_to_the_approvers_later(directlink, aws, monkeypatch):
    class Killed(BaseException):
        pass

    request, _ = opened(directlink)
    vote(directlink, request.request_id, "alice", channel="link")
    confirm = DirectLinkApi.confirm

    def confirm_then_die(api, vif_id, gateway_id):
        confirm(api, vif_id, gateway_id)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(DirectLinkApi, "confirm", confirm_then_die)
        with pytest.raises(Killed):
            cycle(directlink)
    assert record_of(directlink, "prod-legacy").confirmed_at is None

    directlink.clock.advance(timedelta(minutes=1))
    report = cycle(directlink)
    [done] = of_type(report, "vif.confirmed", request.vif_id)
    assert done.data.by == "approver" and done.data.approver == "alice" and done.data.channel == "link"
    assert done.data.request_id == request.request_id and directlink.confirm_count(request.vif_id) == 1


def test_a_rule_that_now_confirms_wins_and_supersedes_the_request(directlink, aws):
    request, _ = opened(directlink)
    now_trusted = config(
        ask_rule(
            action="confirm",
            extra=f"    connections: [{scenario.PARTNER_CONNECTION}]\n    gateway: {scenario.PROD_GATEWAY}\n",
        )
    )
    report = cycle(directlink, now_trusted)
    [done] = of_type(report, "vif.confirmed", request.vif_id)
    assert done.data.by == "rule" and done.data.rule == "legacy" and done.data.approver is None
    [superseded] = of_type(report, "vif.approval_superseded", request.vif_id)
    assert superseded.data.why == "confirmed by rule legacy" and superseded.data.status == "superseded"
    assert record_of(directlink, "prod-legacy").approval.status == "superseded"


# --- expiry and supersession -------------------------------------------------------------------------------


def test_a_pending_request_expires_with_its_vif(directlink, aws):
    request, _ = opened(directlink)
    directlink.clock.advance(timedelta(days=7, minutes=1))
    report = cycle(directlink)
    [expired] = of_type(report, "vif.approval_expired", request.vif_id)
    assert expired.data.request_id == request.request_id and expired.data.status == "expired"
    assert record_of(directlink, "prod-legacy").approval.status == "expired"
    assert of_type(report, "vif.approval_superseded") == []
    directlink.clock.advance(timedelta(minutes=1))
    assert of_type(cycle(directlink), "vif.approval_expired") == [], "once"


def test_a_request_is_superseded_when_the_partner_withdraws_the_vif(directlink, aws):
    request, since = opened(directlink)
    client_as(directlink, scenario.PARTNER).delete_virtual_interface(virtualInterfaceId=request.vif_id)
    report = cycle(directlink)
    [superseded] = of_type(report, "vif.approval_superseded", request.vif_id)
    assert superseded.data.why == "state now deleting"
    assert record_of(directlink, "prod-legacy").approval.status == "superseded"
    assert since.deletes() == [scenario.PARTNER] and since.confirms() == []


def test_a_request_is_superseded_when_a_person_confirms_by_hand(directlink, aws):
    request, _ = opened(directlink)
    client_as(directlink, scenario.PROD).confirm_private_virtual_interface(
        virtualInterfaceId=request.vif_id, virtualGatewayId=scenario.PROD_GATEWAY
    )
    report = cycle(directlink)
    [superseded] = of_type(report, "vif.approval_superseded", request.vif_id)
    assert superseded.data.why == "state now pending" and of_type(report, "vif.confirmed") == []
    # A vote now is refused: the VIF is no longer confirming.
    with pytest.raises(Refused) as refused:
        vote(directlink, request.request_id, "alice")
    assert refused.value.status == 409


def test_a_vote_cast_while_the_cycle_supersedes_wins_and_the_cycle_does_not_crash(directlink, aws, monkeypatch):
    """Superseding is conditional on the request's version: a vote landing first wins; the cycle goes on."""
    request, since = opened(directlink)
    ignoring = config().replace("default_action: ask", "default_action: ignore")  # no rule asks about it now
    update = Ledger.update_approval

    def alice_votes_first(self, before, after, *args, **kwargs):
        if not voted:  # the vote itself goes through update_approval too
            voted.append("alice")
            vote(directlink, request.request_id, "alice")
        return update(self, before, after, *args, **kwargs)

    voted: list = []
    with monkeypatch.context() as patch:
        patch.setattr(Ledger, "update_approval", alice_votes_first)
        report = cycle(directlink, ignoring)
    assert report.ok and of_type(report, "vif.approval_superseded") == []
    assert record_of(directlink, "prod-legacy").approval.status == "approved"
    assert outcome(report, "prod-legacy").action == "ignored" and since.confirms() == []

    directlink.clock.advance(timedelta(minutes=1))
    again = cycle(directlink, ignoring)  # approved while the policy ignores it: not carried out, left as it is
    assert since.confirms() == [] and of_type(again, "vif.approval_superseded") == []
    assert outcome(cycle(directlink), "prod-legacy").action == "confirmed", "asked again: carried out"


def test_a_request_is_superseded_when_the_policy_no_longer_asks(directlink, aws):
    request, _ = opened(directlink)
    report = cycle(directlink, config().replace("default_action: ask", "default_action: ignore"))
    [superseded] = of_type(report, "vif.approval_superseded", request.vif_id)
    assert superseded.data.why.startswith("no longer asked: ") and superseded.data.why.endswith(
        "default_action is ignore"
    )


# --- the targets-only poll -----------------------------------------------------------------------------------


def test_a_targets_only_cycle_polls_just_that_target(directlink, aws):
    report = cycle(directlink, targets=["osc-lab"])
    assert report.targets_ok == ["osc-lab"]
    assert {o.target for o in report.outcomes} == {"osc-lab"}
    assert {account for _op, account in directlink.calls} == {scenario.LAB}
