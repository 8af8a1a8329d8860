"""Targets from AWS Organizations: parsing, listing on moto's Organizations, expansion, the cache, and a cycle."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.config import ConfigError, OrganizationSource, parse_policy
from chalicelib.organizations import ListingError, OrganizationsLister, OrganizationTargets, expand

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


# --- listing on moto's Organizations ------------------------------------------------------------------------------


@dataclass
class Org:
    client: Any
    root: str
    ous: dict[str, str]
    accounts: dict[str, str]  # name -> id


def _account(client, name: str, parent: str | None, root: str) -> str:
    status = client.create_account(Email=f"{name}@example.test", AccountName=name)["CreateAccountStatus"]
    account = status["AccountId"]
    if parent:
        client.move_account(AccountId=account, SourceParentId=root, DestinationParentId=parent)
    return account


@pytest.fixture
def org():
    """root: mgmt, loose; prod (app, closed) > prod/eu (eu, deep) > prod/eu/deeper (deepest); lab (lab)."""
    with mock_aws():
        client = boto3.client("organizations", region_name="us-east-1")
        client.create_organization(FeatureSet="ALL")
        root = client.list_roots()["Roots"][0]["Id"]
        ous = {"prod": client.create_organizational_unit(ParentId=root, Name="prod")["OrganizationalUnit"]["Id"]}
        ous["eu"] = client.create_organizational_unit(ParentId=ous["prod"], Name="eu")["OrganizationalUnit"]["Id"]
        ous["deeper"] = client.create_organizational_unit(ParentId=ous["eu"], Name="deeper")["OrganizationalUnit"]["Id"]
        ous["lab"] = client.create_organizational_unit(ParentId=root, Name="lab")["OrganizationalUnit"]["Id"]
        accounts = {
            "loose": _account(client, "loose", None, root),
            "app": _account(client, "app", ous["prod"], root),
            "closed": _account(client, "closed", ous["prod"], root),
            "eu": _account(client, "eu", ous["eu"], root),
            "deep": _account(client, "deep", ous["eu"], root),
            "deepest": _account(client, "deepest", ous["deeper"], root),
            "lab": _account(client, "lab", ous["lab"], root),
        }
        client.close_account(AccountId=accounts["closed"])  # SUSPENDED: never a target
        yield Org(client, root, ous, accounts)


def counted_session() -> tuple[boto3.Session, Counter]:
    session = boto3.Session(region_name="us-east-1")
    calls: Counter = Counter()
    session.events.register("before-call.organizations", lambda model, **_: calls.update([model.name]))
    return session, calls


def the(org: Org, *names: str) -> list[str]:
    return sorted(org.accounts[n] for n in names)


def test_accounts_are_listed_recursively_active_only(org):
    session, calls = counted_session()
    lister = OrganizationsLister(lambda: session)
    prod = OrganizationSource.model_validate({**SOURCE, "ous": [org.ous["prod"]], "exclude": []})
    assert lister(prod) == the(org, "app", "eu", "deep", "deepest"), "child OUs too; the closed account left out"
    # Each parent once: prod, eu, deeper (accounts + child OUs each).
    assert calls == {"ListAccountsForParent": 3, "ListChildren": 3}
    everything = OrganizationSource.model_validate({**SOURCE, "ous": [org.root, org.ous["lab"]], "exclude": []})
    assert lister(everything) == sorted([*the(org, "loose", "app", "eu", "deep", "deepest", "lab"), "123456789012"]), (
        "the root lists the management account too; a unit named twice is listed once"
    )


def test_exclude_leaves_accounts_out_of_the_generated_targets(org):
    lister = OrganizationsLister(boto3.Session)
    prod = OrganizationSource.model_validate(
        {**SOURCE, "ous": [org.ous["prod"]], "exclude": [org.accounts["eu"], org.accounts["deepest"]]}
    )
    policy = parse_policy(json.dumps(document(HUB, {"from_organization": prod.model_dump()})))
    expanded = OrganizationTargets(lister).expanded(policy)
    assert sorted({t.account_id for t in expanded.targets}) == sorted([HUB["account_id"], *the(org, "app", "deep")])


def test_listing_follows_every_page(org):
    session, calls = counted_session()
    many = [_account(org.client, f"m{i}", org.ous["lab"], org.root) for i in range(45)]
    lab = OrganizationSource.model_validate({**SOURCE, "ous": [org.ous["lab"]], "exclude": []})
    assert OrganizationsLister(lambda: session)(lab) == sorted([org.accounts["lab"], *many])
    assert calls["ListAccountsForParent"] == 3, "46 accounts, 20 a page (moto's default, as AWS's)"


def test_an_organizations_error_is_a_listing_error_with_its_code_only(org):
    lister = OrganizationsLister(boto3.Session)
    missing = OrganizationSource.model_validate({**SOURCE, "ous": ["ou-zzzz-zzzzzzzz"]})
    with pytest.raises(ListingError) as info:
        lister(missing)
    assert str(info.value) == info.value.code and info.value.code.endswith("Exception"), info.value.code


def test_a_list_role_is_assumed_to_list(org):
    session, _ = counted_session()
    assumed: list[dict] = []
    session.events.register("provide-client-params.sts.AssumeRole", lambda params, **_: assumed.append(dict(params)))
    role = "arn:aws:iam::123456789012:role/vif-gatekeeper-org-list"
    lab = OrganizationSource.model_validate({**SOURCE, "ous": [org.ous["lab"]], "list_role_arn": role})
    lister = OrganizationsLister(lambda: session)
    assert lister(lab) == the(org, "lab")
    assert lister(lab) == the(org, "lab")
    assert [a["RoleArn"] for a in assumed] == [role], "assumed once while its keys last"
    assert "ExternalId" not in assumed[0]


# --- expansion ----------------------------------------------------------------------------------------------------


def test_expand_appends_the_targets_and_replaces_source_names_in_rules():
    policy = parse_policy(
        json.dumps(
            document(
                HUB,
                source(exclude=[]),
                rules=[{**RULE, "targets": ["org", "hub"]}, {**RULE, "name": "everywhere"}],
            )
        )
    )
    expanded = expand(policy, {"org": ["210987654321", "111122223333"]})
    assert [t.name for t in expanded.targets] == [
        "hub",
        "org-210987654321-eu-west-1",
        "org-210987654321-us-east-1",
        "org-111122223333-eu-west-1",
        "org-111122223333-us-east-1",
    ]
    assert expanded.rules[0].targets == [*(t.name for t in expanded.targets[1:]), "hub"]
    assert expanded.rules[1].targets is None and expanded.organizations == []
    assert policy.targets == [policy.targets[0]] and policy.rules[0].targets == ["org", "hub"], "the input is unchanged"


def test_a_source_never_listed_generates_nothing_and_its_rules_match_no_target():
    policy = parse_policy(json.dumps(document(HUB, source(), rules=[{**RULE, "targets": ["org"]}])))
    expanded = expand(policy, {})
    assert [t.name for t in expanded.targets] == ["hub"]
    assert expanded.rules[0].targets == [], "not None: a rule for the source's targets never applies to others"


# --- the cache, failures ------------------------------------------------------------------------------------------


class Lister:
    """A stand-in for Organizations: the accounts it lists, or the failure it raises; counts its calls."""

    def __init__(self, accounts: list[str]):
        self.accounts = accounts
        self.failure: Exception | None = None
        self.calls = 0

    def __call__(self, source: OrganizationSource) -> list[str]:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return list(self.accounts)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = parse_policy(json.dumps(document(HUB, source(exclude=[]), rules=[{**RULE, "targets": ["org"]}])))
A, B, C = "210987654321", "111122223333", "777788889999"


def names(policy) -> list[str]:
    return [t.name for t in policy.targets]


@pytest.fixture
def no_metrics():
    from chalicelib.metrics import metrics

    yield metrics
    metrics.clear_metrics()  # the failures' counts: not for another test's blob


def test_a_listing_is_reused_within_the_ttl_and_refreshed_after(no_metrics):
    lister, clock = Lister([A]), Clock()
    targets = OrganizationTargets(lister, ttl=900, clock=clock)
    first = targets.expanded(POLICY)
    assert names(first) == ["hub", f"org-{A}-eu-west-1", f"org-{A}-us-east-1"]
    assert [s.state for s in targets.statuses] == ["listed"]
    clock.now += 899
    assert targets.expanded(POLICY) is first and lister.calls == 1, "cached: no call, the same expanded policy"
    assert [(s.state, s.accounts, s.targets) for s in targets.statuses] == [("cached", 1, 2)]
    lister.accounts = [A, B]  # a new account joins the OU: no config edit
    clock.now += 2
    refreshed = targets.expanded(POLICY)
    assert lister.calls == 2 and [s.state for s in targets.statuses] == ["listed"]
    assert f"org-{B}-us-east-1" in names(refreshed) and f"org-{B}-us-east-1" in refreshed.rules[0].targets


def test_a_failed_listing_keeps_the_last_good_one_and_warns(no_metrics, caplog):
    lister, clock, failed = Lister([A, B]), Clock(), []
    targets = OrganizationTargets(lister, ttl=900, clock=clock, on_failure=lambda *a: failed.append(a))
    good = targets.expanded(POLICY)
    clock.now += 901
    lister.failure = ListingError("TooManyRequestsException")
    with caplog.at_level("WARNING"):
        stale = targets.expanded(POLICY)
    assert names(stale) == names(good), "the accounts of the last good listing are still polled"
    (status,) = targets.statuses
    assert (status.state, status.error, status.accounts) == ("stale", "TooManyRequestsException", 2)
    assert "listing failed with TooManyRequestsException" in status.describe()
    assert failed == [("org", "TooManyRequestsException", False)]
    (line,) = [r for r in caplog.records if "organization listing failed" in r.getMessage()]
    assert line.levelname == "WARNING"
    clock.now += 30
    targets.expanded(POLICY)
    assert lister.calls == 2, "not tried again within a minute of the failure"
    clock.now += 31
    lister.failure = None
    lister.accounts = [A]
    assert names(targets.expanded(POLICY)) == ["hub", f"org-{A}-eu-west-1", f"org-{A}-us-east-1"]
    assert lister.calls == 3 and targets.statuses[0].state == "listed"


def test_with_no_listing_ever_the_source_is_skipped_and_the_explicit_targets_go_on(no_metrics, caplog):
    lister, clock, failed = Lister([A]), Clock(), []
    lister.failure = ListingError("AccessDeniedException")
    targets = OrganizationTargets(lister, clock=clock, on_failure=lambda *a: failed.append(a))
    with caplog.at_level("INFO"):
        policy = targets.expanded(POLICY)
    assert names(policy) == ["hub"] and policy.rules[0].targets == []
    (status,) = targets.statuses
    assert (status.state, status.error) == ("skipped", "AccessDeniedException")
    assert status.describe() == "NOT LISTED (AccessDeniedException): its targets are skipped"
    assert failed == [("org", "AccessDeniedException", True)]
    (line,) = [r for r in caplog.records if "organization listing failed" in r.getMessage()]
    assert line.levelname == "ERROR" and "skipped" in line.getMessage()
    lister.failure = RuntimeError("a bug, with text that is not shown")
    clock.now += 61
    assert names(targets.expanded(POLICY)) == ["hub"] and targets.statuses[0].error == "RuntimeError"


def test_the_external_id_is_never_logged_or_shown(no_metrics, caplog, capsys):
    from chalicelib.log import logger

    logger.setLevel("DEBUG")
    lister, clock = Lister([A]), Clock()
    targets = OrganizationTargets(lister, clock=clock)
    with caplog.at_level("DEBUG"):
        policy = targets.expanded(POLICY)
        clock.now += 901
        lister.failure = ListingError("ThrottlingException")
        targets.expanded(POLICY)
        fresh = OrganizationTargets(lister, clock=clock)
        fresh.expanded(POLICY)
    said = caplog.text + "".join(capsys.readouterr()) + repr(policy) + repr(targets.statuses) + repr(POLICY)
    said += "".join(s.describe() for s in targets.statuses + fresh.statuses)
    assert "organization listing failed" in said and "org" in said
    assert EXTERNAL_ID not in said
    assert {t.external_id for t in policy.targets[1:]} == {EXTERNAL_ID}, "yet it is what each role is assumed with"


def test_a_two_thousand_account_organization_expands_into_a_target_per_account_and_region(capsys):
    """Figures (not asserted; bench/organizations.py prints them too): listing and expand time."""
    from moto.organizations.models import FakeAccount, organizations_backends

    with mock_aws():
        client = boto3.client("organizations", region_name="us-east-1")
        client.create_organization(FeatureSet="ALL")
        root = client.list_roots()["Roots"][0]["Id"]
        parents = []
        for i in range(10):
            unit = client.create_organizational_unit(ParentId=root, Name=f"u{i}")["OrganizationalUnit"]["Id"]
            parents += [
                unit,
                client.create_organizational_unit(ParentId=unit, Name=f"c{i}")["OrganizationalUnit"]["Id"],
            ]
        backend = organizations_backends["123456789012"]["aws"]
        for i in range(2000):  # into moto's model: 2,000 CreateAccount calls would only time moto
            account = FakeAccount(backend.org, AccountName=f"a{i}", Email=f"a{i}@example.test")
            account.parent_id = parents[i % len(parents)]
            backend.accounts.append(account)
        created = {a.id for a in backend.accounts if a.parent_id != root}
        policy = parse_policy(
            json.dumps(document(HUB, source(ous=parents[::2], exclude=[]), rules=[{**RULE, "targets": ["org"]}]))
        )
        targets = OrganizationTargets(OrganizationsLister(lambda: boto3.Session(region_name="us-east-1")))
        started = time.perf_counter()
        listed = targets.expanded(policy)
        first = time.perf_counter() - started
        started = time.perf_counter()
        assert targets.expanded(policy) is listed
        cached = time.perf_counter() - started
    started = time.perf_counter()
    expand(policy, {"org": sorted(created)})
    expanding = time.perf_counter() - started
    generated = listed.targets[1:]
    assert len(created) == 2000 and len(generated) == 4000
    assert {t.account_id for t in generated} == created and {t.region for t in generated} == {"eu-west-1", "us-east-1"}
    assert len({t.name for t in generated}) == 4000 and len(listed.rules[0].targets or []) == 4000
    assert all(t.role_arn == f"arn:aws:iam::{t.account_id}:role/VifGatekeeperMember" for t in generated)
    with capsys.disabled():
        print(
            f"\n2,000 accounts x 2 regions: listing + expand {first:.2f} s, expand alone {expanding * 1000:.0f} ms, "
            f"a cached read {cached * 1e6:.0f} us"
        )


# --- the runtime, the app: one poll cycle with a generated target on the DirectLink sandbox ---------------------------


def test_the_runtime_expands_what_poll_fanout_and_work_read(no_metrics):
    from chalicelib import fanout
    from chalicelib.runtime import Runtime, Settings

    lister = Lister([A, B, C])
    settings = Settings(config_source="test", work_queue="w.fifo", fanout_above=5)
    runtime = Runtime(settings, policy=POLICY, organizations=OrganizationTargets(lister))
    assert len(runtime.policy.targets) == 7 and fanout.wanted(runtime), "6 generated + hub: past the threshold"
    assert runtime.document_policy is POLICY and lister.calls == 1
    quiet = Runtime(Settings(config_source="test", list_organizations=False), policy=POLICY)
    assert quiet.policy is POLICY and "organizations" not in quiet.__dict__, "listing off: nothing built or called"
    assert Settings.from_env({"VIFGATE_CONFIG": "x", "VIFGATE_LIST_ORGANIZATIONS": "false"}).list_organizations is False
    assert Settings.from_env({"VIFGATE_CONFIG": "x", "VIFGATE_ORG_CACHE_SECONDS": "60"}).org_cache_seconds == 60
    with pytest.raises(ConfigError):
        Settings.from_env({"VIFGATE_CONFIG": "x", "VIFGATE_ORG_CACHE_SECONDS": "a day"})


def sandbox_keys(sandbox, monkeypatch) -> list[dict]:
    """A role's keys from moto's STS sign, in the sandbox, as the role's account; returns the AssumeRole calls."""
    import botocore.client

    assumed: list[dict] = []
    original = botocore.client.BaseClient._make_api_call

    def calling(api, operation, params):
        answer = original(api, operation, params)
        if (api.meta.service_model.service_name, operation) == ("sts", "AssumeRole"):
            assumed.append(dict(params))
            keys = answer["Credentials"]
            sandbox.add_account(params["RoleArn"].split(":")[4], keys["AccessKeyId"], keys["SecretAccessKey"])
        return answer

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", calling)
    return assumed


@dataclass
class OrgStage:
    sandbox: Any
    member: str
    suspended: str
    vif: str
    assumed: list[dict]

    @property
    def target(self) -> str:
        return f"org-{self.member}-{REGION}"


REGION = "eu-west-2"  # the sandbox's region


@pytest.fixture
def org_stage(aws, directlink, monkeypatch):
    """The prod stage: the sandbox's three targets, and an OU whose ACTIVE member has a trusted VIF waiting."""
    import chalice.test
    import yaml

    from chalicelib.ledger import create_table
    from sandbox import scenario
    from sandbox.local import create_queues
    from tests.test_app import StageTimeoutContext

    monkeypatch.setattr(chalice.test, "LambdaContext", StageTimeoutContext)
    create_table(boto3.client("dynamodb"), "vifgate-prod-ledger")
    create_queues(boto3.client("sqs"), "vifgate-prod-events.fifo", "vifgate-prod-events-dlq.fifo")
    create_queues(boto3.client("sqs"), "vifgate-prod-work.fifo", "vifgate-prod-work-dlq.fifo")
    client = boto3.client("organizations", region_name="us-east-1")
    client.create_organization(FeatureSet="ALL")
    root = client.list_roots()["Roots"][0]["Id"]
    network = client.create_organizational_unit(ParentId=root, Name="network")["OrganizationalUnit"]["Id"]
    member = _account(client, "network-prod", network, root)
    suspended = _account(client, "network-old", network, root)
    client.close_account(AccountId=suspended)
    # In the sandbox: each account's gateway, and a VIF the partner allocated to each.
    gateway = directlink.add_gateway(member, state="available")
    directlink.add_gateway(suspended, state="available")
    vif = directlink.allocate(scenario.PARTNER_CONNECTION, member, name="org-app", vlan=120, asn=65001)
    directlink.allocate(scenario.PARTNER_CONNECTION, suspended, name="org-old", vlan=121, asn=65001)
    assumed = sandbox_keys(directlink, monkeypatch)
    config = yaml.safe_load(scenario.CONFIG)
    config["targets"].append(source(ous=[network], regions=[REGION], exclude=[]))
    trusted = {
        "name": "org-trusted",
        "accounts": [member, suspended],
        "connections": [scenario.PARTNER_CONNECTION],
        "gateway": gateway,
        "targets": ["org"],
        "action": "confirm",
    }
    config["rules"].insert(0, trusted)
    boto3.client("ssm").put_parameter(
        Name="/vifgate/prod/config", Value=yaml.safe_dump(config), Type="SecureString", Overwrite=True
    )
    return OrgStage(directlink, member, suspended, vif["virtualInterfaceId"], assumed)


def scheduled(client) -> dict:
    return client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])


def test_one_poll_cycle_confirms_the_trusted_vif_of_a_listed_account(org_stage, no_metrics, caplog):
    from chalice.test import Client

    from app import app
    from chalicelib.ledger import Ledger
    from tests.conftest import confirm_calls

    stage = org_stage
    with caplog.at_level("DEBUG"), Client(app, stage_name="prod") as client:
        summary = client.lambda_.invoke("poll", scheduled(client)).payload
    assert sorted(summary["targets_ok"]) == sorted(["osc-prod", "osc-staging", "osc-lab", stage.target]), summary
    assert stage.sandbox.vif(stage.vif)["virtualInterfaceState"] in ("pending", "available")
    record = Ledger(boto3.client("dynamodb"), "vifgate-prod-ledger").load(stage.target).vifs[stage.vif]
    assert record.confirmed_at, "recorded under the generated target"
    member_role = f"arn:aws:iam::{stage.member}:role/VifGatekeeperMember"
    assert [(a["RoleArn"], a.get("ExternalId")) for a in stage.assumed] == [(member_role, EXTERNAL_ID)]
    assert stage.suspended not in {account for _op, account in stage.sandbox.calls}, "a SUSPENDED account is not polled"
    assert len(confirm_calls(stage.sandbox)) == 1 + 2, "the org VIF and the scenario's two trusted prod VIFs"
    assert EXTERNAL_ID not in caplog.text and EXTERNAL_ID not in json.dumps(summary)


def test_past_the_threshold_the_work_function_lists_too_and_polls_the_generated_target(org_stage, monkeypatch):
    from chalice.test import Client

    from app import app
    from chalicelib import runtime

    stage = org_stage
    monkeypatch.setenv("VIFGATE_FANOUT_ABOVE", "1")
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName="vifgate-prod-work.fifo")["QueueUrl"]
    with Client(app, stage_name="prod") as client:
        summary = client.lambda_.invoke("poll", scheduled(client)).payload
        assert summary["fanned_out"] == 4, summary
        bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
        monkeypatch.setattr(runtime, "_cached", None)  # another function: another process, its own listing
        polled = []
        for body in bodies:
            event = client.events.generate_sqs_event(queue_name="vifgate-prod-work.fifo", message_bodies=[body])
            answer = client.lambda_.invoke("work", event).payload
            polled += answer["targets_ok"]
            assert "unknown_targets" not in answer, answer
    assert stage.target in polled
    assert stage.sandbox.vif(stage.vif)["virtualInterfaceState"] in ("pending", "available")


# --- vifgate check ------------------------------------------------------------------------------------------------


@pytest.fixture
def check(org, directlink, tmp_path, monkeypatch, capsys, no_metrics):
    """`vifgate check` on a document with a source over prod (4 ACTIVE accounts) in the sandbox's region."""
    from chalicelib import cli

    sandbox_keys(directlink, monkeypatch)
    from chalicelib import organizations

    calls: Counter = Counter()
    real = organizations.active_accounts

    def counted(client, parents):
        calls.update(["listed"])
        return real(client, parents)

    monkeypatch.setattr(organizations, "active_accounts", counted)

    def run(*options: str, ous: list[str] | None = None, command: str = "check") -> tuple[int, str, str]:
        path = tmp_path / "policy.yaml"
        entry = source(ous=ous or [org.ous["prod"]], regions=[REGION], exclude=[org.accounts["app"]])
        path.write_text(json.dumps(document(entry)))
        code = cli.main([command, "--config", str(path), *options])
        out, err = capsys.readouterr()
        return code, out, err

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_check_offline_validates_without_listing(check):
    code, out, _ = check("--offline")
    assert code == 0 and check.calls["listed"] == 0
    assert out.splitlines()[1] == (
        "  from_organization org: not listed (--offline); 1 OU/root id(s), 1 region(s), 1 account(s) excluded"
    )


def test_check_shows_what_each_source_produced_and_polls_its_targets(check):
    code, out, err = check()
    assert code == 0, out + err
    assert out.splitlines()[0].startswith("config OK: 3 target(s)")
    assert out.splitlines()[1] == "  from_organization org: 3 account(s) -> 3 target(s) (listed)"
    assert check.calls["listed"] == 1, "listed once for the whole command"
    assert "targets OK: org-" in out and EXTERNAL_ID not in out + err


def test_check_names_a_source_it_could_not_list_and_exits_1(check):
    code, out, err = check(ous=["ou-zzzz-zzzzzzzz"])
    assert code == 1
    assert "  from_organization org: NOT LISTED (" in out and "its targets are skipped" in out
    assert "vifgate: from_organization org failed: NOT LISTED" in err and EXTERNAL_ID not in out + err


# --- vifgate config diff --------------------------------------------------------------------------------------------


def test_config_diff_names_sources_added_changed_and_removed_never_the_external_id():
    from chalicelib.configdiff import diff

    old = parse_policy(json.dumps(document(HUB, source())))
    new = parse_policy(
        json.dumps(
            document(
                HUB,
                source(ous=["ou-abcd-11111111"], external_id="org-ext-rotated-000000"),
                source(name="lab", ous=["ou-abcd-22222222"], regions=["eu-west-3"]),
            )
        )
    )
    lines = diff(old, new).lines()
    assert lines == [
        "  ~ from_organization org: ous [ou-abcd-11111111, r-abcd] -> [ou-abcd-11111111], external_id changed",
        "  + from_organization lab (ous [ou-abcd-22222222], regions [eu-west-3], role VifGatekeeperMember)",
    ]
    assert diff(new, old).lines()[-1] == "  - from_organization lab (its accounts no longer polled)"
    assert not any(EXTERNAL_ID in line or "rotated" in line for line in lines + diff(new, old).lines())


def test_a_generated_target_can_be_read_back_from_its_name_without_listing():
    from chalicelib.organizations import target_named

    policy = parse_policy(json.dumps(document(HUB, source(), source(name="org-b", regions=["eu-west-3"], exclude=[]))))
    found = target_named(policy, f"org-{A}-us-east-1")
    assert found == OrganizationSource.model_validate(SOURCE).targets([A])[1]
    assert found is not None and found.external_id == EXTERNAL_ID
    assert target_named(policy, f"org-b-{A}-eu-west-3") == policy.organizations[1].targets([A])[0]
    for unknown in (
        f"org-{A}-eu-west-3",  # not a region of org
        f"org-{B}-eu-west-1",  # excluded
        f"org-{A[:-1]}-eu-west-1",
        "org-b-eu-west-3",
        "hub",
        f"lab-{A}-eu-west-1",
    ):
        assert target_named(policy, unknown) is None, unknown


def test_poll_names_a_source_it_could_not_list_and_exits_1(check):
    code, out, _ = check(ous=["ou-zzzz-zzzzzzzz"], command="poll")
    assert code == 1 and "  FAILED from_organization org: NOT LISTED (" in out


def test_the_listing_client_retries_in_standard_mode():
    lister = OrganizationsLister(lambda: boto3.Session(region_name="us-east-1"))
    assert lister._client(None).meta.config.retries["mode"] == "standard"


def test_an_account_created_under_the_ou_is_polled_after_the_next_refresh_without_a_config_edit(org, no_metrics):
    clock = Clock()
    targets = OrganizationTargets(OrganizationsLister(boto3.Session), ttl=900, clock=clock)
    policy = parse_policy(json.dumps(document(source(ous=[org.ous["lab"]], regions=["eu-west-1"], exclude=[]))))
    assert names(targets.expanded(policy)) == [f"org-{org.accounts['lab']}-eu-west-1"]
    new = _account(org.client, "lab-2", org.ous["deeper"], org.root)
    org.client.move_account(AccountId=new, SourceParentId=org.ous["deeper"], DestinationParentId=org.ous["lab"])
    clock.now += 899
    assert names(targets.expanded(policy)) == [f"org-{org.accounts['lab']}-eu-west-1"], "within the TTL: as listed"
    clock.now += 2
    assert names(targets.expanded(policy)) == sorted(f"org-{a}-eu-west-1" for a in (org.accounts["lab"], new))
