"""Notifier against a real HTTP receiver on 127.0.0.1: payloads, outcomes, waits, and no leaked secrets."""

from __future__ import annotations

import base64
import json
import logging
import time
import traceback

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from chalicelib import events
from chalicelib.chatops import Notifier, RetryLater, Undeliverable, webhook
from chalicelib.config import Destination, SecretRef

from .conftest import AUTH_KEY, DEADLINE, FIRST_SEEN, Answer, target_event, teams_facts, vif_event

WEBHOOK_SECRET_PART = "XsecretXwebhookXpathX9f3a"
BOT_TOKEN = "xoxb-1111-2222-do-not-leak"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"do-not-leak-32-byte-signing-key!").decode()
SECRETS = (WEBHOOK_SECRET_PART, BOT_TOKEN, SIGNING_SECRET, AUTH_KEY)

URL, TOKEN = SecretRef(parameter="/chat/url"), SecretRef(parameter="/chat/token")
SIGNING = SecretRef(secret_id="signing")
DESTINATIONS = {
    "slack": {"kind": "slack", "url": URL},
    "slack-bot": {"kind": "slack", "token": TOKEN, "channel": "C0NETOPS"},
    "mattermost": {"kind": "mattermost", "url": URL},
    "teams": {"kind": "teams", "url": URL},
    "webhook": {"kind": "webhook", "url": URL, "signing_secret": SIGNING},
}
KINDS = list(DESTINATIONS)
SLACK_OK = b'{"ok": true, "channel": "C0NETOPS", "ts": "1700000000.000100"}'
EVENT = vif_event(
    "vif.approval_requested",
    reason="no rule matches account 111122223333",
    deadline=DEADLINE,
    deadline_certain=False,
    first_seen_at=FIRST_SEEN,
)


def rate_limited(kind: str, retry_after: str | None = "1") -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = b'{"ok": false, "error": "ratelimited"}' if kind == "slack-bot" else b"slow down"
    return Answer(429, headers, body)


class Harness:
    """One destination of a kind, its secrets pointing at the receiver, and a sleep that only records."""

    def __init__(self, receiver, kind: str, *, url: str | None = None, api_url: str | None = None, **options):
        self.receiver = receiver
        self.sleeps: list[float] = []
        self.secrets = {
            URL: url or f"{receiver.url}/hooks/T0/B0/{WEBHOOK_SECRET_PART}",
            TOKEN: BOT_TOKEN,
            SIGNING: SIGNING_SECRET,
        }
        self.destination = Destination(name=f"ops-{kind}", **DESTINATIONS[kind])
        self.notifier = Notifier(
            [self.destination],
            self.resolve,
            sleep=self.sleeps.append,
            slack_api_url=api_url or f"{receiver.url}/api/",
            **options,
        )
        if kind == "slack-bot":
            receiver.default = Answer(body=SLACK_OK)

    def resolve(self, ref: SecretRef) -> str:
        return self.secrets[ref]

    def send(self, event=EVENT) -> None:
        self.notifier.send(event, self.destination)


@pytest.fixture
def harness(receiver):
    return lambda kind, **options: Harness(receiver, kind, **options)


# --- payloads ------------------------------------------------------------------------------------


def test_slack_incoming_webhook_gets_block_kit(harness, receiver):
    harness("slack").send()
    (request,) = receiver.requests
    assert request.path == f"/hooks/T0/B0/{WEBHOOK_SECRET_PART}"
    assert request.headers["Content-Type"].startswith("application/json")
    body = request.json()
    assert body["text"].startswith("VIF prod-par-1 (dxvif-fgh12345) waits for confirmation")
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section", "section", "context"]
    assert body["blocks"][0]["text"]["text"] == "Approval needed: VIF prod-par-1"
    fields = [f["text"] for section in body["blocks"][2:4] for f in section["fields"]]
    for expected in (
        "*VIF id*\ndxvif-fgh12345",
        "*VLAN*\n120",
        "*ASN*\n65000",
        "*Connection*\ndxcon-fg5678gh",
        "*Location*\nPAR1",
        "*Account*\n111122223333",
        "*Time left*\nat most 4d 4h",
    ):
        assert expected in fields


def test_slack_bot_token_calls_chat_post_message(harness, receiver):
    harness("slack-bot").send()
    (request,) = receiver.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    body = request.json()
    assert body["channel"] == "C0NETOPS"
    assert body["text"].startswith("VIF prod-par-1 (dxvif-fgh12345)")
    assert body["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "emoji": False, "text": "Approval needed: VIF prod-par-1"},
    }


def test_mattermost_gets_a_slack_attachment_not_blocks(harness, receiver):
    harness("mattermost").send()
    body = receiver.requests[0].json()
    assert set(body) == {"text", "attachments"}
    (attachment,) = body["attachments"]
    assert attachment["color"] == "#ECB22E" and attachment["title"] == "Approval needed: VIF prod-par-1"
    assert {"title": "VIF id", "value": "dxvif-fgh12345", "short": True} in attachment["fields"]
    assert attachment["footer"] == "vif.approval\\_requested · dxvif-fgh12345"  # Markdown in newer Mattermost


def test_teams_gets_the_workflows_envelope(harness, receiver):
    receiver.default = Answer(202, body=b"")  # what a Workflows trigger answers
    harness("teams").send()
    body = receiver.requests[0].json()
    content = body["attachments"][0]["content"]
    assert body == {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": content}
        ],
    }
    assert (content["type"], content["version"]) == ("AdaptiveCard", "1.4")
    assert content["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    facts = teams_facts(content)
    assert ("VIF id", "dxvif-fgh12345") in facts and ("Location", "PAR1") in facts


def test_webhook_gets_the_cloudevent_signed(harness, receiver):
    harness("webhook").send()
    (request,) = receiver.requests
    assert request.body == events.to_json(EVENT).encode()
    assert events.parse(request.body) == EVENT
    assert request.headers["Content-Type"] == "application/cloudevents+json"
    assert request.headers["webhook-id"] == EVENT.id  # deterministic: receivers dedup on it
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["webhook-signature"].startswith("v1,")
    assert not [name for name in request.headers if name.lower().startswith("x-vifgate")]
    headers = dict(request.headers.items())
    # what a receiver runs, with the library of its language
    assert Webhook(SIGNING_SECRET).verify(request.body, headers) == json.loads(request.body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SIGNING_SECRET).verify(request.body.replace(b"111122223333", b"999999999999"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another-key-of-the-right-length!").decode()).verify(request.body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SIGNING_SECRET).verify(request.body, {**headers, "webhook-id": "another-event-id"})


# --- outcomes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limited_then_delivered_after_waiting(harness, receiver, kind):
    setup = harness(kind)
    receiver.answer(rate_limited(kind, "2"))
    setup.send()
    assert setup.sleeps == [2.0]
    first, second = receiver.requests
    assert first.body == second.body and first.path == second.path
    if kind == "webhook":  # signed anew for the retry, with the same id
        assert second.headers["webhook-id"] == first.headers["webhook-id"] == EVENT.id
        Webhook(SIGNING_SECRET).verify(second.body, dict(second.headers.items()))


def test_retry_after_defaults_to_one_second(harness, receiver):
    setup = harness("teams")
    receiver.answer(rate_limited("teams", None), rate_limited("teams", "0"), rate_limited("teams", "soon"))
    setup.send()
    assert setup.sleeps == [1.0, 1.0, 1.0] and len(receiver.requests) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limited_past_the_budget_is_retry_later(harness, receiver, kind):
    setup = harness(kind, max_wait_seconds=10)
    receiver.default = rate_limited(kind, "5")
    budget = r"rate limited \(HTTP 429.*\); Retry-After 5s would pass the 10s wait budget"
    with pytest.raises(RetryLater, match=rf"ops-{kind} \(\w+\): {budget}"):
        setup.send()
    assert setup.sleeps == [5.0, 5.0] and len(receiver.requests) == 3  # 5 + 5 is within 10


def test_a_retry_after_beyond_the_budget_is_not_waited_for(harness, receiver):
    setup = harness("slack", max_wait_seconds=10)
    receiver.answer(rate_limited("slack", "30"))
    with pytest.raises(RetryLater) as caught:
        setup.send()
    assert setup.sleeps == [] and len(receiver.requests) == 1 and caught.value.status == 429


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_errors_are_retry_later(harness, receiver, kind, status):
    receiver.answer(Answer(status, body=b"<html>oops</html>"))
    with pytest.raises(RetryLater, match=rf"HTTP {status}") as caught:
        harness(kind).send()
    assert caught.value.status == status and len(receiver.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_client_errors_are_undeliverable(harness, receiver, kind, status):
    receiver.answer(Answer(status, body=b"no_service"))
    with pytest.raises(Undeliverable, match=rf"ops-{kind} \(\w+\): refused with HTTP {status}") as caught:
        harness(kind).send()
    assert caught.value.status == status and len(receiver.requests) == 1


def test_slack_webhook_errors_name_slacks_code(harness, receiver):
    receiver.answer(Answer(404, body=b"no_service"))
    with pytest.raises(Undeliverable, match="HTTP 404 no_service"):
        harness("slack").send()


@pytest.mark.parametrize(
    "error, outcome",
    [
        ("invalid_auth", Undeliverable),
        ("channel_not_found", Undeliverable),
        ("not_in_channel", Undeliverable),
        ("token_revoked", Undeliverable),
        ("internal_error", RetryLater),
    ],
)
def test_slack_api_errors(harness, receiver, error, outcome):
    receiver.answer(Answer(200, body=json.dumps({"ok": False, "error": error}).encode()))
    with pytest.raises(outcome, match=f"HTTP 200 {error}"):
        harness("slack-bot").send()


@pytest.mark.parametrize("kind", KINDS)
def test_connection_refused_is_retry_later(harness, receiver, closed_port, kind):
    dead = f"http://127.0.0.1:{closed_port}"
    setup = harness(kind, url=f"{dead}/hooks/{WEBHOOK_SECRET_PART}", api_url=f"{dead}/api/")
    with pytest.raises(RetryLater, match=r"no answer \(ConnectionRefusedError\)"):
        setup.send()
    assert setup.sleeps == []


@pytest.mark.parametrize("kind", ["slack", "slack-bot", "webhook"])
def test_a_timeout_is_retry_later(harness, receiver, kind):
    receiver.answer(Answer(delay=1.0, body=SLACK_OK))
    with pytest.raises(RetryLater, match=r"no answer \(TimeoutError\)"):
        harness(kind, timeout_seconds=0.2).send()


def test_a_redirect_is_not_followed(harness, receiver):
    receiver.answer(Answer(302, {"Location": f"{receiver.url}/elsewhere"}))
    with pytest.raises(Undeliverable, match="HTTP 302"):
        harness("webhook").send()
    assert [r.path for r in receiver.requests] == [f"/hooks/T0/B0/{WEBHOOK_SECRET_PART}"]


def test_an_unreadable_secret_is_undeliverable(harness, receiver):
    setup = harness("webhook")

    def resolve(ref: SecretRef) -> str:
        if ref == SIGNING:
            raise PermissionError(f"AccessDenied reading {ref.secret_id}")
        return setup.secrets[ref]

    setup.notifier.resolve = resolve
    with pytest.raises(
        Undeliverable,
        match=r"ops-webhook \(webhook\): cannot read its signing_secret secret "
        r"\(PermissionError\)",
    ):
        setup.send()
    assert receiver.requests == []


@pytest.mark.parametrize(
    "kind, ref, value",
    [
        ("teams", URL, ""),
        ("teams", URL, "hooks.example.com/workflows/abc"),
        ("teams", URL, "ftp://127.0.0.1/hook"),
        ("teams", URL, "http:///no-host"),
        ("teams", URL, "http://127.0.0.1:99999/hook"),
        ("teams", URL, "http://127.0.0.1/hook with space"),
        ("mattermost", URL, {"url": "http://127.0.0.1/hook"}),
        ("slack", URL, "slack://not-http"),
        ("slack-bot", TOKEN, "xoxb-1 2"),
        ("slack-bot", TOKEN, "   "),
        ("webhook", SIGNING, ""),
    ],
)
def test_a_malformed_secret_is_undeliverable(harness, receiver, kind, ref, value):
    setup = harness(kind)
    setup.secrets[ref] = value
    with pytest.raises(Undeliverable, match="secret"):
        setup.send()
    assert receiver.requests == []


KEY_32 = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize(
    "value, why",
    [
        ("whsec-do-not-leak-5e1f", "does not start with 'whsec_'"),
        (KEY_32, "does not start with 'whsec_'"),
        ("whsec_do-not-leak-5e1f", "is not base64 after 'whsec_'"),
        ("whsec_do not leak", "is not base64 after 'whsec_'"),
        ("whsec_QUJD" + "=" * 3, "is not base64 after 'whsec_'"),
        ("whsec_QUJDR", "is not base64 after 'whsec_'"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "holds a 16-byte key; Standard Webhooks keys are 24 to 64"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "holds a 65-byte key"),
    ],
)
def test_a_signing_secret_that_is_not_standard_webhooks_is_undeliverable(harness, receiver, value, why):
    # standardwebhooks alone would sign with whatever bytes it could salvage from these
    setup = harness("webhook")
    setup.secrets[SIGNING] = value
    with pytest.raises(Undeliverable) as caught:
        setup.send()
    assert str(caught.value).startswith(f"ops-webhook (webhook): its signing_secret secret {why}")
    assert value not in "".join(traceback.format_exception(caught.value))
    assert receiver.requests == []


@pytest.mark.parametrize("value", [f"whsec_{KEY_32}", f"whsec_{KEY_32.rstrip('=')}", f"  whsec_{KEY_32}\n"])
def test_a_standard_webhooks_secret_signs(harness, receiver, value):
    setup = harness("webhook")
    setup.secrets[SIGNING] = value
    setup.send()
    (request,) = receiver.requests
    Webhook(f"whsec_{KEY_32}").verify(request.body, dict(request.headers.items()))


def test_a_token_with_a_trailing_newline_still_works(harness, receiver):
    setup = harness("slack-bot")
    setup.secrets[TOKEN] = BOT_TOKEN + "\n"
    setup.send()
    assert receiver.requests[0].headers["Authorization"] == f"Bearer {BOT_TOKEN}"


# --- secrets stay secret -------------------------------------------------------------------------


def test_no_secret_reaches_a_payload_a_log_or_an_error(harness, receiver, closed_port, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # slack_sdk logs request URLs at DEBUG/INFO when allowed to
    dead = f"http://127.0.0.1:{closed_port}"
    answers = [Answer(404, body=b"no_service"), Answer(500), rate_limited("slack", "60")]
    broken_urls = [
        f"{dead}/hooks/{WEBHOOK_SECRET_PART}",
        f"http://127.0.0.1:99999/hooks/{WEBHOOK_SECRET_PART}",
        f"htp://127.0.0.1/hooks/{WEBHOOK_SECRET_PART}",
    ]
    failures: list[BaseException] = []
    for kind in KINDS:
        harness(kind).send()
        attempts = [(harness(kind), answer) for answer in answers]
        attempts += [(harness(kind, url=url, api_url=f"{dead}/api/"), None) for url in broken_urls]
        for setup, answer in attempts:
            receiver.script.clear()
            receiver.answer(*[answer] if answer else [])
            try:
                setup.send()
            except (RetryLater, Undeliverable) as error:
                failures.append(error)
    assert len(failures) == len(KINDS) * (len(answers) + len(broken_urls))
    texts = [
        receiver.bodies(),
        capsys.readouterr().err,
        caplog.text,
        *("".join(traceback.format_exception(error)) for error in failures),
    ]
    headers = [json.dumps({k: v for k, v in r.headers.items() if k != "Authorization"}) for r in receiver.requests]
    for secret in SECRETS:
        for text in texts + headers:
            assert secret not in text


# --- logs and routing ----------------------------------------------------------------------------


def _log_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_one_structured_line_per_delivery(harness, receiver, capsys):
    setup = harness("teams")
    receiver.answer(rate_limited("teams"))
    setup.send()
    receiver.answer(Answer(410))
    with pytest.raises(Undeliverable):
        setup.send()
    delivered, refused = _log_lines(capsys.readouterr().err)
    context = {
        "destination": "ops-teams",
        "kind": "teams",
        "event_type": "vif.approval_requested",
        "subject": "dxvif-fgh12345",
    }
    assert delivered["message"] == "delivered" and delivered["level"] == "INFO"
    assert delivered.items() >= {**context, "status": 200, "attempts": 2}.items()
    assert refused["message"] == "not delivered" and refused["level"] == "ERROR"
    assert refused.items() >= {**context, "status": 410, "outcome": "Undeliverable"}.items()


@pytest.mark.parametrize(
    "globs, wanted",
    [
        (["*"], {"vif.approval_requested", "vif.expired", "target.failed"}),
        (["vif.*"], {"vif.approval_requested", "vif.expired"}),
        (["target.failed"], {"target.failed"}),
        (["vif.expir*", "target.*"], {"vif.expired", "target.failed"}),
        (["vif.approval_requested"], {"vif.approval_requested"}),
        (["VIF.*"], set()),
    ],
)
def test_destinations_for_matches_globs_on_the_type(globs, wanted):
    destination = Destination(name="room", kind="teams", url=URL, events=globs)
    other = Destination(name="all", kind="teams", url=URL)
    notifier = Notifier([destination, other], resolve=lambda ref: "")
    samples = [
        EVENT,
        vif_event("vif.expired", how="state", deadline=DEADLINE, deadline_certain=True, first_seen_at=FIRST_SEEN),
        target_event("target.failed", code="AccessDenied", message="no"),
    ]
    got = {e.type for e in samples if destination in notifier.destinations_for(e)}
    assert got == wanted
    assert all(other in notifier.destinations_for(e) for e in samples)


# --- signatures ---------------------------------------------------------------------------------
# Signed by webhook.sign(), checked by the standardwebhooks package as a receiver would (it reads the
# clock itself: the timestamps are around the real now).

keys = st.binary(min_size=webhook.KEY_MIN, max_size=webhook.KEY_MAX)
bodies = st.text(max_size=300)
ids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)


def _secret(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def _receives(key: bytes, body: str, headers: dict[str, str]) -> bool:
    try:
        Webhook(_secret(key)).verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


@given(key=keys, body=bodies, event_id=ids, skew=st.integers(-240, 240))
def test_a_signature_verifies_within_the_tolerance(key, body, event_id, skew):
    headers = webhook.sign(webhook.signer(_secret(key)), event_id, body, time.time() + skew)
    assert _receives(key, body, headers)


@given(key=keys, body=bodies, event_id=ids, data=st.data())
def test_any_change_to_the_body_fails(key, body, event_id, data):
    headers = webhook.sign(webhook.signer(_secret(key)), event_id, body, time.time())
    tampered = data.draw(bodies.filter(lambda other: other != body))
    assert not _receives(key, tampered, headers)


@given(key=keys, other=keys, body=bodies, event_id=ids)
def test_another_secret_fails(key, other, body, event_id):
    assume(other != key)
    assert not _receives(other, body, webhook.sign(webhook.signer(_secret(key)), event_id, body, time.time()))


@given(key=keys, body=bodies, event_id=ids, other_id=ids, shift=st.integers(1, 200) | st.integers(-200, -1))
def test_a_changed_timestamp_or_id_fails(key, body, event_id, other_id, shift):
    headers = webhook.sign(webhook.signer(_secret(key)), event_id, body, time.time())
    moved = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + shift)}
    assert not _receives(key, body, moved)
    assume(other_id != event_id)
    assert not _receives(key, body, {**headers, "webhook-id": other_id})


@given(age=st.integers(301, 10**9) | st.integers(-(10**9), -301))
def test_stale_and_future_timestamps_fail(age):
    key = b"k" * 32
    headers = webhook.sign(webhook.signer(_secret(key)), "0" * 32, "{}", time.time() - age)
    assert not _receives(key, "{}", headers)


def test_a_replay_carries_the_id_a_receiver_has_seen(harness, receiver):
    """Within the tolerance a captured request verifies again: the webhook-id is what tells it apart."""
    setup = harness("webhook")
    setup.send()
    setup.send()  # the same event again: another poller, or a retried batch
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == EVENT.id
    for request in (first, second):
        Webhook(SIGNING_SECRET).verify(request.body, dict(request.headers.items()))
