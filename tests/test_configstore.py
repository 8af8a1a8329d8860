"""The config store: file, ssm: and appconfig: sources, read and published.

SSM is moto's. AppConfig: moto emulates applications, configuration profiles and hosted versions, but
not environments, deployment strategies, deployments, version listing, LatestVersionNumber, or the
appconfigdata read API; `AppConfigFake` wraps moto's client for what it emulates and plays the rest,
and reads go through a botocore Stubber on an appconfigdata client.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from chalicelib import configstore, runtime
from chalicelib.config import ConfigError
from chalicelib.configstore import AppConfigStore, SsmStore, StoreError, parse_source, read_text

DOC = {"targets": [{"name": "t", "provider": "aws", "account_id": "111122223333"}]}
TEXT = json.dumps(DOC)
SOURCE = "appconfig:vif-gatekeeper-prod/prod/policy"


@pytest.mark.parametrize(
    "text, kind",
    [("policy.yaml", "file"), ("ssm:/vifgate/prod/config", "ssm"), (SOURCE, "appconfig")],
)
def test_sources(text, kind):
    assert parse_source(text).kind == kind


@pytest.mark.parametrize("text", ["appconfig:a/b", "appconfig:a/b/c/d", "appconfig:a//c", "appconfig:a b/c/d", "ssm:"])
def test_malformed_sources_are_named(text):
    with pytest.raises(ConfigError) as info:
        parse_source(text)
    assert info.value.source == text


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_text(str(tmp_path / "nope.yaml"))
    assert "cannot read" in str(info.value) and "nope.yaml" in str(info.value)


@pytest.fixture
def aws_mock():
    with mock_aws():
        yield


def test_ssm_read_and_its_failure(aws_mock):
    boto3.client("ssm").put_parameter(Name="/vifgate/prod/config", Value=TEXT, Type="String")
    assert read_text("ssm:/vifgate/prod/config") == TEXT
    with pytest.raises(ConfigError) as info:
        read_text("ssm:/vifgate/prod/missing")
    assert "cannot read SSM parameter /vifgate/prod/missing: ParameterNotFound" in str(info.value)


# -- appconfigdata (read): a Stubber, moto has no appconfigdata


def _body(text: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(text), len(text))


def stubbed_appconfigdata(answers: list[bytes | Exception]):
    client = boto3.client("appconfigdata", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b")
    stub = Stubber(client)
    stub.add_response(
        "start_configuration_session",
        {"InitialConfigurationToken": "token-0"},
        {
            "ApplicationIdentifier": "vif-gatekeeper-prod",
            "EnvironmentIdentifier": "prod",
            "ConfigurationProfileIdentifier": "policy",
        },
    )
    for i, answer in enumerate(answers):
        if isinstance(answer, Exception):
            stub.add_client_error("get_latest_configuration", "BadRequestException", "token expired")
        else:
            stub.add_response(
                "get_latest_configuration",
                {
                    "Configuration": _body(answer),
                    "NextPollConfigurationToken": f"token-{i + 1}",
                    "ContentType": "application/json",
                },
                {"ConfigurationToken": f"token-{i}"},
            )
    stub.activate()
    return client, stub


def test_appconfig_read_through_powertools_cached_for_a_minute():
    client, stub = stubbed_appconfigdata([TEXT.encode()])
    assert read_text(SOURCE, appconfigdata=client) == TEXT
    assert read_text(SOURCE, appconfigdata=client) == TEXT, "from the cache: the Stubber has no second answer"
    stub.assert_no_pending_responses()


def test_appconfig_with_nothing_deployed_says_so():
    client, _ = stubbed_appconfigdata([b""])
    with pytest.raises(ConfigError) as info:
        read_text(SOURCE, appconfigdata=client)
    assert info.value.source == SOURCE
    assert "cannot read AppConfig vif-gatekeeper-prod/prod/policy: no configuration deployed" in str(info.value)


def test_appconfig_errors_name_the_source_not_a_traceback():
    client, _ = stubbed_appconfigdata([Exception()])
    with pytest.raises(ConfigError) as info:
        read_text(SOURCE, appconfigdata=client)
    assert str(info.value) == (
        f"invalid config {SOURCE}:\n"
        "  - cannot read AppConfig vif-gatekeeper-prod/prod/policy: BadRequestException: token expired"
    )


def test_runtime_reads_appconfig_sources(monkeypatch):
    client, _ = stubbed_appconfigdata([TEXT.encode()])
    monkeypatch.setattr(configstore, "_providers", {})
    provider = configstore._appconfig_provider("vif-gatekeeper-prod", "prod", client)
    monkeypatch.setitem(configstore._providers, ("vif-gatekeeper-prod", "prod", None), provider)
    assert runtime.load_policy(SOURCE).targets[0].name == "t"


# -- SSM (publish): moto


def test_ssm_publish_new_standard_then_advanced_then_too_big(aws_mock):
    ssm = boto3.client("ssm")
    store = SsmStore(parse_source("ssm:/vifgate/prod/config"), ssm)
    assert store.deployed().text is None
    first = store.publish(TEXT)
    assert first.version == "1" and "type String (new parameter), Standard tier" in first.summary()
    assert store.deployed().text == TEXT
    big = json.dumps({**DOC, "pad": "x" * 5000})
    second = store.publish(big)
    assert "Advanced tier: the document is over the 4,096 bytes" in second.summary()
    described = ssm.describe_parameters()["Parameters"][0]
    assert described["Tier"] == "Advanced" and described["Version"] == 2
    third = store.publish(TEXT)
    assert "kept the Advanced tier" in third.summary()
    with pytest.raises(StoreError) as info:
        store.publish(json.dumps({"pad": "x" * 9000}))
    assert "more than the 8,192 an advanced SSM parameter holds" in str(info.value)
    assert ssm.get_parameter(Name="/vifgate/prod/config")["Parameter"]["Version"] == 3, "nothing was uploaded"


def test_ssm_publish_keeps_a_secure_string(aws_mock):
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/vifgate/prod/config", Value="{}", Type="SecureString")
    published = SsmStore(parse_source("ssm:/vifgate/prod/config"), ssm).publish(TEXT)
    assert "type SecureString (kept)" in published.summary()
    assert ssm.describe_parameters()["Parameters"][0]["Type"] == "SecureString"


# -- AppConfig (publish): moto where it emulates, AppConfigFake for the rest


def _error(code: str, message: str, op: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


class AppConfigFake:
    """moto's appconfig client for applications, profiles and hosted versions; environments, strategies,
    deployments, list_applications, version listing and LatestVersionNumber played here (moto has none)."""

    def __init__(self, moto_client: Any):
        self._moto = moto_client
        self.apps: dict[str, str] = {}
        self.environments: dict[str, list[dict]] = defaultdict(list)
        self.strategies: list[dict] = []
        self.versions: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.deployments: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.created: list[dict] = []
        self.before_create = lambda: None  # a hook: another writer slipping in between list and create

    def __getattr__(self, name: str) -> Any:
        return getattr(self._moto, name)

    def create_application(self, **kwargs: Any) -> dict:
        app = self._moto.create_application(**kwargs)
        self.apps[app["Id"]] = app["Name"]
        return app

    def list_applications(self, **_: Any) -> dict:
        return {"Items": [{"Id": i, "Name": n} for i, n in self.apps.items()]}

    def create_environment(self, ApplicationId: str, Name: str) -> dict:
        env = {"Id": f"env{len(self.environments[ApplicationId])}", "Name": Name}
        self.environments[ApplicationId].append(env)
        return env

    def list_environments(self, ApplicationId: str, **_: Any) -> dict:
        return {"Items": self.environments[ApplicationId]}

    def create_deployment_strategy(self, Name: str) -> dict:
        strategy = {"Id": f"str{len(self.strategies)}", "Name": Name}
        self.strategies.append(strategy)
        return strategy

    def list_deployment_strategies(self, **_: Any) -> dict:
        return {"Items": self.strategies}

    def list_hosted_configuration_versions(self, ApplicationId: str, ConfigurationProfileId: str, **_: Any) -> dict:
        known = sorted(self.versions[(ApplicationId, ConfigurationProfileId)], reverse=True)
        return {"Items": [{"VersionNumber": v} for v in known]}

    def create_hosted_configuration_version(self, **kwargs: Any) -> dict:
        self.before_create()
        latest = kwargs.pop("LatestVersionNumber", None)
        known = self.versions[(kwargs["ApplicationId"], kwargs["ConfigurationProfileId"])]
        if latest is not None and known and latest != max(known):
            raise _error(
                "ConflictException", "LatestVersionNumber is not the latest", "CreateHostedConfigurationVersion"
            )
        self.created.append({**kwargs, "LatestVersionNumber": latest})
        answer = self._moto.create_hosted_configuration_version(**kwargs)
        known.append(int(answer["VersionNumber"]))
        return answer

    def start_deployment(self, **kwargs: Any) -> dict:
        mine = self.deployments[(kwargs["ApplicationId"], kwargs["EnvironmentId"])]
        if any(d["State"] == "DEPLOYING" for d in mine):
            raise _error("ConflictException", "a deployment is in progress", "StartDeployment")
        profile = self._moto.get_configuration_profile(
            ApplicationId=kwargs["ApplicationId"], ConfigurationProfileId=kwargs["ConfigurationProfileId"]
        )
        deployment = {
            **kwargs,
            "DeploymentNumber": len(mine) + 1,
            "ConfigurationName": profile["Name"],
            "State": "DEPLOYING",
        }
        mine.append(deployment)
        return deployment

    def list_deployments(self, ApplicationId: str, EnvironmentId: str, **_: Any) -> dict:
        return {"Items": list(reversed(self.deployments[(ApplicationId, EnvironmentId)]))}

    def finish(self, state: str = "COMPLETE") -> None:
        for deployments in self.deployments.values():
            for d in deployments:
                if d["State"] == "DEPLOYING":
                    d["State"] = state


@pytest.fixture
def appconfig(aws_mock) -> AppConfigFake:
    """The stage's AppConfig resources as infra/template.json creates them."""
    client = AppConfigFake(boto3.client("appconfig"))
    app = client.create_application(Name="vif-gatekeeper-prod")["Id"]
    client.create_environment(ApplicationId=app, Name="prod")
    client.create_configuration_profile(ApplicationId=app, Name="policy", LocationUri="hosted", Type="AWS.Freeform")
    client.create_deployment_strategy(Name="vif-gatekeeper-prod")
    return client


def test_appconfig_publish_creates_a_version_and_deploys_it(appconfig):
    store = AppConfigStore(parse_source(SOURCE), appconfig)
    assert store.deployed().text is None
    first = store.publish(TEXT)
    assert (first.version, first.deployment) == ("1", 1)
    assert appconfig.created[0]["ContentType"] == "application/json"
    assert appconfig.created[0]["LatestVersionNumber"] is None, "no version yet: nothing to lock on"
    deployed = store.deployed()
    assert (deployed.text, deployed.version, deployed.deployment) == (TEXT, "1", 1)
    appconfig.finish()
    second = store.publish(TEXT.replace('"t"', '"t2"'))
    assert (second.version, second.deployment) == ("2", 2)
    assert appconfig.created[1]["LatestVersionNumber"] == 1, "optimistic concurrency on the version read"
    assert "strategy vif-gatekeeper-prod" in second.summary()


def test_appconfig_deployed_skips_a_rolled_back_deployment(appconfig):
    store = AppConfigStore(parse_source(SOURCE), appconfig)
    store.publish(TEXT)
    appconfig.finish()
    store.publish('{"targets": []}')
    appconfig.finish("ROLLED_BACK")
    assert store.deployed().text == TEXT, "the alarm rolled version 2 back: version 1 is what runs"


def test_appconfig_publish_refuses_when_another_version_slipped_in(appconfig):
    store = AppConfigStore(parse_source(SOURCE), appconfig)
    store.publish(TEXT)
    appconfig.finish()

    def other_writer():
        appconfig.before_create = lambda: None
        appconfig.create_hosted_configuration_version(
            ApplicationId=appconfig.created[0]["ApplicationId"],
            ConfigurationProfileId=appconfig.created[0]["ConfigurationProfileId"],
            Content=b"{}",
            ContentType="application/json",
        )

    appconfig.before_create = other_writer
    with pytest.raises(StoreError) as info:
        store.publish(TEXT)
    assert "another version was created since version 1 was read; nothing was uploaded" in str(info.value)
    assert not any(d["State"] == "DEPLOYING" for ds in appconfig.deployments.values() for d in ds)


def test_appconfig_publish_while_a_deployment_runs(appconfig):
    store = AppConfigStore(parse_source(SOURCE), appconfig)
    store.publish(TEXT)
    with pytest.raises(StoreError) as info:
        store.publish(TEXT)
    assert "version 2 was stored but not deployed" in str(info.value)
    assert "a deployment is already running in this environment" in str(info.value)


def test_appconfig_missing_resources_are_named(appconfig):
    store = AppConfigStore(parse_source("appconfig:vif-gatekeeper-dev/dev/policy"), appconfig)
    with pytest.raises(StoreError) as info:
        store.publish(TEXT)
    assert "AppConfig application 'vif-gatekeeper-dev' does not exist" in str(info.value)


@pytest.mark.parametrize("source", [SOURCE, "ssm:/vifgate/prod/config"])
def test_no_region_is_a_config_error_not_a_traceback(source, monkeypatch):
    from aws_lambda_powertools.utilities.parameters import base

    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setattr(configstore, "_providers", {})
    monkeypatch.setattr(base, "DEFAULT_PROVIDERS", {})
    with pytest.raises(ConfigError) as info:
        read_text(source)
    assert info.value.source == source and "NoRegionError" in str(info.value)
