"""What the gatekeeper remembers about each VIF, in DynamoDB: one item per (target, VIF).

The table's key is (target, vif_id), so one Query reads a whole target's records per cycle.
A per-target item (vif_id = "#target") remembers when the target was last polled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

EXPIRY = timedelta(days=7)
# A VIF first seen in `confirming` is known to be at most one poll old only if the previous poll
# was recent; after a longer gap (or at the first poll) its deadline may be earlier than we think.
CERTAINTY_WINDOW = timedelta(minutes=15)
CLAIM_TTL = timedelta(minutes=5)
TARGET_ITEM = "#target"

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


class ClaimLost(Exception):
    """Another poller claimed this VIF first (or it was confirmed already)."""


class Ledger:
    def __init__(self, client, table: str):
        self.client = client
        self.table = table

    def load(self, target: str) -> TargetRecords:
        """All records of one target, in as few Query pages as DynamoDB allows."""
        vifs: dict[str, VifRecord] = {}
        last_polled_at = None
        params: dict[str, Any] = {"TableName": self.table, "KeyConditionExpression": "target = :t",
                                  "ExpressionAttributeValues": {":t": {"S": target}}, "ConsistentRead": True}
        while True:
            page = self.client.query(**params)
            for item in page["Items"]:
                if item["vif_id"]["S"] == TARGET_ITEM:
                    last_polled_at = parse_iso(item.get("last_polled_at", {}).get("S"))
                else:
                    record = VifRecord.from_item(item)
                    vifs[record.vif_id] = record
            if "LastEvaluatedKey" not in page:
                return TargetRecords(target, vifs, last_polled_at)
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def save(self, record: VifRecord) -> None:
        """Write what was observed and decided, leaving claim attributes alone.

        An update, not a put: a poller holding an older copy must not erase another poller's
        claim or its confirmed_at. None is written as NULL except confirmed_at, which is set once.
        """
        names = [f.name for f in fields(record) if f.name not in ("target", "vif_id")]
        names = [n for n in names if not (n == "confirmed_at" and record.confirmed_at is None)]
        self.client.update_item(
            TableName=self.table,
            Key={"target": {"S": record.target}, "vif_id": {"S": record.vif_id}},
            UpdateExpression="SET " + ", ".join(f"#{n} = :{n}" for n in names),
            ExpressionAttributeNames={f"#{n}": n for n in names},
            ExpressionAttributeValues={f":{n}": _ser.serialize(getattr(record, n)) for n in names},
        )

    def mark_polled(self, target: str, at: datetime) -> None:
        self.client.put_item(TableName=self.table, Item={
            "target": {"S": target}, "vif_id": {"S": TARGET_ITEM}, "last_polled_at": {"S": iso(at)}})

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
                ConditionExpression=("attribute_exists(vif_id) AND attribute_not_exists(confirmed_at) "
                                     "AND (attribute_not_exists(claim_until) OR claim_until < :now)"),
                ExpressionAttributeValues={":me": {"S": claimant}, ":until": {"S": iso(now + CLAIM_TTL)},
                                           ":now": {"S": iso(now)}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ClaimLost(vif_id) from None
            raise

    def release(self, target: str, vif_id: str, claimant: str) -> None:
        """Give a claim back after a definite failure, so the next cycle may try again."""
        try:
            self.client.update_item(
                TableName=self.table, Key={"target": {"S": target}, "vif_id": {"S": vif_id}},
                UpdateExpression="REMOVE claim_by, claim_until", ConditionExpression="claim_by = :me",
                ExpressionAttributeValues={":me": {"S": claimant}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise


def table_definition(name: str) -> dict[str, Any]:
    """CreateTable arguments; infra/template.json declares the same table for deployment."""
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": "target", "KeyType": "HASH"},
                      {"AttributeName": "vif_id", "KeyType": "RANGE"}],
        "AttributeDefinitions": [{"AttributeName": "target", "AttributeType": "S"},
                                 {"AttributeName": "vif_id", "AttributeType": "S"}],
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
