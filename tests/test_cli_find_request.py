"""`vifgate approve REF`: an id is never matched against names (the partner chooses names)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from chalicelib.cli import Refused, _find_request

VICTIM = NS(vif_id="dxvif-aaaa1111", snapshot={"virtualInterfaceName": "core-uplink"}, approval=None)
PARTNER_REQUEST = NS(request_id="apr-" + "b" * 20, status="pending", vif_id="dxvif-bbbb2222")
PARTNER = NS(vif_id="dxvif-bbbb2222", snapshot={"virtualInterfaceName": "dxvif-aaaa1111"}, approval=PARTNER_REQUEST)
LOOKALIKE = NS(vif_id="dxvif-cccc3333", snapshot={"virtualInterfaceName": "dxvif-ffff0000"}, approval=PARTNER_REQUEST)


class Ledger:
    """Only what _find_request reads: requests by VIF id, and the records of a target."""

    def __init__(self, *records):
        self.records = {r.vif_id: r for r in records}

    def approval_for_vif(self, vif_id):
        record = self.records.get(vif_id)
        return (record.approval, record) if record is not None and record.approval is not None else None

    def load(self, target):
        return NS(vifs=dict(self.records))


def runtime(*records):
    return NS(ledger=Ledger(*records), policy=NS(targets=[NS(name="osc-prod")]))


@pytest.mark.parametrize(
    ("records", "ref", "status", "says"),
    [
        # The victim's id has no request: the vote must not go to the partner VIF named after that id.
        ((VICTIM, PARTNER), "dxvif-aaaa1111", 404, "has no approval request"),
        # An id nobody has is not looked up among names either.
        ((LOOKALIKE,), "dxvif-ffff0000", 404, "no VIF 'dxvif-ffff0000' in the ledger"),
    ],
)
def test_an_id_is_never_matched_against_a_partner_chosen_name(records, ref, status, says):
    with pytest.raises(Refused) as refused:
        _find_request(runtime(*records), ref)
    assert refused.value.status == status and says in str(refused.value)


def test_a_plain_name_still_finds_its_vif():
    _, record = _find_request(runtime(VICTIM, PARTNER, LOOKALIKE), "dxvif-bbbb2222")
    assert record is PARTNER
    named = NS(vif_id="dxvif-dddd4444", snapshot={"virtualInterfaceName": "lab-bench"}, approval=PARTNER_REQUEST)
    _, record = _find_request(runtime(VICTIM, named), "lab-bench")
    assert record is named
