"""What the gatekeeper remembers, in one DynamoDB table keyed (target, vif_id).

- one item per (target, VIF): one Query reads a whole target's records per cycle;
- a per-target item (vif_id = "#target"): when it was last polled, whether it is failing;
- the outbox (target = "#outbox"): events written in the same transaction as the transition
  they describe, deleted only once SQS has accepted them;
- delivery marks (target = "#delivered"): which chat destination already got which event.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from .events import to_json

EXPIRY = timedelta(days=7)
CLAIM_TTL = timedelta(minutes=5)
TARGET_ITEM = "#target"
OUTBOX = "#outbox"
DELIVERED = "#delivered"
DELIVERY_MEMORY = timedelta(days=14)  # TTL of delivery marks; SQS keeps a message 4 days by default
_sequence = itertools.count()

_ser, _de = TypeSerializer(), TypeDeserializer()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; the API's numbers are all integers."""
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class VifRecord:
    target: str
    vif_id: str
    first_seen_at: str
    state: str
    state_since: str
    deadline: str | None = None
    deadline_certain: bool = False
    last_decision: str | None = None
    decision_reason: str | None = None
    rule: str | None = None
    gateway: str | None = None
    confirmed_at: str | None = None
    gone_at: str | None = None
    approval_requested_at: str | None = None
    alerts_sent: list[str] = field(default_factory=list)
    stuck_reported_at: str | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> VifRecord:
        names = {f.name for f in fields(cls)}
        values = {k: _plain(_de.deserialize(v)) for k, v in item.items() if k in names}
        return cls(**values)


@dataclass
class TargetRecords:
    target: str
    vifs: dict[str, VifRecord]
    last_polled_at: datetime | None
    failing_since: datetime | None = None


@dataclass(frozen=True)
class OutboxItem:
    sort_key: str
    event_id: str
    group: str
    type: str
    body: str


class ClaimLost(Exception):
    """Another poller claimed this VIF first (or it was confirmed already)."""


class Ledger:
    def __init__(self, client, table: str):
        self.client = client
        self.table = table

    def load(self, target: str) -> TargetRecords:
        """All records of one target, in as few Query pages as DynamoDB allows."""
        vifs: dict[str, VifRecord] = {}
        status: dict[str, Any] = {}
        params: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "target = :t",
            "ExpressionAttributeValues": {":t": {"S": target}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**params)
            for item in page["Items"]:
                if item["vif_id"]["S"] == TARGET_ITEM:
                    status = item
                else:
                    record = VifRecord.from_item(item)
                    vifs[record.vif_id] = record
            if "LastEvaluatedKey" not in page:
                return TargetRecords(
                    target,
                    vifs,
                    parse_iso(status.get("last_polled_at", {}).get("S")),
                    parse_iso(status.get("failing_since", {}).get("S")),
                )
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def failing_since(self, target: str) -> datetime | None:
        item = self.client.get_item(
            TableName=self.table, ConsistentRead=True, Key={"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}}
        ).get("Item", {})
        return parse_iso(item.get("failing_since", {}).get("S"))

    def save(self, record: VifRecord, events: Iterable = ()) -> None:
        """Write what was observed and decided, and its events, in one transaction.

        An update, not a put: a poller holding an older copy must not erase another poller's
        claim or its confirmed_at. None is written as NULL except confirmed_at, which is set once.
        """
        names = [f.name for f in fields(record) if f.name not in ("target", "vif_id")]
        names = [n for n in names if not (n == "confirmed_at" and record.confirmed_at is None)]
        update = {
            "TableName": self.table,
            "Key": {"target": {"S": record.target}, "vif_id": {"S": record.vif_id}},
            "UpdateExpression": "SET " + ", ".join(f"#{n} = :{n}" for n in names),
            "ExpressionAttributeNames": {f"#{n}": n for n in names},
            "ExpressionAttributeValues": {f":{n}": _ser.serialize(getattr(record, n)) for n in names},
        }
        self._write(update, events)

    def _write(self, update: dict[str, Any], events: Iterable) -> None:
        """One update, plus its events in the outbox, all or nothing."""
        puts = [{"Put": {"TableName": self.table, "Item": _outbox_item(e)}} for e in events]
        if not puts:
            self.client.update_item(**update)
            return
        for attempt in range(4):
            try:
                self.client.transact_write_items(TransactItems=[{"Update": update}, *puts])
                return
            except ClientError as exc:
                # Another poller writing the same VIF at that instant cancels the transaction; the
                # write is idempotent (same sort keys), so trying again is safe.
                reasons = exc.response.get("CancellationReasons") or []
                conflict = any(r.get("Code") == "TransactionConflict" for r in reasons)
                if exc.response["Error"]["Code"] != "TransactionCanceledException" or not conflict or attempt == 3:
                    raise
                time.sleep(0.05 * 2**attempt)

    def mark_polled(self, target: str, at: datetime, events: Iterable = ()) -> None:
        """The target answered: remember when, and end any failing spell (with its events)."""
        self._write(
            {
                "TableName": self.table,
                "Key": {"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}},
                "UpdateExpression": "SET last_polled_at = :at REMOVE failing_since",
                "ExpressionAttributeValues": {":at": {"S": iso(at)}},
            },
            events,
        )

    def mark_failing(self, target: str, since: datetime, events: Iterable = ()) -> None:
        self._write(
            {
                "TableName": self.table,
                "Key": {"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}},
                "UpdateExpression": "SET failing_since = if_not_exists(failing_since, :since)",
                "ExpressionAttributeValues": {":since": {"S": iso(since)}},
            },
            events,
        )

    def pending_events(self, limit: int = 1000) -> list[OutboxItem]:
        """Events not yet accepted by SQS, oldest first."""
        items: list[OutboxItem] = []
        params: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "target = :t",
            "ExpressionAttributeValues": {":t": {"S": OUTBOX}},
            "ConsistentRead": True,
        }
        while len(items) < limit:
            page = self.client.query(**params)
            items += [
                OutboxItem(i["vif_id"]["S"], i["event_id"]["S"], i["group"]["S"], i["type"]["S"], i["body"]["S"])
                for i in page["Items"]
            ]
            if "LastEvaluatedKey" not in page:
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return items[:limit]

    def delete_events(self, sort_keys: list[str]) -> None:
        """Drop events SQS has accepted (25 per BatchWriteItem, retrying what DynamoDB left)."""
        for start in range(0, len(sort_keys), 25):
            requests = [
                {"DeleteRequest": {"Key": {"target": {"S": OUTBOX}, "vif_id": {"S": k}}}}
                for k in sort_keys[start : start + 25]
            ]
            for attempt in range(5):
                left = self.client.batch_write_item(RequestItems={self.table: requests}).get("UnprocessedItems", {})
                requests = left.get(self.table, [])
                if not requests:
                    break
                time.sleep(0.05 * 2**attempt)
            # What is still left is sent again next cycle; its deduplication id makes that harmless.

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

    def claim(self, target: str, vif_id: str, claimant: str, now: datetime) -> None:
        """Claim the right to confirm (or reject) a VIF; raises ClaimLost if someone holds it.

        The claim is written before the API call, so two pollers at once act once. A claim
        left by a poller that died expires after CLAIM_TTL so the VIF is not stuck.
        """
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"target": {"S": target}, "vif_id": {"S": vif_id}},
                UpdateExpression="SET claim_by = :me, claim_until = :until",
                ConditionExpression=(
                    "attribute_exists(vif_id) AND attribute_not_exists(confirmed_at) "
                    "AND (attribute_not_exists(claim_until) OR claim_until < :now)"
                ),
                ExpressionAttributeValues={
                    ":me": {"S": claimant},
                    ":until": {"S": iso(now + CLAIM_TTL)},
                    ":now": {"S": iso(now)},
                },
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ClaimLost(vif_id) from None
            raise

    def release(self, target: str, vif_id: str, claimant: str) -> None:
        """Give a claim back after a definite failure, so the next cycle may try again."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"target": {"S": target}, "vif_id": {"S": vif_id}},
                UpdateExpression="REMOVE claim_by, claim_until",
                ConditionExpression="claim_by = :me",
                ExpressionAttributeValues={":me": {"S": claimant}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise


def _outbox_item(event) -> dict[str, Any]:
    """The sort key keeps creation order: a VIF's events leave in the order they happened."""
    sort_key = f"{time.time_ns():020d}-{next(_sequence):09d}-{event.id}"
    return {
        "target": {"S": OUTBOX},
        "vif_id": {"S": sort_key},
        "event_id": {"S": event.id},
        "group": {"S": event.subject},
        "type": {"S": event.type},
        "body": {"S": to_json(event)},
    }


def table_definition(name: str) -> dict[str, Any]:
    """CreateTable arguments; infra/template.json declares the same table for deployment."""
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": "target", "KeyType": "HASH"}, {"AttributeName": "vif_id", "KeyType": "RANGE"}],
        "AttributeDefinitions": [
            {"AttributeName": "target", "AttributeType": "S"},
            {"AttributeName": "vif_id", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_table(client, name: str) -> None:
    """Create the ledger table (sandbox, demo and tests); a no-op when it already exists."""
    try:
        client.create_table(**table_definition(name))
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):  # delivery marks expire by themselves
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )
