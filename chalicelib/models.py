"""What the DirectLink / Direct Connect API answers, parsed at the edge."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in code; fields the clouds add later are ignored."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class VirtualInterface(_Wire):
    """One VIF as DescribeVirtualInterfaces returns it; AWS-only fields are null on OUTSCALE."""

    virtual_interface_id: str = Field(alias="virtualInterfaceId")
    virtual_interface_name: str | None = Field(default=None, alias="virtualInterfaceName")
    virtual_interface_state: str = Field(default="unknown", alias="virtualInterfaceState")
    virtual_interface_type: str | None = Field(default=None, alias="virtualInterfaceType")
    owner_account: str | None = Field(default=None, alias="ownerAccount")
    connection_id: str | None = Field(default=None, alias="connectionId")
    location: str | None = None
    vlan: int | None = None
    asn: int | None = None
    asn_long: int | None = Field(default=None, alias="asnLong")
    amazon_address: str | None = Field(default=None, alias="amazonAddress")
    customer_address: str | None = Field(default=None, alias="customerAddress")
    virtual_gateway_id: str | None = Field(default=None, alias="virtualGatewayId")
    direct_connect_gateway_id: str | None = Field(default=None, alias="directConnectGatewayId")
    address_family: str | None = Field(default=None, alias="addressFamily")
    amazon_side_asn: int | None = Field(default=None, alias="amazonSideAsn")
    region: str | None = None
    # The BGP MD5 secret. Kept out of repr and out of every dump: it must reach no log or event.
    auth_key: str | None = Field(default=None, alias="authKey", repr=False, exclude=True)

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
    virtual_gateway_id: str = Field(alias="virtualGatewayId")
    virtual_gateway_state: str = Field(default="unknown", alias="virtualGatewayState")

    @property
    def available(self) -> bool:
        return self.virtual_gateway_state == "available"


def parse_gateways(items: list[dict[str, Any]] | None) -> dict[str, VirtualGateway]:
    gateways = (VirtualGateway.model_validate(item) for item in items or [])
    return {g.virtual_gateway_id: g for g in gateways}
