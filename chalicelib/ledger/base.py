"""The table the ledger lives in, the times it writes, and the one write path: an update plus its events."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from ..events import to_json
from ..log import logger

OUTBOX = "#outbox"
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


def plain_value(value: dict[str, Any]) -> Any:
    """One DynamoDB attribute value as `_plain(TypeDeserializer().deserialize(value))` gives it, about 2.7x faster.

    A steady cycle reads every record of every target; boto3's generic deserializer was most of its CPU.
    """
    if len(value) == 1:
        ((kind, raw),) = value.items()
        if kind == "S":
            return raw
        if kind == "N":
            return int(raw) if raw.lstrip("-").isdigit() else int(Decimal(raw))
        if kind == "M":
            return {k: plain_value(v) for k, v in raw.items()}
        if kind == "L":
            return [plain_value(v) for v in raw]
        if kind == "BOOL":
            return raw
        if kind == "NULL":
            return None
    return _plain(_de.deserialize(value))  # type: ignore[arg-type]  # sets, binary and anything odd: the generic path


TARGET_ITEM = "#target"  # a target's own item: vif_id = "#target"


class LedgerBase:
    """A DynamoDB client and table name; each kind of item adds its methods in a module of its own."""

    def __init__(self, client, table: str, cache: Any = None):
        self.client = client
        self.table = table
        # records.RecordCache: each target's records as last read, reused while its version is unchanged.
        self.cache = cache

    @contextmanager
    def _changed(self, target: str) -> Iterator[None]:
        """Around a write of one of `target`'s VIF items: then bump its records_version (see records.RecordCache).

        After, never before: a reader that takes the old version may see the new item, and then reads
        again next cycle; one that took the new version already sees it. A write its condition refused
        wrote nothing and bumps nothing (a refused vote changes nothing); one that failed otherwise (a
        timeout) may have landed, and bumps.
        """
        try:
            yield
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                self._bump(target)
            raise
        except Exception:
            self._bump(target)
            raise
        self._bump(target)

    def _bump(self, target: str) -> None:
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}},
                UpdateExpression="ADD records_version :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
        except (ClientError, BotoCoreError) as exc:
            # Cached copies then stay as they are for at most records.REREAD_SECONDS; the write itself stands.
            logger.warning(
                "records version not bumped; other pollers' copies may lag a few minutes",
                extra={"target": target, "error": type(exc).__name__},
            )

    def _write(self, update: dict[str, Any], events: Iterable, *, extra: Iterable[dict[str, Any]] = ()) -> None:
        """One update, plus its events in the outbox (and `extra` transaction items), all or nothing."""
        puts = [*extra, *({"Put": {"TableName": self.table, "Item": _outbox_item(e)}} for e in events)]
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
