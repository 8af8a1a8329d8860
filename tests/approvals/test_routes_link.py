"""GET and POST /approvals/link/{token} through chalice.test.Client: the page changes nothing, the form acts once."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from datetime import timedelta

import pytest

from chalicelib.approvals import tokens
from sandbox import scenario
from tests.approvals.routes_world import SIGNING_KEY, RouteWorld, build

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>&amp;'


@pytest.fixture
def world(aws, directlink) -> Iterator[RouteWorld]:
    built = build(directlink)
    yield built
    built.settle()  # no triggered cycle may outlive moto and the sandbox


def link(
    world: RouteWorld, name: str, approver: str = "alice", *, key: str = SIGNING_KEY, expires_in=timedelta(hours=1)
):
    request, _ = world.request(name)
    return "/approvals/link/" + tokens.mint_link(key, request.request_id, approver, world.now() + expires_in)


def submit(world: RouteWorld, path: str, action: str = "approve", **fields: str):
    body = urllib.parse.urlencode({"action": action, **fields}).encode()
    return world.client.http.post(path, headers=FORM, body=body)


def test_the_page_shows_the_vif_and_changes_nothing(world):
    path = link(world, "prod-legacy")
    vif_id = world.vif_id("prod-legacy")
    before = world.state()

    response = world.client.http.get(path)

    assert response.status_code == 200, response.body
    assert world.state() == before, "a GET (an unfurler, a mail scanner) writes nothing and triggers nothing"
    headers = {k.lower(): v for k, v in response.headers.items()}
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    page = response.body.decode()
    for shown in ("prod-legacy", vif_id, scenario.PROD, scenario.PARTNER_CONNECTION, "250", "65001", "osc-prod"):
        assert shown in page, shown
    assert '<meta name="viewport"' in page and '<form method="post">' in page
    assert 'value="approve"' in page and 'value="reject"' in page
    assert "alice" in page and "<script" not in page


def test_a_hostile_vif_name_is_text_on_the_page(world):
    world.sb.allocate(
        connection_id=world.sb.world.connection_id, owner_account=scenario.LAB, name=HOSTILE, vlan=402, asn=65020
    )
    from chalicelib import reconcile

    reconcile.run_cycle(world.runtime)
    [(request, _)] = [
        (r, rec) for r, rec in world.runtime.ledger.approvals() if rec.snapshot.get("virtualInterfaceName") == HOSTILE
    ]
    token = tokens.mint_link(SIGNING_KEY, request.request_id, "bob", world.now() + timedelta(hours=1))
    page = world.client.http.get(f"/approvals/link/{token}").body.decode()
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(2)&gt;&amp;amp;" in page


def test_submitting_the_form_approves_once_and_a_second_post_is_refused_409(world):
    path = link(world, "prod-legacy")
    vif_id = world.vif_id("prod-legacy")

    first = submit(world, path)
    world.settle()
    before = world.state()
    second = submit(world, path)

    assert first.status_code == 200, first.body
    assert "Approved" in first.body.decode()
    assert second.status_code == 409, second.body
    assert world.state() == before
    [vote] = world.request("prod-legacy")[0].votes
    assert (vote.approver, vote.user_id, vote.channel, vote.vote) == ("alice", None, "link", "approve")
    assert world.targets == ["osc-prod"] and world.sb.confirm_count(vif_id) == 1
    assert world.client.http.get(path).status_code == 409, "the page of a decided request says so"


def test_the_form_rejects(world):
    path = link(world, "lab-bench", "bob")
    response = submit(world, path, "reject")
    world.settle()
    assert response.status_code == 200 and "Rejected" in response.body.decode()
    assert world.sb.vif(world.vif_id("lab-bench"))["virtualInterfaceState"] == "rejected"


def test_an_expired_link_is_refused_410_on_get_and_post(world):
    path = link(world, "prod-legacy", expires_in=timedelta(seconds=-1))
    before = world.state()
    assert world.client.http.get(path).status_code == 410
    assert submit(world, path).status_code == 410
    assert world.state() == before


def test_a_link_acts_only_as_the_approver_it_names(world):
    """bob's link records bob's vote; no field of the form can make it alice's."""
    path = link(world, "prod-legacy", "bob")
    before = world.state()
    response = submit(world, path, approver="alice", user="alice", as_="alice")
    assert response.status_code == 400, "unknown form fields are refused, not ignored"
    assert world.state() == before

    response = submit(world, path)
    world.settle()
    assert response.status_code == 200
    assert [v.approver for v in world.request("prod-legacy")[0].votes] == ["bob"]


def test_a_token_edited_to_name_someone_else_is_refused_401(world):
    path = link(world, "prod-legacy", "bob")
    token = path.rsplit("/", 1)[1]
    alice = link(world, "prod-legacy", "alice").rsplit("/", 1)[1]
    # bob's payload under alice's signature, or alice's payload under bob's.
    for forged in (_splice(token, alice), _splice(alice, token), token[:-1] + ("A" if token[-1] != "A" else "B")):
        before = world.state()
        assert submit(world, f"/approvals/link/{forged}").status_code == 401
        assert world.client.http.get(f"/approvals/link/{forged}").status_code == 401
        assert world.state() == before


def _splice(first: str, second: str) -> str:
    if "." in first and "." in second:
        return first.rsplit(".", 1)[0] + "." + second.rsplit(".", 1)[1]
    return first[:-43] + second[-43:]


def test_an_approver_not_on_the_request_is_refused_403(world):
    path = link(world, "prod-legacy", "carol")
    before = world.state()
    assert world.client.http.get(path).status_code == 403
    assert submit(world, path).status_code == 403
    assert world.state() == before


def test_a_link_of_a_person_no_longer_in_the_config_is_refused_403(world):
    path = link(world, "prod-legacy", "mallory")
    before = world.state()
    assert world.client.http.get(path).status_code == 403
    assert submit(world, path).status_code == 403
    assert world.state() == before


def test_an_unknown_request_is_404(world):
    token = tokens.mint_link(SIGNING_KEY, "apr-ffffffffffffffffffff", "alice", world.now() + timedelta(hours=1))
    response = world.client.http.get(f"/approvals/link/{token}")
    assert response.status_code == 404 and "text/html" in response.headers["Content-Type"]


@pytest.mark.parametrize(
    "body",
    [b"", b"action=maybe", b"action=approve&action=reject", b"\xff", b"action=" + b"a" * 5000, b"%%%"],
    ids=["empty", "unknown action", "twice", "not utf-8", "huge", "not a form"],
)
def test_a_malformed_form_is_refused_400_and_changes_nothing(world, body):
    path = link(world, "prod-legacy")
    before = world.state()
    response = world.client.http.post(path, headers=FORM, body=body)
    assert response.status_code == 400, response.body
    assert response.body.decode().startswith("<!doctype html>")
    assert world.state() == before


@pytest.mark.parametrize("token", ["x", "a" * 3000, "..", "%00"])
def test_a_malformed_token_is_refused_401(world, token):
    before = world.state()
    assert world.client.http.get(f"/approvals/link/{token}").status_code == 401
    assert world.state() == before


def test_every_string_on_the_page_is_escaped():
    """Pure: hostile text in every field the page shows comes out as text, in elements and attributes alike."""
    from dataclasses import replace

    from chalicelib.approvals import page
    from chalicelib.ledger import VifRecord
    from tests.approvals.conftest import make_request

    request = replace(make_request(gateways=("vgw-11111111", "vgw-22222222")), gateways=(HOSTILE, "vgw-22222222"))
    snapshot = {
        key: HOSTILE
        for key in ("virtualInterfaceName", "ownerAccount", "connectionId", "location", "vlan", "asn", "region")
    }
    record = VifRecord(
        target=HOSTILE,
        vif_id=HOSTILE,
        first_seen_at="2026-11-22T09:00:00Z",
        state="confirming",
        state_since="2026-11-22T09:00:00Z",
        deadline="2026-11-29T09:00:00Z",
        decision_reason=HOSTILE,
        snapshot=snapshot,
    )
    html = page.confirmation(request, record, HOSTILE) + page.result(HOSTILE, HOSTILE, request)
    html += page.refusal(409, HOSTILE)
    assert "<script" not in html and "<img" not in html and "onerror=alert(2)>" not in html
    assert html.count("&lt;script&gt;") >= 10


def test_a_used_link_cannot_vote_again_even_the_other_way(aws, directlink):
    """With two approvals needed, alice's link approves once; the same link cannot then reject (it worked once)."""
    from tests.approvals.routes_world import CONFIG

    world = build(
        directlink,
        config=CONFIG.replace("default_approvers: [netops]", "default_approvers: [netops]\ndefault_min_approvals: 2"),
    )
    path = link(world, "prod-legacy")
    assert submit(world, path).status_code == 200
    assert world.targets == [], "one approval of two decides nothing: no trigger"
    before = world.state()

    response = submit(world, path, "reject")

    assert response.status_code == 409, response.body
    assert "already voted" in response.body.decode()
    assert world.state() == before
    assert world.request("prod-legacy")[0].progress() == "approved by alice, 1 of 2"
