"""Approval requests: each lives in its VIF's item (`approval` map, `approval_version`), found by a pointer item.

The pointer (target = "#approval", vif_id = the request id) names the VIF's target and id and
mirrors the request's status (`request_status`), so listing the pending requests reads only
pending pointers. Neither item uses `expires_at`: that is the table's TTL attribute, and DynamoDB
would delete a VIF's record once the request lapsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from ..approvals.model import ApprovalRequest
from .base import LedgerBase, _outbox_item, _refused_item, _ser, iso
from .records import APPROVAL_ITEM, VifRecord, approval_from_item

CONFIRMING = "confirming"


class ApprovalChanged(Exception):
    """The request (or its VIF) changed since it was read; re-read it, then retry or refuse."""

    def __init__(self, request_id: str, record: VifRecord | None = None):
        self.request_id, self.record = request_id, record
        super().__init__(f"approval request {request_id} changed since it was read")


class Approvals(LedgerBase):
    def approval(self, request_id: str) -> tuple[ApprovalRequest, VifRecord] | None:
        """The request and its VIF's record (consistent reads); None when there is no such request."""
        pointer = self._get(APPROVAL_ITEM, request_id)
        if pointer is None:
            return None
        return self._request_of(pointer, request_id)

    def approvals(self, status: str | None = "pending") -> list[tuple[ApprovalRequest, VifRecord]]:
        """Requests with this status (None: all), oldest first."""
        found = [
            pair
            for pointer in self._pointers(status)
            if (pair := self._request_of(pointer, pointer["vif_id"]["S"])) is not None
            and (status is None or pair[0].status == status)
        ]
        return sorted(found, key=lambda pair: (pair[0].created_at, pair[0].request_id))

    def approval_for_vif(self, vif_id: str) -> tuple[ApprovalRequest, VifRecord] | None:
        """The VIF's current request: its pending one if any, else its latest (a VIF id is unique per cloud)."""
        found = [
            pair
            for pointer in self._pointers(None, vif=vif_id)
            if (pair := self._request_of(pointer, pointer["vif_id"]["S"])) is not None
        ]
        if not found:
            return None
        return max(found, key=lambda pair: (pair[0].status == "pending", pair[0].created_at))

    def update_approval(
        self,
        before: ApprovalRequest,
        after: ApprovalRequest,
        events: Iterable = (),
        *,
        require_confirming: bool,
        now: datetime | None = None,
    ) -> None:
        """Write `after` over `before` with its events, all or nothing; ApprovalChanged if the item moved on.

        The condition is the version read: two writers at once cannot both succeed. With
        `require_confirming` (a vote) the VIF must also still wait in `confirming`, undecided, and
        (given `now`) with no live claim: a rule's confirm or delete may be under way at that instant.
        """
        if (before.request_id, before.target, before.vif_id) != (after.request_id, after.target, after.vif_id):
            raise ValueError("update_approval changes one request, not another")
        self._transact(before, after, events, require_confirming=require_confirming, now=now)

    def replace_approval(self, before: ApprovalRequest, after: ApprovalRequest, events: Iterable = ()) -> None:
        """Put a new request in the place of a closed one, with its pointer and events; ApprovalChanged if it moved on.

        Conditional on the closed request's id and version: two pollers opening the same new request
        write it once, and a stale one can never put back a request that was already replaced.
        """
        if before.status not in ("superseded", "expired"):
            raise ValueError(f"approval request {before.request_id} is {before.status}: only a closed one is replaced")
        if (before.target, before.vif_id) != (after.target, after.vif_id) or before.request_id == after.request_id:
            raise ValueError("replace_approval puts another request of the same VIF in place")
        pointer = {
            "TableName": self.table,
            "Key": {"target": {"S": APPROVAL_ITEM}, "vif_id": {"S": after.request_id}},
            "UpdateExpression": "SET vif_target = :target, vif = :vif, created_at = :created, request_status = :status",
            "ExpressionAttributeValues": {
                ":target": {"S": after.target},
                ":vif": {"S": after.vif_id},
                ":created": {"S": after.created_at},
                ":status": {"S": after.status},
            },
        }
        self._transact(before, after, events, require_confirming=False, now=None, pointer=pointer)

    def _transact(
        self,
        before: ApprovalRequest,
        after: ApprovalRequest,
        events: Iterable,
        *,
        require_confirming: bool,
        now: datetime | None,
        pointer: dict[str, Any] | None = None,
    ) -> None:
        condition = "approval_version = :version AND approval.request_id = :rid"
        names: dict[str, str] = {}
        values: dict[str, Any] = {
            ":version": {"N": str(before.version)},
            ":next": {"N": str(before.version + 1)},
            ":rid": {"S": before.request_id},
            ":after": _ser.serialize(after.to_item()),
        }
        if require_confirming:
            condition += (
                " AND #state = :confirming AND attribute_not_exists(confirmed_at) AND attribute_not_exists(rejected_at)"
            )
            names["#state"] = "state"
            values[":confirming"] = {"S": CONFIRMING}
            if now is not None:
                condition += " AND (attribute_not_exists(claim_until) OR claim_until < :now)"
                values[":now"] = {"S": iso(now)}
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"target": {"S": before.target}, "vif_id": {"S": before.vif_id}},
            "UpdateExpression": "SET approval = :after, approval_version = :next",
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if names:
            update["ExpressionAttributeNames"] = names
        pointer = pointer or {
            "TableName": self.table,
            "Key": {"target": {"S": APPROVAL_ITEM}, "vif_id": {"S": before.request_id}},
            "UpdateExpression": "SET request_status = :status",
            "ExpressionAttributeValues": {":status": {"S": after.status}},
        }
        items = [
            {"Update": update},
            {"Update": pointer},
            *({"Put": {"TableName": self.table, "Item": _outbox_item(e)}} for e in events),
        ]
        try:
            with self._changed(before.target):  # the VIF's item changes: other pollers' copies of it go stale
                self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons") or []
            # A failed condition, or another writer on the same item at that instant: either way
            # the caller reads again and decides afresh (a retry with the same copy cannot succeed).
            if not any(r.get("Code") in ("ConditionalCheckFailed", "TransactionConflict") for r in reasons):
                raise
            old = _refused_item(exc)
            record = VifRecord.from_item(old) if old and "vif_id" in old and "target" in old else None
            raise ApprovalChanged(before.request_id, record) from None

    def _get(self, target: str, sort_key: str) -> dict[str, Any] | None:
        return self.client.get_item(
            TableName=self.table,
            Key={"target": {"S": target}, "vif_id": {"S": sort_key}},
            ConsistentRead=True,
        ).get("Item")

    def _request_of(self, pointer: dict[str, Any], request_id: str) -> tuple[ApprovalRequest, VifRecord] | None:
        """The request a pointer names, from its VIF's item; None if the item no longer holds that request."""
        item = self._get(pointer["vif_target"]["S"], pointer["vif"]["S"])
        if item is None:
            return None
        request = approval_from_item(item)
        if request is None or request.request_id != request_id:
            return None
        return request, VifRecord.from_item(item)

    def _pointers(self, status: str | None, *, vif: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "target = :t",
            "ExpressionAttributeValues": {":t": {"S": APPROVAL_ITEM}},
            "ConsistentRead": True,
        }
        filters = []
        if status is not None:
            filters.append("request_status = :status")
            params["ExpressionAttributeValues"][":status"] = {"S": status}
        if vif is not None:
            filters.append("vif = :vif")
            params["ExpressionAttributeValues"][":vif"] = {"S": vif}
        if filters:
            params["FilterExpression"] = " AND ".join(filters)
        pointers: list[dict[str, Any]] = []
        while True:
            page = self.client.query(**params)
            pointers.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                return pointers
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
