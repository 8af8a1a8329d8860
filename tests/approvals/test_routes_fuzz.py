"""Random bodies, headers, content types and tokens to every approval route: never a 5xx, never a change.

One world per module (moto, the DirectLink sandbox, a poll cycle that left pending approval
requests); each example goes through chalice's test client and app.py like a real request, and the
ledger (records, approvals, outbox), the trigger's calls and the sandbox's calls must be exactly as
before. Examples per route: VIFGATE_FUZZ_EXAMPLES (default 1000).
"""

from __future__ import annotations

import json
import os
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import boto3
import pytest
import yaml
from chalice.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from slack_sdk.signature import SignatureVerifier

from chalicelib import reconcile, runtime
from chalicelib.approvals import tokens
from chalicelib.approvals.model import ApprovalRequest
from chalicelib.config import SecretRef, parse_policy
from chalicelib.log import logger
from chalicelib.runtime import Runtime, Settings
from sandbox import DirectLinkSandbox, SandboxClock, scenario
from sandbox.local import create_queues, provision
from tests.conftest import REGION, TABLE

EXAMPLES = int(os.environ.get("VIFGATE_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # Each example is a whole request through the app and two scans of the ledger; the bodies are big on purpose.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

SIGNING_KEY = "fuzz-signing-key-" + "0123456789abcdef" * 2
OTHER_KEY = "another-signing-key-" + "fedcba9876543210" * 2
SLACK_SECRET = "fuzz-slack-signing-secret-8f2c1e"
APPROVALS_SECRET = "vifgate/test/approvals"
EVENTS_QUEUE, EVENTS_DLQ = "vifgate-test-events.fifo", "vifgate-test-events-dlq.fifo"
# name: (Slack id, Mattermost id); carol is an approver of nothing that is pending.
APPROVERS = {
    "alice": ("U0ALICE01", "a" * 26),
    "bob": ("U0BOB0001", "b" * 26),
    "carol": ("W0CAROL01", "c" * 26),
}
SECOND_PROD_GATEWAY = "vgw-0f0e0d0c"  # gives prod-legacy's request a choice of two gateways
HOSTILE_NAME = '"><img src=x onerror=alert(1)><b id="injected">prod</b>'


def approvals_config() -> str:
    """scenario.CONFIG plus approvals: prod VIFs outside the trusted vlans ask alice or bob; the rest ask alice."""
    document = yaml.safe_load(scenario.CONFIG)
    document["approvals"] = {
        "approvers": [{"name": n, "slack": s, "mattermost": m} for n, (s, m) in APPROVERS.items()],
        "link_ttl": "24h",
        "base_url": "http://127.0.0.1:8000",
        "signing_key": {"secret_id": APPROVALS_SECRET, "key": "signing_key"},
        "slack_signing_secret": {"secret_id": APPROVALS_SECRET, "key": "slack"},
    }
    ask = {"name": "prod-asks", "accounts": [scenario.PROD], "action": "ask", "approvers": ["alice", "bob"]}
    document["rules"].append(ask)
    document["default_approvers"] = ["alice"]
    return yaml.safe_dump(document)


SECRETS = {(APPROVALS_SECRET, "signing_key"): SIGNING_KEY, (APPROVALS_SECRET, "slack"): SLACK_SECRET}


def resolve(ref: SecretRef) -> str:
    return SECRETS[(ref.secret_id, ref.key)]


class RecordingTrigger:
    """Counts poll_now calls and starts nothing (a change-free request must not trigger the poller)."""

    def __init__(self):
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def poll_now(self, target: str) -> bool:
        with self._lock:
            self.calls.append(target)
        return True


@dataclass
class World:
    clock: SandboxClock
    sandbox: DirectLinkSandbox
    runtime: Runtime
    trigger: RecordingTrigger
    env: dict[str, str]
    requests: dict[str, ApprovalRequest] = field(default_factory=dict)  # by VIF name

    def now(self) -> datetime:
        return self.clock.now()

    def state(self) -> tuple:
        """Everything a request could change: every ledger item, the trigger's and the sandbox's calls."""
        # Read from moto's in-memory table: a Scan through boto3 costs ~100 ms of moto's serializer per example.
        table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table(TABLE)
        items = sorted(json.dumps(item.to_json(), sort_keys=True) for item in table.all_items())
        return items, tuple(self.trigger.calls), len(self.sandbox.calls)

    def refresh(self) -> None:
        self.requests = {
            record.snapshot.get("virtualInterfaceName"): request for request, record in self.runtime.ledger.approvals()
        }


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@contextmanager
def approval_world(trigger=None, *, hostile: bool = False) -> Iterator[World]:
    """moto + the seeded sandbox + one poll cycle under the approvals config: pending requests in the ledger.

    prod-legacy (two available prod gateways to choose from) and lab-bench each get one request;
    with `hostile`, a prod VIF named HOSTILE_NAME gets one too.
    """
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("AWS_", "VIFGATE_")):
                mp.delenv(name)
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        clock = SandboxClock(datetime.now(UTC).replace(microsecond=0))
        sb = DirectLinkSandbox(flavor="outscale", region=REGION, clock=clock)
        sb.world = scenario.seed(sb)
        sb.add_gateway(scenario.PROD, state="available", gateway_id=SECOND_PROD_GATEWAY)
        if hostile:
            vif = sb.allocate(
                connection_id=sb.world.connection_id,
                owner_account=scenario.PROD,
                name=HOSTILE_NAME,
                vlan=260,
                asn=65001,
            )
            sb.world.vif_ids[HOSTILE_NAME] = vif["virtualInterfaceId"]
        sb.start()
        mp.setenv("AWS_ENDPOINT_URL_DIRECT_CONNECT", sb.url)
        try:
            with mock_aws():
                provision(boto3.client("dynamodb"), boto3.client("secretsmanager"), TABLE)
                create_queues(boto3.client("sqs"), EVENTS_QUEUE, EVENTS_DLQ)
                trigger = trigger or RecordingTrigger()
                rt = Runtime(
                    Settings(config_source="approvals-fuzz", table_name=TABLE, events_queue=EVENTS_QUEUE),
                    policy=parse_policy(approvals_config(), "approvals-fuzz"),
                    clock=clock.now,
                    resolve=resolve,
                    trigger=trigger,
                )
                report = reconcile.run_cycle(rt, budget_seconds=60, flush_seconds=10)
                assert report.ok, report.summary()
                world = World(clock, sb, rt, trigger, {**AWS_ENV, "AWS_ENDPOINT_URL_DIRECT_CONNECT": sb.url})
                world.refresh()
                assert {"prod-legacy", "lab-bench"} <= set(world.requests), world.requests
                yield world
        finally:
            sb.stop()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with approval_world() as built:
        yield built


@pytest.fixture
def client(world, monkeypatch) -> Client:
    """chalice's test client over app.py, whose routes get this world's runtime."""
    from app import app

    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime, "get_reader", lambda env=None: world.runtime)
    logger.setLevel("WARNING")  # a refusal logs at INFO; a 500 logs at ERROR and still shows
    return Client(app)


# --- strategies ---------------------------------------------------------------------------------

B64URL = string.ascii_letters + string.digits + "-_"
CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "text/html",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "",
    "application/x-www-form-urlencoded; charset=\x00",
]
texts = st.text(max_size=200)
header_names = st.one_of(
    st.sampled_from(
        [
            "X-Slack-Signature",
            "X-Slack-Request-Timestamp",
            "Content-Length",
            "Host",
            "Cookie",
            "Authorization",
            "X-Forwarded-For",
            "Accept",
            "Content-Encoding",
            "Transfer-Encoding",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=30),
)
extra_headers = st.dictionaries(header_names, texts, max_size=5)
# Built once: a strategy made inside a composite is built again on every draw (most of an example's time).
slack_ids = st.from_regex(r"[UW][A-Z0-9]{2,12}", fullmatch=True)
strangers_on_slack = st.from_regex(r"U9[A-Z0-9]{6}", fullmatch=True)  # never one of APPROVERS
mattermost_ids = st.from_regex(r"[a-z0-9]{26}", fullmatch=True)
unknown_request_ids = st.from_regex(r"apr-[0-9a-f]{20}", fullmatch=True)
slack_signature_shapes = st.from_regex(r"v0=[0-9a-f]{64}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children) | st.dictionaries(texts, children),
    max_leaves=20,
)
base64ish = st.text(alphabet=B64URL + ".", min_size=20, max_size=300)
small_json_objects = st.recursive(st.none() | texts | st.integers(), lambda c: st.dictionaries(texts, c), max_leaves=5)


def content_type(expected: str | None) -> st.SearchStrategy[str | None]:
    """Mostly what the route expects (else chalice answers 415 before the app sees the request), often not."""
    anything = st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), texts)
    return st.integers(0, 9).flatmap(lambda n: st.just(expected) if n < 6 else anything)


def headers_with(content: str | None, extra: dict[str, str], **fixed: str | None) -> dict[str, str]:
    headers = dict(extra)
    if content is not None:
        headers["Content-Type"] = content
    headers.update({k.replace("_", "-"): v for k, v in fixed.items() if v is not None})
    return headers


MUTATION_CHARS = B64URL + ".=~%/+"


def mutate(draw, token: str) -> str:
    """A real token truncated, one character changed, one bit of one character flipped, or extended."""
    n, where = len(token), draw(st.integers(0, len(token) - 1))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        mutated = token[:where]
    elif kind == 1:
        mutated = token[:where] + draw(st.sampled_from(MUTATION_CHARS)) + token[where + 1 :]
    elif kind == 2:
        mutated = token[:where] + chr(ord(token[where]) ^ (1 << draw(st.integers(0, 6)))) + token[where + 1 :]
    else:
        mutated = token + draw(st.text(min_size=1, max_size=8))
    assert n  # a real token is never empty
    return mutated if mutated != token else token[:-1]


def timestamps(now: datetime) -> st.SearchStrategy[str | None]:
    """Half of them within Slack's 5 minutes (so signed requests reach the payload), the rest anything."""
    base = int(now.timestamp())
    recent = st.integers(-299, 299).map(lambda d: str(base + d))
    odd = st.one_of(
        st.none(),
        st.integers(-900, 900).map(lambda d: str(base + d)),
        st.integers(-(10**30), 10**30).map(str),
        st.sampled_from(["", " ", "-1", "-0", "0", "1e9", f"{base}.5", f" {base}", f"{base}\n", "9" * 400, "NaN"]),
        st.sampled_from(["١٧٠٠٠٠٠٠٠٠", "１７００００００００", "٣" * 10, "\u0661\u0662"]),  # other scripts' digits
        texts,
    )
    return st.one_of(recent, odd)


# --- one request, checked ----------------------------------------------------------------------


def check(world: World, client: Client, method: str, path: str, headers: dict[str, str], body: bytes):
    before = world.state()
    answer = client.http.request(method, path, headers=headers, body=body)
    after = world.state()
    assert answer.status_code < 500, (answer.status_code, answer.body[:500])
    assert after == before, f"{method} {path[:80]} -> {answer.status_code} changed something"
    text = answer.body.decode("utf-8", "replace") if isinstance(answer.body, bytes) else str(answer.body)
    for secret in (SIGNING_KEY, SLACK_SECRET):
        assert secret not in text
    return answer


# --- Slack ---------------------------------------------------------------------------------------


def pick(draw, *choices):
    """One of several values or strategies, drawn only when chosen (cheaper than one_of over fresh just()s).

    Hypothesis leans to the first choice (and shrinks towards it): put the one that goes deepest first.
    """
    chosen = choices[draw(st.integers(0, len(choices) - 1))]
    return draw(chosen) if isinstance(chosen, st.SearchStrategy) else chosen


SLACK_TYPES = st.sampled_from(["block_actions", "view_submission"]) | texts
SLACK_ACTION_IDS = st.sampled_from(["vifgate_approve", "vifgate_reject", "vifgate_gateway", "other"]) | texts
SLACK_STATES = st.sampled_from(
    [
        None,
        {"values": {"b": {"vifgate_gateway": {"selected_option": {"value": "vgw-0a1b2c3d"}}}}},
        {"values": {"b": {"vifgate_gateway": {"selected_option": {"value": "vgw-99999999"}}}}},
        {"values": {"b": {"vifgate_gateway": {"selected_option": None}}}},
        {"values": {"b": "x"}},
    ]
)


@st.composite
def slack_requests(draw, world: World) -> tuple[dict[str, str], bytes]:
    real_ids = sorted(r.request_id for r in world.requests.values())
    approver_ids = [s for s, _ in APPROVERS.values()]
    user = pick(draw, st.sampled_from(approver_ids), slack_ids, texts)
    request_id = pick(draw, st.sampled_from(real_ids), unknown_request_ids)
    if request_id in real_ids and user in approver_ids:
        # A signed click by an approver on a real request is a real vote: keep one side unknown.
        user = draw(strangers_on_slack)
    action = {"action_id": draw(SLACK_ACTION_IDS), "value": pick(draw, request_id, None, st.integers(), texts)}
    if draw(st.integers(0, 4)) < 4:
        payload = {
            "type": draw(SLACK_TYPES),
            "user": pick(draw, {"id": user}, user, None, {}),
            "actions": pick(draw, [action], [], action, [action, action]),
            "state": pick(draw, SLACK_STATES, small_json_objects),
        }
    else:
        payload = draw(json_values)
    encoded = quote(json.dumps(payload))
    body_text = pick(
        draw,
        "payload=" + encoded,
        json.dumps(payload),
        "payload=" + encoded + "&payload=x",
        "payload=" + "[" * 5000,
        texts,
    )
    body = body_text.encode() if draw(st.integers(0, 5)) < 5 else draw(st.binary(max_size=300))
    timestamp = draw(timestamps(world.now()))
    secret = pick(draw, SLACK_SECRET, SLACK_SECRET, "not-the-slack-secret")
    signed = SignatureVerifier(secret).generate_signature(
        timestamp=timestamp or "0", body=body.decode("utf-8", "replace")
    )
    signature = pick(draw, signed, signed, signed, None, texts, slack_signature_shapes)
    content = draw(content_type("application/x-www-form-urlencoded"))
    extra = draw(extra_headers)
    return headers_with(content, extra, X_Slack_Request_Timestamp=timestamp, X_Slack_Signature=signature), body


def test_slack_route_never_fails_and_never_changes_anything(world, client):
    @FUZZ
    @given(request=slack_requests(world))
    def run(request):
        headers, body = request
        check(world, client, "POST", "/approvals/slack", headers, body)

    run()


# --- Mattermost ----------------------------------------------------------------------------------


@st.composite
def action_tokens(draw, world: World) -> str:
    """Anything but a valid token for a real request's vote (that plus a known user would be a real vote)."""
    now = world.now()
    request_id = draw(st.sampled_from(sorted(r.request_id for r in world.requests.values())))
    action = draw(st.sampled_from(["approve", "reject"]))
    later = now + timedelta(hours=draw(st.integers(1, 48)))
    kind = 6 - draw(st.integers(0, 6))  # the deepest kinds first (see pick)
    if kind == 0:
        return draw(texts)
    if kind == 1:
        return draw(base64ish)
    if kind == 2:
        return mutate(draw, tokens.mint_action(SIGNING_KEY, request_id, action, None, later))
    if kind == 3:
        return tokens.mint_action(OTHER_KEY, request_id, action, None, later)
    if kind == 4:
        return tokens.mint_action(
            SIGNING_KEY, request_id, action, None, now - timedelta(seconds=draw(st.integers(0, 9)))
        )
    if kind == 5:
        return tokens.mint_link(SIGNING_KEY, request_id, "alice", later)  # a link token is not an action token
    return tokens.mint_action(SIGNING_KEY, draw(unknown_request_ids), action, None, later)


@st.composite
def mattermost_requests(draw, world: World) -> tuple[dict[str, str], bytes]:
    approver_ids = [m for _, m in APPROVERS.values()]
    token = draw(action_tokens(world))
    user = pick(draw, st.sampled_from(approver_ids), mattermost_ids, texts)
    context = pick(
        draw, {"token": token}, {"token": token, "action": "approve"}, token, {}, {"token": None}, {"token": [token]}
    )
    document = pick(
        draw,
        {"user_id": user, "context": context},
        {"user_id": None, "context": context},
        {"context": context},
        json_values,
    )
    body = pick(
        draw, json.dumps(document).encode(), ("[" * 10000).encode(), st.binary(max_size=300), texts.map(str.encode)
    )
    return headers_with(draw(content_type("application/json")), draw(extra_headers)), body


def test_mattermost_route_never_fails_and_never_changes_anything(world, client):
    @FUZZ
    @given(request=mattermost_requests(world))
    def run(request):
        headers, body = request
        check(world, client, "POST", "/approvals/mattermost", headers, body)

    run()


# --- signed links --------------------------------------------------------------------------------


@st.composite
def link_tokens(draw, world: World, *, genuine_allowed: bool) -> str:
    now = world.now()
    request = draw(st.sampled_from(sorted(world.requests.values(), key=lambda r: r.request_id)))
    approver = draw(st.sampled_from(sorted(request.approvers)))
    later = now + timedelta(hours=draw(st.integers(1, 24)))
    last = 9 if genuine_allowed else 8
    kind = last - draw(st.integers(0, last))  # the deepest kinds first (see pick)
    if kind == 0:
        return draw(texts)
    if kind == 1:
        return draw(base64ish)
    if kind == 2:
        return mutate(draw, tokens.mint_link(SIGNING_KEY, request.request_id, approver, later))
    if kind == 3:
        return tokens.mint_link(OTHER_KEY, request.request_id, approver, later)
    if kind == 4:
        expired = now - timedelta(seconds=draw(st.integers(0, 9)))
        return tokens.mint_link(SIGNING_KEY, request.request_id, approver, expired)
    if kind == 5:
        return tokens.mint_link(SIGNING_KEY, request.request_id, "carol", later)  # not on this request
    if kind == 6:
        return tokens.mint_link(SIGNING_KEY, request.request_id, "mallory", later)  # not an approver at all
    if kind == 7:
        return tokens.mint_action(SIGNING_KEY, request.request_id, "approve", None, later)  # the other kind
    if kind == 8:
        return tokens.mint_link(SIGNING_KEY, draw(unknown_request_ids), approver, later)
    return tokens.mint_link(SIGNING_KEY, request.request_id, approver, later)  # genuine: GET only


def link_path(token: str) -> str:
    # An empty token matches no route: API Gateway answers that itself (chalice's local gateway raises).
    return "/approvals/link/" + (quote(token, safe="") or "-")


def test_link_page_never_fails_and_never_changes_anything(world, client):
    """GET changes nothing, whatever the token, the genuine one included (unfurlers and mail scanners fetch it)."""

    @FUZZ
    @given(
        token=link_tokens(world, genuine_allowed=True),
        content=content_type(None),  # a browser's GET has no Content-Type
        extra=extra_headers,
        body=st.binary(max_size=100),
    )
    def run(token, content, extra, body):
        check(world, client, "GET", link_path(token), headers_with(content, extra), body)

    run()


FORM_BODIES = [
    "action=approve",
    "action=reject",
    "action=approve&gateway=vgw-0a1b2c3d",
    f"action=approve&gateway={SECOND_PROD_GATEWAY}",
    "action=approve&gateway=vgw-99999999",
    "action=approve&action=reject",
    "action=maybe",
    "action=approve&gateway=" + quote(HOSTILE_NAME),
]


def test_link_form_never_fails_and_never_changes_anything(world, client):
    """POST with anything but a genuine token (a genuine token with action=approve is a real vote)."""

    @FUZZ
    @given(
        token=link_tokens(world, genuine_allowed=False),
        content=content_type("application/x-www-form-urlencoded"),
        extra=extra_headers,
        body=st.one_of(st.sampled_from(FORM_BODIES).map(str.encode), texts.map(str.encode), st.binary(max_size=300)),
    )
    def run(token, content, extra, body):
        check(world, client, "POST", link_path(token), headers_with(content, extra), body)

    run()


def test_health_never_fails_and_never_changes_anything(world, client):
    @FUZZ
    @given(content=content_type(None), extra=extra_headers, body=st.binary(max_size=100), query=st.text(max_size=30))
    def run(content, extra, body, query):
        answer = check(world, client, "GET", "/health?" + quote(query), headers_with(content, extra), body)
        # Chalice answers 415 itself to a GET whose Content-Type is not JSON; health checks send none.
        assert answer.status_code in (200, 415), answer.body
        if answer.status_code == 200:
            assert json.loads(answer.body) == {"ok": True, "config": "valid", "problems": 0}

    run()


def test_the_world_can_change_so_the_checks_above_can_fail(world, client):
    """The same check sees a genuine vote: the ledger changes and the poller is triggered."""
    before = world.state()
    request = world.requests["lab-bench"]
    token = tokens.mint_link(SIGNING_KEY, request.request_id, "alice", world.now() + timedelta(hours=1))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = client.http.post(link_path(token), headers=headers, body=b"action=reject")
    assert answer.status_code == 200, answer.body
    after = world.state()
    assert after[0] != before[0] and after[1] == (*before[1], request.target)
