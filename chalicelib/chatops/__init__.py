"""Chat-ops: events formatted for people and posted to Slack, Mattermost, Teams or a signed webhook."""

from .links import ApprovalLinks
from .messages import Action, Decision, Message, approval_status, render
from .notifier import DeliveryError, Notifier, RetryLater, SecretUnavailable, Undeliverable

__all__ = [
    "Action",
    "ApprovalLinks",
    "Decision",
    "DeliveryError",
    "Message",
    "Notifier",
    "RetryLater",
    "SecretUnavailable",
    "Undeliverable",
    "approval_status",
    "render",
]
