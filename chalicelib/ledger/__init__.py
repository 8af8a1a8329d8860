"""What the gatekeeper remembers, in one DynamoDB table keyed (target, vif_id), one module per kind of item.

- records: one item per (target, VIF); one Query reads a whole target's records when they changed (RecordCache);
- targets: a per-target item (vif_id = "#target"): when it was last polled, whether it is failing, records_version;
- outbox: events written in the same transaction as the transition they describe (target =
  "#outbox"), deleted only once SQS has accepted them;
- deliveries: which chat destination already got which event (target = "#delivered");
- approvals: a VIF's approval request lives in its record's item; a pointer item per request
  (target = "#approval") finds it by request id.
"""

from .approvals import ApprovalChanged, Approvals
from .base import OUTBOX, _outbox_item, create_table, iso, parse_iso, table_definition
from .deliveries import DELIVERED, DELIVERY_MEMORY, Deliveries
from .outbox import Outbox, OutboxItem
from .records import (
    APPROVAL_ITEM,
    CLAIM_TTL,
    EXPIRY,
    TARGET_ITEM,
    Claim,
    ClaimLost,
    RecordCache,
    TargetRecords,
    VifRecord,
    VifRecords,
)
from .targets import TargetStatus


class Ledger(VifRecords, TargetStatus, Outbox, Deliveries, Approvals):
    """The whole ledger: every kind of item, one client, one table."""


__all__ = [
    "APPROVAL_ITEM",
    "CLAIM_TTL",
    "DELIVERED",
    "DELIVERY_MEMORY",
    "EXPIRY",
    "OUTBOX",
    "TARGET_ITEM",
    "ApprovalChanged",
    "Claim",
    "ClaimLost",
    "Ledger",
    "OutboxItem",
    "RecordCache",
    "TargetRecords",
    "VifRecord",
    "_outbox_item",
    "create_table",
    "iso",
    "parse_iso",
    "table_definition",
]
