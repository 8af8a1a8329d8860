"""One JSON POST on the standard library, and what a destination answered."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message as Headers

USER_AGENT = "vif-gatekeeper"
_MAX_BODY = 64 * 1024  # an error page is enough to diagnose; a huge one is not worth reading


@dataclass(frozen=True)
class Reply:
    """A destination's answer: HTTP status, its Retry-After header, and an API error code if any."""

    status: int
    retry_after: str | None = None
    code: str = ""

    @property
    def ok(self) -> bool:
        # Slack's Web API answers 200 with {"ok": false, "error": ...}: the code decides, not only the status.
        return 200 <= self.status < 300 and not self.code

    @property
    def rate_limited(self) -> bool:
        return self.status == 429 or self.code == "ratelimited"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses redirects, so a 3xx comes back as the answer."""

    # urllib would follow a 302 with a GET that drops the body and report the GET's 200 as delivered,
    # and a signed body or a URL-borne secret has no business going to wherever a redirect points.
    def redirect_request(self, *args: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def header(headers: Mapping[str, str] | Headers | None, name: str) -> str | None:
    """A header's value whatever the case of its name (dicts from slack_sdk are case-sensitive)."""
    wanted = name.lower()
    return next((value for key, value in (headers or {}).items() if key.lower() == wanted), None)


def post_json(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> tuple[int, Headers, bytes]:
    """POST `body` and return (status, headers, body) for any HTTP status.

    No connection, a timeout or a broken answer raise OSError or http.client.HTTPException;
    a URL urllib cannot use raises ValueError.
    """
    request = urllib.request.Request(url, data=body, method="POST", headers={"User-Agent": USER_AGENT, **headers})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read(_MAX_BODY)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read(_MAX_BODY)


def reply(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> Reply:
    """post_json, reduced to what decides the outcome."""
    status, answer_headers, _ = post_json(url, body, headers, timeout=timeout)
    return Reply(status, header(answer_headers, "Retry-After"))
