"""The signed link's pages: the confirmation form, the result, and the refusals (plain HTML, no script).

Every string that reaches a page goes through `_text` (one printable line, then html.escape with
quotes), so a VIF named `<script>` or `"><img onerror=…>` shows as exactly those characters.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..chatops.messages import at, shown
from ..ledger import VifRecord
from .model import ApprovalRequest

# The token is in the URL and is a bearer credential: no cache keeps the page, no Referer carries
# the URL away, no other origin frames the form or receives it, and nothing runs.
HEADERS: Mapping[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}

_STYLE = """
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:1rem;
color:#1d1d1f;background:#f6f7f9}
main{max-width:34rem;margin:0 auto;background:#fff;border-radius:10px;padding:1.2rem 1.2rem 1.4rem;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{font-size:1.3rem;margin:0 0 .6rem}
p{margin:.5rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem .9rem;margin:1rem 0}
dt{color:#5a5f66}
dd{margin:0;overflow-wrap:anywhere}
label{display:block;margin:1rem 0 .3rem;font-weight:600}
select,button{font:inherit;width:100%;padding:.75rem;border-radius:8px;box-sizing:border-box}
select{border:1px solid #b6bcc4;background:#fff}
.buttons{display:flex;gap:.75rem;margin-top:1.2rem}
button{border:0;color:#fff;font-weight:600;cursor:pointer}
.approve{background:#1a7f37}
.reject{background:#b42318}
.note{color:#5a5f66;font-size:.9rem}
.status{font-weight:600}
@media (max-width:30rem){body{padding:.5rem}main{padding:1rem}dl{grid-template-columns:1fr;gap:0}
dt{font-size:.85rem;margin-top:.45rem}dt:first-child{margin-top:0}}
"""


def _text(value: object) -> str:
    """A value from outside as one printable line, escaped for HTML text and attributes alike."""
    return html.escape(shown(str(value)), quote=True)


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _when(iso: str | None) -> str | None:
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return at(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _deadline(record: VifRecord) -> str | None:
    when = _when(record.deadline)
    if when is None:
        return None
    # An uncertain deadline counts from when the gatekeeper first saw the VIF: it may come sooner.
    return when if record.deadline_certain else f"{when} at the latest (possibly earlier)"


def _facts(
    request: ApprovalRequest, record: VifRecord, approver: str, link_expires_at: datetime | None
) -> list[tuple[str, Any]]:
    vif = record.snapshot
    asn = vif.get("asnLong", vif.get("asn"))
    return [
        ("VIF", vif.get("virtualInterfaceName") or "(no name)"),
        ("VIF id", record.vif_id),
        ("Account", vif.get("ownerAccount")),
        ("Connection", vif.get("connectionId")),
        ("VLAN", vif.get("vlan")),
        ("ASN", asn),
        ("Location", vif.get("location")),
        ("Target", record.target),
        ("Deadline", _deadline(record)),
        ("Why asked", record.decision_reason),
        ("Acting as", approver),
        ("Progress", request.progress()),
        ("Request open until", _when(request.expires_at)),
        ("This link works until", at(link_expires_at) if link_expires_at else None),
    ]


def _list(facts: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<dt>{_text(label)}</dt><dd>{_text(value)}</dd>" for label, value in facts if value is not None)
    return f"<dl>{rows}</dl>"


def confirmation(
    request: ApprovalRequest, record: VifRecord, approver: str, link_expires_at: datetime | None = None
) -> str:
    """What a link shows: the VIF, who the link acts for, and one form with Approve and Reject."""
    name = record.snapshot.get("virtualInterfaceName") or record.vif_id
    if len(request.gateways) > 1 and request.gateway is None:
        options = "".join(f'<option value="{_text(g)}">{_text(g)}</option>' for g in request.gateways)
        choice = (
            '<label for="gateway">Gateway to confirm with</label>'
            f'<select id="gateway" name="gateway">{options}</select>'
        )
    elif request.gateway or request.gateways:
        gateway = request.gateway or request.gateways[0]
        choice = (
            f"<p>Approving confirms it with gateway <b>{_text(gateway)}</b>.</p>"
            f'<input type="hidden" name="gateway" value="{_text(gateway)}">'
        )
    else:
        choice = '<p class="note">No available gateway to confirm with: only Reject can be carried out.</p>'
    # No action attribute: the form posts back to this very URL, which carries the token.
    form = (
        f'<form method="post">{choice}<div class="buttons">'
        '<button class="approve" type="submit" name="action" value="approve">Approve</button>'
        '<button class="reject" type="submit" name="action" value="reject">Reject</button>'
        "</div></form>"
    )
    body = (
        f"<h1>Approve VIF {_text(name)}?</h1>"
        "<p>Approving lets the gatekeeper confirm this hosted VIF; rejecting deletes it.</p>"
        f"{_list(_facts(request, record, approver, link_expires_at))}{form}"
        '<p class="note">This link acts for the person named above and works once. Do not forward it.</p>'
    )
    return _document(f"Approve VIF {name}?", body)


def result(title: str, text: str, request: ApprovalRequest | None = None) -> str:
    """What a person sees after voting: what was recorded and what happens next."""
    facts = [("Request", request.request_id), ("Progress", request.progress())] if request else []
    body = f'<h1>{_text(title)}</h1><p class="status">{_text(text)}</p>{_list(facts)}'
    return _document(title, body)


def refusal(status: int, reason: str) -> str:
    """A refused link: the status and its reason, nothing else."""
    titles = {400: "Bad request", 401: "Link not valid", 403: "Not allowed", 404: "Unknown request"}
    titles |= {409: "Already decided", 410: "Link expired", 503: "Not available", 500: "Something went wrong"}
    title = titles.get(status, "Refused")
    return _document(title, f'<h1>{_text(title)}</h1><p class="status">{_text(reason)}</p>')
