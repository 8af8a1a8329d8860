"""One item per target (vif_id = "#target"): when it last answered, and its failing spell.

A failing spell is `failing_since` (set once, with its target.failed event) and `failed_cycles`
(one more per failed cycle, the TargetFailing alarm's count); both go when the target answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from .base import LedgerBase, _refused_item, iso
from .records import TARGET_ITEM


@dataclass
class Failing:
    """A failed cycle as recorded: the events it produced (target.failed once per spell) and the spell's length."""

    events: list = field(default_factory=list)
    cycles: int = 0


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
                "UpdateExpression": "SET last_polled_at = :at REMOVE failing_since, failed_cycles",
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

    def mark_failing(self, target: str, since: datetime, failed: Callable[[], Any] | None) -> Failing:
        """Count one more failed cycle; the first of a spell also starts it, with `failed()` as its event.

        Either write is conditional on whether a spell is running, so with two pollers the spell
        starts once (one target.failed) and a count never outlives the spell that mark_polled ended:
        a refused write is made again as the other kind. `failed=None`: no event (no queue).
        """
        values = {":since": {"S": iso(since)}, ":one": {"N": "1"}}
        for _ in range(5):
            produced = [failed()] if failed else []
            start = {
                "TableName": self.table,
                "Key": _target_key(target),
                "UpdateExpression": "SET failing_since = :since ADD failed_cycles :one",
                "ConditionExpression": "attribute_not_exists(failing_since)",
                "ExpressionAttributeValues": values,
            }
            try:
                self._write(start, produced)
                return Failing(produced, 1)
            except ClientError as exc:
                if _refused_item(exc) is None:
                    raise
            more = {  # a spell is running: said once per spell, so only counted
                "TableName": self.table,
                "Key": _target_key(target),
                "UpdateExpression": "ADD failed_cycles :one",
                "ConditionExpression": "attribute_exists(failing_since)",
                "ExpressionAttributeValues": {":one": values[":one"]},
                "ReturnValues": "UPDATED_NEW",
            }
            try:
                answer = self.client.update_item(**more)
                return Failing([], int(answer["Attributes"]["failed_cycles"]["N"]))
            except ClientError as exc:
                if _refused_item(exc) is None:
                    raise
            # the spell ended in between (another poller's mark_polled): this failure starts a new one
        raise RuntimeError(f"target {target}: its failing spell kept changing while this poller wrote")


def _target_key(target: str) -> dict[str, Any]:
    return {"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}}
