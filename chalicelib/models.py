"""What the DirectLink / Direct Connect API answers, parsed at the edge."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

# States of both clouds. OUTSCALE: confirming..expired; AWS adds verifying/down/testing/unknown
# and has no `expired` (the VIF disappears). Unknown strings are kept as they are, never rejected.
CONFIRMING = "confirming"
OUTSCALE_STATES = ("confirming", "pending", "available", "deleting", "deleted", "rejected", "expired")
AWS_STATES = (
    "confirming",
    "verifying",
    "pending",
    "available",
    "down",
    "deleting",
    "deleted",
    "rejected",
    "testing",
    "unknown",
)
ALL_STATES = tuple(dict.fromkeys(OUTSCALE_STATES + AWS_STATES))


# The ledger stores what the API says (DynamoDB: a sort key of at most 1,024 bytes, an item of at most
# 400 KB, valid UTF-8 only). A value past these bounds is not a VIF we can remember: it is skipped and
# named, like any unreadable one, instead of failing its whole target at the ledger write.
MAX_ID = 255
MAX_TEXT = 1024


def _storable(text: str) -> str:
    """JSON may carry lone surrogates (`"\\ud800"`); DynamoDB (UTF-8) cannot store them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8 text (a lone surrogate)") from None
    return text


Id = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID), AfterValidator(_storable)]
Text = Annotated[str, StringConstraints(strict=True, max_length=MAX_TEXT), AfterValidator(_storable)]


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in code; fields the clouds add later are ignored.

    Strict: `"107"` or `true` is not a vlan, and a number is not an account id. A cloud that sends
    the wrong type has a bug we must not guess around (the rules compare these values).
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True, strict=True)


class VirtualInterface(_Wire):
    """One VIF as DescribeVirtualInterfaces returns it; AWS-only fields are null on OUTSCALE."""

    virtual_interface_id: Id = Field(alias="virtualInterfaceId")
    virtual_interface_name: Text | None = Field(default=None, alias="virtualInterfaceName")
    virtual_interface_state: Text = Field(default="unknown", alias="virtualInterfaceState")
    virtual_interface_type: Text | None = Field(default=None, alias="virtualInterfaceType")
    owner_account: Text | None = Field(default=None, alias="ownerAccount")
    connection_id: Text | None = Field(default=None, alias="connectionId")
    location: Text | None = None
    vlan: StrictInt | None = None
    asn: StrictInt | None = None
    asn_long: StrictInt | None = Field(default=None, alias="asnLong")
    amazon_address: Text | None = Field(default=None, alias="amazonAddress")
    customer_address: Text | None = Field(default=None, alias="customerAddress")
    virtual_gateway_id: Text | None = Field(default=None, alias="virtualGatewayId")
    direct_connect_gateway_id: Text | None = Field(default=None, alias="directConnectGatewayId")
    address_family: Text | None = Field(default=None, alias="addressFamily")
    amazon_side_asn: StrictInt | None = Field(default=None, alias="amazonSideAsn")
    region: Text | None = None
    # The BGP MD5 secret. Kept out of repr and out of every dump: it must reach no log or event.
    auth_key: Text | None = Field(default=None, alias="authKey", repr=False, exclude=True)

    @property
    def id(self) -> str:
        return self.virtual_interface_id

    @property
    def state(self) -> str:
        return self.virtual_interface_state

    @property
    def name(self) -> str:
        return self.virtual_interface_name or ""

    @property
    def customer_asn(self) -> int | None:
        """AWS reports 4-byte ASNs in asnLong; OUTSCALE only has asn."""
        return self.asn_long if self.asn_long is not None else self.asn

    def snapshot(self) -> dict[str, Any]:
        """The VIF as camelCase JSON without its authKey: safe for logs, ledger and events."""
        return self.model_dump(by_alias=True, exclude_none=True)


class VirtualGateway(_Wire):
    virtual_gateway_id: Id = Field(alias="virtualGatewayId")
    virtual_gateway_state: Text = Field(default="unknown", alias="virtualGatewayState")

    @property
    def available(self) -> bool:
        return self.virtual_gateway_state == "available"


def parse_gateways(items: list[dict[str, Any]] | None) -> dict[str, VirtualGateway]:
    gateways = (VirtualGateway.model_validate(item) for item in items or [])
    return {g.virtual_gateway_id: g for g in gateways}
