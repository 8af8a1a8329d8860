"""Mattermost: a Slack-compatible incoming webhook that renders attachments, not Block Kit."""

from __future__ import annotations

import re
from typing import Any

from .messages import Message

COLORS = {"info": "#439FE0", "success": "#2EB67D", "warning": "#ECB22E", "danger": "#E01E5A"}
# Values longer than this get a full-width row: a deadline sentence in half a card is hard to read.
_SHORT_FIELD = 40
# `@channel`, `@all`, `@here` or `@someone` at the start of a word is a mention in Mattermost.
_MENTION = re.compile(r"(?<![\w.@-])@(?=[\w.-])")


def defang(text: str) -> str:
    """Breaks @-mentions with a zero-width space: a partner-chosen VIF name must not ping a channel."""
    return _MENTION.sub("@\u200b", text)


def payload(message: Message) -> dict[str, Any]:
    """`text` for notifications, one attachment with colour, title, fields and footer."""
    attachment: dict[str, Any] = {
        "fallback": defang(message.text),
        "color": COLORS[message.severity],
        "title": defang(message.title),
        "fields": [
            {"title": label, "value": defang(value), "short": len(value) <= _SHORT_FIELD}
            for label, value in message.fields
        ],
        "footer": defang(f"{message.event_type} · {message.subject}"),
    }
    if message.actions:
        # Attachment buttons call an integration back server-side; a link opens the signed URL itself.
        attachment["text"] = " · ".join(f"[{action.label}]({action.url})" for action in message.actions)
    return {"text": defang(message.text), "attachments": [attachment]}
