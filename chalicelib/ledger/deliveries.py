"""Delivery marks (target = "#delivered"): which chat destination already got which event."""

from __future__ import annotations

from datetime import datetime, timedelta

from .base import LedgerBase, iso

DELIVERED = "#delivered"
DELIVERY_MEMORY = timedelta(days=14)  # TTL of delivery marks; SQS keeps a message 4 days by default


class Deliveries(LedgerBase):
    def delivered(self, event_id: str, destination: str) -> bool:
        key = {"target": {"S": DELIVERED}, "vif_id": {"S": f"{event_id}#{destination}"}}
        return "Item" in self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True)

    def mark_delivered(self, event_id: str, destination: str, now: datetime, outcome: str = "sent") -> None:
        self.client.put_item(
            TableName=self.table,
            Item={
                "target": {"S": DELIVERED},
                "vif_id": {"S": f"{event_id}#{destination}"},
                "outcome": {"S": outcome},
                "at": {"S": iso(now)},
                "expires_at": {"N": str(int((now + DELIVERY_MEMORY).timestamp()))},
            },
        )
