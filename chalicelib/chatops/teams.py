"""Microsoft Teams: an Adaptive Card posted to a Workflows ("When a Teams webhook request is received") URL."""

from __future__ import annotations

from typing import Any

from .messages import Message

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
# 1.4 is what Teams renders on desktop, web and mobile alike.
CARD_VERSION = "1.4"
COLORS = {"info": "Accent", "success": "Good", "warning": "Warning", "danger": "Attention"}
_ACTION_STYLES = {"default": "default", "primary": "positive", "danger": "destructive"}


def card(message: Message) -> dict[str, Any]:
    """Title, the sentence, a FactSet of the fields, then type and subject; links as Action.OpenUrl."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": message.title,
            "size": "Large",
            "weight": "Bolder",
            "color": COLORS[message.severity],
            "wrap": True,
        },
        {"type": "TextBlock", "text": message.text, "wrap": True},
    ]
    if message.fields:  # an empty FactSet is invalid
        body.append({"type": "FactSet", "facts": [{"title": label, "value": value} for label, value in message.fields]})
    body.append(
        {
            "type": "TextBlock",
            "text": f"{message.event_type} · {message.subject}",
            "isSubtle": True,
            "size": "Small",
            "wrap": True,
        }
    )
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
