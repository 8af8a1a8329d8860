"""Chat-ops: events formatted for people and posted to Slack, Mattermost, Teams or a signed webhook."""

from .messages import Action, Message, render
from .notifier import DeliveryError, Notifier, RetryLater, SecretUnavailable, Undeliverable

__all__ = [
    "Action",
    "DeliveryError",
    "Message",
    "Notifier",
    "RetryLater",
    "SecretUnavailable",
    "Undeliverable",
    "render",
]
