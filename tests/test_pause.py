"""The emergency stop: `auto_confirm: false` turns every confirm into an ask, nothing else changes."""

from __future__ import annotations

from datetime import timedelta

import boto3
import pytest

from chalicelib import reconcile
from chalicelib.config import parse_policy
from chalicelib.ledger import Ledger
from chalicelib.policy import PAUSED, Ask, Confirm, Ignore, NoAction, Reject, decide
from chalicelib.runtime import Runtime, Settings
from sandbox import scenario
from tests.conftest import TABLE, confirm_calls
from tests.test_policy import APPROVING, AVAILABLE, CONFIRM, NETOPS, POLICY, PROD, STAGING, STRANGER, vif

PAUSED_POLICY = POLICY.model_copy(update={"auto_confirm": False})
PAUSED_APPROVING = APPROVING.model_copy(update={"auto_confirm": False})
WOULD = f"{PAUSED}: rule partner-prod would have confirmed it with vgw-12345678"


def test_auto_confirm_defaults_to_true_and_reads_false():
    assert POLICY.auto_confirm is True
    text = f'targets: [{{name: t, provider: aws, account_id: "{PROD}"}}]\nauto_confirm: false\n'
    assert parse_policy(text).auto_confirm is False


@pytest.mark.parametrize(
    "policy, case, expected",
    [
        # Running: the confirm rule confirms.
        (POLICY, vif(), CONFIRM),
        # Paused, no default approvers: a notify-only ask that names the rule and its gateway.
        (PAUSED_POLICY, vif(), Ask(rule="partner-prod", reason=WOULD, gateways=("vgw-12345678",))),
        # Paused with default approvers: they may approve it, with the rule's gateway.
        (
            PAUSED_APPROVING,
            vif(vlan=150),
            Ask(rule="partner-prod", reason=WOULD, approvers=NETOPS, min_approvals=2, gateways=("vgw-12345678",)),
        ),
        # Everything that was not a confirm is unchanged.
        (
            PAUSED_POLICY,
            vif(owner=STAGING, vlan=300),
            Ask(rule="staging-ask", reason="rule staging-ask asks a person to decide"),
        ),
        (PAUSED_POLICY, vif(owner=STRANGER), Ask(reason=f"no rule matches account {STRANGER}")),
        (PAUSED_POLICY, vif(state="pending"), NoAction(reason="state is pending, not confirming")),
        (
            PAUSED_APPROVING,
            vif(vlan=250),
            Ask(
                rule="prod-two-person",
                reason="rule prod-two-person asks a person to decide",
                approvers=("alice", "bob", "carol"),
                min_approvals=2,
                gateways=("vgw-12345678", "vgw-87654321"),
            ),
        ),
    ],
)
def test_decide_while_paused(policy, case, expected):
    assert decide(case, AVAILABLE, policy) == expected


@pytest.mark.parametrize("default", ["ignore", "reject"])
def test_paused_keeps_default_ignore_and_reject(default):
    policy = PAUSED_POLICY.model_copy(update={"default_action": default})
    expected = {"ignore": Ignore, "reject": Reject}[default]
    assert isinstance(decide(vif(owner=STRANGER), AVAILABLE, policy), expected)


def test_paused_keeps_reject_rules():
    policy = parse_policy(f"""
targets: [{{name: t, provider: aws, region: eu-west-1, account_id: "{STAGING}"}}]
rules: [{{name: no-666, accounts: ["{STAGING}"], vlan: {{min: 666, max: 666}}, action: reject}}]
auto_confirm: false
""")
    assert decide(vif(owner=STAGING, vlan=666), {}, policy) == Reject(rule="no-666", reason="rule no-666 rejects it")


def test_paused_confirm_whose_gateway_is_missing_says_the_gateway_problem():
    # It could not have confirmed anyway: the reason is the one that needs fixing first.
    assert decide(vif(), {}, PAUSED_POLICY) == Ask(
        rule="partner-prod",
        reason=f"rule partner-prod would confirm it with vgw-12345678, but account {PROD} has no such virtual gateway",
    )


def test_paused_never_returns_a_confirm_whatever_the_vif():
    for vlan in (100, 150, 199):
        for asn in (65000, None):
            assert not isinstance(decide(vif(vlan=vlan, asn=asn), AVAILABLE, PAUSED_POLICY), Confirm)


PAUSED_CONFIG = scenario.CONFIG + "auto_confirm: false\n"


def _cycle(directlink, config: str):
    settings = Settings(config_source="test", table_name=TABLE)
    runtime = Runtime(settings, policy=parse_policy(config), clock=directlink.clock)
    return {o.virtualInterfaceName: o for o in reconcile.run_cycle(runtime).outcomes}


def test_a_paused_vif_is_asked_then_confirmed_once_auto_confirm_is_back(aws, directlink):
    prod_app = directlink.world.vif_ids["prod-app"]
    paused = _cycle(directlink, PAUSED_CONFIG)
    assert paused["prod-app"].action == "ask"
    assert paused["prod-app"].reason.startswith(
        f"{PAUSED}: rule partner-prod would have confirmed it with {scenario.PROD_GATEWAY}"
    )
    assert confirm_calls(directlink) == [], "nothing is confirmed while paused"
    record = Ledger(boto3.client("dynamodb"), TABLE).load("osc-prod").vifs[prod_app]
    assert record.state == "confirming" and record.confirmed_at is None

    directlink.clock.advance(timedelta(minutes=1))
    resumed = _cycle(directlink, scenario.CONFIG)  # auto_confirm back to true (the default)
    assert resumed["prod-app"].action == "confirmed"
    assert len(confirm_calls(directlink)) >= 1
    record = Ledger(boto3.client("dynamodb"), TABLE).load("osc-prod").vifs[prod_app]
    assert record.confirmed_at is not None and record.rule == "partner-prod"


def test_vifgate_check_says_paused(tmp_path, capsys):
    from chalicelib.cli import main

    path = tmp_path / "policy.yaml"
    path.write_text(PAUSED_CONFIG)
    assert main(["check", "--offline", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "auto-confirm is PAUSED (auto_confirm: false)" in out
    path.write_text(scenario.CONFIG)
    assert main(["check", "--offline", "--config", str(path)]) == 0
    assert "PAUSED" not in capsys.readouterr().out


def test_chat_says_auto_confirm_is_paused():
    from chalicelib.chatops import render
    from tests.chatops.conftest import DEADLINE, FIRST_SEEN, vif_event

    when = {"deadline": DEADLINE, "deadline_certain": True, "first_seen_at": FIRST_SEEN}

    reason = f"{PAUSED}: rule partner-prod would have confirmed it with vgw-12345678"
    message = render(vif_event("vif.approval_requested", reason=reason, rule="partner-prod", **when))
    assert message.title == "Approval needed (auto-confirm paused): VIF prod-par-1"
    assert ("Auto-confirm", "PAUSED: no VIF is confirmed without a person until auto_confirm is true") in message.fields
    assert "auto-confirm is paused" in message.text.lower()
    plain = render(vif_event("vif.approval_requested", reason="rule ask-prod asks", rule="ask-prod", **when))
    assert plain.title == "Approval needed: VIF prod-par-1" and "PAUSED" not in str(plain.fields)


def test_while_paused_a_persons_approval_is_still_carried_out(directlink, aws):
    from tests.approvals.test_cycle import config, cycle, of_type, outcome, vote

    paused = config(default_approvers="[netops]") + "auto_confirm: false\n"
    prod_app = directlink.world.vif_ids["prod-app"]
    first = cycle(directlink, paused)
    asked = outcome(first, "prod-app")
    assert asked.action == "ask" and asked.reason.startswith(f"{PAUSED}: rule partner-prod would have confirmed")
    [requested] = of_type(first, "vif.approval_requested", prod_app)
    assert requested.data.approvers == ["alice", "bob"] and requested.data.gateways == [scenario.PROD_GATEWAY]
    assert confirm_calls(directlink) == []

    vote(directlink, requested.data.request_id, "alice", text=paused)
    directlink.clock.advance(timedelta(minutes=1))
    second = cycle(directlink, paused)
    done = outcome(second, "prod-app")
    assert done.action == "confirmed" and "approved by alice" in done.reason
    assert done.virtualGatewayId == scenario.PROD_GATEWAY
    [confirmed] = of_type(second, "vif.confirmed", prod_app)
    assert confirmed.data.by == "approver" and confirmed.data.approver == "alice"
