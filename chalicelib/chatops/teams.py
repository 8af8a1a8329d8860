"""Microsoft Teams: an Adaptive Card posted to a Workflows ("When a Teams webhook request is received") URL."""

from __future__ import annotations

from typing import Any

from .messages import Message

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
# 1.4 is what Teams renders on desktop, web and mobile alike (RichTextBlock is 1.2).
CARD_VERSION = "1.4"
COLORS = {"info": "Accent", "success": "Good", "warning": "Warning", "danger": "Attention"}
_ACTION_STYLES = {"default": "default", "primary": "positive", "danger": "destructive"}


def literal(text: str, **style: Any) -> dict[str, Any]:
    """`text` shown as it is: a RichTextBlock's TextRun is never parsed as Markdown, unlike a TextBlock or Fact."""
    return {"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text, **style}]}


def _fact(label: str, value: str) -> dict[str, Any]:
    """A FactSet row built from literal text: the same weights on every row keep the values aligned."""
    return {
        "type": "ColumnSet",
        "spacing": "Small",
        "columns": [
            {"type": "Column", "width": 1, "items": [literal(label, weight="Bolder")]},
            {"type": "Column", "width": 3, "items": [literal(value)]},
        ],
    }


def card(message: Message) -> dict[str, Any]:
    """Title, the sentence, the fields as label/value rows, then type and subject; links as Action.OpenUrl."""
    # Every string of the message goes through literal(): Teams has no escape for its Markdown
    # (the mobile renderers do not honour backslashes), so data never goes where Markdown is read.
    body: list[dict[str, Any]] = [
        literal(message.title, size="Large", weight="Bolder", color=COLORS[message.severity]),
        literal(message.text),
        *(_fact(label, value) for label, value in message.fields),
        literal(f"{message.event_type} · {message.subject}", isSubtle=True, size="Small"),
    ]
    content: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    if message.actions:
        content["actions"] = [
            {"type": "Action.OpenUrl", "title": action.label, "url": action.url, "style": _ACTION_STYLES[action.style]}
            for action in message.actions
        ]
    return content


def payload(message: Message) -> dict[str, Any]:
    """The envelope a Workflows webhook expects: one message with one Adaptive Card attachment."""
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card(message)}
        ],
    }
