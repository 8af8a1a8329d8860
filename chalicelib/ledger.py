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
from collections.abc import Callable, Iterable, Iterator
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
    rejected_at: str | None = None
    gone_at: str | None = None
    approval_requested_at: str | None = None
    alerts_sent: list[str] = field(default_factory=list)
    stuck_reported_at: str | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    # Since when the VIF has been listed without a gap: a disappearance names the spell it ends.
    seen_since: str | None = None
    # Written only by claim()/release(), never by save(): a poller's copy must not overwrite another's.
    claim: Claim | None = field(default=None, compare=False)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> VifRecord:
        names = {f.name for f in fields(cls)} - {"claim"}
        values = {k: _plain(_de.deserialize(v)) for k, v in item.items() if k in names}
        return cls(**values, claim=Claim.from_item(item))


@dataclass(frozen=True)
class Claim:
    """Who took the right to act on a VIF, to do what, and until when (a dead poller's claim lapses)."""

    by: str
    until: str
    verb: str | None = None  # confirm | reject (claims written before this field have none)
    gateway: str | None = None
    at: str | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Claim | None:
        def text(name: str) -> str | None:
            return item.get(name, {}).get("S")

        by, until = text("claim_by"), text("claim_until")
        if by is None or until is None:
            return None
        return cls(by, until, text("claim_verb"), text("claim_gateway"), text("claim_at"))


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


class ClaimLost(Exception):
    """Someone else holds the claim on this VIF, or it was confirmed already; the text says which."""

    def __init__(self, vif_id: str, holder: Claim | None = None, confirmed_at: str | None = None):
        self.vif_id, self.holder, self.confirmed_at = vif_id, holder, confirmed_at
        if confirmed_at:
            why = f"already confirmed at {confirmed_at}"
        elif holder:
            since = f" since {holder.at}" if holder.at else ""
            why = (
                f"claimed by poller cycle {holder.by}{since} until {holder.until}; if that poller stopped, "
                "the first cycle after then takes over"
            )
        else:
            why = "not in the ledger yet"
        super().__init__(why)


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
        names = [f.name for f in fields(record) if f.name not in ("target", "vif_id", "claim")]
        # Set once, never unset: an older copy must not erase that the VIF was confirmed or rejected.
        names = [n for n in names if not (n in ("confirmed_at", "rejected_at") and getattr(record, n) is None)]
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

    def mark_polled(
        self, target: str, at: datetime, known_failing_since: str | None, recovered: Callable[[str], Any]
    ) -> list:
        """The target answered: remember when, and end its failing spell with `recovered(since)`.

        The write is conditional on the spell this poller saw; when another poller changed it in
        between, the old value comes back with the refusal (ReturnValuesOnConditionCheckFailure)
        and the write is made again from it, so a spell never ends without its target.recovered.
        """
        expected = known_failing_since
        for _ in range(5):
            produced = [recovered(expected)] if expected else []
            values = {":at": {"S": iso(at)}}
            if expected:
                values[":since"] = {"S": expected}
            update = {
                "TableName": self.table,
                "Key": _target_key(target),
                "UpdateExpression": "SET last_polled_at = :at REMOVE failing_since",
                "ConditionExpression": "failing_since = :since" if expected else "attribute_not_exists(failing_since)",
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            try:
                self._write(update, produced)
                return produced
            except ClientError as exc:
                old = _refused_item(exc)
                if old is None:
                    raise
                expected = old.get("failing_since", {}).get("S")
        raise RuntimeError(f"target {target}: its failing spell kept changing while this poller wrote")

    def mark_failing(self, target: str, since: datetime, failed: Callable[[], Any]) -> list:
        """Start a failing spell with `failed()` as its event; nothing when one is already running."""
        update = {
            "TableName": self.table,
            "Key": _target_key(target),
            "UpdateExpression": "SET failing_since = :since",
            "ConditionExpression": "attribute_not_exists(failing_since)",
            "ExpressionAttributeValues": {":since": {"S": iso(since)}},
        }
        produced = [failed()]
        try:
            self._write(update, produced)
        except ClientError as exc:
            if _refused_item(exc) is None:
                raise
            return []  # already failing: said once per spell
        return produced

    def pending_events(self, limit: int = 1000) -> list[OutboxItem]:
        """Events not yet accepted by SQS (parked ones included), oldest first."""
        return list(itertools.islice(self.iter_events(), limit))

    def iter_events(self) -> Iterator[OutboxItem]:
        """Every event the outbox holds, oldest first; the next Query page is read only when wanted."""
        params = self._outbox_query()
        while True:
            page = self.client.query(**params)
            yield from (OutboxItem.from_item(i) for i in page["Items"])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def outbox_counts(self) -> tuple[int, int]:
        """(events, of which parked) in the outbox; reads only the parked mark of each item."""
        params = self._outbox_query(ProjectionExpression="parked_reason")
        total = parked = 0
        while True:
            page = self.client.query(**params)
            total += page["Count"]
            parked += sum("parked_reason" in i for i in page["Items"])
            if "LastEvaluatedKey" not in page:
                return total, parked
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

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
        try:
            self.client.delete_item(
                TableName=self.table,
                Key={"target": {"S": OUTBOX}, "vif_id": {"S": item.sort_key}},
                ConditionExpression="attribute_exists(event_id)",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def _outbox_update(self, item: OutboxItem, **update: Any) -> bool:
        # Conditional: an update of an event another poller has just sent must not recreate it as a husk.
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"target": {"S": OUTBOX}, "vif_id": {"S": item.sort_key}},
                ConditionExpression="attribute_exists(event_id)",
                **update,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

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

    def claim(
        self,
        target: str,
        vif_id: str,
        claimant: str,
        now: datetime,
        *,
        verb: str = "confirm",
        gateway: str | None = None,
    ) -> None:
        """Claim the right to confirm (or reject) a VIF; raises ClaimLost naming who holds it.

        The claim is written before the API call, so two pollers at once act once. A claim left
        by a poller that died lapses after CLAIM_TTL so the VIF is not stuck; its verb and gateway
        let a later cycle recognise a confirm that worked but was never recorded.
        """
        values = {
            ":me": {"S": claimant},
            ":until": {"S": iso(now + CLAIM_TTL)},
            ":now": {"S": iso(now)},
            ":verb": {"S": verb},
        }
        update = "SET claim_by = :me, claim_until = :until, claim_at = :now, claim_verb = :verb"
        if gateway:
            update += ", claim_gateway = :gateway"
            values[":gateway"] = {"S": gateway}
        else:
            update += " REMOVE claim_gateway"
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"target": {"S": target}, "vif_id": {"S": vif_id}},
                UpdateExpression=update,
                ConditionExpression=(
                    "attribute_exists(vif_id) AND attribute_not_exists(confirmed_at) "
                    "AND (attribute_not_exists(claim_until) OR claim_until < :now)"
                ),
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            old = _refused_item(exc)
            if old is None:
                raise
            raise ClaimLost(vif_id, Claim.from_item(old), old.get("confirmed_at", {}).get("S")) from None

    def release(self, target: str, vif_id: str, claimant: str) -> None:
        """Give a claim back after a definite failure, so the next cycle may try again."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"target": {"S": target}, "vif_id": {"S": vif_id}},
                UpdateExpression="REMOVE claim_by, claim_until, claim_at, claim_verb, claim_gateway",
                ConditionExpression="claim_by = :me",
                ExpressionAttributeValues={":me": {"S": claimant}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise


def _target_key(target: str) -> dict[str, Any]:
    return {"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}}


def _refused_item(exc: ClientError) -> dict[str, Any] | None:
    """The item as it was when a condition refused a write (update_item or a transaction), else None."""
    answer: dict[str, Any] = dict(exc.response)
    if answer["Error"]["Code"] == "ConditionalCheckFailedException":
        return answer.get("Item", {})
    if answer["Error"]["Code"] == "TransactionCanceledException":
        for reason in answer.get("CancellationReasons") or []:
            if reason.get("Code") == "ConditionalCheckFailed":
                return dict(reason.get("Item", {}))
    return None


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
