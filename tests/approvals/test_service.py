"""record_vote on moto: one vote counted once, refusals that change nothing, and races run on real threads."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from chalicelib import events
from chalicelib.approvals import model, service
from chalicelib.approvals.model import Refused
from chalicelib.config import Policy, parse_policy
from chalicelib.ledger import ApprovalChanged
from sandbox import scenario

from . import routes_world as rw
from .conftest import T0, make_record, make_request, outbox_items, raw_items

POLICY = parse_policy(scenario.CONFIG)  # osc-prod is in eu-west-2


def asking(min_approvals: int) -> Policy:
    """The policy that asked for make_request's requests: rule partner-ask, alice, bob or carol, n of them.

    A vote counts only under the policy that asked for it (review finding R2): the scenario's own
    policy asks nobody by name, so a vote under it would supersede the request instead.
    """
    rule = (
        "  - name: partner-ask\n"
        '    accounts: ["111122223333"]\n'
        "    action: ask\n"
        "    approvers: [alice, bob, carol]\n"
        f"    min_approvals: {min_approvals}\n"
        "default_action: ask\n"
    )
    return parse_policy(scenario.CONFIG.replace("default_action: ask\n", rule) + rw.APPROVALS)


ASKING = {n: asking(n) for n in (1, 2)}
LATER = T0 + timedelta(minutes=5)
G1, G2 = "vgw-11111111", "vgw-22222222"


def opened(ledger, record_fields=None, **kw):
    request = make_request(**kw)
    ledger.save(make_record(request, **(record_fields or {})), approval=request)
    return request


def vote(ledger, request_id, approver, what="approve", gateway=None, *, now=LATER, publishing=True, channel="slack"):
    found = ledger.approval(request_id)
    policy = ASKING[found[0].min_approvals] if found else POLICY
    return service.record_vote(
        ledger,
        policy,
        request_id,
        approver=approver,
        user_id=f"U{approver.upper()}",
        channel=channel,
        vote=what,
        gateway=gateway,
        clock=lambda: now,
        publishing=publishing,
    )


def sent() -> list:
    return [events.parse(i["body"]["S"]) for i in outbox_items()]


def test_one_approval_decides_and_its_event_is_in_the_outbox(ledger):
    request = opened(ledger)
    result = vote(ledger, request.request_id, "alice")
    assert result.decided and result.summary == f"approved by alice: confirming with {G1} now"
    assert result.request.version == 1 and result.request.status == "approved"
    assert result.record.vif_id == request.vif_id
    assert ledger.approval(request.request_id)[0] == result.request
    (event,) = sent()
    assert event.type == "vif.approval_vote" and event.subject == request.vif_id
    data = event.data
    assert (data.target, data.region, data.account) == ("osc-prod", "eu-west-2", "111122223333")
    assert data.vif["virtualInterfaceName"] == "partner-prod-120" and "authKey" not in data.vif
    assert (data.request_id, data.approver, data.user_id, data.channel, data.vote, data.gateway) == (
        request.request_id,
        "alice",
        "UALICE",
        "slack",
        "approve",
        G1,
    )
    assert (data.approvals, data.min_approvals, data.status) == (["alice"], 1, "approved")


def test_two_approvals_needed(ledger):
    request = opened(ledger, min_approvals=2, gateways=(G1, G2))
    first = vote(ledger, request.request_id, "alice", gateway=G2)
    assert not first.decided and first.summary == "approved by alice, 1 of 2"
    with pytest.raises(Refused) as again:
        vote(ledger, request.request_id, "alice", gateway=G2)
    assert (again.value.status, again.value.reason) == (409, "alice already voted on this request (approve)")
    second = vote(ledger, request.request_id, "bob", channel="link")
    assert second.decided and second.summary == f"approved by alice and bob: confirming with {G2} now"
    ids = [e.id for e in sent()]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert [e.data.status for e in sent()] == ["pending", "approved"]


def test_a_reject_is_a_veto(ledger):
    request = opened(ledger, min_approvals=2)
    vote(ledger, request.request_id, "alice")
    result = vote(ledger, request.request_id, "carol", "reject")
    assert result.decided and result.summary == "rejected by carol: deleting it now"
    assert [e.data.vote for e in sent()] == ["approve", "reject"]


def test_without_a_queue_the_vote_is_written_without_an_event(ledger):
    request = opened(ledger)
    assert vote(ledger, request.request_id, "alice", publishing=False).decided
    assert outbox_items() == [] and ledger.approval(request.request_id)[0].status == "approved"


@pytest.mark.parametrize(
    "setup, approver, what, gateway, now, status, reason",
    [
        (None, "alice", "approve", None, LATER, 404, "no such approval request"),
        ({}, "mallory", "approve", None, LATER, 403, "mallory may not decide on this request"),
        ({}, "alice", "maybe", None, LATER, 400, "unknown vote 'maybe': approve or reject"),
        ({}, "alice", "approve", "vgw-99999999", LATER, 400, None),
        (
            {},
            "alice",
            "approve",
            None,
            T0 + timedelta(days=2),
            410,
            "the approval request expired at 2026-11-24T09:00:00Z",
        ),
        (
            {"state": "pending"},
            "alice",
            "approve",
            None,
            LATER,
            409,
            "dxvif-ffab0001 is no longer confirming: its state is pending",
        ),
        (
            {"state": "deleted"},
            "bob",
            "reject",
            None,
            LATER,
            409,
            "dxvif-ffab0001 is no longer confirming: its state is deleted",
        ),
        (
            {"gone_at": "2026-11-22T09:01:00Z"},
            "alice",
            "approve",
            None,
            LATER,
            409,
            "dxvif-ffab0001 is no longer confirming: its state is gone",
        ),
        (
            {"confirmed_at": "2026-11-22T09:01:00Z"},
            "alice",
            "approve",
            None,
            LATER,
            409,
            "dxvif-ffab0001 is no longer confirming: it was confirmed at 2026-11-22T09:01:00Z",
        ),
        (
            {"rejected_at": "2026-11-22T09:01:00Z"},
            "alice",
            "reject",
            None,
            LATER,
            409,
            "dxvif-ffab0001 is no longer confirming: it was rejected at 2026-11-22T09:01:00Z",
        ),
        ("decided", "bob", "approve", None, LATER, 409, "already approved by alice at 2026-11-22T09:05:00Z"),
        ("decided", "alice", "reject", None, LATER, 409, "already approved by alice at 2026-11-22T09:05:00Z"),
    ],
)
def test_a_refused_vote_changes_nothing(ledger, setup, approver, what, gateway, now, status, reason):
    request = make_request()
    if setup is not None:
        ledger.save(make_record(request, **(setup if isinstance(setup, dict) else {})), approval=request)
    if setup == "decided":
        vote(ledger, request.request_id, "alice")
    before = raw_items()
    with pytest.raises(Refused) as refused:
        vote(ledger, request.request_id, approver, what, gateway, now=now)
    assert refused.value.status == status
    if reason is not None:
        assert refused.value.reason == reason
    assert raw_items() == before  # the item, its pointer and the outbox


def test_retries_end_in_409_when_the_request_keeps_changing(ledger):
    request = opened(ledger)
    tries = []

    class Busy:
        def approval(self, request_id):
            return ledger.approval(request_id)

        def update_approval(self, before, after, produced, *, require_confirming, now=None):
            tries.append(before.version)
            raise ApprovalChanged(before.request_id)

    before = raw_items()
    with pytest.raises(Refused) as refused:
        vote(Busy(), request.request_id, "alice")
    assert refused.value.status == 409 and "try again" in refused.value.reason
    assert len(tries) == service.ATTEMPTS and raw_items() == before


class ReadTogether:
    """The ledger, but each thread's first read waits for the others: all read the same version, then all write."""

    def __init__(self, ledger, parties: int):
        self.ledger = ledger
        self.barrier = threading.Barrier(parties, timeout=10)
        self.waited: set[int] = set()

    def approval(self, request_id):
        found = self.ledger.approval(request_id)
        if threading.get_ident() not in self.waited:
            self.waited.add(threading.get_ident())
            self.barrier.wait()
        return found

    def __getattr__(self, name):
        return getattr(self.ledger, name)


def run_together(*calls):
    """Run each call on its own thread; (result or exception) per call."""
    outcomes: list = [None] * len(calls)

    def run(i, call):
        try:
            outcomes[i] = call()
        except Exception as exc:  # the test inspects what each thread met
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return outcomes


@pytest.mark.parametrize("run", range(3))
def test_two_approvers_at_once_on_one_approval(ledger, run):
    request = opened(ledger)
    together = ReadTogether(ledger, 2)
    outcomes = run_together(
        lambda: vote(together, request.request_id, "alice"), lambda: vote(together, request.request_id, "bob")
    )
    won = [o for o in outcomes if isinstance(o, service.VoteResult)]
    lost = [o for o in outcomes if isinstance(o, Refused)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    winner = won[0].request.votes[0].approver
    assert lost[0].status == 409 and lost[0].reason.startswith(f"already approved by {winner}")
    stored = ledger.approval(request.request_id)[0]
    assert stored.status == "approved" and stored.version == 1 and [t.who for t in stored.trail] == [winner]
    assert [e.data.approver for e in sent()] == [winner]


@pytest.mark.parametrize("run", range(3))
def test_two_votes_at_once_on_two_approvals_both_count(ledger, run):
    request = opened(ledger, min_approvals=2)
    together = ReadTogether(ledger, 2)
    outcomes = run_together(
        lambda: vote(together, request.request_id, "alice"), lambda: vote(together, request.request_id, "bob")
    )
    assert all(isinstance(o, service.VoteResult) for o in outcomes), outcomes
    assert sorted(o.decided for o in outcomes) == [False, True]
    stored = ledger.approval(request.request_id)[0]
    assert stored.status == "approved" and stored.version == 2 and sorted(stored.approvals) == ["alice", "bob"]
    assert [t.outcome for t in stored.trail] == ["pending (1 of 2)", "approved"]
    assert [e.data.status for e in sent()] == ["pending", "approved"]


@pytest.mark.parametrize("run", range(3))
def test_one_person_voting_both_ways_at_once_counts_once(ledger, run):
    """One link opened in two tabs (approve in one, reject in the other): a person has one vote, even in a race."""
    request = opened(ledger, min_approvals=2)
    together = ReadTogether(ledger, 2)
    outcomes = run_together(
        lambda: vote(together, request.request_id, "alice", channel="link"),
        lambda: vote(together, request.request_id, "alice", "reject", channel="link"),
    )
    won = [o for o in outcomes if isinstance(o, service.VoteResult)]
    lost = [o for o in outcomes if isinstance(o, Refused)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    first = won[0].request.votes[0].vote
    # A won approve leaves the request open (1 of 2), a won reject closes it: either way, one vote.
    expected = "alice already voted on this request (approve)" if first == "approve" else "already rejected by alice"
    assert lost[0].status == 409 and lost[0].reason.startswith(expected), lost[0].reason
    stored = ledger.approval(request.request_id)[0]
    assert stored.version == 1 and [(v.approver, v.vote) for v in stored.votes] == [("alice", first)]
    assert len(sent()) == 1


@pytest.mark.parametrize("run", range(3))
def test_a_vote_racing_expiry_one_wins(ledger, run):
    request = opened(ledger)
    together = ReadTogether(ledger, 2)
    due = model._parse(request.expires_at)

    def expire_now():
        before, _ = together.approval(request.request_id)
        ledger.update_approval(before, model.expire(before, due), require_confirming=False)
        return "expired"

    outcomes = run_together(
        lambda: vote(together, request.request_id, "alice", now=due - timedelta(seconds=1)), expire_now
    )
    stored = ledger.approval(request.request_id)[0]
    assert stored.version == 1 and len(stored.trail) == 1
    if isinstance(outcomes[0], service.VoteResult):  # the vote won; the expiry read a stale copy
        assert isinstance(outcomes[1], ApprovalChanged) and stored.status == "approved"
        assert len(sent()) == 1
    else:  # the expiry won; the vote re-read and found the request expired
        assert outcomes[1] == "expired" and stored.status == "expired"
        assert isinstance(outcomes[0], Refused) and outcomes[0].status == 410
        assert sent() == []


def test_a_vif_leaving_confirming_between_read_and_write_refuses_the_vote(ledger):
    """The cycle saw the VIF go to pending after the vote read it: the vote's write is refused, nothing lands."""
    request = opened(ledger)

    class Meanwhile:
        moved = False

        def approval(self, request_id):
            found = ledger.approval(request_id)
            if not self.moved:
                self.moved = True
                ledger.save(make_record(request, state="pending"))
            return found

        def update_approval(self, *args, **kwargs):
            return ledger.update_approval(*args, **kwargs)

    before = raw_items()
    with pytest.raises(Refused) as refused:
        vote(Meanwhile(), request.request_id, "alice")
    assert (refused.value.status, refused.value.reason) == (
        409,
        "dxvif-ffab0001 is no longer confirming: its state is pending",
    )
    stored, record = ledger.approval(request.request_id)
    assert stored == request and record.state == "pending" and outbox_items() == []
    assert len(raw_items()) == len(before)


def test_the_vote_event_never_carries_an_auth_key(ledger):
    request = make_request()
    record = make_record(request)
    record.snapshot["authKey"] = "bgp-secret-value"
    ledger.save(record, approval=request)
    vote(ledger, request.request_id, "alice")
    assert "bgp-secret-value" not in json.dumps([i["body"]["S"] for i in outbox_items()])


def test_the_result_is_what_was_written(ledger):
    request = opened(ledger, min_approvals=2)
    result = vote(ledger, request.request_id, "alice")
    assert result.request == ledger.approval(request.request_id)[0] and result.request.version == 1


def test_a_vote_on_an_organization_accounts_vif_is_judged_by_the_rule_naming_its_source(ledger):
    """The api function does not list accounts: its policy has the source, not the generated targets.

    The rule that asked names the source (`targets: [org]`). Judged against the unexpanded policy the
    target is unknown, a rule limited to another target matches first, and every vote supersedes the
    request it was for.
    """
    member = "org-111122223333-eu-west-1"  # the account the VIF is allocated to
    text = (
        scenario.CONFIG.replace(
            "rules:\n",
            "  - from_organization: {name: org, ous: [ou-abcd-11111111], role_name: vif-gatekeeper-member,"
            " regions: [eu-west-1]}\nrules:\n",
            1,
        ).replace(
            "default_action: ask\n",
            "  - name: prod-only\n"  # not for the organization's accounts: it must not match theirs
            "    targets: [osc-prod]\n"
            '    accounts: ["111122223333"]\n'
            "    action: ask\n"
            "    approvers: [bob]\n"
            "  - name: partner-ask\n"
            "    targets: [org]\n"
            '    accounts: ["111122223333"]\n'
            "    action: ask\n"
            "    approvers: [alice, bob, carol]\n"
            "default_action: ask\n",
        )
        + rw.APPROVALS
    )
    policy = parse_policy(text)
    assert [t.name for t in policy.targets] == ["osc-prod", "osc-staging", "osc-lab"]  # as the api reads it
    request = opened(ledger, target=member)
    result = service.record_vote(
        ledger,
        policy,
        request.request_id,
        approver="alice",
        user_id="UALICE",
        channel="slack",
        vote="approve",
        gateway=None,
        clock=lambda: LATER,
        publishing=True,
    )
    assert result.request.status == "approved"
    assert service.region_of(policy, member) == "eu-west-1"
