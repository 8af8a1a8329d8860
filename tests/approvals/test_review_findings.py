"""The outside review of issue 7 (R1-R3, S2), each as the reviewer showed it, through the routes and real cycles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import boto3
import pytest

from chalicelib import reconcile
from chalicelib.approvals import service, tokens
from chalicelib.config import parse_policy
from sandbox import scenario
from tests.approvals import routes_world as rw

TWO_PERSON = scenario.CONFIG + rw.APPROVALS.replace(
    "default_approvers: [netops]\n", "default_approvers: [netops]\ndefault_min_approvals: 2\n"
)
# bob taken off the default approvers (he stays an approver of the config), two approvals needed now.
CHANGED = scenario.CONFIG + rw.APPROVALS.replace(
    "default_approvers: [netops]\n", "default_approvers: [alice, carol]\ndefault_min_approvals: 2\n"
)


@pytest.fixture
def world(aws, directlink) -> Iterator[rw.RouteWorld]:
    built = rw.build(directlink)
    yield built
    built.settle()


@pytest.fixture
def two_person(aws, directlink) -> Iterator[rw.RouteWorld]:
    built = rw.build(directlink, config=TWO_PERSON)
    yield built
    built.settle()


def mattermost(world: rw.RouteWorld, token: str, user_id: str):
    body = {"user_id": user_id, "context": {"token": token}}
    return world.client.http.post(
        "/approvals/mattermost", headers={"Content-Type": "application/json"}, body=json.dumps(body).encode()
    )


def slack(world: rw.RouteWorld, request_id: str, user: str):
    body = rw.slack_body(request_id, user=user)
    return world.client.http.post(
        "/approvals/slack", headers=rw.slack_headers(body, at=world.now().timestamp()), body=body
    )


def action(world: rw.RouteWorld, request_id: str, verb: str) -> str:
    gateway = scenario.PROD_GATEWAY if verb == "approve" else None
    return tokens.mint_action(rw.SIGNING_KEY, request_id, verb, gateway, world.now() + timedelta(hours=1))


def change_policy(world: rw.RouteWorld, text: str) -> None:
    """The new policy, as the next fresh Lambda (API or poller) reads it."""
    boto3.client("ssm").put_parameter(Name=rw.CONFIG_PARAMETER, Value=text, Type="SecureString", Overwrite=True)
    world.runtime._policy = parse_policy(text, "ssm")  # the runtime caches the text for a warm Lambda


# --- R1: a Mattermost token names no person ------------------------------------------------------


def test_r1_one_mattermost_token_cannot_meet_two_approvals_alone(two_person):
    world = two_person
    request, _ = world.request("prod-legacy")
    token = action(world, request.request_id, "approve")
    first = mattermost(world, token, rw.ALICE["mattermost"])
    second = mattermost(world, token, rw.BOB["mattermost"])  # the same token holder, claiming to be bob
    world.settle()
    after, _ = world.request("prod-legacy")
    assert first.status_code == 200 and second.status_code == 409, second.json_body
    assert "Mattermost" in second.json_body["error"]
    assert after.status == "pending" and after.approvals == ("alice",)
    assert world.sb.confirm_count(world.vif_id("prod-legacy")) == 0
    # the second approval from a channel that names its person completes it
    assert slack(world, request.request_id, rw.BOB["slack"]).status_code == 200
    world.settle()
    assert world.request("prod-legacy")[0].status == "approved"
    assert world.sb.confirm_count(world.vif_id("prod-legacy")) == 1


def test_r1_a_mattermost_reject_cannot_veto_a_two_person_request(two_person):
    world = two_person
    request, _ = world.request("prod-legacy")
    before = world.items()
    answer = mattermost(world, action(world, request.request_id, "reject"), rw.BOB["mattermost"])
    world.settle()
    assert answer.status_code == 403, answer.json_body
    assert world.items() == before and world.writes() == []


def test_r1_a_mattermost_vote_after_another_mattermost_vote_is_refused_either_way(aws, directlink):
    # Three approvers, two needed: alice approved from Mattermost; "bob" rejecting with the same channel is refused.
    config = scenario.CONFIG + rw.APPROVALS.replace(
        "default_approvers: [netops]\n", "default_approvers: [alice, bob, carol]\ndefault_min_approvals: 2\n"
    )
    world = rw.build(directlink, config=config)
    request, _ = world.request("prod-legacy")
    assert mattermost(world, action(world, request.request_id, "approve"), rw.ALICE["mattermost"]).status_code == 200
    refused = mattermost(world, action(world, request.request_id, "approve"), rw.CAROL["mattermost"])
    world.settle()
    assert refused.status_code == 409
    assert world.request("prod-legacy")[0].approvals == ("alice",)


# --- R2: a request is checked against the policy of now ------------------------------------------


def test_r2_a_vote_by_an_approver_the_policy_dropped_supersedes_and_a_new_request_is_opened(world):
    old, _ = world.request("prod-legacy")
    change_policy(world, CHANGED)
    answer = slack(world, old.request_id, rw.BOB["slack"])
    world.settle()
    assert answer.status_code == 409, answer.json_body
    assert "policy" in answer.json_body["error"]
    assert world.sb.confirm_count(world.vif_id("prod-legacy")) == 0
    new, _ = world.request("prod-legacy")
    assert new.request_id != old.request_id and new.status == "pending"
    assert set(new.approvers) == {"alice", "carol"} and new.min_approvals == 2
    # the old request is on record as superseded, with why
    superseded = [r for r, _ in world.runtime.ledger.approvals(None) if r.request_id == old.request_id]
    assert superseded == [] or superseded[0].status == "superseded"


def test_r2_an_approved_request_is_not_carried_out_under_a_policy_that_asks_more(world):
    world.trigger_works = False  # the vote is recorded; the poller has not run yet
    old, _ = world.request("prod-legacy")
    assert slack(world, old.request_id, rw.ALICE["slack"]).status_code == 200
    assert world.request("prod-legacy")[0].status == "approved"
    change_policy(world, CHANGED)
    report = reconcile.run_cycle(world.runtime, targets=["osc-prod"])
    vif_id = world.vif_id("prod-legacy")
    outcome = next(o for o in report.outcomes if o.virtualInterfaceId == vif_id)
    assert world.sb.confirm_count(vif_id) == 0, outcome
    assert outcome.action == "ask"
    new, _ = world.request("prod-legacy")
    assert new.request_id != old.request_id and new.status == "pending" and new.min_approvals == 2
    types = [e.type for e in report.events if e.subject == vif_id]
    assert "vif.approval_superseded" in types and "vif.approval_requested" in types


def test_r2_the_same_policy_carries_out_as_before(world):
    # No change: approvers in another order, or the same groups, are the same request.
    world.trigger_works = False
    request, _ = world.request("prod-legacy")
    assert slack(world, request.request_id, rw.ALICE["slack"]).status_code == 200
    change_policy(world, rw.CONFIG.replace("default_approvers: [netops]", "default_approvers: [bob, alice]"))
    reconcile.run_cycle(world.runtime, targets=["osc-prod"])
    assert world.sb.confirm_count(world.vif_id("prod-legacy")) == 1
    assert world.request("prod-legacy")[0].request_id == request.request_id


# --- R3: a listing that misses a VIF once ---------------------------------------------------------


def test_r3_a_vif_listed_again_after_a_blip_gets_a_new_request_that_can_be_approved(world, directlink):
    vif_id = world.vif_id("prod-legacy")
    old, _ = world.request("prod-legacy")
    hidden = directlink._state._vifs.pop(vif_id)  # one DescribeVirtualInterfaces answer without it
    reconcile.run_cycle(world.runtime, targets=["osc-prod"])
    assert world.request("prod-legacy")[0].status == "superseded"
    directlink._state._vifs[vif_id] = hidden
    directlink.clock.advance(timedelta(minutes=1))
    report = reconcile.run_cycle(world.runtime, targets=["osc-prod"])
    new, _ = world.request("prod-legacy")
    assert new.request_id != old.request_id and new.status == "pending"
    assert any(e.type == "vif.approval_requested" and e.data.request_id == new.request_id for e in report.events)
    reconcile.run_cycle(world.runtime, targets=["osc-prod"])  # a quiet cycle opens nothing more
    assert world.request("prod-legacy")[0].request_id == new.request_id
    stale = slack(world, old.request_id, rw.ALICE["slack"])
    assert stale.status_code in (404, 409)
    assert slack(world, new.request_id, rw.ALICE["slack"]).status_code == 200
    world.settle()
    assert world.sb.confirm_count(vif_id) == 1


def test_r3_an_expired_request_is_not_reopened_in_the_same_spell(world):
    vif_id = world.vif_id("prod-legacy")
    old, _ = world.request("prod-legacy")
    world.sb.clock.advance(timedelta(days=8))  # past the request's expiry; the sandbox VIF stays confirming
    reconcile.run_cycle(world.runtime, targets=["osc-prod"])
    reconcile.run_cycle(world.runtime, targets=["osc-prod"])
    found = world.runtime.ledger.approval_for_vif(vif_id)
    if found is not None:  # the VIF may have expired in the sandbox by then: nothing may be reopened either way
        assert found[0].request_id == old.request_id and found[0].status == "expired"


# --- S2: a vote racing a rule's in-flight action --------------------------------------------------


def test_s2_a_vote_while_a_rule_holds_the_claim_is_refused_and_says_so(world):
    request, _ = world.request("prod-legacy")
    vif_id = world.vif_id("prod-legacy")
    # A cycle under a policy that now rejects it has claimed the VIF and is deleting it at this instant.
    world.runtime.ledger.claim("osc-prod", vif_id, "cycle-rule", world.now(), verb="reject")
    answer = slack(world, request.request_id, rw.ALICE["slack"])
    world.settle()
    assert answer.status_code == 409, answer.json_body
    assert "confirming" not in answer.json_body["error"] and "reject" in answer.json_body["error"]
    assert world.request("prod-legacy")[0].status == "pending"


def test_s2_the_vote_write_itself_refuses_once_a_claim_landed_after_the_read(world):
    request, record = world.request("prod-legacy")
    world.runtime.ledger.claim("osc-prod", record.vif_id, "cycle-rule", world.now(), verb="reject")
    from chalicelib.approvals.model import cast_vote
    from chalicelib.ledger import ApprovalChanged

    after = cast_vote(
        request, approver="alice", user_id=None, channel="cli", vote="approve", gateway=None, now=world.now()
    )
    with pytest.raises(ApprovalChanged):
        world.runtime.ledger.update_approval(request, after, [], require_confirming=True, now=world.now())


def test_s2_a_lapsed_claim_does_not_block_a_vote(world):
    request, record = world.request("prod-legacy")
    world.runtime.ledger.claim("osc-prod", record.vif_id, "dead-cycle", world.now() - timedelta(hours=1))
    result = service.record_vote(
        world.runtime.ledger,
        world.runtime.policy,
        request.request_id,
        approver="alice",
        user_id=None,
        channel="cli",
        vote="approve",
        gateway=None,
        clock=world.runtime.clock,
        publishing=False,
    )
    assert result.request.status == "approved"
