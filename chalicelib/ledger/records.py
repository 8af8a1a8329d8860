"""One item per (target, VIF): what was seen and decided, and the claim that makes a confirm happen once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from ..approvals.model import ApprovalRequest
from .base import TARGET_ITEM, LedgerBase, _refused_item, _ser, iso, parse_iso, plain_value

EXPIRY = timedelta(days=7)
CLAIM_TTL = timedelta(minutes=5)
APPROVAL_ITEM = "#approval"  # pointer items: target = "#approval", vif_id = the request id
_NOT_SAVED = ("target", "vif_id", "claim", "approval")
# What a poller saw of the VIF: written only over an older sighting (see VifRecords.save).
_OBSERVED = ("state", "state_since", "snapshot")


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
    # Written only by save(approval=) (once) and update_approval() (conditional on approval_version).
    approval: ApprovalRequest | None = field(default=None, compare=False)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> VifRecord:
        names = {f.name for f in fields(cls)} - set(_NOT_SAVED[2:])
        values = {k: plain_value(v) for k, v in item.items() if k in names}
        return cls(**values, claim=Claim.from_item(item), approval=approval_from_item(item))


def approval_from_item(item: dict[str, Any]) -> ApprovalRequest | None:
    """The approval request a VIF item holds (its `approval` map and `approval_version`), if any."""
    stored = item.get("approval")
    if not stored or "M" not in stored:
        return None
    version = int(item.get("approval_version", {}).get("N", "0"))
    return ApprovalRequest.from_item(plain_value(stored), version)


@dataclass(frozen=True)
class Claim:
    """Who took the right to act on a VIF, to do what, and until when (a dead poller's claim lapses)."""

    by: str
    until: str
    verb: str | None = None  # confirm | reject (claims written before this field have none)
    gateway: str | None = None
    at: str | None = None
    # Set right before the API call: only such a claim may have acted, and so may be settled later.
    called_at: str | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Claim | None:
        def text(name: str) -> str | None:
            return item.get(name, {}).get("S")

        by, until = text("claim_by"), text("claim_until")
        if by is None or until is None:
            return None
        return cls(by, until, text("claim_verb"), text("claim_gateway"), text("claim_at"), text("claim_called_at"))


@dataclass
class TargetRecords:
    target: str
    vifs: dict[str, VifRecord]
    last_polled_at: datetime | None
    failing_since: datetime | None = None
    failed_cycles: int = 0


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


REREAD_SECONDS = 300  # a cached copy is read again at least this often, whatever its version says


class RecordCache:
    """Each target's VIF records as last read, with the target's `records_version` read just before.

    Every write of a VIF's item is followed by a bump of its target item's `records_version`
    (LedgerBase._changed). A reader takes the version (a strongly consistent read of the target item:
    the cycle's BatchGetItem at its start, or a GetItem), then Queries; so every write that bumped
    up to that version is in what it read. Next cycle, the same version means no record changed
    since: the copy is used, and the Query (most of an idle cycle's read units and CPU) is skipped.
    A writer that died between its write and the bump leaves copies stale until REREAD_SECONDS;
    what they could get wrong is guarded by the conditional writes (claims, votes), as with two
    pollers. At most `max_targets` targets are kept (least recently used dropped), like the clients.
    """

    def __init__(self, max_targets: int, max_age: float = REREAD_SECONDS, clock: Any = time.monotonic):
        self._max, self._max_age, self._clock = max_targets, max_age, clock
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[str, float, dict[str, VifRecord]]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, target: str, version: str) -> dict[str, VifRecord] | None:
        with self._lock:
            kept = self._kept.get(target)
            if kept is None or kept[0] != version or self._clock() - kept[1] > self._max_age:
                self.misses += 1
                return None
            self._kept.move_to_end(target)
            self.hits += 1
            return dict(kept[2])  # the cycle copies a record before it changes it (transitions.observe)

    def put(self, target: str, version: str, vifs: dict[str, VifRecord]) -> None:
        with self._lock:
            self._kept[target] = (version, self._clock(), dict(vifs))
            self._kept.move_to_end(target)
            while len(self._kept) > self._max:
                self._kept.popitem(last=False)


def _status(target: str, vifs: dict[str, VifRecord], item: dict[str, Any]) -> TargetRecords:
    return TargetRecords(
        target,
        vifs,
        parse_iso(item.get("last_polled_at", {}).get("S")),
        parse_iso(item.get("failing_since", {}).get("S")),
        int(item.get("failed_cycles", {}).get("N", "0")),
    )


class VifRecords(LedgerBase):
    def target_items(self, targets: list[str]) -> dict[str, dict[str, Any]]:
        """Each target's own item (records version, status), 100 a call, strongly consistent; {} when it has none.

        Read once at the start of a cycle instead of one GetItem per target. Keys DynamoDB still left
        unprocessed after retries are not in the answer: those targets read their item themselves.
        """
        found: dict[str, dict[str, Any]] = {}
        for first in range(0, len(targets), 100):
            batch = targets[first : first + 100]
            keys = [{"target": {"S": t}, "vif_id": {"S": TARGET_ITEM}} for t in batch]
            request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(5):
                answer = self.client.batch_get_item(RequestItems=request)
                for item in answer.get("Responses", {}).get(self.table, []):
                    found[item["target"]["S"]] = item
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05 * 2**attempt)
            left = {k["target"]["S"] for k in request.get(self.table, {}).get("Keys", [])}
            found |= {t: {} for t in batch if t not in found and t not in left}  # read: no item yet
        return found

    def load(self, target: str, item: dict[str, Any] | None = None) -> TargetRecords:
        """All records of one target, in as few Query pages as DynamoDB allows (or the cached copy: RecordCache).

        `item`: the target's own item as target_items() read it this cycle (else it is read here).
        """
        cache: RecordCache | None = self.cache
        version = ""
        if cache is not None:
            if item is None:
                key = {"target": {"S": target}, "vif_id": {"S": TARGET_ITEM}}
                item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item", {})
            version = item.get("records_version", {}).get("N", "0")
            kept = cache.get(target, version)
            if kept is not None:
                return _status(target, kept, item)
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
                if cache is not None:
                    cache.put(target, version, vifs)  # the version read before the Query, never a later one
                return _status(target, vifs, status)
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _update_vif(self, **update: Any) -> Any:
        """UpdateItem on one VIF's item (claims), then its target's records_version bumped."""
        with self._changed(update["Key"]["target"]["S"]):
            return self.client.update_item(TableName=self.table, **update)

    def save(self, record: VifRecord, events: Iterable = (), *, approval: ApprovalRequest | None = None) -> None:
        """Write what was observed and decided, and its events, in one transaction.

        An update, not a put: a poller holding an older copy must not erase another poller's
        claim or its confirmed_at. None is written as NULL except confirmed_at, which is set once.
        With `approval`, the VIF's approval request is created in the same transaction (once: a
        request already there, and its votes, are kept), with its pointer item.

        What was observed (state, state_since, snapshot) never goes over a newer observation: a
        poller that confirmed a VIF may record it after another poller saw it move on (`pending`);
        then its confirm, decision and events are written and the newer state is kept.
        """
        try:
            self._save(record, events, approval, observed=True)
        except ClientError as exc:
            if not _refused(exc):
                raise
            self._save(record, events, approval, observed=False)

    def _save(self, record: VifRecord, events: Iterable, approval: ApprovalRequest | None, *, observed: bool) -> None:
        names = [f.name for f in fields(record) if f.name not in _NOT_SAVED]
        if not observed:
            names = [n for n in names if n not in _OBSERVED]
        # Set once, never unset: an older copy must not erase that the VIF was confirmed or rejected.
        names = [n for n in names if not (n in ("confirmed_at", "rejected_at") and getattr(record, n) is None)]
        sets = [f"#{n} = :{n}" for n in names]
        values = {f":{n}": _ser.serialize(getattr(record, n)) for n in names}
        if approval is not None:
            if (approval.target, approval.vif_id) != (record.target, record.vif_id):
                raise ValueError(f"approval request {approval.request_id} is not for {record.target}/{record.vif_id}")
            sets += [
                "approval = if_not_exists(approval, :approval)",
                "approval_version = if_not_exists(approval_version, :zero)",
            ]
            values |= {":approval": _ser.serialize(approval.to_item()), ":zero": {"N": "0"}}
        update = {
            "TableName": self.table,
            "Key": {"target": {"S": record.target}, "vif_id": {"S": record.vif_id}},
            "UpdateExpression": "SET " + ", ".join(sets),
            "ExpressionAttributeNames": {f"#{n}": n for n in names},
            "ExpressionAttributeValues": values,
        }
        if observed and record.state_since:
            update["ConditionExpression"] = "attribute_not_exists(#state_since) OR #state_since <= :state_since"
        if approval is None:
            with self._changed(record.target):
                self._write(update, events)
            return
        # An update, not a put: a pointer already there keeps the status that votes gave its request.
        pointer = {
            "TableName": self.table,
            "Key": {"target": {"S": APPROVAL_ITEM}, "vif_id": {"S": approval.request_id}},
            "UpdateExpression": (
                "SET vif_target = :target, vif = :vif, created_at = if_not_exists(created_at, :created), "
                "request_status = if_not_exists(request_status, :status)"
            ),
            "ExpressionAttributeValues": {
                ":target": {"S": approval.target},
                ":vif": {"S": approval.vif_id},
                ":created": {"S": approval.created_at},
                ":status": {"S": approval.status},
            },
        }
        with self._changed(record.target):
            self._write(update, events, extra=[{"Update": pointer}])

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
        sets = ["claim_by = :me", "claim_until = :until", "claim_at = :now", "claim_verb = :verb"]
        removes = ["claim_called_at"]  # a new claim has made no call yet
        if gateway:
            sets.append("claim_gateway = :gateway")
            values[":gateway"] = {"S": gateway}
        else:
            removes.append("claim_gateway")
        update = f"SET {', '.join(sets)} REMOVE {', '.join(removes)}"
        try:
            self._update_vif(
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
            raise _claim_lost(exc, vif_id) from None

    def mark_called(self, target: str, vif_id: str, claimant: str, now: datetime) -> None:
        """Say, on the claim, that the API call is about to be made; ClaimLost if the claim is no longer ours."""
        try:
            self._update_vif(
                Key={"target": {"S": target}, "vif_id": {"S": vif_id}},
                UpdateExpression="SET claim_called_at = :now",
                ConditionExpression="claim_by = :me",
                ExpressionAttributeValues={":me": {"S": claimant}, ":now": {"S": iso(now)}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            raise _claim_lost(exc, vif_id) from None

    def release(self, target: str, vif_id: str, claimant: str) -> None:
        """Give a claim back after a definite failure, so the next cycle may try again."""
        try:
            self._update_vif(
                Key={"target": {"S": target}, "vif_id": {"S": vif_id}},
                UpdateExpression="REMOVE claim_by, claim_until, claim_at, claim_verb, claim_gateway, claim_called_at",
                ConditionExpression="claim_by = :me",
                ExpressionAttributeValues={":me": {"S": claimant}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise


def _refused(exc: ClientError) -> bool:
    """The write's own condition refused it (alone, or as the first item of its transaction)."""
    code = exc.response["Error"]["Code"]
    if code == "ConditionalCheckFailedException":
        return True
    reasons = exc.response.get("CancellationReasons") or [{}]
    return code == "TransactionCanceledException" and reasons[0].get("Code") == "ConditionalCheckFailed"


def _claim_lost(exc: ClientError, vif_id: str) -> Exception:
    """A claim write refused by its condition, as ClaimLost naming the holder; any other error as it was."""
    old = _refused_item(exc)
    if old is None:
        return exc
    return ClaimLost(vif_id, Claim.from_item(old), old.get("confirmed_at", {}).get("S"))
