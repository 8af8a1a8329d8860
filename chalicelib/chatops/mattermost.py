"""Mattermost: a Slack-compatible incoming webhook that renders attachments, not Block Kit."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .messages import Decision, Message

if TYPE_CHECKING:
    from .links import Signer

COLORS = {"info": "#439FE0", "success": "#2EB67D", "warning": "#ECB22E", "danger": "#E01E5A"}
# Values longer than this get a full-width row: a deadline sentence in half a card is hard to read.
_SHORT_FIELD = 40
# A post message is at most 16383 characters; a longer webhook text is split into several posts.
_TEXT_MAX, _FIELD_MAX = 4000, 2000
# One Approve button per gateway up to this many; past it the choice is made from the CLI or a link page.
APPROVE_BUTTONS_MAX = 5

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
# marked (GFM) and the mobile app turn a bare `scheme://…`, `www.…` or e-mail address in plain text
# into a link: a VIF named after a look-alike login page would be one click away. A backslash before
# the `:` of `://`, the `.` of `www.` and the dots of an address's domain breaks each pattern and
# renders nothing (escapable punctuation in marked and CommonMark); other names keep their dots.
_AUTOLINK = re.compile(r":(?=//)|(?<![\w.])(?i:www)\.|(?<=@)[\w-]+(?:\.[\w-]+)+")

# A list marker where a string starts a line (each string is one line: no setext heading can form).
_LINE_START = re.compile(r"^(?:[-+]|\d{1,9}[.)])")
# The server reads a mention in any word that is, or after `.-:` contains, `@name`: only an `@`
# inside a word (alice@example.com) is never one. A zero-width space after the `@` ends the word.
_MENTION = re.compile(r"(?<![^\W_])@")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _ENTITIES.get(char) or "\\" + char


def _unlink(match: re.Match[str]) -> str:
    found = match.group()
    if found == ":":
        return "\\:"
    return found.replace(".", "\\.")


def escape(text: str) -> str:
    """Plain text as Mattermost Markdown that renders as that text: no link, image, mention or formatting."""
    text = _AUTOLINK.sub(_unlink, _SPECIAL.sub(_escape_char, text))
    start = _LINE_START.match(text)
    if start:
        split = start.end() - 1  # escape the marker itself: `\- item`, `1\. item`
        text = text[:split] + "\\" + text[split:]
    return _MENTION.sub("@\u200b", text)


def _cut(text: str, limit: int) -> str:
    # After escaping: a cut can split `&amp;` or leave a `\` before the `…`; neither un-escapes anything.
    return text if len(text) <= limit else text[: limit - 1] + "…"


def payload(message: Message, signer: Signer | None = None) -> dict[str, Any]:
    """`text` for notifications, one attachment with colour, title, fields and footer.

    With a `signer` and an open approval request, the attachment gets integration buttons posting
    signed tokens to the approvals route.
    """
    text = _cut(escape(message.text), _TEXT_MAX)
    return {"text": text, "attachments": [_attachment(message, text, signer)]}


def request_update(message: Message, open: bool | None = None, signer: Signer | None = None) -> dict[str, Any]:
    """The integration's answer that rewrites the clicked post: `{"update": {"message", "props"}}`.

    Closed: the card is replaced by one without buttons. Open: with a `signer`, a fresh card with fresh
    buttons; without one, `props` is left out, so Mattermost keeps the card and buttons the post had.
    """
    keep = message.decision is not None if open is None else open
    text = _cut(escape(message.text), _TEXT_MAX)
    if keep and signer is None:
        return {"update": {"message": text}}
    closed = message if keep else replace(message, decision=None)
    return {"update": {"message": text, "props": {"attachments": [_attachment(closed, text, signer)]}}}


def _attachment(message: Message, text: str, signer: Signer | None) -> dict[str, Any]:
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
    lines = []
    if message.actions:
        # Attachment buttons call an integration back server-side; a link opens the signed URL itself.
        lines.append(" · ".join(f"[{escape(action.label)}]({action.url})" for action in message.actions))
    if message.decision is not None and signer is not None:
        buttons, note = _decision_actions(message.decision, signer)
        attachment["actions"] = buttons
        if note:
            lines.append(escape(note))
    if lines:
        attachment["text"] = "\n\n".join(lines)
    return attachment


def _decision_actions(decision: Decision, signer: Signer) -> tuple[list[dict[str, Any]], str]:
    """One Approve per gateway (the gateway is inside its token) and one Reject; a sentence when that cannot be."""
    gateways = decision.gateways
    note = ""
    approve: list[tuple[str, str | None]] = []
    if not gateways:
        note = "No gateway is available to confirm with: confirm by hand, or add one to the rule."
    elif len(gateways) == 1:
        approve = [("Approve", gateways[0])]
    elif len(gateways) <= APPROVE_BUTTONS_MAX:
        approve = [(f"Approve with {gateway}", gateway) for gateway in gateways]
    else:
        note = (
            f"{len(gateways)} gateways to choose from: approve with vifgate approve {decision.vif_id} "
            "--gateway ID --as NAME, or from your own link (vifgate approvals lists them)."
        )
    buttons = [
        _button(f"approve{i}", label, "primary", signer.action_token(decision, "approve", gateway), signer)
        for i, (label, gateway) in enumerate(approve)
    ]
    buttons.append(_button("reject", "Reject", "danger", signer.action_token(decision, "reject", None), signer))
    return buttons, note


def _button(action_id: str, label: str, style: str, token: str, signer: Signer) -> dict[str, Any]:
    # Mattermost shows the name as plain text; ids are letters and digits only (it refuses `_` and `-`).
    return {
        "id": action_id,
        "type": "button",
        "name": label,
        "style": style,
        "integration": {"url": signer.mattermost_url, "context": {"token": token}},
    }
