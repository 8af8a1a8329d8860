"""POST /approvals/mattermost through chalice.test.Client: the signed action token is checked before anything else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from chalicelib.approvals import tokens
from sandbox import scenario
from tests.approvals.routes_world import (
    ALICE,
    BOB,
    CAROL,
    SIGNING_KEY,
    STRANGER_MATTERMOST,
    RouteWorld,
    build,
)

ROUTE = "/approvals/mattermost"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def world(aws, directlink) -> Iterator[RouteWorld]:
    built = build(directlink)
    yield built
    built.settle()  # no triggered cycle may outlive moto and the sandbox


def action_token(world: RouteWorld, request_id: str, action: str = "approve", *, key: str = SIGNING_KEY, **kw) -> str:
    expires = kw.pop("expires_at", world.now() + timedelta(hours=1))
    gateway = kw.pop("gateway", scenario.PROD_GATEWAY if action == "approve" else None)
    return tokens.mint_action(key, request_id, action, gateway, expires)


def click(world: RouteWorld, token: object, user_id: str = ALICE["mattermost"], **extra):
    """What Mattermost posts for a click on an integration action button."""
    body = {
        "user_id": user_id,
        "user_name": "someone",
        "channel_id": "c" * 26,
        "team_id": "t" * 26,
        "post_id": "p" * 26,
        "type": "",
        "context": {"token": token},
        **extra,
    }
    return world.client.http.post(ROUTE, headers=JSON, body=json.dumps(body).encode())


def test_a_click_with_a_valid_token_records_one_vote_confirms_once_and_updates_the_post(world):
    request, _ = world.request("prod-legacy")
    vif_id = world.vif_id("prod-legacy")

    response = click(world, action_token(world, request.request_id))
    world.settle()

    assert response.status_code == 200, response.body
    answer = response.json_body
    assert "update" in answer and "alice" in answer["ephemeral_text"]
    after, record = world.request("prod-legacy")
    assert [(v.approver, v.user_id, v.channel, v.vote, v.gateway) for v in after.votes] == [
        ("alice", ALICE["mattermost"], "mattermost", "approve", scenario.PROD_GATEWAY)
    ]
    assert world.targets == ["osc-prod"]
    assert world.sb.confirm_count(vif_id) == 1 and record.confirmed_at is not None


def test_a_reject_token_rejects(world):
    request, _ = world.request("lab-bench")
    response = click(world, action_token(world, request.request_id, "reject"), user_id=BOB["mattermost"])
    world.settle()
    assert response.status_code == 200, response.body
    assert world.request("lab-bench")[0].status == "rejected"
    assert [op for op, _ in world.writes()] == ["DeleteVirtualInterface"]


def _flip(token: str, at: int) -> str:
    """The same token with one base64url character changed."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    char = token[at]
    return token[:at] + alphabet[(alphabet.index(char) + 1) % 64] + token[at + 1 :] if char in alphabet else token


@pytest.mark.parametrize(
    "case, status",
    [
        ("signed with another key", 401),
        ("one character changed at the start", 401),
        ("one character changed in the middle", 401),
        ("one character changed at the end", 401),
        ("cut short", 401),
        ("a link token", 401),
        ("approve payload with the reject signature", 401),
        ("empty", 401),
        ("not a string", 401),
        ("no context", 401),
        ("garbage", 401),
        ("expired", 410),
    ],
)
def test_a_token_that_is_not_ours_or_no_longer_valid_is_refused_and_changes_nothing(world, case, status):
    request, _ = world.request("prod-legacy")
    rid = request.request_id
    good = action_token(world, rid)
    token: object
    if case == "signed with another key":
        token = action_token(world, rid, key="another-deployments-signing-key-0123456789")
    elif case.startswith("one character changed"):
        at = {"start": 0, "middle": len(good) // 2, "end": len(good) - 1}[case.rsplit(" ", 1)[1]]
        token = _flip(good, at)
    elif case == "cut short":
        token = good[:-4]
    elif case == "a link token":
        # Link tokens and action tokens have different domains: one never passes for the other.
        token = tokens.mint_link(SIGNING_KEY, rid, "alice", world.now() + timedelta(hours=1))
    elif case == "approve payload with the reject signature":
        reject = action_token(world, rid, "reject")
        token = _splice(good, reject)
    elif case == "empty":
        token = ""
    elif case == "not a string":
        token = {"request_id": rid, "action": "approve"}
    elif case == "no context":
        token = None
    elif case == "garbage":
        token = "!!not a token!!" * 3
    else:
        token = action_token(world, rid, expires_at=world.now() - timedelta(seconds=1))
    before = world.state()

    response = click(world, token) if case != "no context" else _post(world, {"user_id": ALICE["mattermost"]})

    assert response.status_code == status, (case, response.body)
    assert response.json_body["error"]
    assert world.state() == before


def _splice(approve: str, reject: str) -> str:
    """The approve token's payload under the reject token's signature (both tokens are payload.signature)."""
    if "." in approve and "." in reject:
        return approve.rsplit(".", 1)[0] + "." + reject.rsplit(".", 1)[1]
    cut = min(len(approve), len(reject)) - 43  # an HMAC-SHA256 in base64url is 43 characters
    return approve[:cut] + reject[-43:]


def _post(world: RouteWorld, body: object):
    return world.client.http.post(ROUTE, headers=JSON, body=json.dumps(body).encode())


@pytest.mark.parametrize(
    "user_id, why",
    [(STRANGER_MATTERMOST, "not an approver"), (CAROL["mattermost"], "carol may not decide")],
    ids=["stranger", "carol"],
)
def test_a_valid_token_clicked_by_someone_who_may_not_decide_is_refused_403(world, user_id, why):
    request, _ = world.request("prod-legacy")
    before = world.state()
    response = click(world, action_token(world, request.request_id), user_id=user_id)
    assert response.status_code == 403 and why in response.json_body["error"], response.body
    assert world.state() == before


def test_a_second_click_of_the_same_person_is_refused_409(world):
    request, _ = world.request("prod-legacy")
    token = action_token(world, request.request_id)
    assert click(world, token).status_code == 200
    world.settle()
    before = world.state()
    again = click(world, token)
    assert again.status_code == 409, again.body
    assert world.state() == before
    assert world.sb.confirm_count(world.vif_id("prod-legacy")) == 1


def test_a_token_for_an_unknown_request_is_refused_404(world):
    before = world.state()
    response = click(world, action_token(world, "apr-ffffffffffffffffffff"))
    assert response.status_code == 404, response.body
    assert world.state() == before


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe", b"not json", b"[]", b'"text"', b"{" * 10, b"[" * 50_000, b'{"context": {"token": 5}}'],
    ids=["not utf-8", "not json", "a list", "a string", "broken", "nested deep", "token not a string"],
)
def test_a_malformed_body_is_refused_4xx_and_changes_nothing(world, body):
    before = world.state()
    response = world.client.http.post(ROUTE, headers=JSON, body=body)
    assert response.status_code in (400, 401), response.body
    assert world.state() == before


def test_a_valid_token_with_a_malformed_user_id_is_refused_400(world):
    request, _ = world.request("prod-legacy")
    before = world.state()
    response = click(world, action_token(world, request.request_id), user_id=["alice"])  # type: ignore[arg-type]
    assert response.status_code == 400 and "user_id" in response.json_body["error"], response.body
    assert world.state() == before
