"""Mattermost: a Slack-compatible incoming webhook that renders attachments, not Block Kit."""

from __future__ import annotations

import re
from typing import Any

from .messages import Message

COLORS = {"info": "#439FE0", "success": "#2EB67D", "warning": "#ECB22E", "danger": "#E01E5A"}
# Values longer than this get a full-width row: a deadline sentence in half a card is hard to read.
_SHORT_FIELD = 40
# A post message is at most 16383 characters; a longer webhook text is split into several posts.
_TEXT_MAX, _FIELD_MAX = 4000, 2000

# What Mattermost does with a webhook's text, fallback aside: the server turns `<!channel>` into
# `@channel` and `<url|text>` into a Markdown link, then finds mentions in the Markdown's text; the
# web app (marked) and the mobile app (commonmark) render Markdown, Slack-free.
#
# `& < > \` become HTML entities: no `<` is left for the Slack conversions or marked's `<url>`
# autolinks, and a backslash in the data cannot cancel one of our escapes. Both Markdown parsers
# decode entities to literal text.
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "&#92;"}
# Markdown punctuation gets a backslash: links and images (`[`/`]`), emphasis and strike (`*_~`),
# code (backtick), headings (`#`) and tables (`|`). These are in marked's escape set as well as
# CommonMark's, so both render the character alone; `(`, `)`, `.`, `-` are left as they are
# (harmless without `[` or outside a line start), so ordinary names read unchanged.
_SPECIAL = re.compile(r"[&<>\\`*_\[\]#|~]")
# A list marker where a string starts a line (each string is one line: no setext heading can form).
_LINE_START = re.compile(r"^(?:[-+]|\d{1,9}[.)])")
# The server reads a mention in any word that is, or after `.-:` contains, `@name`: only an `@`
# inside a word (alice@example.com) is never one. A zero-width space after the `@` ends the word.
_MENTION = re.compile(r"(?<![^\W_])@")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _ENTITIES.get(char) or "\\" + char


def escape(text: str) -> str:
    """Plain text as Mattermost Markdown that renders as that text: no link, image, mention or formatting."""
    text = _SPECIAL.sub(_escape_char, text)
    start = _LINE_START.match(text)
    if start:
        split = start.end() - 1  # escape the marker itself: `\- item`, `1\. item`
        text = text[:split] + "\\" + text[split:]
    return _MENTION.sub("@\u200b", text)


def _cut(text: str, limit: int) -> str:
    # After escaping: a cut can split `&amp;` or leave a `\` before the `…`; neither un-escapes anything.
    return text if len(text) <= limit else text[: limit - 1] + "…"


def payload(message: Message) -> dict[str, Any]:
    """`text` for notifications, one attachment with colour, title, fields and footer."""
    text = _cut(escape(message.text), _TEXT_MAX)
    attachment: dict[str, Any] = {
        "fallback": text,
        "color": COLORS[message.severity],
        "title": _cut(escape(message.title), _FIELD_MAX),
        "fields": [
            {"title": escape(label), "value": _cut(escape(value), _FIELD_MAX), "short": len(value) <= _SHORT_FIELD}
            for label, value in message.fields
        ],
        # Newer Mattermost renders the footer as Markdown too.
        "footer": _cut(escape(f"{message.event_type} · {message.subject}"), _FIELD_MAX),
    }
    if message.actions:
        # Attachment buttons call an integration back server-side; a link opens the signed URL itself.
        attachment["text"] = " · ".join(f"[{escape(action.label)}]({action.url})" for action in message.actions)
    return {"text": text, "attachments": [attachment]}
