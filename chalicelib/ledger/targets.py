"""One item per target (vif_id = "#target"): when it last answered, and its failing spell."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from .base import LedgerBase, _refused_item, iso
from .records import TARGET_ITEM


class TargetStatus(LedgerBase):
    def mark_polled(
        self, target: str, at: datetime, known_failing_since: str | None, recovered: Callable[[str], Any] | None
    ) -> list:
        """The target answered: remember when, and end its failing spell with `recovered(since)` (if given).

        The write is conditional on the spell this poller saw; when another poller changed it in
        between, the old value comes back with the refusal (ReturnValuesOnConditionCheckFailure)
        and the write is made again from it, so a spell never ends without its target.recovered.
        """
        expected = known_failing_since
        for _ in range(5):
            produced = [recovered(expected)] if expected and recovered else []
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


def _target_key(target: str) -> dict[str, Any]:
    return {"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}}
