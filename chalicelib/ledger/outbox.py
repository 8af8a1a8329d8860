"""The outbox (target = "#outbox"): events written with their transition, deleted once SQS accepted them."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from .base import OUTBOX, LedgerBase, iso


@dataclass(frozen=True)
class OutboxItem:
    sort_key: str
    event_id: str
    group: str
    type: str
    body: str
    tries: int = 0  # refusals by SQS so far; a queue that cannot be reached counts none
    last_error: str | None = None  # SQS's error code for the last refusal
    # Set aside for an operator (`vifgate outbox`): the event stays, and its group's later events wait behind it.
    parked_reason: str | None = None
    parked_at: str | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> OutboxItem:
        def text(name: str) -> str | None:
            return item.get(name, {}).get("S")

        return cls(
            item["vif_id"]["S"],
            item["event_id"]["S"],
            item["group"]["S"],
            item["type"]["S"],
            item["body"]["S"],
            int(item.get("tries", {}).get("N", "0")),
            text("last_error"),
            text("parked_reason"),
            text("parked_at"),
        )

    @property
    def created_at(self) -> datetime | None:
        """When the event was written: its sort key starts with the writer's time in nanoseconds."""
        head = self.sort_key[:20]
        return datetime.fromtimestamp(int(head) / 1e9, UTC) if head.isdigit() else None


class OutboxScan(Iterator[OutboxItem]):
    """The outbox read oldest first, one Query page at a time, that can count what it has not yielded yet."""

    def __init__(self, client: Any, params: dict[str, Any]):
        self._client, self._params = client, params
        self._page: deque[dict[str, Any]] = deque()
        self._more = True  # another page may follow

    def __next__(self) -> OutboxItem:
        while not self._page:
            if not self._more:
                raise StopIteration
            self._read(self._params)
        return OutboxItem.from_item(self._page.popleft())

    def _read(self, params: dict[str, Any]) -> dict[str, Any]:
        page = self._client.query(**params)
        self._page.extend(page["Items"])
        self._more = "LastEvaluatedKey" in page
        if self._more:
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return page

    def rest_counts(self) -> tuple[int, int]:
        """(events, of which parked) not yielded yet: the page in hand, then the later pages' parked marks only."""
        total, parked = len(self._page), sum("parked_reason" in i for i in self._page)
        self._page.clear()
        counting = dict(self._params, ProjectionExpression="parked_reason")
        while self._more:
            self._read(counting)
            total += len(self._page)
            parked += sum("parked_reason" in i for i in self._page)
            self._page.clear()
        return total, parked


class Outbox(LedgerBase):
    def pending_events(self, limit: int = 1000) -> list[OutboxItem]:
        """Events not yet accepted by SQS (parked ones included), oldest first."""
        return list(itertools.islice(self.iter_events(), limit))

    def iter_events(self) -> OutboxScan:
        """Every event the outbox holds, oldest first; the next Query page is read only when wanted."""
        return OutboxScan(self.client, self._outbox_query())

    def outbox_counts(self) -> tuple[int, int]:
        """(events, of which parked) in the outbox; reads only the parked mark of each item."""
        return OutboxScan(self.client, self._outbox_query()).rest_counts()

    def _outbox_query(self, **extra: Any) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "KeyConditionExpression": "target = :t",
            "ExpressionAttributeValues": {":t": {"S": OUTBOX}},
            "ConsistentRead": True,
            **extra,
        }

    def delete_events(self, sort_keys: list[str]) -> int:
        """Drop events SQS has accepted (25 per BatchWriteItem, retrying what DynamoDB left); how many went."""
        deleted = 0
        for start in range(0, len(sort_keys), 25):
            requests = [
                {"DeleteRequest": {"Key": {"target": {"S": OUTBOX}, "vif_id": {"S": k}}}}
                for k in sort_keys[start : start + 25]
            ]
            deleted += len(requests)
            for attempt in range(5):
                left = self.client.batch_write_item(RequestItems={self.table: requests}).get("UnprocessedItems", {})
                requests = left.get(self.table, [])
                if not requests:
                    break
                time.sleep(0.05 * 2**attempt)
            # What is still left is sent again next cycle; its deduplication id makes that harmless.
            deleted -= len(requests)
        return deleted

    def refuse_event(self, item: OutboxItem, code: str, parked_reason: str | None = None) -> None:
        """Count one refusal by SQS, and park the event when a reason is given; nothing if it has left."""
        values = {":one": {"N": "1"}, ":zero": {"N": "0"}, ":code": {"S": code}, ":now": {"S": iso(datetime.now(UTC))}}
        update = "SET tries = if_not_exists(tries, :zero) + :one, last_error = :code, last_refused_at = :now"
        if parked_reason:
            update += ", parked_reason = :reason, parked_at = :now"
            values[":reason"] = {"S": parked_reason}
        self._outbox_update(item, UpdateExpression=update, ExpressionAttributeValues=values)

    def release_event(self, item: OutboxItem) -> bool:
        """Un-park an event and forget its refusals: the next cycle sends it; False if it has left."""
        return self._outbox_update(
            item,
            UpdateExpression="SET tries = :zero REMOVE parked_reason, parked_at, last_error, last_refused_at",
            ExpressionAttributeValues={":zero": {"N": "0"}},
        )

    def drop_event(self, item: OutboxItem) -> bool:
        """Delete an event that will never be sent (an operator's choice); False if it has left."""
        return self._if_still_there(self.client.delete_item, item)

    def _outbox_update(self, item: OutboxItem, **update: Any) -> bool:
        return self._if_still_there(self.client.update_item, item, **update)

    def _if_still_there(self, call: Callable[..., Any], item: OutboxItem, **request: Any) -> bool:
        """Write to an outbox event only while it exists; False once another poller has sent it.

        Unconditional, an update would recreate a sent event as a husk that is never sent or deleted.
        """
        try:
            call(
                TableName=self.table,
                Key={"target": {"S": OUTBOX}, "vif_id": {"S": item.sort_key}},
                ConditionExpression="attribute_exists(event_id)",
                **request,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True
