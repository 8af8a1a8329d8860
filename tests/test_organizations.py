"""Targets from AWS Organizations: parsing, listing on moto's Organizations, expansion, the cache, and a cycle."""

from __future__ import annotations

import copy
import json

import pytest

from chalicelib.config import ConfigError, OrganizationSource, parse_policy

EXTERNAL_ID = "org-ext-9Zq4Wm7Lp2Rt"
HUB = {"name": "hub", "provider": "aws", "region": "eu-west-1", "account_id": "444455556666"}
SOURCE = {
    "name": "org",
    "ous": ["ou-abcd-11111111", "r-abcd"],
    "role_name": "VifGatekeeperMember",
    "external_id": EXTERNAL_ID,
    "regions": ["eu-west-1", "us-east-1"],
    "exclude": ["111122223333"],
}
RULE = {"name": "r", "accounts": ["111122223333"], "action": "ask"}


def document(*entries, rules=None) -> dict:
    return {"targets": list(entries), "rules": rules or []}


def source(**changes) -> dict:
    return {"from_organization": {**copy.deepcopy(SOURCE), **changes}}


def problems(doc) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(json.dumps(doc))
    assert EXTERNAL_ID not in str(info.value), "the external id is never echoed"
    return info.value.problems


# --- parsing ------------------------------------------------------------------------------------------------------


def test_a_source_is_parsed_next_to_ordinary_targets():
    policy = parse_policy(json.dumps(document(HUB, source(list_role_arn="arn:aws:iam::999988887777:role/lister"))))
    assert [t.name for t in policy.targets] == ["hub"], "Policy.targets stays the concrete targets"
    (org,) = policy.organizations
    assert (org.name, org.ous, org.role_name, org.regions, org.exclude) == (
        "org",
        ["ou-abcd-11111111", "r-abcd"],
        "VifGatekeeperMember",
        ["eu-west-1", "us-east-1"],
        ["111122223333"],
    )
    assert org.external_id == EXTERNAL_ID and org.list_role_arn == "arn:aws:iam::999988887777:role/lister"
    assert EXTERNAL_ID not in repr(org) and EXTERNAL_ID not in repr(policy)


def test_a_source_alone_is_enough_and_account_ids_may_be_numbers():
    policy = parse_policy(json.dumps(document(source(exclude=[111122223333], external_id=None))))
    assert policy.targets == [] and policy.organizations[0].exclude == ["111122223333"]


def test_a_rule_may_name_a_source():
    policy = parse_policy(json.dumps(document(HUB, source(), rules=[{**RULE, "targets": ["org", "hub"]}])))
    assert policy.rules[0].targets == ["org", "hub"]


@pytest.mark.parametrize(
    "doc, expected",
    [
        (document(), ["targets: List should have at least 1 item after validation, not 0 (got [])"]),
        (
            document(HUB, source(regions=[])),
            ["targets[1].from_organization.regions: List should have at least 1 item after validation, not 0 (got [])"],
        ),
        (
            document(source(ous=[]), {**HUB, "provider": "azure"}),
            [
                "targets[0].from_organization.ous: List should have at least 1 item after validation, not 0 (got [])",
                "targets[1].provider: Input should be 'outscale' or 'aws' (got 'azure')",
            ],
        ),
        (
            document(HUB, source(ous=["ou-x"])),
            [
                "targets[1].from_organization.ous[0]: 'ou-x' is not an organizational unit id (ou-xxxx-xxxxxxxx) "
                "or a root id (r-xxxx)"
            ],
        ),
        (
            document(HUB, source(ous=["o-abcd12345"])),
            [
                "targets[1].from_organization.ous[0]: 'o-abcd12345' is not an organizational unit id "
                "(ou-xxxx-xxxxxxxx) or a root id (r-xxxx)"
            ],
        ),
        (
            document(HUB, source(regions=["mars-1"])),
            ["targets[1].from_organization.regions[0]: 'mars-1' is not an AWS region name (like eu-west-1)"],
        ),
        (
            document(HUB, source(regions=["eu-west-1", "eu-west-1"])),
            ["targets[1].from_organization.regions[1]: 'eu-west-1' is listed twice"],
        ),
        (
            document(HUB, source(exclude=["1111"])),
            ["targets[1].from_organization.exclude[0]: '1111' is not a 12-digit account id"],
        ),
        (
            document(HUB, source(role_name="role/with/path")),
            [
                "targets[1].from_organization.role_name: 'role/with/path' is not an IAM role name "
                "(1 to 64 letters, digits or _+=,.@-)"
            ],
        ),
        (
            document(HUB, source(list_role_arn="arn:aws:iam::1:role/x")),
            ["targets[1].from_organization.list_role_arn: 'arn:aws:iam::1:role/x' is not an IAM role ARN"],
        ),
        (
            document(HUB, source(external_id="has a space " + EXTERNAL_ID)),
            [
                "targets[1].from_organization.external_id: the value given is not an external id "
                "(2 to 1224 letters, digits or _+=,.@:/-) (not shown: it may be a secret)"
            ],
        ),
        (
            document(HUB, source(rolename="x")),
            ["targets[1].from_organization.rolename: unknown field (check its spelling)"],
        ),
        (
            document(HUB, {"from_organization": SOURCE, "name": "x"}),
            ["targets[1].from_organization: give it alone in its targets entry; this entry also has 'name'"],
        ),
        (
            document(HUB, {"from_organization": "org"}),
            [
                "targets[1].from_organization: expected a mapping with name, ous, role_name and regions (got str)",
            ],
        ),
        (
            document(HUB, source(name="hub")),
            ["targets[1].from_organization.name: 'hub' is used twice (also targets[0])"],
        ),
        (
            document(HUB, source(), source()),
            ["targets[2].from_organization.name: 'org' is used twice (also targets[1].from_organization)"],
        ),
        (
            document(source(), {**HUB, "name": "org-111122223333-eu-west-1"}),
            [
                "targets[1].name: 'org-111122223333-eu-west-1' has the form of the names from_organization org "
                "generates; give it another name"
            ],
        ),
        (
            document(HUB, source(name="o" * 40, regions=["ap-southeast-2"])),
            [
                f"targets[1].from_organization.name: {'o' * 40!r} is too long: the names of the targets it generates "
                "(<name>-<account id>-<region>) must fit 64 characters, so at most 36 here"
            ],
        ),
        (
            document(HUB, source(), rules=[{**RULE, "targets": ["org", "nowhere"]}]),
            ["rules[0].targets: 'nowhere' is not a target or a from_organization source of this document"],
        ),
        (
            {**document(HUB), "organizations": [SOURCE]},
            ["organizations: unknown field (an Organizations source is a targets entry: - from_organization: …)"],
        ),
        (
            document({**HUB, "provider": "azure"}, source(), {**HUB, "name": "hub2", "region": 3}),
            [
                "targets[0].provider: Input should be 'outscale' or 'aws' (got 'azure')",
                "targets[2].region: Input should be a valid string (got 3)",
            ],
        ),
    ],
    ids=lambda value: "" if isinstance(value, list) else None,
)
def test_bad_sources_are_named_by_where_they_are_written(doc, expected):
    assert problems(doc) == expected


def test_generated_targets_are_aws_targets_assuming_the_member_role_with_the_external_id():
    org = OrganizationSource.model_validate({**SOURCE, "regions": ["eu-west-1", "cn-north-1"], "exclude": []})
    hub, china = org.targets(["210987654321"])
    assert (hub.name, hub.provider, hub.region, hub.account_id) == (
        "org-210987654321-eu-west-1",
        "aws",
        "eu-west-1",
        "210987654321",
    )
    assert hub.role_arn == "arn:aws:iam::210987654321:role/VifGatekeeperMember" and hub.external_id == EXTERNAL_ID
    assert china.role_arn == "arn:aws-cn:iam::210987654321:role/VifGatekeeperMember"
    assert EXTERNAL_ID not in repr(hub)


def test_documents_with_sources_pass_the_appconfig_schema_and_bad_shapes_do_not():
    import jsonschema

    from chalicelib.configschema import policy_json_schema

    validator = jsonschema.Draft4Validator(policy_json_schema())
    for doc in (
        document(HUB, source()),
        document(source(exclude=[111122223333], list_role_arn="arn:aws:iam::999988887777:role/lister")),
        document(HUB, source(), rules=[{**RULE, "targets": ["org"]}]),
    ):
        parse_policy(json.dumps(doc))
        assert list(validator.iter_errors(doc)) == []
    for bad in (document(HUB, {"from_organization": SOURCE, "name": "x"}), document(HUB, source(rolename="x"))):
        assert list(validator.iter_errors(bad)), bad
