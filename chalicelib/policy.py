"""Pure decisions: what to do with one VIF, given the policy and the target's gateways.

Nothing here does I/O; every decision carries its reason in words a person can read in chat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import ClassVar

from .config import Policy, Rule, Target
from .models import CONFIRMING, VirtualGateway, VirtualInterface

# How a paused confirm's reason begins: chat and the CLI recognise a paused ask by it.
PAUSED = "auto-confirm is paused (auto_confirm: false)"


@dataclass(frozen=True)
class Decision:
    action: ClassVar[str]
    reason: str


@dataclass(frozen=True)
class Confirm(Decision):
    action: ClassVar[str] = "confirm"
    rule: str
    gateway: str


@dataclass(frozen=True)
class Ask(Decision):
    """A person decides. With approvers, the cycle opens an approval request; without, it only notifies."""

    action: ClassVar[str] = "ask"
    rule: str | None = None
    approvers: tuple[str, ...] = ()  # approver names, groups expanded; empty: notify-only
    min_approvals: int = 1
    gateways: tuple[str, ...] | None = None  # None: the account's gateways that are available


@dataclass(frozen=True)
class Reject(Decision):
    action: ClassVar[str] = "reject"
    rule: str | None = None


@dataclass(frozen=True)
class Ignore(Decision):
    action: ClassVar[str] = "ignore"


@dataclass(frozen=True)
class NoAction(Decision):
    """The VIF is not waiting for us (not `confirming`, or another account must confirm it)."""

    action: ClassVar[str] = "none"


def mismatch(rule: Rule, vif: VirtualInterface, target: Target | None = None) -> tuple[str, str] | None:
    """(field, why) when `rule` does not match `vif`, or None when it does."""
    if rule.targets is not None and target is not None and target.name not in rule.targets:
        return "target", f"target {target.name} is not in rule {rule.name}'s targets"
    if vif.owner_account not in rule.accounts:
        return "account", f"account {vif.owner_account} is not in rule {rule.name}"
    if rule.connections is not None and vif.connection_id not in rule.connections:
        return "connection", f"connection {vif.connection_id} is not in rule {rule.name}'s connections"
    if rule.vlan is not None and vif.vlan not in rule.vlan:
        return "vlan", f"vlan {vif.vlan} is outside {rule.vlan.min}-{rule.vlan.max} of rule {rule.name}"
    if rule.asn is not None and vif.customer_asn not in rule.asn:
        return "asn", f"asn {vif.customer_asn} is not in rule {rule.name}'s asn list"
    if rule.vif_name is not None and not fnmatchcase(vif.name, rule.vif_name):
        return "vif_name", f"name {vif.name!r} does not match {rule.vif_name!r} of rule {rule.name}"
    return None


def matching_rule(vif: VirtualInterface, policy: Policy, target: Target | None = None) -> Rule | None:
    """The first rule that matches, in document order."""
    return next((r for r in policy.rules if mismatch(r, vif, target) is None), None)


def decide(
    vif: VirtualInterface, gateways: Mapping[str, VirtualGateway] | None, policy: Policy, target: Target | None = None
) -> Decision:
    """Confirm, ask, reject, ignore, or nothing for one VIF. Never confirms without a rule.

    `gateways` is the owner account's DescribeVirtualGateways answer, or None when it could not be had.
    With `auto_confirm: false` every Confirm becomes an Ask (the emergency stop).
    """
    decision = _decide(vif, gateways, policy, target)
    if isinstance(decision, Confirm) and not policy.auto_confirm:
        return paused(decision, policy)
    return decision


def paused(decision: Confirm, policy: Policy) -> Ask:
    """What a confirm becomes while auto-confirm is paused: the default approvers may still approve it."""
    approvers = policy.approvals.resolve(policy.default_approvers or ()) if policy.approvals else ()
    return Ask(
        rule=decision.rule,
        reason=f"{PAUSED}: rule {decision.rule} would have confirmed it with {decision.gateway}",
        approvers=approvers,
        min_approvals=policy.default_min_approvals or 1,
        gateways=(decision.gateway,),
    )


def _decide(
    vif: VirtualInterface, gateways: Mapping[str, VirtualGateway] | None, policy: Policy, target: Target | None
) -> Decision:
    if vif.state != CONFIRMING:
        return NoAction(reason=f"state is {vif.state}, not confirming")
    if target is not None and target.account_id and vif.owner_account != target.account_id:
        return NoAction(reason=f"allocated to account {vif.owner_account}; only that account can confirm it")

    rule = matching_rule(vif, policy, target)
    if rule is None:
        return _default(vif, policy, target)
    if rule.action == "reject":
        return Reject(rule=rule.name, reason=f"rule {rule.name} rejects it")
    if rule.action == "ask":
        return _ask(rule, policy)

    # A confirm rule that cannot confirm this cycle falls back to a notify-only Ask (no approvers): it
    # trusts one exact gateway and names nobody. Someone must first create or repair that gateway; once it
    # is available the rule confirms by itself, and an approval meanwhile could only pick a gateway the
    # rule does not trust, or race the rule's own confirm.
    gateway_id = rule.gateway
    assert gateway_id is not None  # the policy's validation: a confirm rule names its gateway
    if gateways is None:  # the lookup failed: never confirm blind
        return Ask(
            rule=rule.name,
            reason=(
                f"rule {rule.name} would confirm it with {rule.gateway}, but the account's virtual gateways "
                "could not be listed this cycle"
            ),
        )
    gateway = gateways.get(gateway_id)
    if gateway is None:
        return Ask(
            rule=rule.name,
            reason=(
                f"rule {rule.name} would confirm it with {rule.gateway}, but account "
                f"{vif.owner_account} has no such virtual gateway"
            ),
        )
    if not gateway.available:
        return Ask(
            rule=rule.name,
            reason=(
                f"rule {rule.name} would confirm it with {rule.gateway}, but that gateway is "
                f"{gateway.virtual_gateway_state}, not available"
            ),
        )
    return Confirm(rule=rule.name, gateway=gateway_id, reason=_trusted(rule, vif))


def _trusted(rule: Rule, vif: VirtualInterface) -> str:
    """Why a VIF is confirmed, naming the connection: only it says who allocated the VIF."""
    if rule.any_connection:
        return (
            f"account {vif.owner_account} on connection {vif.connection_id} matches rule {rule.name}, "
            "which trusts any connection (any_connection: true)"
        )
    return f"account {vif.owner_account} on trusted connection {vif.connection_id} matches rule {rule.name}"


def _default(vif: VirtualInterface, policy: Policy, target: Target | None) -> Decision:
    # A near miss (right account, wrong vlan...) is what a person most needs to read.
    misses = (mismatch(rule, vif, target) for rule in policy.rules)
    near_misses = [why for field, why in filter(None, misses) if field not in ("target", "account")]
    why = near_misses[0] if near_misses else f"no rule matches account {vif.owner_account}"
    match policy.default_action:
        case "ignore":
            return Ignore(reason=f"{why}; default_action is ignore")
        case "reject":
            return Reject(reason=f"{why}; default_action is reject")
        case _:
            approvers = policy.approvals.resolve(policy.default_approvers or ()) if policy.approvals else ()
            return Ask(reason=why, approvers=approvers, min_approvals=policy.default_min_approvals or 1)


def _ask(rule: Rule, policy: Policy) -> Ask:
    """An ask rule's decision: who may decide (groups expanded), how many of them, and with which gateways."""
    # Validation guarantees an approvals section whose names resolve whenever a rule names approvers.
    approvers = policy.approvals.resolve(rule.approvers or ()) if policy.approvals else ()
    gateways = (rule.gateway,) if rule.gateway else tuple(rule.gateways) if rule.gateways else None
    return Ask(
        rule=rule.name,
        reason=f"rule {rule.name} asks a person to decide",
        approvers=approvers,
        min_approvals=rule.min_approvals or 1,
        gateways=gateways,
    )
