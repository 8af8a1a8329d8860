"""configdiff.diff is pure: a deployed policy, a new one, and the lines `vifgate config diff` prints."""

from __future__ import annotations

import copy
import json

import pytest

from chalicelib.config import validate_policy
from chalicelib.configdiff import diff

A, B = "111122223333", "444455556666"
BASE = {
    "targets": [
        {"name": "hub", "provider": "aws", "region": "eu-west-1", "account_id": A,
         "role_arn": f"arn:aws:iam::{A}:role/vif-gatekeeper-member", "external_id": "ext-old-value"},
    ],
    "rules": [
        {"name": "partner", "accounts": [A], "connections": ["dxcon-aaaaaaaa"], "asn": [65000],
         "gateway": "vgw-12345678", "action": "confirm"},
        {"name": "two-person", "accounts": [B], "action": "ask", "approvers": ["netops"], "min_approvals": 2},
        {"name": "never", "accounts": [B], "vlan": {"min": 666, "max": 666}, "action": "reject"},
    ],
    "default_action": "ask",
    "default_approvers": ["alice"],
    "default_min_approvals": 1,
    "chat": {"destinations": [{"name": "n", "kind": "teams", "url": {"secret_id": "vifgate/prod/chat/old"}}]},
    "approvals": {
        "approvers": [{"name": "alice", "mattermost": "a" * 26}, {"name": "bob"}, {"name": "carol"}],
        "groups": {"netops": ["alice", "bob"]},
        "signing_key": {"secret_id": "vifgate/prod/approvals"},
    },
}  # fmt: skip
OLD = validate_policy(BASE)


def changed(edit) -> list[str]:
    doc = copy.deepcopy(BASE)
    edit(doc)
    return [line.strip() for line in diff(OLD, validate_policy(doc)).lines()]


def _set(path: str, value):
    def edit(doc):
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            node.pop(last)
        else:
            node[int(last) if isinstance(node, list) else last] = value

    return edit


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_set("rules.0.accounts", [A, B]), "! TRUST WIDENED: rule partner confirms for new account(s) 444455556666"),
        (_set("rules.0.connections", ["dxcon-aaaaaaaa", "dxcon-bbbbbbbb"]),
         "! TRUST WIDENED: rule partner trusts new connection(s) dxcon-bbbbbbbb"),
        (_set("rules.0.connections", ["dxcon-bbbbbbbb"]),
         "v trust narrowed: rule partner no longer trusts dxcon-aaaaaaaa"),
        (_set("rules.0.asn", None), "! TRUST WIDENED: rule partner no longer limits asn"),
        (_set("rules.0.gateway", "vgw-87654321"),
         "! TRUST WIDENED: rule partner confirms with a new gateway vgw-87654321 (was vgw-12345678)"),
        (_set("rules.1.min_approvals", 1), "! TRUST WIDENED: rule two-person needs 1 approval(s), was 2"),
        (_set("rules.1.approvers", ["netops", "carol"]),
         "! TRUST WIDENED: rule two-person may be approved by carol too"),
        (_set("rules.1.approvers", ["alice", "bob"]), None),  # the group spelt out: the same people
        (_set("approvals.groups", {"netops": ["alice", "bob", "carol"]}),
         "! TRUST WIDENED: rule two-person may be approved by carol too"),
        (_set("default_min_approvals", None), None),
        (_set("default_approvers", ["alice", "bob"]),
         "! TRUST WIDENED: default_approvers: bob may approve unmatched VIFs"),
        (lambda doc: doc.update(default_action="reject", default_approvers=None, default_min_approvals=None),
         "v trust narrowed: default_action ask -> reject"),
        (lambda doc: doc.update(default_action="ignore", default_approvers=None, default_min_approvals=None),
         "v trust narrowed: default_action ask -> ignore"),
        (_set("approvals.approvers.0.mattermost", "b" * 26),
         "! TRUST WIDENED: approver alice's chat id changed: another chat user may vote as alice"),
        (lambda doc: doc["rules"].reverse(), "~ rules reordered (the first match decides): never, two-person, partner"),
        (lambda doc: doc["rules"].pop(0),
         "v trust narrowed: rule partner no longer confirms accounts [111122223333] on connections [dxcon-aaaaaaaa] "
         "(asn [65000]) with vgw-12345678"),
        (_set("auto_confirm", False),
         "v trust narrowed: auto-confirm PAUSED (auto_confirm: false): every confirm becomes an ask"),
    ],
)  # fmt: skip
def test_diff_lines(edit, expected):
    lines = changed(edit)
    if expected is None:
        assert not any("TRUST WIDENED" in line for line in lines), lines
    else:
        assert expected in lines, lines


def test_an_ask_rule_becoming_confirm_widens_trust():
    def edit(doc):
        doc["rules"][1] = {"name": "two-person", "accounts": [B], "any_connection": True,
                           "gateway": "vgw-12345678", "action": "confirm"}  # fmt: skip

    assert (
        "! TRUST WIDENED: rule two-person now confirms (was ask): accounts [444455556666] on any connection "
        "with vgw-12345678" in changed(edit)
    )


def test_auto_confirm_back_on_widens_trust():
    paused = validate_policy({**BASE, "auto_confirm": False})
    lines = [line.strip() for line in diff(paused, OLD).lines()]
    assert "! TRUST WIDENED: auto-confirm turned back ON (auto_confirm: true): confirm rules confirm again" in lines


def test_secret_references_and_the_external_id_are_named_never_shown():
    def edit(doc):
        doc["targets"][0]["external_id"] = "ext-new-value"
        doc["chat"]["destinations"][0]["url"] = {"secret_id": "vifgate/prod/chat/new"}

    lines = changed(edit)
    assert "~ target hub: external_id changed" in lines
    assert "~ chat destination n: url changed" in lines
    assert "ext-new-value" not in json.dumps(lines) and "ext-old-value" not in json.dumps(lines)


def test_the_same_document_is_no_change():
    assert diff(OLD, validate_policy(copy.deepcopy(BASE))).summary() == "no change"
