"""A realistic starting world for the sandbox and the demo: a partner, three accounts, six VIFs."""

from __future__ import annotations

from dataclasses import dataclass

from . import DirectLinkSandbox

PARTNER = "210987654321"  # the connectivity partner: owns the connection, allocates VIFs
PROD = "111122223333"  # our production account: trusted, gateway ready
STAGING = "444455556666"  # staging: trusted, but its gateway is still being created
LAB = "777788889999"  # a lab account nobody wrote a rule for

# Sandbox access keys (not AWS keys): each maps to one account in the sandbox.
KEYS = {
    PARTNER: ("AKIDSANDBOXPARTNER01", "sandbox-secret-partner"),
    PROD: ("AKIDSANDBOXPROD00001", "sandbox-secret-prod"),
    STAGING: ("AKIDSANDBOXSTAGING01", "sandbox-secret-staging"),
    LAB: ("AKIDSANDBOXLAB000001", "sandbox-secret-lab"),
}
PROD_GATEWAY, STAGING_GATEWAY, LAB_GATEWAY = "vgw-0a1b2c3d", "vgw-5e6f7a8b", "vgw-9c0d1e2f"
PARTNER_CONNECTION = "dxcon-fpar10g1"  # the partner's 10G port in Paris: what the confirm rules trust

TARGETS = {"osc-prod": PROD, "osc-staging": STAGING, "osc-lab": LAB}


def secret_id(target: str) -> str:
    return f"vifgate/sandbox/{target}"


CONFIG = f"""\
# VIF Gatekeeper policy for the local sandbox (vifgate sandbox / vifgate demo).
targets:
  - {{name: osc-prod, provider: outscale, region: eu-west-2, account_id: "{PROD}",
     credentials: {{secret_id: {secret_id("osc-prod")}}}}}
  - {{name: osc-staging, provider: outscale, region: eu-west-2, account_id: "{STAGING}",
     credentials: {{secret_id: {secret_id("osc-staging")}}}}}
  - {{name: osc-lab, provider: outscale, region: eu-west-2, account_id: "{LAB}",
     credentials: {{secret_id: {secret_id("osc-lab")}}}}}
rules:
  - name: partner-prod
    accounts: ["{PROD}"]
    connections: [{PARTNER_CONNECTION}]
    vlan: {{min: 100, max: 199}}
    asn: [65001, 65002]
    gateway: {PROD_GATEWAY}
    action: confirm
  - name: partner-staging
    accounts: ["{STAGING}"]
    connections: [{PARTNER_CONNECTION}]
    vif_name: "stg-*"
    gateway: {STAGING_GATEWAY}
    action: confirm
default_action: ask
expiry_alerts: [72h, 24h, 4h]
"""


# The approvals section of the sandbox and the demo (`vifgate sandbox` serves the routes at base_url).
# These keys sign only the sandbox's own links and requests: they are not secrets anywhere else.
APPROVALS_SECRET = "vifgate/sandbox/approvals"
SIGNING_KEY = "sandbox-approvals-signing-key-0123456789abcdef"  # tokens need at least 32 characters
SLACK_SIGNING_SECRET = "sandbox0slack0signing0secret0001"  # the shape of a Slack app's signing secret
APPROVERS = {"alice": {"slack": "UALICE0001"}, "bob": {"slack": "UBOB000001"}}
LOCAL_API = "http://127.0.0.1:8000"


def approvals_config(base_url: str = LOCAL_API) -> str:
    """CONFIG plus approvals: a VIF no rule matches is asked of alice or bob; one of them decides it."""
    approvers = "\n".join(f"    - {{name: {name}, slack: {ids['slack']}}}" for name, ids in APPROVERS.items())
    return (
        CONFIG
        + f"""\
default_approvers: [netops]
approvals:
  approvers:
{approvers}
  groups: {{netops: [{", ".join(APPROVERS)}]}}
  link_ttl: 24h
  base_url: {base_url}
  signing_key: {{secret_id: {APPROVALS_SECRET}, key: signing_key}}
  slack_signing_secret: {{secret_id: {APPROVALS_SECRET}, key: slack_signing_secret}}
"""
    )


APPROVALS_CONFIG = approvals_config()


@dataclass
class World:
    connection_id: str
    vif_ids: dict[str, str]


def seed(sb: DirectLinkSandbox) -> World:
    """Accounts, a partner connection in Paris, gateways, and VIFs allocated to our accounts."""
    for account, (access_key, secret_key) in KEYS.items():
        sb.add_account(account, access_key=access_key, secret_key=secret_key)
    sb.add_location("PAR1", "Equinix PA3, Paris")
    sb.add_location("PAR4", "Interxion PAR7, Paris")
    connection = sb.add_connection(
        owner_account=PARTNER,
        name="partner-par-10g",
        location="PAR1",
        bandwidth="10Gbps",
        connection_id=PARTNER_CONNECTION,
    )
    sb.add_gateway(PROD, state="available", gateway_id=PROD_GATEWAY)
    sb.add_gateway(STAGING, state="pending", gateway_id=STAGING_GATEWAY)
    sb.add_gateway(LAB, state="available", gateway_id=LAB_GATEWAY)
    plan = [  # name, owner, vlan, asn: what the partner allocated this week
        ("prod-app", PROD, 101, 65001),
        ("prod-db", PROD, 102, 65001),
        ("prod-legacy", PROD, 250, 65001),  # vlan outside partner-prod's 100-199
        ("stg-app", STAGING, 301, 65010),  # staging's gateway is not available yet
        ("lab-bench", LAB, 401, 65020),  # no rule for the lab account
    ]
    vif_ids = {}
    for name, owner, vlan, asn in plan:
        vif = sb.allocate(connection_id=connection, owner_account=owner, name=name, vlan=vlan, asn=asn)
        vif_ids[name] = vif["virtualInterfaceId"]
    return World(connection, vif_ids)


def allocate_late_arrival(sb: DirectLinkSandbox, world: World) -> str:
    """A VIF the partner allocates between two cycles: first seen in `confirming`, deadline certain."""
    vif = sb.allocate(connection_id=world.connection_id, owner_account=PROD, name="prod-cache", vlan=103, asn=65002)
    world.vif_ids["prod-cache"] = vif["virtualInterfaceId"]
    return vif["virtualInterfaceId"]
