"""What a new policy document changes against the deployed one, and whether it widens what is trusted.

Pure: two Policy objects in, lines out. A line that widens trust (the poller may now confirm, or fewer
people may approve, something it would not before) is marked TRUST WIDENED; one that narrows it,
"trust narrowed". Secret references and the external id are named as changed, never shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .config import OrganizationSource, Policy, Rule, Target

Kind = Literal["added", "removed", "changed", "widened", "narrowed"]
WIDENED, NARROWED = "TRUST WIDENED", "trust narrowed"
_SIGN = {"added": "+", "removed": "-", "changed": "~", "widened": "!", "narrowed": "v"}
# How far a VIF no rule matches may get without a person: reject < ignore < ask (a person may approve).
_DEFAULT_REACH = {"reject": 0, "ignore": 1, "ask": 2}
# Shown as "changed", never with their values (references to secrets, and the external id).
_HIDDEN = {"credentials", "external_id", "url", "token", "signing_secret", "signing_key", "slack_signing_secret"}


@dataclass(frozen=True)
class Change:
    kind: Kind
    text: str

    def line(self) -> str:
        label = {"widened": f"{WIDENED}: ", "narrowed": f"{NARROWED}: "}.get(self.kind, "")
        return f"  {_SIGN[self.kind]} {label}{self.text}"


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)

    def add(self, kind: Kind, text: str) -> None:
        self.changes.append(Change(kind, text))

    @property
    def widened(self) -> list[Change]:
        return [c for c in self.changes if c.kind == "widened"]

    def lines(self) -> list[str]:
        return [c.line() for c in self.changes]

    def summary(self) -> str:
        if not self.changes:
            return "no change"
        narrowed = sum(1 for c in self.changes if c.kind == "narrowed")
        return f"{len(self.changes)} change(s): {len(self.widened)} widening trust, {narrowed} narrowing it"


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _vlan(rule: Rule) -> str:
    return "any" if rule.vlan is None else f"{rule.vlan.min}-{rule.vlan.max}"


def _trusts(rule: Rule) -> str:
    """What a confirm rule lets the poller confirm on its own, in one phrase."""
    on = "any connection" if rule.any_connection else f"connections {_shown(rule.connections)}"
    limits = []
    if rule.vlan is not None:
        limits.append(f"vlan {_vlan(rule)}")
    if rule.asn is not None:
        limits.append(f"asn {_shown(rule.asn)}")
    if rule.vif_name is not None:
        limits.append(f"name {rule.vif_name!r}")
    if rule.targets is not None:
        limits.append(f"targets {_shown(rule.targets)}")
    extra = f" ({', '.join(limits)})" if limits else ""
    return f"accounts {_shown(rule.accounts)} on {on}{extra} with {rule.gateway}"


def _approvers(policy: Policy, names: list[str] | None) -> set[str]:
    if not names or policy.approvals is None:
        return set()
    try:
        return set(policy.approvals.resolve(names))
    except LookupError:
        return set()


def diff(old: Policy | None, new: Policy) -> Diff:
    """Every change from `old` (None: nothing deployed) to `new`."""
    result = Diff()
    if old is None:
        result.add("added", f"the whole document: {len(new.targets)} target(s), {len(new.rules)} rule(s)")
        for rule in new.rules:
            if rule.action == "confirm":
                result.add("widened", f"rule {rule.name} confirms {_trusts(rule)}")
        if not new.auto_confirm:
            result.add("narrowed", "auto-confirm is PAUSED (auto_confirm: false)")
        return result
    _targets(result, old, new)
    _sources(result, old, new)
    _rules(result, old, new)
    _top_level(result, old, new)
    _approvals(result, old, new)
    _chat(result, old, new)
    return result


def _targets(result: Diff, old: Policy, new: Policy) -> None:
    before = {t.name: t for t in old.targets}
    after = {t.name: t for t in new.targets}
    for name, target in after.items():
        if name not in before:
            result.add("added", f"target {name} ({target.provider}, {target.region}, account {target.account_id})")
        else:
            fields = _changed_fields(before[name], target)
            if fields:
                result.add("changed", f"target {name}: {', '.join(fields)}")
    for name in before:
        if name not in after:
            result.add("removed", f"target {name} (no longer polled)")


def _sources(result: Diff, old: Policy, new: Policy) -> None:
    """Organizations sources: which accounts get polled (what is trusted stays the rules' to say)."""
    before = {s.name: s for s in old.organizations}
    after = {s.name: s for s in new.organizations}
    for name, source in after.items():
        if name not in before:
            result.add(
                "added",
                f"from_organization {name} (ous {_shown(source.ous)}, regions {_shown(source.regions)}, "
                f"role {source.role_name})",
            )
        elif fields := _changed_fields(before[name], source):
            result.add("changed", f"from_organization {name}: {', '.join(fields)}")
    for name in before:
        if name not in after:
            result.add("removed", f"from_organization {name} (its accounts no longer polled)")


def _changed_fields(old: Target | Rule | OrganizationSource, new: Target | Rule | OrganizationSource) -> list[str]:
    """`field a -> b` for plain fields, `field changed` for secret references and the external id."""
    out = []
    for name in type(new).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if name in _HIDDEN:
            out.append(f"{name} changed")
        elif name == "vlan":
            out.append(
                f"vlan {_vlan(old) if isinstance(old, Rule) else a} -> {_vlan(new) if isinstance(new, Rule) else b}"
            )
        else:
            out.append(f"{name} {_shown(a)} -> {_shown(b)}")
    return out


def _rules(result: Diff, old: Policy, new: Policy) -> None:
    before = {r.name: r for r in old.rules}
    after = {r.name: r for r in new.rules}
    for name, rule in after.items():
        if name not in before:
            result.add("added", f"rule {name} ({rule.action})")
            if rule.action == "confirm":
                result.add("widened", f"rule {name} confirms {_trusts(rule)}")
            _rule_approvers(result, new, None, rule)
            continue
        previous = before[name]
        fields = _changed_fields(previous, rule)
        if fields:
            result.add("changed", f"rule {name}: {', '.join(fields)}")
            _rule_trust(result, previous, rule)
        # Also when only approvals.groups changed: who a group holds is who may approve.
        _rule_approvers(result, new, previous, rule, old)
    for name, rule in before.items():
        if name not in after:
            result.add("removed", f"rule {name} ({rule.action})")
            if rule.action == "confirm":
                result.add("narrowed", f"rule {name} no longer confirms {_trusts(rule)}")
    kept_before = [r.name for r in old.rules if r.name in after]
    kept_after = [r.name for r in new.rules if r.name in before]
    if kept_before != kept_after:
        result.add("changed", f"rules reordered (the first match decides): {', '.join(kept_after)}")


def _rule_trust(result: Diff, old: Rule, new: Rule) -> None:
    name = new.name
    if new.action == "confirm" and old.action != "confirm":
        result.add("widened", f"rule {name} now confirms (was {old.action}): {_trusts(new)}")
        return
    if old.action == "confirm" and new.action != "confirm":
        result.add("narrowed", f"rule {name} no longer confirms (now {new.action})")
        return
    if new.action != "confirm":
        return
    added_accounts = sorted(set(new.accounts) - set(old.accounts))
    if added_accounts:
        result.add("widened", f"rule {name} confirms for new account(s) {', '.join(added_accounts)}")
    if set(old.accounts) - set(new.accounts):
        result.add(
            "narrowed", f"rule {name} no longer confirms for {', '.join(sorted(set(old.accounts) - set(new.accounts)))}"
        )
    if new.any_connection and not old.any_connection:
        result.add("widened", f"rule {name} trusts ANY connection (any_connection: true)")
    elif old.any_connection and not new.any_connection:
        result.add("narrowed", f"rule {name} trusts only connections {_shown(new.connections)}")
    elif new.connections is not None and old.connections is not None:
        added = sorted(set(new.connections) - set(old.connections))
        if added:
            result.add("widened", f"rule {name} trusts new connection(s) {', '.join(added)}")
        if set(old.connections) - set(new.connections):
            removed = ", ".join(sorted(set(old.connections) - set(new.connections)))
            result.add("narrowed", f"rule {name} no longer trusts {removed}")
    if new.gateway != old.gateway:
        result.add("widened", f"rule {name} confirms with a new gateway {new.gateway} (was {old.gateway})")
    for field_name in ("vlan", "asn", "vif_name", "targets"):
        a, b = getattr(old, field_name), getattr(new, field_name)
        if a == b:
            continue
        if b is None:
            result.add("widened", f"rule {name} no longer limits {field_name}")
        elif a is None:
            result.add("narrowed", f"rule {name} now limits {field_name}")
        elif _wider(field_name, a, b):
            result.add("widened", f"rule {name} matches more by {field_name}: {_shown_field(field_name, a, b)}")
        else:
            result.add("changed", f"rule {name} {field_name}: {_shown_field(field_name, a, b)}")


def _wider(field_name: str, a: Any, b: Any) -> bool:
    if field_name == "vlan":
        return b.min < a.min or b.max > a.max
    if field_name in ("asn", "targets"):
        return bool(set(b) - set(a))
    return True  # a different glob may match other names: treat it as wider


def _shown_field(field_name: str, a: Any, b: Any) -> str:
    if field_name == "vlan":
        return f"{a.min}-{a.max} -> {b.min}-{b.max}"
    return f"{_shown(a)} -> {_shown(b)}"


def _rule_approvers(
    result: Diff, policy: Policy, old: Rule | None, new: Rule, old_policy: Policy | None = None
) -> None:
    """People who may approve an ask rule's VIFs: more of them, or fewer approvals needed, widens trust."""
    if new.action != "ask":
        return
    after = _approvers(policy, new.approvers)
    before = _approvers(old_policy, old.approvers) if old is not None and old_policy is not None else set()
    if after - before and (old is not None or after):
        result.add("widened", f"rule {new.name} may be approved by {', '.join(sorted(after - before))} too")
    if before - after:
        result.add("narrowed", f"rule {new.name} may no longer be approved by {', '.join(sorted(before - after))}")
    if old is not None and old.action == "ask":
        a, b = old.min_approvals or 1, new.min_approvals or 1
        if b < a:
            result.add("widened", f"rule {new.name} needs {b} approval(s), was {a}")
        elif b > a:
            result.add("narrowed", f"rule {new.name} needs {b} approval(s), was {a}")


def _top_level(result: Diff, old: Policy, new: Policy) -> None:
    if old.auto_confirm != new.auto_confirm:
        if new.auto_confirm:
            result.add("widened", "auto-confirm turned back ON (auto_confirm: true): confirm rules confirm again")
        else:
            result.add("narrowed", "auto-confirm PAUSED (auto_confirm: false): every confirm becomes an ask")
    if old.default_action != new.default_action:
        change = f"default_action {old.default_action} -> {new.default_action}"
        wider = _DEFAULT_REACH[new.default_action] > _DEFAULT_REACH[old.default_action]
        result.add("widened" if wider else "narrowed", change)
    before, after = _approvers(old, old.default_approvers), _approvers(new, new.default_approvers)
    if after - before:
        result.add("widened", f"default_approvers: {', '.join(sorted(after - before))} may approve unmatched VIFs")
    if before - after:
        result.add("narrowed", f"default_approvers: {', '.join(sorted(before - after))} may no longer approve")
    a, b = old.default_min_approvals or 1, new.default_min_approvals or 1
    if b != a and new.default_approvers:
        result.add("widened" if b < a else "narrowed", f"default_min_approvals {a} -> {b}")
    for name in ("expiry_alerts", "stuck_pending_after"):
        if getattr(old, name) != getattr(new, name):
            result.add("changed", f"{name} changed")


def _approvals(result: Diff, old: Policy, new: Policy) -> None:
    a, b = old.approvals, new.approvals
    if a == b:
        return
    before = {p.name: p for p in a.approvers} if a else {}
    after = {p.name: p for p in b.approvers} if b else {}
    for name, person in after.items():
        if name not in before:
            result.add("added", f"approver {name}")
        elif (person.slack, person.mattermost) != (before[name].slack, before[name].mattermost):
            # Whoever holds the new chat id now votes as this person.
            result.add("widened", f"approver {name}'s chat id changed: another chat user may vote as {name}")
    for name in before:
        if name not in after:
            result.add("removed", f"approver {name}")
    if a and b:
        if b.groups != a.groups:
            result.add("changed", "approvals.groups changed")
        if b.link_ttl > a.link_ttl:
            result.add("widened", f"approvals.link_ttl longer: {a.link_ttl} -> {b.link_ttl}")
        for name in ("base_url", "signing_key", "slack_signing_secret"):
            if getattr(a, name) != getattr(b, name):
                result.add("changed", f"approvals.{name} changed")
    elif b and not a:
        result.add("added", "approvals section")
    else:
        result.add("removed", "approvals section")


def _chat(result: Diff, old: Policy, new: Policy) -> None:
    before = {d.name: d for d in old.chat.destinations}
    after = {d.name: d for d in new.chat.destinations}
    for name, dest in after.items():
        if name not in before:
            result.add("added", f"chat destination {name} ({dest.kind})")
        elif dest != before[name]:
            fields = [f for f in type(dest).model_fields if getattr(dest, f) != getattr(before[name], f)]
            result.add("changed", f"chat destination {name}: {', '.join(fields)} changed")
    for name in before:
        if name not in after:
            result.add("removed", f"chat destination {name}")
