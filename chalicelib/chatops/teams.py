"""Microsoft Teams: an Adaptive Card posted to a Workflows ("When a Teams webhook request is received") URL."""

from __future__ import annotations

from datetime import datetime
from itertools import batched
from typing import TYPE_CHECKING, Any

from ..approvals.tokens import WeakKey
from .messages import Decision, Message, at

if TYPE_CHECKING:
    from .links import Signer

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
# 1.4 is what Teams renders on desktop, web and mobile alike (RichTextBlock is 1.2).
CARD_VERSION = "1.4"
COLORS = {"info": "Accent", "success": "Good", "warning": "Warning", "danger": "Attention"}
_ACTION_STYLES = {"default": "default", "primary": "positive", "danger": "destructive"}
# Teams shows a handful of buttons per set; a card must stay under 28 KB with every link in it.
_ACTIONS_PER_SET, LINKS_MAX = 5, 20


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


def card(message: Message, signer: Signer | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Title, the sentence, the fields as label/value rows, then type and subject; links as Action.OpenUrl.

    With a `signer` and an open approval request, one "Review as NAME" link per approver: Teams posts
    nothing back to us, so each person opens their own signed page (a link acts for its approver only).
    """
    # Every string of the message goes through literal(): Teams has no escape for its Markdown
    # (the mobile renderers do not honour backslashes), so data never goes where Markdown is read.
    body: list[dict[str, Any]] = [
        literal(message.title, size="Large", weight="Bolder", color=COLORS[message.severity]),
        literal(message.text),
        *(_fact(label, value) for label, value in message.fields),
    ]
    if message.decision is not None and signer is not None and now is not None:
        body += _review_links(message.decision, signer, now)
    body.append(literal(f"{message.event_type} · {message.subject}", isSubtle=True, size="Small"))
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


def _review_links(decision: Decision, signer: Signer, now: datetime) -> list[dict[str, Any]]:
    """A sentence, then the approvers' links in sets of a few buttons; past LINKS_MAX, where the rest find theirs."""
    expiry = signer.link_expiry(decision, now)
    if expiry <= now:
        return [literal("The approval request has expired: nobody can decide from here any more.")]
    links = [(name, url) for name in decision.approvers[:LINKS_MAX] if (url := _link(signer, decision, name, now))]
    items = [
        literal(f"Open your own link to review and decide (it acts for you only); the links work until {at(expiry)}.")
    ]
    for chunk in batched(links, _ACTIONS_PER_SET):
        items.append(
            {
                "type": "ActionSet",
                "actions": [
                    {"type": "Action.OpenUrl", "title": f"Review as {name}", "url": url} for name, url in chunk
                ],
            }
        )
    rest = len(decision.approvers) - len(links)
    if rest:
        items.append(
            literal(
                f"{rest} more approver{'' if rest == 1 else 's'}: find your link with vifgate approvals, "
                "or decide from Slack, Mattermost or the CLI."
            )
        )
    return items


def _link(signer: Signer, decision: Decision, name: str, now: datetime) -> str | None:
    """The approver's link, or None for a name a link cannot carry (config names always can)."""
    try:
        return signer.link(decision, name, now)
    except WeakKey:
        raise
    except ValueError:
        return None


def payload(message: Message, signer: Signer | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The envelope a Workflows webhook expects: one message with one Adaptive Card attachment."""
    content = card(message, signer, now)
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": content}
        ],
    }
