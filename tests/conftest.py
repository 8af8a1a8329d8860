"""Shared fixtures: no test reaches a real cloud; AWS is moto, DirectLink is the sandbox on loopback."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from jsonschema import Draft202012Validator
from moto import mock_aws

from chalicelib import events, runtime
from chalicelib.log import logger
from sandbox import DirectLinkSandbox, SandboxClock, scenario
from sandbox.local import provision

REGION = "eu-west-2"
TABLE = "vifgate-test-ledger"


@pytest.fixture(autouse=True)
def isolated_aws_env(monkeypatch, tmp_path):
    """Fake keys, a fixed region, and nothing from the host's AWS configuration."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "VIFGATE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    # Warm-Lambda caches would otherwise carry one test's clients and parameters into the next.
    runtime._cached = None
    logger.setLevel("INFO")  # the CLI turns it down for people; each test starts from the Lambda's level
    parameters.clear_caches()
    parameters.base.DEFAULT_PROVIDERS.clear()
    yield


@pytest.fixture(autouse=True)
def stage_config_through_ssm(monkeypatch):
    """Chalice's test Client with a stage reads that stage's config from SSM, not AppConfig.

    The stages read `appconfig:vif-gatekeeper-S/S/policy`; moto has no appconfigdata (the AppConfig
    reading code is tested with a Stubber in tests/test_configstore.py), and the `ssm:` source is the
    other supported one, so in-process stage tests keep putting their document in `/vifgate/S/config`.
    """
    import contextlib

    import chalice.test

    original = chalice.test.BaseClient._patched_env_vars

    @contextlib.contextmanager
    def patched(client, environment_variables):
        variables = dict(environment_variables)
        source = variables.get("VIFGATE_CONFIG", "")
        if source.startswith("appconfig:vif-gatekeeper-"):
            variables["VIFGATE_CONFIG"] = f"ssm:/vifgate/{source.split('/')[1]}/config"
        with original(client, variables):
            yield

    monkeypatch.setattr(chalice.test.BaseClient, "_patched_env_vars", patched)


SCHEMA = Draft202012Validator(json.loads((Path(__file__).parent.parent / "docs/events.schema.json").read_text()))


@pytest.fixture(autouse=True)
def produced_events(monkeypatch):
    """Every event any test builds is checked against the published JSON Schema when the test ends."""
    produced = []
    build = events.build

    def recording(*args, **kwargs):
        event = build(*args, **kwargs)
        produced.append(event)
        return event

    monkeypatch.setattr(events, "build", recording)
    yield produced
    for event in produced:
        problems = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in SCHEMA.iter_errors(json.loads(events.to_json(event)))
        ]
        assert not problems, f"{event.type} does not match docs/events.schema.json: {problems}"


@pytest.fixture
def clock() -> SandboxClock:
    return SandboxClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def directlink(clock, monkeypatch):
    """The seeded scenario on a fresh sandbox; AWS_ENDPOINT_URL_DIRECT_CONNECT points at it."""
    sb = DirectLinkSandbox(flavor="outscale", region=REGION, clock=clock)
    sb.world = scenario.seed(sb)
    sb.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_DIRECT_CONNECT", sb.url)
    yield sb
    sb.stop()


@pytest.fixture
def aws():
    """In-process moto with the ledger table and the targets' credential secrets."""
    with mock_aws():
        provision(boto3.client("dynamodb"), boto3.client("secretsmanager"), TABLE)
        yield


def confirm_calls(sb: DirectLinkSandbox) -> list[str]:
    """Every ConfirmPrivateVirtualInterface request that reached the sandbox, refused or not."""
    return [op for op, _account in sb.calls if op == "ConfirmPrivateVirtualInterface"]


def pytest_configure(config):
    """tests/leakscan.py: no configured secret may appear in what a test printed, logged or published."""
    from tests import leakscan

    config.pluginmanager.register(leakscan, "leakscan")
