"""The approval routes: verify the request, map the person, record the vote, trigger the poller, answer.

The API function decides nothing and holds no DirectLink rights: a vote is one conditional ledger
write (service.record_vote); the poller, triggered for that one target, carries the decision out.
Every handler answers a status and a short reason and changes nothing when it refuses; a bug
answers 500 without detail and logs the exception's type and frames (never its text, which may
quote the request).
"""

from __future__ import annotations

import json
import re
import traceback
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPException
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from slack_sdk.signature import Clock, SignatureVerifier

from ..chatops import SecretUnavailable, mattermost, messages, slack
from ..chatops.http import header, post_json
from ..config import Approvals, ConfigError, SecretRef
from ..log import logger
from ..runtime import Runtime
from . import page, service, tokens
from .model import ApprovalRequest, Refused
from .tokens import TokenError

GetRuntime = Callable[[], Runtime]

SLACK_WINDOW = 5 * 60  # seconds either side of now a Slack request's timestamp may be (slack_sdk's window)
RESPONSE_URL_TIMEOUT = 2.0  # Slack wants an answer within 3 s; the update is best effort
# Bodies past these are not what Slack, Mattermost or the page's form send.
SLACK_MAX_BODY = 256 * 1024  # a block_actions payload carries the whole message it came from
MATTERMOST_MAX_BODY = 64 * 1024
LINK_MAX_BODY = 4 * 1024
TOKEN_MAX = 2048
# A decided request whose trigger failed is still carried out, a minute or so later.
LATE = "the next scheduled cycle carries it out"
# The Block Kit action ids chatops.slack gives the request's buttons and gateway select.
ACTIONS = {slack.APPROVE: "approve", slack.REJECT: "reject"}
GATEWAY_ACTION = slack.GATEWAY
_LINK_BUTTON = re.compile(r"vifgate-[0-9]{1,2}")  # chatops.slack's URL buttons (action_id vifgate-<i>)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # not \d: it matches other scripts' digits, which int() reads
_SLACK_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")  # compare_digest raises on non-ASCII text
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Incoming:
    """What a route handler needs of an HTTP request: its headers (any case) and raw body."""

    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] | str
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON))


class _Stop(Exception):
    """A refusal decided here: answered with `status` and `reason`, nothing changed."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def json_error(status: int, reason: str) -> Answer:
    return Answer(status, {"error": reason})


def html_error(status: int, reason: str) -> Answer:
    return Answer(status, page.refusal(status, reason), page.HEADERS)


def _guarded(route: str, error: Callable[[int, str], Answer], work: Callable[[], Answer]) -> Answer:
    """Turn refusals into their status, and any other failure into a 5xx that names nothing."""
    try:
        return work()
    except (_Stop, Refused, TokenError) as refused:
        status, reason = refused.status, refused.reason
        logger.info("approval request refused", extra={"route": route, "status": status, "reason": reason})
        return error(status, reason)
    except tokens.WeakKey as exc:
        logger.error("approvals signing key unusable", extra={"route": route, "problem": str(exc)})
        return error(503, "approvals are not available: the signing key is not usable (see the log)")
    except ConfigError as exc:
        logger.error("invalid config: approvals refused", extra={"problems": exc.problems, "source": exc.source})
        return error(503, "the gatekeeper's configuration is invalid; try again once it is fixed")
    except (ClientError, BotoCoreError) as exc:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
        logger.error("ledger unavailable", extra={"route": route, "code": code})
        return error(503, "the ledger is unavailable; try again")
    except Exception as exc:
        # Only the type and the frames: an exception's text may quote the request it choked on.
        frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
        logger.error("unexpected error", extra={"route": route, "error_type": type(exc).__name__, "frames": frames})
        return error(500, "internal error")


# --- shared steps ------------------------------------------------------------------------------


def _approvals(runtime: Runtime) -> Approvals:
    approvals = runtime.policy.approvals
    if approvals is None:
        raise _Stop(503, "approvals are not configured")
    return approvals


def _secret(runtime: Runtime, ref: SecretRef | None, what: str) -> str:
    """A secret's value (resolve_secret caches it for a warm Lambda); 503 when it cannot be read."""
    if ref is None:
        raise _Stop(503, f"approvals have no {what} configured")
    try:
        return runtime.secret(ref)
    except (SecretUnavailable, LookupError) as exc:
        # The error names the reference and the store's code, never the value.
        logger.error("secret unavailable", extra={"secret": what, "error_type": type(exc).__name__, "error": str(exc)})
        raise _Stop(503, f"the {what} cannot be read; try again") from None


def _body_text(incoming: Incoming, limit: int) -> str:
    if len(incoming.body) > limit:
        raise _Stop(400, f"body larger than {limit} bytes")
    try:
        return incoming.body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Stop(400, "body is not UTF-8") from None


def _form(text: str, *, max_fields: int) -> dict[str, str]:
    """A urlencoded form with each field at most once."""
    try:
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, max_num_fields=max_fields, strict_parsing=bool(text)
        )
    except ValueError:
        raise _Stop(400, "body is not a urlencoded form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise _Stop(400, f"field {name[:40]!r} given twice")
        form[name] = value
    return form


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise _Stop(400, f"{what} is not JSON") from None
    except RecursionError:  # not a ValueError: a nesting bomb
        raise _Stop(400, f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise _Stop(400, f"{what} is not a JSON object")
    return value


def _parsed[M: BaseModel](model: type[M], value: Any, what: str) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in (what, *first["loc"]))
        raise _Stop(400, f"{where}: {first['msg']}") from None


def _record(
    runtime: Runtime,
    request_id: str,
    *,
    approver: str,
    user_id: str | None,
    channel: str,
    vote: str,
    gateway: str | None,
) -> tuple[service.VoteResult, str | None]:
    """Record one vote, then trigger the poller when it decided the request; with a note when that failed."""
    try:
        result = service.record_vote(
            runtime.ledger,
            runtime.policy,
            request_id,
            approver=approver,
            user_id=user_id,
            channel=channel,
            vote=vote,
            gateway=gateway,
            clock=runtime.clock,
            publishing=runtime.publishing,
        )
    except service.PolicyChanged as changed:
        # Superseded under the policy of now: the poller opens its successor (and says so in chat) at once.
        _trigger(runtime, changed.request.target)
        raise
    request = result.request
    logger.info(
        "approval vote recorded",
        extra={
            "request_id": request.request_id,
            "target": request.target,
            "vif_id": request.vif_id,
            "approver": approver,
            "channel": channel,
            "vote": vote,
            "status": request.status,
        },
    )
    if result.decided and not _trigger(runtime, request.target):
        return result, LATE
    return result, None


def _trigger(runtime: Runtime, target: str) -> bool:
    """Ask the poller to act on `target` now; the schedule is the fallback, so a failure is not the caller's."""
    try:
        trigger = runtime.trigger
        if trigger is None:  # no VIFGATE_POLL_FUNCTION: the schedule alone carries decisions out
            logger.warning("no poll function to trigger", extra={"target": target})
            return False
        return bool(trigger.poll_now(target))
    except Exception as exc:  # the vote is recorded: nothing of it may be lost to a trigger's failure
        logger.error("trigger failed", extra={"target": target, "error_type": type(exc).__name__})
        return False


def _summary(result: service.VoteResult, note: str | None) -> str:
    return f"{result.summary} ({note})" if note else result.summary


def _status_message(runtime: Runtime, result: service.VoteResult, note: str | None) -> messages.Message:
    """The request as it now stands, for replacing the chat message that was clicked."""
    request = result.request
    region = service.region_of(runtime.policy, request.target)
    return messages.approval_status(request, result.record.snapshot, request.target, region, runtime.clock(), note=note)


def _approver_name(found: Any, who: str) -> str:
    if found is None:
        raise _Stop(403, f"{who} is not an approver")
    return str(found.name)


# --- Slack -------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _SlackUser(_Open):
    id: StrictStr = Field(min_length=1, max_length=64)


class _SlackAction(_Open):
    action_id: StrictStr = Field(max_length=255)
    value: StrictStr | None = Field(default=None, max_length=2000)


class _SlackOption(_Open):
    value: StrictStr = Field(max_length=150)


class _SlackSelect(_Open):
    selected_option: _SlackOption | None = None


class _SlackState(_Open):
    values: dict[str, dict[str, Any]] = {}


class _SlackPayload(_Open):
    type: StrictStr
    user: _SlackUser
    actions: list[_SlackAction] = Field(default_factory=list)
    response_url: StrictStr | None = None
    state: _SlackState | None = None

    def gateway(self) -> str | None:
        """The gateway chosen in the message's select, if it has one and something is chosen."""
        for block in (self.state.values if self.state else {}).values():
            if isinstance(block, dict) and GATEWAY_ACTION in block:
                chosen = _parsed(_SlackSelect, block[GATEWAY_ACTION], "payload.state").selected_option
                return chosen.value if chosen else None
        return None


class _SlackClock(Clock):
    """slack_sdk's verifier on the runtime's clock (the sandbox's, in tests and the demo)."""

    def __init__(self, clock: Callable[[], datetime]):
        self._clock = clock

    def now(self) -> float:
        return self._clock().timestamp()


def response_url_allowed(url: str) -> bool:
    """Only Slack's own hooks: a URL from a request body must not make this function call another host."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and parts.hostname == "hooks.slack.com"
        and port in (None, 443)
        and parts.username is None
        and parts.password is None
        and parts.path.startswith("/")
    )


def _post_response_url(url: str | None, body: dict[str, Any]) -> None:
    """Best effort: the vote is recorded whatever Slack answers here. The URL is a credential: never logged."""
    if not url:
        return
    if not response_url_allowed(url):
        logger.warning("response_url refused: not https://hooks.slack.com")
        return
    data = json.dumps(body).encode()
    try:
        status, _, _ = post_json(url, data, JSON, timeout=RESPONSE_URL_TIMEOUT)
    except (OSError, HTTPException, ValueError) as exc:
        logger.warning("response_url post failed", extra={"error_type": type(exc).__name__})
        return
    if not 200 <= status < 300:
        logger.warning("response_url post refused", extra={"status": status})


def slack_action(incoming: Incoming, get_runtime: GetRuntime) -> Answer:
    """POST /approvals/slack: a Block Kit button of an approval request, signed by Slack."""
    return _guarded("slack", json_error, lambda: _slack(incoming, get_runtime))


def _slack(incoming: Incoming, get_runtime: GetRuntime) -> Answer:
    if len(incoming.body) > SLACK_MAX_BODY:
        raise _Stop(400, f"body larger than {SLACK_MAX_BODY} bytes")
    timestamp = header(incoming.headers, "X-Slack-Request-Timestamp")
    signature = header(incoming.headers, "X-Slack-Signature")
    if timestamp is None or not _TIMESTAMP.fullmatch(timestamp):
        raise _Stop(401, "missing or malformed X-Slack-Request-Timestamp")
    if signature is None or not _SLACK_SIGNATURE.fullmatch(signature):
        raise _Stop(401, "missing or malformed X-Slack-Signature")
    text = _body_text(incoming, SLACK_MAX_BODY)
    runtime = get_runtime()
    secret = _secret(runtime, _approvals(runtime).slack_signing_secret, "Slack signing secret")
    clock = _SlackClock(runtime.clock)
    # slack_sdk's check is abs(now - timestamp) > 5 min, past and future alike; checked here first
    # only to tell a stale request from a forged one.
    if abs(clock.now() - int(timestamp)) > SLACK_WINDOW:
        raise _Stop(401, "X-Slack-Request-Timestamp is more than 5 minutes from now")
    if not SignatureVerifier(secret, clock=clock).is_valid(text, timestamp, signature):
        raise _Stop(401, "X-Slack-Signature does not match the body")

    form = _form(text, max_fields=20)
    if "payload" not in form:
        raise _Stop(400, "body has no payload field")
    raw = _json_object(form["payload"], "payload")
    response_url = raw.get("response_url") if isinstance(raw.get("response_url"), str) else None
    try:
        return _slack_vote(runtime, _parsed(_SlackPayload, raw, "payload"), response_url)
    except (_Stop, Refused) as refused:
        # Signed by Slack: the person who clicked sees why, under the message.
        update = {"response_type": "ephemeral", "replace_original": False, "text": slack.escape(refused.reason)}
        _post_response_url(response_url, update)
        raise


def _slack_vote(runtime: Runtime, payload: _SlackPayload, response_url: str | None) -> Answer:
    if payload.type != "block_actions":
        raise _Stop(400, f"payload.type: expected block_actions, not {payload.type[:40]!r}")
    if not payload.actions:
        raise _Stop(400, "payload.actions: no action")
    action = payload.actions[0]
    if action.action_id == GATEWAY_ACTION:
        return Answer(200, {"ok": True, "summary": "gateway choice noted; it counts when you approve"})
    if _LINK_BUTTON.fullmatch(action.action_id):
        # A link button's click is posted here too; the browser opens the link, Slack only wants a 200.
        return Answer(200, {"ok": True})
    vote = ACTIONS.get(action.action_id)
    if vote is None:
        raise _Stop(400, f"payload.actions[0].action_id: {action.action_id[:40]!r} is not an approval action")
    if not action.value:
        raise _Stop(400, "payload.actions[0].value: no request id")
    gateway = payload.gateway() if vote == "approve" else None
    user_id = payload.user.id
    approvals = _approvals(runtime)
    approver = _approver_name(approvals.by_slack(user_id), f"Slack user {user_id}")
    result, note = _record(
        runtime, action.value, approver=approver, user_id=user_id, channel="slack", vote=vote, gateway=gateway
    )
    _post_response_url(response_url, slack.request_update(_status_message(runtime, result, note)))
    return Answer(200, {"ok": True, "status": result.request.status, "summary": _summary(result, note)})


# --- Mattermost --------------------------------------------------------------------------------


class _MattermostContext(_Open):
    token: StrictStr = Field(min_length=1, max_length=TOKEN_MAX)


class _MattermostAction(_Open):
    user_id: StrictStr = Field(min_length=1, max_length=64)
    context: dict[str, Any]


def mattermost_action(incoming: Incoming, get_runtime: GetRuntime) -> Answer:
    """POST /approvals/mattermost: an integration action; the signed token in its context is the proof."""

    def error(status: int, reason: str) -> Answer:
        # Mattermost shows ephemeral_text to the person who clicked.
        return Answer(status, {"error": reason, "ephemeral_text": mattermost.escape(reason)})

    return _guarded("mattermost", error, lambda: _mattermost(incoming, get_runtime))


def _mattermost(incoming: Incoming, get_runtime: GetRuntime) -> Answer:
    raw = _json_object(_body_text(incoming, MATTERMOST_MAX_BODY), "body")
    # Mattermost does not sign its requests: the token comes first, nothing is read before it holds.
    context = raw.get("context")
    token = context.get("token") if isinstance(context, dict) else None
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX:
        raise _Stop(401, "context.token: missing or malformed")
    runtime = get_runtime()
    approvals = _approvals(runtime)
    key = _secret(runtime, approvals.signing_key, "approvals signing key")
    grant = tokens.read_action(key, token, runtime.clock())
    action = _parsed(_MattermostAction, raw, "body")
    approver = _approver_name(approvals.by_mattermost(action.user_id), f"Mattermost user {action.user_id}")
    result, note = _record(
        runtime,
        grant.request_id,
        approver=approver,
        user_id=action.user_id,
        channel="mattermost",
        vote=grant.action,
        gateway=grant.gateway if grant.action == "approve" else None,
    )
    answer = mattermost.request_update(_status_message(runtime, result, note))
    return Answer(200, {**answer, "ephemeral_text": mattermost.escape(_summary(result, note))})


# --- signed links ------------------------------------------------------------------------------


def _grant(runtime: Runtime, approvals: Approvals, token: str) -> tokens.LinkGrant:
    if not token or len(token) > TOKEN_MAX:
        raise _Stop(401, "malformed link")
    key = _secret(runtime, approvals.signing_key, "approvals signing key")
    grant = tokens.read_link(key, token, runtime.clock())
    # The token was minted for someone the config may have dropped since: a removed approver's link stops working.
    if approvals.approver(grant.approver) is None:
        raise _Stop(403, f"{grant.approver} is no longer an approver")
    return grant


def link_page(token: str, get_runtime: GetRuntime) -> Answer:
    """GET /approvals/link/{token}: the confirmation page. Changes nothing (unfurlers and scanners fetch links)."""
    return _guarded("link", html_error, lambda: _link_page(token, get_runtime))


def _link_page(token: str, get_runtime: GetRuntime) -> Answer:
    runtime = get_runtime()
    grant = _grant(runtime, _approvals(runtime), token)
    found = runtime.ledger.approval(grant.request_id)
    if found is None:
        raise _Stop(404, "unknown approval request")
    request, record = found
    _check_open(request, record, grant.approver, runtime.clock())
    return Answer(200, page.confirmation(request, record, grant.approver, grant.expires_at), page.HEADERS)


def _check_open(request: ApprovalRequest, record: Any, approver: str, now: datetime) -> None:
    """Refuse to show a form that could not be acted on: the same answers the vote itself would get."""
    if approver not in request.approvers:
        raise _Stop(403, f"{approver} may not decide this request")
    expires = datetime.fromisoformat(request.expires_at)
    if request.status == "expired" or now >= (expires if expires.tzinfo else expires.replace(tzinfo=UTC)):
        raise _Stop(410, f"this approval request expired at {messages.at(expires)}")
    if request.status != "pending":
        raise _Stop(409, f"this request is no longer open: {request.progress()}")
    if record.state != "confirming" or record.confirmed_at or record.rejected_at:
        raise _Stop(409, f"the VIF is no longer confirming (it is {record.state})")
    _used(request, approver)


def _used(request: ApprovalRequest, approver: str) -> None:
    """A link works once: its approver's vote, whichever way it went, is its one use."""
    for vote in request.votes:
        if vote.approver == approver:
            raise _Stop(409, f"{approver} already voted on this request ({vote.vote})")


def link_vote(token: str, incoming: Incoming, get_runtime: GetRuntime) -> Answer:
    """POST /approvals/link/{token}: the page's form; acts once, as the approver the token names."""
    return _guarded("link", html_error, lambda: _link_vote(token, incoming, get_runtime))


def _link_vote(token: str, incoming: Incoming, get_runtime: GetRuntime) -> Answer:
    form = _form(_body_text(incoming, LINK_MAX_BODY), max_fields=5)
    unknown = sorted(set(form) - {"action", "gateway"})
    if unknown:  # the page sends these two; anything else is not from it
        raise _Stop(400, f"unknown form field {unknown[0][:40]!r}")
    vote = form.get("action")
    if vote not in ("approve", "reject"):
        raise _Stop(400, "action must be approve or reject")
    gateway = (form.get("gateway") or None) if vote == "approve" else None
    runtime = get_runtime()
    grant = _grant(runtime, _approvals(runtime), token)
    found = runtime.ledger.approval(grant.request_id)
    if found is None:
        raise _Stop(404, "unknown approval request")
    # Checked before the write, as the page is: the vote's own conditional write refuses the rest.
    _used(found[0], grant.approver)
    result, note = _record(
        runtime, grant.request_id, approver=grant.approver, user_id=None, channel="link", vote=vote, gateway=gateway
    )
    title = {"approved": "Approved", "rejected": "Rejected"}.get(result.request.status, "Vote recorded")
    return Answer(200, page.result(title, _summary(result, note), result.request), page.HEADERS)


# --- health ------------------------------------------------------------------------------------


def health(get_runtime: GetRuntime) -> Answer:
    """GET /health: whether the config is valid, and how many problems it has; the problems go to the log."""

    def check() -> Answer:
        try:
            _ = get_runtime().policy
        except ConfigError as exc:
            logger.error("health: invalid config", extra={"problems": exc.problems, "source": exc.source})
            return Answer(503, {"ok": False, "config": "invalid", "problems": len(exc.problems)})
        return Answer(200, {"ok": True, "config": "valid", "problems": 0})

    return _guarded("health", json_error, check)
