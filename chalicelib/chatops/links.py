"""What a chat message needs to let people answer an approval request: signed links and action tokens.

A link is a bearer credential: it is minted per approver, only into a chat payload, and never put
in an event, an exception text or a log line. The signing key is read when a message is built, so
a secret store that fails for now fails that delivery (retried), not the notifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..approvals.tokens import link_expiry, mint_action, mint_link
from ..config import Approvals, SecretRef
from .messages import Decision

MATTERMOST_PATH = "/approvals/mattermost"
LINK_PATH = "/approvals/link/"


@dataclass(frozen=True)
class ApprovalLinks:
    """The approvals section's public URL, link lifetime and signing key (read on use, never shown)."""

    base_url: str
    link_ttl: timedelta
    read_key: Callable[[], str] = field(repr=False)
    # Slack buttons post to {base_url}/approvals/slack, verified with the Slack app's signing secret:
    # without one configured, every click would be refused, so no buttons are shown.
    slack: bool = True

    @classmethod
    def from_policy(cls, approvals: Approvals | None, resolve: Callable[[SecretRef], str]) -> ApprovalLinks | None:
        """From the policy's `approvals` section; None when it has no base_url or no signing_key."""
        if approvals is None or not approvals.base_url or approvals.signing_key is None:
            return None
        ref = approvals.signing_key
        return cls(
            base_url=approvals.base_url.rstrip("/"),
            link_ttl=approvals.link_ttl,
            read_key=lambda: resolve(ref),
            slack=approvals.slack_signing_secret is not None,
        )

    def signer(self) -> Signer:
        """Reads the key once for one message; raises what the resolver raises."""
        return Signer(self, self.read_key())


@dataclass(frozen=True)
class Signer:
    """Mints the tokens of one message with a key already read; a short key raises tokens.WeakKey."""

    links: ApprovalLinks
    key: str = field(repr=False)

    @property
    def mattermost_url(self) -> str:
        return self.links.base_url + MATTERMOST_PATH

    def action_token(self, decision: Decision, action: str, gateway: str | None) -> str:
        """A Mattermost button's token: valid for the request's life, for this action (and gateway) only."""
        return mint_action(self.key, decision.request_id, action, gateway, decision.expires_at)

    def link_expiry(self, decision: Decision, now: datetime) -> datetime:
        return link_expiry(now, decision.expires_at, self.links.link_ttl)

    def link(self, decision: Decision, approver: str, now: datetime) -> str:
        """`{base_url}/approvals/link/<token>`: acts for `approver` only, until link_ttl or the request's end."""
        token = mint_link(self.key, decision.request_id, approver, self.link_expiry(decision, now))
        return self.links.base_url + LINK_PATH + token
