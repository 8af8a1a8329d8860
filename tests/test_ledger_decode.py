"""The ledger's fast attribute decoder reads every item exactly as boto3's deserializer (+ _plain) did."""

from __future__ import annotations

from decimal import Decimal

from boto3.dynamodb.types import TypeSerializer
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.ledger.base import _de, _plain, plain_value

_ser = TypeSerializer()

scalars = st.one_of(
    st.text(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**9), max_value=10**9),
    st.booleans(),
    st.none(),
    st.binary(min_size=1, max_size=8),
    st.sets(st.text(min_size=1), min_size=1, max_size=3),
    st.sets(st.integers(), min_size=1, max_size=3),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@given(values)
def test_decodes_every_value_as_the_generic_deserializer(value):
    item = _ser.serialize(value)
    assert plain_value(item) == _plain(_de.deserialize(item))


def test_numbers_with_fractions_or_exponents_truncate_as_before():
    for raw in ("1.9", "-1.9", "1E+3", "0", "-0", "12345678901234567890"):
        assert plain_value({"N": raw}) == _plain(_de.deserialize({"N": raw})) == int(Decimal(raw))
