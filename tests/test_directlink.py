"""chalicelib.directlink against the sandbox over HTTP: paging, retries, errors, endpoints, credentials."""

from __future__ import annotations

import json

import boto3
import pytest

from chalicelib.config import Credentials, Target
from chalicelib.directlink import MAX_ATTEMPTS, DirectLinkClients, TargetError, endpoint_url
from sandbox import DirectLinkSandbox, scenario

KEY, SECRET = scenario.KEYS[scenario.PROD]


def target(**fields) -> Target:
    """A target signed by the base session (the keyed one the tests hand in) unless fields say otherwise."""
    return Target.model_validate(
        {"name": "t", "provider": "aws", "region": "eu-west-2", "account_id": scenario.PROD, **fields}
    )


def outscale(**fields) -> Target:
    return target(**{"provider": "outscale", "credentials": {"profile": "unused"}, **fields})


def keyed_session():
    return boto3.Session(aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="eu-west-2")


@pytest.fixture
def aws_flavor(clock):
    """An AWS-flavoured sandbox with 250 VIFs for our account: three pages of 100."""
    sb = DirectLinkSandbox(flavor="aws", region="eu-west-1", clock=clock)
    for account, (key, secret) in scenario.KEYS.items():
        sb.add_account(account, access_key=key, secret_key=secret)
    sb.add_location("EqDC2", "Equinix DC2")
    connection = sb.add_connection(owner_account=scenario.PARTNER, name="p", location="EqDC2")
    for i in range(250):
        sb.allocate(connection_id=connection, owner_account=scenario.PROD, name=f"v{i}", vlan=100 + i, asn=65001)
    sb.start()
    yield sb
    sb.stop()


def api_for(sb: DirectLinkSandbox, **fields):
    return DirectLinkClients(base_session=keyed_session).get(target(endpoint_url=sb.url, **fields))


def test_follows_next_token_on_aws(aws_flavor):
    api = api_for(aws_flavor, provider="aws", region="eu-west-1")
    vifs = api.describe_virtual_interfaces()
    assert len(vifs) == 250 and len({v.id for v in vifs}) == 250
    pages = [op for op, _ in aws_flavor.calls if op == "DescribeVirtualInterfaces"]
    assert len(pages) == 3
    assert vifs[0].address_family == "ipv4"  # AWS-only fields parse where they are filled in


def test_outscale_answers_in_one_page_with_nulls(directlink):
    api = api_for(directlink)
    vifs = api.describe_virtual_interfaces()
    assert {v.name for v in vifs} == {"prod-app", "prod-db", "prod-legacy"}
    assert all(v.address_family is None and v.amazon_side_asn is None for v in vifs)
    assert [op for op, _ in directlink.calls] == ["DescribeVirtualInterfaces"]


def test_requests_are_json_1_1_with_the_overture_target(directlink):
    api_for(directlink).describe_virtual_gateways()
    headers = {k.lower(): v for k, v in directlink.last_request_headers.items()}
    assert headers["content-type"] == "application/x-amz-json-1.1"
    assert headers["x-amz-target"] == "OvertureService.DescribeVirtualGateways"
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")


def test_api_errors_keep_the_api_message(directlink):
    api = api_for(directlink)
    with pytest.raises(TargetError) as info:
        api.confirm("dxvif-00000000", scenario.PROD_GATEWAY)
    assert info.value.code == "DirectConnectClientException" and not info.value.retryable
    assert str(info.value).startswith("confirm_private_virtual_interface on t failed: DirectConnectClientException: ")
    assert "dxvif-00000000" in str(info.value)


def test_throttling_is_retried_then_reported(directlink):
    directlink.set_faults(throttle_rate=1.0)
    with pytest.raises(TargetError) as info:
        api_for(directlink).describe_virtual_interfaces()
    assert info.value.code == "ThrottlingException" and info.value.retryable
    assert directlink.fault_counts["throttled"] == MAX_ATTEMPTS == len(directlink.calls)


def test_unknown_key_is_a_clear_target_error(directlink):
    clients = DirectLinkClients(
        base_session=lambda: boto3.Session(
            aws_access_key_id="AKIDUNKNOWN000000000", aws_secret_access_key="nope", region_name="eu-west-2"
        )
    )
    with pytest.raises(TargetError) as info:
        clients.get(target(endpoint_url=directlink.url)).describe_virtual_interfaces()
    assert info.value.code == "UnrecognizedClientException" and "nope" not in str(info.value)


@pytest.mark.parametrize(
    "fields, env, expected",
    [
        ({}, {}, "https://directlink.eu-west-2.outscale.com"),
        ({"region": "us-east-2"}, {}, "https://directlink.us-east-2.outscale.com"),
        ({"region": "cloudgouv-eu-west-1"}, {}, "https://directlink.cloudgouv-eu-west-1.outscale.com"),
        ({"endpoint_url": "http://127.0.0.1:9"}, {"AWS_ENDPOINT_URL_DIRECT_CONNECT": "http://x"}, "http://127.0.0.1:9"),
        ({}, {"AWS_ENDPOINT_URL_DIRECT_CONNECT": "http://127.0.0.1:8"}, None),  # botocore applies the variable
    ],
)
def test_outscale_endpoint_resolution(fields, env, expected, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert endpoint_url(outscale(**fields)) == expected


def test_aws_endpoints_are_botocores():
    assert endpoint_url(target(region="eu-west-1")) is None


def test_the_standard_endpoint_variable_reaches_the_client(directlink):
    # conftest's `directlink` fixture exports AWS_ENDPOINT_URL_DIRECT_CONNECT; no endpoint_url in the target
    api = DirectLinkClients(base_session=keyed_session).get(target())
    assert api.client.meta.endpoint_url == directlink.url
    assert api.client.meta.config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}


def test_credentials_from_a_secret(aws, directlink):
    api = DirectLinkClients().get(outscale(credentials=Credentials(secret_id=scenario.secret_id("osc-prod"))))
    assert len(api.describe_virtual_interfaces()) == 3


@pytest.mark.parametrize("secret", ["not json", json.dumps({"access_key_id": "AKIDX"}), json.dumps([1])])
def test_a_malformed_secret_is_named_but_not_shown(aws, secret):
    boto3.client("secretsmanager").create_secret(Name="vifgate/broken", SecretString=secret)
    with pytest.raises(TargetError) as info:
        DirectLinkClients().get(outscale(credentials=Credentials(secret_id="vifgate/broken")))
    assert str(info.value) == (
        "get_secret_value on t failed: BadSecret: secret vifgate/broken must be JSON "
        "with access_key_id and secret_access_key"
    )


def test_assumed_role_credentials_are_used_and_cached(aws, monkeypatch):
    role = boto3.client("iam").create_role(RoleName="vif-gatekeeper", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    clients = DirectLinkClients()
    aws_target = Target(name="hub", provider="aws", region="eu-west-1", role_arn=role, account_id=scenario.PROD)
    first = clients.get(aws_target)
    creds = first.client._request_signer._credentials
    assert creds.access_key != "testing" and creds.token, "the client signs with the assumed role's keys"
    assert clients.get(aws_target) is first, "cached until shortly before the keys expire"
