"""`vifgate approvals / approve / reject / status` against the local cloud: moto's server and the DirectLink sandbox."""

from __future__ import annotations

import json
import logging
import urllib.parse
from datetime import datetime

import boto3
import pytest

from chalicelib.approvals import tokens
from chalicelib.cli import main
from chalicelib.ledger import parse_iso
from sandbox import scenario
from sandbox.local import TABLE, LocalCloud
from tests.conftest import confirm_calls

BASE_URL = scenario.LOCAL_API


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def use_policy(cloud: LocalCloud, text: str) -> None:
    cloud.config_path.write_text(text, encoding="utf-8")


@pytest.fixture
def cloud(monkeypatch, tmp_path, capsys):
    """The local cloud with the sandbox's approvals policy, after one poll: three VIFs are asked about."""
    with LocalCloud(workdir=tmp_path) as local:
        for name, value in local.env().items():
            monkeypatch.setenv(name, value)
        use_policy(local, scenario.approvals_config(BASE_URL))
        code, _, err = run(capsys, "poll")
        assert code == 0, err
        yield local


def vif(cloud: LocalCloud, name: str) -> str:
    return cloud.world.vif_ids[name]


def deletes(cloud: LocalCloud) -> list[str]:
    return [op for op, _account in cloud.directlink.calls if op == "DeleteVirtualInterface"]


def items() -> list[dict]:
    """Every ledger item, in a stable order: what 'nothing changed' compares."""
    found = boto3.resource("dynamodb").Table(TABLE).scan(ConsistentRead=True)["Items"]
    return sorted(found, key=lambda i: (i["target"], i["vif_id"]))


def status_rows(capsys) -> dict[str, dict]:
    code, out, err = run(capsys, "status", "--json")
    assert code == 0, err
    return {row["virtualInterfaceName"]: row for row in map(json.loads, out.splitlines())}


def test_approve_records_the_vote_then_confirms_once(cloud, capsys):
    legacy = vif(cloud, "prod-legacy")
    code, out, err = run(capsys, "approve", legacy, "--as", "alice")
    assert code == 0, err
    assert out.splitlines() == [
        f"approved by alice: confirming with {scenario.PROD_GATEWAY} now",
        f"confirmed {legacy} with {scenario.PROD_GATEWAY}",
    ]
    assert cloud.directlink.confirm_count(legacy) == 1
    assert cloud.directlink.vif(legacy)["virtualInterfaceState"] == "pending"
    approval = status_rows(capsys)["prod-legacy"]["approval"]
    assert approval["status"] == "approved" and approval["gateway"] == scenario.PROD_GATEWAY
    assert [(v["approver"], v["vote"], v["channel"], v["user_id"]) for v in approval["votes"]] == [
        ("alice", "approve", "cli", None)
    ]

    # Once decided, a second approval is refused and nothing is called again.
    code, out, err = run(capsys, "approve", legacy, "--as", "bob")
    assert code == 2 and out == ""
    assert err.startswith("vifgate: approve refused (409): ")
    assert cloud.directlink.confirm_count(legacy) == 1


def test_reject_by_name_deletes_the_vif_once(cloud, capsys):
    lab = vif(cloud, "lab-bench")
    code, out, err = run(capsys, "reject", "lab-bench", "--as", "bob")  # a unique name works as the id does
    assert code == 0, err
    assert out.splitlines() == ["rejected by bob: deleting it now", f"rejected {lab}: deleted"]
    assert len(deletes(cloud)) == 1
    assert cloud.directlink.vif(lab)["virtualInterfaceState"] == "rejected"
    assert confirm_calls(cloud.directlink) == [
        "ConfirmPrivateVirtualInterface",
        "ConfirmPrivateVirtualInterface",
    ]  # only the first poll's two rule confirms
    row = status_rows(capsys)["lab-bench"]
    assert row["approval"]["status"] == "rejected" and row["rejectedAt"]


@pytest.mark.parametrize(
    "argv, status, reason",
    [
        (["approve", "prod-legacy", "--as", "mallory"], 403, "'mallory' is not an approver in the policy"),
        (["reject", "prod-legacy", "--as", "mallory"], 403, "'mallory' is not an approver in the policy"),
        (["approve", "dxvif-00000000", "--as", "alice"], 404, "no VIF 'dxvif-00000000' in the ledger"),
        (["approve", "prod-app", "--as", "alice"], 404, "VIF 'prod-app' has no approval request"),
        # stg-app is asked about by its confirm rule (its gateway is pending), which names no approvers.
        (["reject", "stg-app", "--as", "alice"], 404, "VIF 'stg-app' has no approval request"),
        (
            ["approve", "prod-legacy", "--gateway", "vgw-99999999", "--as", "alice"],
            400,
            "vgw-99999999 is not a gateway of this request",
        ),
    ],
)
def test_a_refused_vote_exits_2_with_its_reason_and_changes_nothing(cloud, capsys, argv, status, reason):
    before, calls = items(), list(cloud.directlink.calls)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"vifgate: {argv[0]} refused ({status}): ") and reason in err, err
    assert "Traceback" not in err
    assert items() == before and cloud.directlink.calls == calls


@pytest.fixture
def two_person(monkeypatch, tmp_path, capsys):
    """The same world, with a policy that needs two approvals from the first poll on."""
    with LocalCloud(workdir=tmp_path) as local:
        for name, value in local.env().items():
            monkeypatch.setenv(name, value)
        use_policy(local, scenario.approvals_config(BASE_URL) + "default_min_approvals: 2\n")
        code, _, err = run(capsys, "poll")
        assert code == 0, err
        yield local


def test_min_approvals_2_one_approval_waits_and_the_second_confirms(two_person, capsys):
    legacy = vif(two_person, "prod-legacy")
    code, out, err = run(capsys, "approve", "prod-legacy", "--as", "alice")
    assert code == 0, err
    assert out == "approved by alice, 1 of 2: waiting for 1 more\n"
    assert two_person.directlink.confirm_count(legacy) == 0

    before = items()
    code, out, err = run(capsys, "approve", "prod-legacy", "--as", "alice")
    assert code == 2 and "alice already voted on this request (approve)" in err
    assert items() == before

    code, out, err = run(capsys, "approve", legacy, "--as", "bob")
    assert code == 0, err
    assert out.splitlines()[-1] == f"confirmed {legacy} with {scenario.PROD_GATEWAY}"
    assert two_person.directlink.confirm_count(legacy) == 1


def test_dry_run_records_the_vote_and_confirms_nothing(cloud, capsys):
    legacy = vif(cloud, "prod-legacy")
    code, out, err = run(capsys, "approve", legacy, "--as", "alice", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"dry run: would confirm {legacy} with {scenario.PROD_GATEWAY}")
    assert cloud.directlink.confirm_count(legacy) == 0
    # The next live cycle carries the recorded approval out.
    code, out, err = run(capsys, "poll", "--json")
    assert code == 0, err
    assert cloud.directlink.confirm_count(legacy) == 1


def _links(capsys) -> list[dict]:
    code, out, err = run(capsys, "approvals", "--json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_approvals_json_lists_each_request_with_links_that_verify(cloud, capsys):
    rows = _links(capsys)
    assert sorted(r["virtualInterfaceName"] for r in rows) == ["lab-bench", "prod-legacy"]
    now = cloud.clock.now()
    for row in rows:
        assert row["status"] == "pending" and row["approvers"] == ["alice", "bob"]
        assert (row["min_approvals"], row["approvals"]) == (1, [])
        assert row["ownerAccount"] in scenario.TARGETS.values() and row["deadlineCertain"] is False
        assert set(row["links"]) == {"alice", "bob"}
        expires = parse_iso(row["links_expire_at"])
        assert expires is not None and expires <= parse_iso(row["expires_at"])
        for approver, url in row["links"].items():
            prefix = f"{BASE_URL}/approvals/link/"
            assert url.startswith(prefix)
            grant = tokens.read_link(scenario.SIGNING_KEY, urllib.parse.unquote(url.removeprefix(prefix)), now)
            assert (grant.request_id, grant.approver) == (row["request_id"], approver)
            assert grant.expires_at == expires
    legacy = next(r for r in rows if r["virtualInterfaceName"] == "prod-legacy")
    assert legacy["gateways"] == [scenario.PROD_GATEWAY]
    assert next(r for r in rows if r["virtualInterfaceName"] == "lab-bench")["gateways"] == [scenario.LAB_GATEWAY]


def test_approvals_gives_no_link_to_who_already_voted(two_person, capsys):
    assert run(capsys, "approve", "prod-legacy", "--as", "alice")[0] == 0
    legacy = next(r for r in _links(capsys) if r["virtualInterfaceName"] == "prod-legacy")
    assert set(legacy["links"]) == {"bob"} and legacy["approvals"] == ["alice"]
    code, out, _ = run(capsys, "approvals")
    assert code == 0
    assert "approved by alice, 1 of 2" in out and "alice approved via cli at " in out


def test_approvals_table_reads_well_and_links_are_never_logged(cloud, capsys, caplog):
    with caplog.at_level(logging.DEBUG):
        code, out, err = run(capsys, "-v", "approvals")
    assert code == 0, err
    assert out.startswith("2 approval request(s) waiting:")
    legacy = vif(cloud, "prod-legacy")
    block = out.split(f"\n{legacy}  prod-legacy  (target osc-prod, account {scenario.PROD})")[1].split("\n\n")[0]
    assert "  gateways   " + scenario.PROD_GATEWAY in block
    assert "  approvals  waiting for approval, 0 of 1" in block
    assert "  who        alice, bob" in block
    assert f"    alice  {BASE_URL}/approvals/link/" in block and f"    bob    {BASE_URL}/approvals/link/" in block
    assert f"  or         vifgate approve {legacy} --as NAME" in block
    assert "at the latest" in block  # the deadline's certainty
    assert "bearer credential" in out
    tokens_shown = [line.split("/approvals/link/")[1] for line in out.splitlines() if "/approvals/link/" in line]
    assert len(tokens_shown) == 4
    logged = err + "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    for token in tokens_shown:
        assert token not in logged
    assert scenario.SIGNING_KEY not in out + logged


def test_without_base_url_approvals_says_so_and_shows_the_commands(cloud, capsys):
    use_policy(cloud, scenario.approvals_config(BASE_URL).replace(f"  base_url: {BASE_URL}\n", ""))
    code, out, err = run(capsys, "approvals")
    assert code == 0, err
    assert "No links: approvals.base_url is not set" in out and "/approvals/link/" not in out
    assert f"vifgate approve {vif(cloud, 'lab-bench')} --as NAME" in out
    assert f"vifgate reject {vif(cloud, 'lab-bench')} --as NAME" in out
    rows = _links(capsys)
    assert all(r["links"] is None and "base_url" in r["links_unavailable"] for r in rows)


def test_an_unreadable_signing_key_is_an_operational_failure(cloud, capsys):
    use_policy(cloud, scenario.approvals_config(BASE_URL).replace("key: signing_key}", "key: no_such_field}"))
    code, out, err = run(capsys, "approvals")
    assert code == 1 and out == ""
    assert err.startswith("vifgate: approvals.signing_key cannot be read: ")
    assert scenario.SIGNING_KEY not in err and scenario.SLACK_SIGNING_SECRET not in err


def test_a_missing_ledger_table_exits_1(cloud, capsys):
    for argv in (["approvals"], ["status"], ["approve", "prod-legacy", "--as", "alice"]):
        code, out, err = run(capsys, *argv, "--table", "no-such-table")
        assert code == 1 and out == "", argv
        assert "ledger table no-such-table does not exist in this account/region" in err


def test_status_json_every_tracked_vif_with_its_votes(two_person, capsys):
    assert run(capsys, "approve", "prod-legacy", "--as", "bob")[0] == 0
    rows = status_rows(capsys)
    assert set(rows) == set(two_person.world.vif_ids)
    keys = {
        "target",
        "virtualInterfaceId",
        "virtualInterfaceName",
        "ownerAccount",
        "state",
        "deadline",
        "deadlineCertain",
        "lastDecision",
        "decisionReason",
        "rule",
        "gateway",
        "firstSeenAt",
        "confirmedAt",
        "rejectedAt",
        "goneAt",
        "approval",
    }
    assert all(set(row) == keys for row in rows.values())
    assert rows["prod-app"]["approval"] is None and rows["prod-app"]["confirmedAt"]
    assert rows["prod-app"]["lastDecision"] == "confirmed"
    legacy = rows["prod-legacy"]
    assert (legacy["state"], legacy["deadlineCertain"]) == ("confirming", False)
    approval = legacy["approval"]
    assert approval["status"] == "pending" and approval["progress"] == "approved by bob, 1 of 2"
    assert (approval["min_approvals"], approval["approvals"], approval["approvers"]) == (2, ["bob"], ["alice", "bob"])
    (vote,) = approval["votes"]
    assert (vote["approver"], vote["vote"], vote["channel"], vote["gateway"]) == (
        "bob",
        "approve",
        "cli",
        scenario.PROD_GATEWAY,
    )
    assert datetime.fromisoformat(vote["at"].replace("Z", "+00:00")) == two_person.clock.now().replace(microsecond=0)


def test_status_table_shows_deadlines_decisions_and_votes(two_person, capsys):
    assert run(capsys, "approve", "prod-legacy", "--as", "bob")[0] == 0
    code, out, err = run(capsys, "status")
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split() == ["TARGET", "VIF", "NAME", "STATE", "DEADLINE", "LAST", "DECISION", "APPROVAL"]
    legacy = vif(two_person, "prod-legacy")
    row = next(line for line in lines if legacy in line)
    assert "(at the latest)" in row and "pending: approved by bob, 1 of 2" in row
    assert f"\n{legacy} (prod-legacy): approved by bob, 1 of 2; 2 needed from alice, bob by " in out
    assert " bob approved via cli" in out
