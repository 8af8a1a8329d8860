"""Chat-ops: events formatted for people and posted to Slack, Mattermost, Teams or a signed webhook."""

from .messages import Action, Message, render
from .notifier import DeliveryError, Notifier, RetryLater, SecretUnavailable, Undeliverable
from .webhook import sign, verify

__all__ = [
    "Action",
    "DeliveryError",
    "Message",
    "Notifier",
    "RetryLater",
    "SecretUnavailable",
    "Undeliverable",
    "render",
    "sign",
    "verify",
]
