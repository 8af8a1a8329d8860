"""decide() is pure: tables of VIFs against one policy."""

import json

import pytest

from chalicelib.config import parse_policy
from chalicelib.models import ALL_STATES, VirtualGateway, VirtualInterface
from chalicelib.policy import Ask, Confirm, Ignore, NoAction, Reject, decide

PROD, STAGING, STRANGER = "111122223333", "444455556666", "999999999999"

POLICY = parse_policy(f"""
targets:
  - {{name: osc-prod, provider: outscale, region: eu-west-2, account_id: "{PROD}", credentials: {{profile: p}}}}
  - {{name: aws-hub, provider: aws, region: eu-west-1, account_id: "{PROD}"}}
rules:
  - name: partner-prod
    accounts: ["{PROD}"]
    connections: [dxcon-fg5678gh]
    vlan: {{min: 100, max: 199}}
    asn: [65000, 4200000000]
    vif_name: "prod-*"
    gateway: vgw-12345678
    action: confirm
  - name: staging-ask
    accounts: ["{STAGING}"]
    action: ask
  - name: staging-never-vlan-666
    accounts: ["{STAGING}"]
    vlan: {{min: 666, max: 666}}
    action: reject
default_action: ask
""")

AVAILABLE = {"vgw-12345678": VirtualGateway(virtualGatewayId="vgw-12345678", virtualGatewayState="available")}


def vif(
    owner=PROD, vlan=120, state="confirming", name="prod-app", asn=65000, connection="dxcon-fg5678gh", **extra
) -> VirtualInterface:
    return VirtualInterface.model_validate(
        {
            "virtualInterfaceId": "dxvif-ffabc123",
            "virtualInterfaceName": name,
            "virtualInterfaceState": state,
            "ownerAccount": owner,
            "vlan": vlan,
            "asn": asn,
            "connectionId": connection,
            "authKey": "bgp-secret",
            **extra,
        }
    )


CONFIRM = Confirm(
    rule="partner-prod",
    gateway="vgw-12345678",
    reason=f"account {PROD} on trusted connection dxcon-fg5678gh matches rule partner-prod",
)


@pytest.mark.parametrize(
    "case, expected",
    [
        (vif(), CONFIRM),
        (vif(owner=STRANGER), Ask(reason=f"no rule matches account {STRANGER}")),
        (vif(vlan=250), Ask(reason="vlan 250 is outside 100-199 of rule partner-prod")),
        (vif(vlan=99), Ask(reason="vlan 99 is outside 100-199 of rule partner-prod")),
        (vif(vlan=199), CONFIRM),
        (vif(asn=65001), Ask(reason="asn 65001 is not in rule partner-prod's asn list")),
        (vif(asn=None, asnLong=4200000000), CONFIRM),
        (vif(name="dev-app"), Ask(reason="name 'dev-app' does not match 'prod-*' of rule partner-prod")),
        (vif(name=None), Ask(reason="name '' does not match 'prod-*' of rule partner-prod")),
        (
            vif(connection="dxcon-00000000"),
            Ask(reason="connection dxcon-00000000 is not in rule partner-prod's connections"),
        ),
        (vif(owner=STAGING, vlan=300), Ask(rule="staging-ask", reason="rule staging-ask asks a person to decide")),
        (vif(owner=None), Ask(reason="no rule matches account None")),
    ],
    ids=lambda x: x.virtual_interface_name if isinstance(x, VirtualInterface) else "",
)
def test_decide_confirming(case, expected):
    assert decide(case, AVAILABLE, POLICY) == expected


def test_first_matching_rule_wins_even_over_a_later_reject():
    # staging-ask comes before staging-never-vlan-666 in the document
    assert decide(vif(owner=STAGING, vlan=666), AVAILABLE, POLICY).action == "ask"


@pytest.mark.parametrize("state", [s for s in ALL_STATES if s != "confirming"] + ["ordering", "", "CONFIRMING"])
def test_only_confirming_vifs_get_a_decision(state):
    assert decide(vif(state=state), AVAILABLE, POLICY) == NoAction(reason=f"state is {state}, not confirming")


@pytest.mark.parametrize(
    "gateways, reason",
    [
        ({}, f"rule partner-prod would confirm it with vgw-12345678, but account {PROD} has no such virtual gateway"),
        (
            None,
            "rule partner-prod would confirm it with vgw-12345678, but the account's virtual gateways could not "
            "be listed this cycle",
        ),
        *[
            (
                {"vgw-12345678": VirtualGateway(virtualGatewayId="vgw-12345678", virtualGatewayState=s)},
                f"rule partner-prod would confirm it with vgw-12345678, but that gateway is {s}, not available",
            )
            for s in ("pending", "deleting", "deleted", "weird-new-state")
        ],
    ],
)
def test_gateway_must_be_available(gateways, reason):
    assert decide(vif(), gateways, POLICY) == Ask(rule="partner-prod", reason=reason)


@pytest.mark.parametrize(
    "default, expected",
    [
        ("ask", Ask(reason=f"no rule matches account {STRANGER}")),
        ("ignore", Ignore(reason=f"no rule matches account {STRANGER}; default_action is ignore")),
        ("reject", Reject(reason=f"no rule matches account {STRANGER}; default_action is reject")),
    ],
)
def test_default_action(default, expected):
    policy = POLICY.model_copy(update={"default_action": default})
    assert decide(vif(owner=STRANGER), AVAILABLE, policy) == expected


def test_reject_rule():
    policy = parse_policy(f"""
targets: [{{name: t, provider: aws, region: eu-west-1, account_id: "{STAGING}"}}]
rules: [{{name: no-666, accounts: ["{STAGING}"], vlan: {{min: 666, max: 666}}, action: reject}}]
""")
    assert decide(vif(owner=STAGING, vlan=666), {}, policy) == Reject(rule="no-666", reason="rule no-666 rejects it")


def test_vif_allocated_by_the_polled_account_is_left_to_its_owner():
    aws_hub = POLICY.target("aws-hub")
    assert decide(vif(owner=STAGING), AVAILABLE, POLICY, aws_hub) == NoAction(
        reason=f"allocated to account {STAGING}; only that account can confirm it"
    )
    assert decide(vif(), AVAILABLE, POLICY, aws_hub) == CONFIRM


def test_rule_limited_to_targets():
    policy = parse_policy(f"""
targets: [{{name: a, provider: aws, region: eu-west-1, account_id: "{PROD}"}},
          {{name: b, provider: aws, region: eu-west-1, account_id: "{PROD}"}}]
rules: [{{name: only-a, accounts: ["{PROD}"], targets: [a], gateway: vgw-12345678, action: confirm,
         any_connection: true}}]
""")
    assert decide(vif(), AVAILABLE, policy, policy.target("a")) == Confirm(
        rule="only-a",
        gateway="vgw-12345678",
        reason=f"account {PROD} on connection dxcon-fg5678gh matches rule only-a, "
        "which trusts any connection (any_connection: true)",
    )
    assert decide(vif(), AVAILABLE, policy, policy.target("b")) == Ask(reason=f"no rule matches account {PROD}")


def test_decide_does_not_touch_its_inputs_and_is_repeatable():
    case, before = vif(), POLICY.model_dump()
    assert decide(case, AVAILABLE, POLICY) == decide(case, AVAILABLE, POLICY)
    assert POLICY.model_dump() == before


def test_unknown_fields_and_nulls_from_either_cloud_parse():
    outscale = vif(
        addressFamily=None,
        bgpPeers=None,
        routeFilterPrefixes=None,
        customerRouterConfig=None,
        directConnectGatewayId=None,
        amazonSideAsn=None,
        someFutureField={"x": 1},
    )
    assert outscale.state == "confirming" and outscale.amazon_side_asn is None
    assert "authKey" not in outscale.snapshot() and "bgp-secret" not in repr(outscale)
    # AWS repeats the key inside customerRouterConfig once the VIF is up; that field is not kept.
    aws = vif(state="available", customerRouterConfig="neighbor 169.254.0.1 password bgp-secret")
    assert "bgp-secret" not in json.dumps(aws.snapshot()) + repr(aws)


# Approvals: who may decide an ask, how many of them must approve, and the gateways they may choose.
NETOPS = ("alice", "bob")
APPROVING = parse_policy(f"""
targets:
  - {{name: osc-prod, provider: outscale, region: eu-west-2, account_id: "{PROD}", credentials: {{profile: p}}}}
rules:
  - {{name: partner-prod, accounts: ["{PROD}"], connections: [dxcon-fg5678gh], vlan: {{min: 100, max: 199}},
     gateway: vgw-12345678, action: confirm}}
  - {{name: prod-two-person, accounts: ["{PROD}"], vlan: {{min: 200, max: 299}}, action: ask,
     approvers: [netops, carol], min_approvals: 2, gateways: [vgw-12345678, vgw-87654321]}}
  - {{name: prod-one-gateway, accounts: ["{PROD}"], vlan: {{min: 300, max: 399}}, action: ask,
     approvers: [bob], gateway: vgw-87654321}}
  - {{name: prod-notify, accounts: ["{PROD}"], vlan: {{min: 400, max: 499}}, action: ask, gateways: [vgw-87654321]}}
  - {{name: staging-ask, accounts: ["{STAGING}"], action: ask, approvers: [carol, netops]}}
default_action: ask
default_approvers: [netops]
default_min_approvals: 2
approvals:
  approvers: [{{name: alice}}, {{name: bob}}, {{name: carol}}]
  groups: {{netops: [bob, alice]}}
  signing_key: {{secret_id: vifgate/approvals}}
""")


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            vif(vlan=250),
            Ask(
                rule="prod-two-person",
                reason="rule prod-two-person asks a person to decide",
                approvers=("alice", "bob", "carol"),
                min_approvals=2,
                gateways=("vgw-12345678", "vgw-87654321"),
            ),
        ),
        (
            vif(vlan=350),
            Ask(
                rule="prod-one-gateway",
                reason="rule prod-one-gateway asks a person to decide",
                approvers=("bob",),
                gateways=("vgw-87654321",),
            ),
        ),
        # An ask rule without approvers stays notify-only, as before approvals existed.
        (
            vif(vlan=450),
            Ask(rule="prod-notify", reason="rule prod-notify asks a person to decide", gateways=("vgw-87654321",)),
        ),
        # No gateway named: None, the account's available gateways (reconcile fills them in).
        (
            vif(owner=STAGING),
            Ask(
                rule="staging-ask",
                reason="rule staging-ask asks a person to decide",
                approvers=("alice", "bob", "carol"),
                min_approvals=1,
                gateways=None,
            ),
        ),
        # No rule matches: default_approvers and default_min_approvals.
        (
            vif(owner=STRANGER),
            Ask(reason=f"no rule matches account {STRANGER}", approvers=NETOPS, min_approvals=2),
        ),
        (
            vif(vlan=600),
            Ask(reason="vlan 600 is outside 100-199 of rule partner-prod", approvers=NETOPS, min_approvals=2),
        ),
        (vif(vlan=150), Confirm(rule="partner-prod", gateway="vgw-12345678", reason=CONFIRM.reason)),
    ],
    ids=["two-person", "one-gateway", "notify-only", "any-gateway", "default", "near-miss", "confirm"],
)
def test_ask_names_who_decides(case, expected):
    assert decide(case, AVAILABLE, APPROVING) == expected


@pytest.mark.parametrize(
    "gateways",
    [
        None,
        {},
        {"vgw-12345678": VirtualGateway(virtualGatewayId="vgw-12345678", virtualGatewayState="pending")},
    ],
    ids=["unlisted", "missing", "pending"],
)
def test_a_confirm_rule_that_cannot_confirm_asks_nobody(gateways):
    decision = decide(vif(vlan=150), gateways, APPROVING)
    assert isinstance(decision, Ask) and decision.rule == "partner-prod"
    # Notify-only, even though default_approvers exist: the rule trusts one gateway and names nobody.
    assert (decision.approvers, decision.min_approvals, decision.gateways) == ((), 1, None)


def test_default_ask_without_default_approvers_is_notify_only():
    policy = APPROVING.model_copy(update={"default_approvers": None, "default_min_approvals": None})
    assert decide(vif(owner=STRANGER), AVAILABLE, policy) == Ask(reason=f"no rule matches account {STRANGER}")


def test_an_ask_rule_decides_the_same_whatever_the_gateways_answer():
    # Who may approve is the policy's word alone: the gateway lookup failing or empty changes nothing.
    expected = decide(vif(vlan=250), AVAILABLE, APPROVING)
    assert decide(vif(vlan=250), None, APPROVING) == expected == decide(vif(vlan=250), {}, APPROVING)
    assert decide(vif(vlan=250, state="available"), AVAILABLE, APPROVING) == NoAction(
        reason="state is available, not confirming"
    )
