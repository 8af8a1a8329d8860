"""DirectLink answers that are not what the API promises: real boto3 against a scripted server on 127.0.0.1.

A proxy or load balancer can answer 200 with HTML or nothing; a buggy endpoint can send fields of the
wrong type. None of it may read as "no VIFs" (that would announce every waiting VIF as gone), and one
odd VIF must not cost the others their cycle.
"""

from __future__ import annotations

import json

import boto3
import pytest

from chalicelib.config import Target
from chalicelib.directlink import CLIENT_CONFIG, DirectLinkApi, TargetError
from sandbox import scenario
from tests.http_receiver import Answer, Receiver

JSON_11 = {"Content-Type": "application/x-amz-json-1.1"}
GOOD = {"virtualInterfaceId": "dxvif-good0001", "virtualInterfaceState": "confirming", "vlan": 101, "asn": 65001}


@pytest.fixture
def server():
    with Receiver() as receiver:
        yield receiver


def api_at(url: str) -> DirectLinkApi:
    client = boto3.Session().client(
        "directconnect",
        region_name="eu-west-2",
        endpoint_url=url,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="not-a-real-secret",
        config=CLIENT_CONFIG,
    )
    return DirectLinkApi(Target(name="t", provider="aws", region="eu-west-2", account_id=scenario.PROD), client)


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        (b"<html><body>502 Bad Gateway</body></html>", "application/x-amz-json-1.1"),
        (b"", "application/x-amz-json-1.1"),
        (b'{"virtualInterfaces": [{"virtualInterfaceId": "dxvif-1", "virtualInt', "application/x-amz-json-1.1"),
        (b"{}", "application/x-amz-json-1.1"),
        (b'{"virtualInterfaces": null}', "application/x-amz-json-1.1"),
        (b'{"virtualInterfaces": "dxvif-1"}', "application/x-amz-json-1.1"),
        (b'{"virtualInterfaces": {"virtualInterfaceId": "dxvif-1"}}', "application/x-amz-json-1.1"),
        (b'{"virtualInterfaces": 7}', "application/x-amz-json-1.1"),
        (b"[]", "application/x-amz-json-1.1"),
        (b"null", "application/x-amz-json-1.1"),
        (b"\xff\xfe\x00garbage", "application/x-amz-json-1.1"),
        (b'{"virtualInterfaces": [], "nextToken": 5}', "application/x-amz-json-1.1"),
    ],
    ids=[
        "html",
        "html-as-json",
        "empty",
        "truncated",
        "no-list",
        "null-list",
        "string-list",
        "object-list",
        "number-list",
        "array-body",
        "null-body",
        "not-utf8",
        "number-token",
    ],
)
def test_a_200_that_is_not_a_directlink_answer_fails_the_call(server, body, content_type):
    server.default = Answer(200, {"Content-Type": content_type}, body)
    with pytest.raises(TargetError) as info:
        api_at(server.url).describe_virtual_interfaces()
    assert info.value.code == "MalformedAnswer" and info.value.retryable
    assert str(info.value).startswith("describe_virtual_interfaces on t failed: MalformedAnswer: ")


def test_an_empty_list_is_a_real_answer(server):
    server.default = Answer(200, JSON_11, b'{"virtualInterfaces": []}')
    assert api_at(server.url).describe_virtual_interfaces() == []


def test_a_malformed_page_after_a_good_one_fails_the_whole_listing(server):
    server.answer(Answer(200, JSON_11, json.dumps({"virtualInterfaces": [GOOD], "nextToken": "p2"}).encode()))
    server.default = Answer(200, JSON_11, b"")
    with pytest.raises(TargetError):
        api_at(server.url).describe_virtual_interfaces()


@pytest.mark.parametrize(
    "field, value",
    [
        ("vlan", "107"),
        ("vlan", True),
        ("vlan", 101.5),
        ("asn", "65000"),
        ("asnLong", "4200000000"),
        ("virtualInterfaceId", ""),
        ("virtualInterfaceId", 12345678),
        ("virtualInterfaceId", "dxvif-" + "x" * 2000),
        ("virtualInterfaceName", "n" * 500_000),
        ("virtualInterfaceName", "bad \ud800 surrogate"),
        ("virtualInterfaceState", 3),
        ("ownerAccount", 111122223333),
    ],
)
def test_wire_values_are_strict_and_an_unstorable_vif_is_skipped_and_named(server, capsys, field, value):
    odd = {**GOOD, "virtualInterfaceId": "dxvif-odd00001", "authKey": "bgp-secret-of-the-odd-one", field: value}
    answer = {"virtualInterfaces": [odd, {**GOOD, "authKey": "bgp-secret-of-the-good-one"}]}
    server.default = Answer(200, JSON_11, json.dumps(answer).encode())
    vifs = api_at(server.url).describe_virtual_interfaces()
    assert [v.id for v in vifs] == ["dxvif-good0001"]
    logs = capsys.readouterr().err
    assert logs.count("unreadable virtual interface skipped") == 1 and f'"{field}"' in logs
    assert "bgp-secret" not in logs and "n" * 200 not in logs


@pytest.mark.parametrize("item", [7, "dxvif-1", ["dxvif-1"]])
def test_an_item_that_is_not_an_object_fails_the_page_at_the_wire(server, item):
    """botocore cannot parse such a list: the page is not a DirectLink answer."""
    server.default = Answer(200, JSON_11, json.dumps({"virtualInterfaces": [item, GOOD]}).encode())
    with pytest.raises(TargetError) as info:
        api_at(server.url).describe_virtual_interfaces()
    assert info.value.code == "MalformedAnswer"


@pytest.mark.parametrize("item", [None, 7, "dxvif-1", ["dxvif-1"]])
def test_an_item_that_is_not_an_object_is_skipped_by_the_parser(capsys, item):
    api = api_at("http://127.0.0.1:9")  # never called: the items are handed in
    assert [v.id for v in api._parse([item, GOOD])] == ["dxvif-good0001"]
    assert "unreadable virtual interface skipped" in capsys.readouterr().err


def test_a_vif_listed_twice_is_read_once(server, capsys):
    server.default = Answer(200, JSON_11, json.dumps({"virtualInterfaces": [GOOD, {**GOOD, "vlan": 999}]}).encode())
    vifs = api_at(server.url).describe_virtual_interfaces()
    assert [(v.id, v.vlan) for v in vifs] == [("dxvif-good0001", 101)]
    assert "listed twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "body",
    [b"<html>oops</html>", b"", b"{}", b'{"virtualInterfaces": [{"virtualInterfaceId": "dxvif-good0001"}]}'],
)
def test_describe_one_never_mistakes_a_broken_answer_for_a_gone_vif(server, body):
    """The follow-up read after a lost Confirm answer: broken means unknown, not gone."""
    server.default = Answer(200, JSON_11, body)
    api = api_at(server.url)
    if b"good0001" in body:
        assert api.describe_one("dxvif-good0001").state == "unknown"
        return
    with pytest.raises(TargetError):
        api.describe_one("dxvif-good0001")


def test_describe_one_returns_none_only_when_the_api_says_the_vif_is_not_there(server):
    server.default = Answer(200, JSON_11, b'{"virtualInterfaces": []}')
    assert api_at(server.url).describe_one("dxvif-good0001") is None
