"""A target's external_id: only with role_arn, sent as ExternalId to AssumeRole, and said nowhere else."""

from __future__ import annotations

import json
import logging

import boto3
import pytest

from chalicelib.config import ConfigError, Target, parse_policy
from chalicelib.directlink import DirectLinkClients, TargetError

EXTERNAL_ID = "vifgate-ext-7Qz9Lk2mWp"
ACCOUNT = "444455556666"


def policy_text(**target) -> str:
    fields = {"name": "hub", "provider": "aws", "region": "eu-west-1", "account_id": ACCOUNT, **target}
    return json.dumps({"targets": [fields]})


def test_external_id_is_read_with_role_arn():
    policy = parse_policy(
        policy_text(role_arn=f"arn:aws:iam::{ACCOUNT}:role/vif-gatekeeper-member", external_id=EXTERNAL_ID)
    )
    assert policy.targets[0].external_id == EXTERNAL_ID
    assert EXTERNAL_ID not in repr(policy.targets[0]), "kept out of reprs (and so of logged models)"


@pytest.mark.parametrize(
    "target, problem",
    [
        ({"external_id": EXTERNAL_ID}, "targets[0].external_id: only with role_arn"),
        (
            {
                "provider": "outscale",
                "region": "eu-west-2",
                "credentials": {"profile": "p"},
                "external_id": EXTERNAL_ID,
            },
            "targets[0].external_id: only with role_arn",
        ),
        (
            {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/r", "external_id": "has space " + EXTERNAL_ID},
            "targets[0].external_id: the value given is not an external id",
        ),
    ],
)
def test_external_id_errors_name_the_field_and_not_the_value(target, problem):
    with pytest.raises(ConfigError) as info:
        parse_policy(policy_text(**target))
    assert problem in str(info.value)
    assert EXTERNAL_ID not in str(info.value)


@pytest.fixture
def sent(aws):
    """The AssumeRole parameters botocore is about to send, captured on the base session's event hooks."""
    calls: list[dict] = []
    session = boto3.Session()
    session.events.register("provide-client-params.sts.AssumeRole", lambda params, **_: calls.append(dict(params)))
    role = boto3.client("iam").create_role(RoleName="vif-gatekeeper-member", AssumeRolePolicyDocument="{}")
    return session, role["Role"]["Arn"], calls


def test_external_id_is_sent_to_assume_role_and_never_logged(sent, caplog):
    session, role, calls = sent
    caplog.set_level(logging.DEBUG)
    target = Target(
        name="hub", provider="aws", region="eu-west-1", role_arn=role, external_id=EXTERNAL_ID, account_id=ACCOUNT
    )
    DirectLinkClients(base_session=lambda: session).get(target)
    assert [c.get("ExternalId") for c in calls] == [EXTERNAL_ID]
    assert EXTERNAL_ID not in caplog.text


def test_without_external_id_none_is_sent(sent):
    session, role, calls = sent
    target = Target(name="hub", provider="aws", region="eu-west-1", role_arn=role, account_id=ACCOUNT)
    DirectLinkClients(base_session=lambda: session).get(target)
    assert len(calls) == 1 and "ExternalId" not in calls[0]


def test_a_refused_assume_role_does_not_echo_the_external_id(sent, caplog):
    session, role, _calls = sent

    def refuse(**_):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "AssumeRole")

    session.events.register("before-call.sts.AssumeRole", refuse)
    target = Target(
        name="hub", provider="aws", region="eu-west-1", role_arn=role, external_id=EXTERNAL_ID, account_id=ACCOUNT
    )
    with pytest.raises(TargetError) as info:
        DirectLinkClients(base_session=lambda: session).get(target)
    # The target's failure becomes a target.failed event and a chat message: its text is what they carry.
    assert "AccessDenied" in str(info.value) and EXTERNAL_ID not in str(info.value)
    assert EXTERNAL_ID not in caplog.text
