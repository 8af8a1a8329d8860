"""Slack: Block Kit through an incoming webhook, or chat.postMessage with a bot token."""

from __future__ import annotations

import logging
import re
from itertools import batched
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    Option,
    PlainTextObject,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.webhook import WebhookClient

from .http import Reply, header
from .messages import Decision, Message

API_URL = "https://slack.com/api/"

# slack_sdk logs request URLs (an incoming webhook URL is a secret) at INFO and DEBUG whenever its
# logger's own level is unset, and failed requests at ERROR. Its clients get this muted logger;
# the notifier writes the one line per delivery that matters.
_SDK_LOGGER = logging.getLogger("chalicelib.chatops.slack_sdk")
_SDK_LOGGER.setLevel(logging.CRITICAL)
_SDK_LOGGER.propagate = False

# Block Kit limits; slack_sdk refuses to serialize a block past them.
_HEADER_MAX, _TEXT_MAX, _FIELD_MAX, _FIELDS_PER_SECTION, _BUTTON_MAX = 150, 3000, 2000, 10, 75
_BUTTON_STYLES = {"primary": "primary", "danger": "danger"}
# What the approval route reads back: the action ids, and the value of each button (the request id).
APPROVE, REJECT, GATEWAY = "vifgate_approve", "vifgate_reject", "vifgate_gateway"
DECISION_BLOCK = "vifgate_decision"
_OPTIONS_MAX, _CONFIRM_TITLE_MAX, _CONFIRM_TEXT_MAX = 100, 100, 300
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: a VIF name like `<!channel>` must not ping a whole channel."""
    # Every Slack link, mention and command starts with `<`; with these three escaped and
    # `verbatim` set, nothing in the text is turned into one. `*_~` and backticks can only style.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    # Cutting after escaping may split an entity (`&am…`): that shows as text, it never un-escapes.
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str, limit: int = _TEXT_MAX) -> MarkdownTextObject:
    """The one way text reaches a mrkdwn field: escaped, and not auto-linked (URLs, #channels, @mentions)."""
    return MarkdownTextObject(text=_cut(text, limit), verbatim=True)


def blocks(message: Message, *, buttons: bool = False) -> list[Block]:
    """Header, the sentence, the fields (ten per section), the buttons, then type and subject.

    With `buttons` and an open approval request, Approve / Reject (and a gateway choice when there are
    several) that Slack posts to the approvals route; without, people decide from the CLI line.
    """
    # plain_text is never parsed for links or mentions; emoji=False keeps `:shortcode:` as typed.
    header = HeaderBlock(text=PlainTextObject(text=_cut(message.title, _HEADER_MAX), emoji=False))
    result: list[Block] = [header, SectionBlock(text=_mrkdwn(escape(message.text)))]
    for chunk in batched(message.fields, _FIELDS_PER_SECTION):
        result.append(
            SectionBlock(fields=[_mrkdwn(f"*{escape(label)}*\n{escape(value)}", _FIELD_MAX) for label, value in chunk])
        )
    if message.actions:
        result.append(
            ActionsBlock(
                elements=[
                    ButtonElement(
                        text=_cut(action.label, _BUTTON_MAX),
                        url=action.url,
                        action_id=f"vifgate-{i}",
                        style=_BUTTON_STYLES.get(action.style),
                    )
                    for i, action in enumerate(message.actions)
                ]
            )
        )
    if buttons and message.decision is not None:
        result += _decision_blocks(message.decision, message.subject)
    result.append(ContextBlock(elements=[_mrkdwn(escape(f"{message.event_type} · {message.subject}"))]))
    return result


def _decision_blocks(decision: Decision, vif: str) -> list[Block]:
    """The gateway choice, Approve and Reject: values and options hold only the gatekeeper's own ids."""
    gateways = decision.gateways[:_OPTIONS_MAX]
    elements: list[Any] = []
    if len(gateways) > 1:
        elements.append(
            StaticSelectElement(
                action_id=GATEWAY,
                placeholder=PlainTextObject(text="Choose a gateway, then Approve", emoji=False),
                options=[Option(text=PlainTextObject(text=g, emoji=False), value=g) for g in gateways],
            )
        )
    if gateways:  # with none to confirm with, an approval is refused: only Reject is offered
        elements.append(
            ButtonElement(
                text=PlainTextObject(text="Approve", emoji=False),
                action_id=APPROVE,
                value=decision.request_id,
                style="primary",
            )
        )
    elements.append(
        ButtonElement(
            text=PlainTextObject(text="Reject", emoji=False),
            action_id=REJECT,
            value=decision.request_id,
            style="danger",
            # Deleting a VIF cannot be undone: the partner must create it again.
            confirm=ConfirmObject(
                title=PlainTextObject(text="Reject this VIF?", emoji=False),
                text=PlainTextObject(
                    text=_cut(f"VIF {vif} will be deleted; the partner must create it again.", _CONFIRM_TEXT_MAX),
                    emoji=False,
                ),
                confirm=PlainTextObject(text="Reject", emoji=False),
                deny=PlainTextObject(text="Cancel", emoji=False),
                style="danger",
            ),
        )
    )
    result: list[Block] = [ActionsBlock(block_id=DECISION_BLOCK, elements=elements)]
    if len(decision.gateways) > _OPTIONS_MAX:
        more = len(decision.gateways) - _OPTIONS_MAX
        result.append(
            ContextBlock(
                elements=[
                    _mrkdwn(escape(f"{more} more gateways are not listed: choose one with vifgate approve --gateway."))
                ]
            )
        )
    return result


def payload(message: Message, *, buttons: bool = False) -> dict[str, Any]:
    """The message body; `text` is what notifications and screen readers show."""
    return {
        "text": _cut(escape(message.text), _TEXT_MAX),
        "blocks": [block.to_dict() for block in blocks(message, buttons=buttons)],
        # A URL in a VIF name gets no preview card fetched and shown under the message.
        "unfurl_links": False,
        "unfurl_media": False,
    }


def request_update(message: Message, open: bool | None = None) -> dict[str, Any]:
    """A `response_url` body replacing the clicked message; the buttons stay only while the request is open.

    `open` defaults to whether the message still has an open request (messages.approval_status sets it).
    """
    keep = message.decision is not None if open is None else open
    return {
        "replace_original": True,
        "text": _cut(escape(message.text), _TEXT_MAX),
        "blocks": [block.to_dict() for block in blocks(message, buttons=keep)],
    }


def post_webhook(url: str, body: dict[str, Any], *, timeout: float) -> Reply:
    """Post to an incoming webhook; a non-2xx answer's body is Slack's error code (`no_service`)."""
    # slack_sdk annotates timeout as int but hands it to urllib, which takes seconds as a float.
    client = WebhookClient(url, timeout=timeout, logger=_SDK_LOGGER, retry_handlers=[])  # type: ignore[arg-type]
    response = client.send_dict(body)
    code = "" if 200 <= response.status_code < 300 else _code(response.body)
    return Reply(response.status_code, header(response.headers, "Retry-After"), code)


def post_message(token: str, channel: str, body: dict[str, Any], *, api_url: str, timeout: float) -> Reply:
    """chat.postMessage with a bot token; the API's `error` (invalid_auth, ratelimited...) is the code."""
    # Retries are the notifier's: slack_sdk's rate-limit handler sleeps without a budget.
    client = WebClient(
        token=token,
        base_url=api_url,
        timeout=timeout,  # type: ignore[arg-type]  # a float, as for WebhookClient
        logger=_SDK_LOGGER,
        retry_handlers=[],
    )
    try:
        response = client.chat_postMessage(channel=channel, **body)
    except SlackApiError as error:
        response = error.response
    data = response.data if isinstance(response.data, dict) else {}
    code = "" if data.get("ok") else _code(data.get("error")) or "unexpected_response"
    return Reply(response.status_code, header(response.headers, "Retry-After"), code)


def _code(text: object) -> str:
    """Slack's error code (`no_service`, `invalid_auth`), or "" for anything else, e.g. a proxy's HTML page."""
    text = text.strip() if isinstance(text, str) else ""
    return text if _ERROR_CODE.fullmatch(text) else ""
