"""`vifgate config push|diff`: validated fully before anything is uploaded, the diff says when trust widens.

SSM and Secrets Manager are moto's; AppConfig is moto's where it emulates and tests.test_configstore's
AppConfigFake where it does not (environments, strategies, deployments, version listing).
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws

from chalicelib import configstore
from chalicelib.cli import main
from chalicelib.configstore import AppConfigStore
from tests.test_configstore import AppConfigFake

PROD = "111122223333"
KEYS_VALUE = json.dumps({"access_key_id": "AKIAEXAMPLEKEYVALUE1", "secret_access_key": "s3cr3t-never-printed-xyz"})
WEBHOOK = "https://hooks.slack.com/services/T000/B000/never-printed-webhook"
SIGNING = "k" * 40 + "-never-printed-signing"
SSM_SOURCE = "ssm:/vifgate/prod/config"
APPCONFIG_SOURCE = "appconfig:vif-gatekeeper-prod/prod/policy"


def document(**changes) -> dict:
    doc = {
        "targets": [
            {
                "name": "osc-prod",
                "provider": "outscale",
                "region": "eu-west-2",
                "account_id": PROD,
                "credentials": {"secret_id": "vifgate/prod/targets/osc-prod"},
            }
        ],
        "rules": [
            {
                "name": "partner-prod",
                "accounts": [PROD],
                "connections": ["dxcon-fg5678gh"],
                "vlan": {"min": 100, "max": 199},
                "gateway": "vgw-12345678",
                "action": "confirm",
            },
            {"name": "prod-ask", "accounts": [PROD], "action": "ask", "approvers": ["alice"]},
        ],
        "default_action": "ask",
        "chat": {
            "destinations": [{"name": "netops", "kind": "slack", "url": {"secret_id": "vifgate/prod/chat/slack"}}]
        },
        "approvals": {
            "approvers": [{"name": "alice"}, {"name": "bob"}],
            "signing_key": {"secret_id": "vifgate/prod/approvals", "key": "signing_key"},
        },
    }
    doc.update(changes)
    return doc


@pytest.fixture
def cloud():
    """moto with the stage's secrets, as the README's deploy steps create them."""
    with mock_aws():
        secrets = boto3.client("secretsmanager")
        secrets.create_secret(Name="vifgate/prod/targets/osc-prod", SecretString=KEYS_VALUE)
        secrets.create_secret(Name="vifgate/prod/chat/slack", SecretString=WEBHOOK)
        secrets.create_secret(Name="vifgate/prod/approvals", SecretString=json.dumps({"signing_key": SIGNING}))
        yield


@pytest.fixture
def write(tmp_path):
    def write(doc: dict, name: str = "policy.yaml") -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return str(path)

    return write


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    for secret in (
        "s3cr3t-never-printed-xyz",
        "never-printed-webhook",
        "never-printed-signing",
        "AKIAEXAMPLEKEYVALUE1",
    ):
        assert secret not in out + err, "a secret value was printed"
    return code, out, err


def test_push_to_ssm_validates_shows_the_diff_and_publishes(cloud, write, capsys):
    code, out, err = run(capsys, "config", "push", "--stage", "prod", "--source", SSM_SOURCE, write(document()))
    assert (code, err) == (0, "")
    assert "nothing deployed yet" in out and "TRUST WIDENED: rule partner-prod confirms accounts [111122223333]" in out
    assert "published to SSM parameter /vifgate/prod/config: version 1" in out
    stored = boto3.client("ssm").get_parameter(Name="/vifgate/prod/config")["Parameter"]["Value"]
    assert json.loads(stored) == document(), "the JSON of the document as written"
    # The same document again: nothing to publish.
    code, out, _ = run(capsys, "config", "push", "--stage", "prod", "--source", SSM_SOURCE, write(document()))
    assert code == 0 and "no change" in out and "nothing to publish" in out


def test_push_refuses_and_names_every_bad_reference(cloud, write, capsys):
    secrets = boto3.client("secretsmanager")
    secrets.create_secret(Name="vifgate/prod/other", SecretString=KEYS_VALUE)
    secrets.create_secret(Name="vifgate/prod/targets/not-keys", SecretString="not json s3cr3t-never-printed-xyz")
    secrets.create_secret(Name="vifgate/prod/approvals-short", SecretString="short")
    doc = document()
    doc["targets"] += [
        {
            "name": "outside",
            "provider": "outscale",
            "account_id": PROD,
            "credentials": {"secret_id": "vifgate/prod/other"},
        },
        {
            "name": "missing",
            "provider": "outscale",
            "account_id": PROD,
            "credentials": {"secret_id": "vifgate/prod/targets/none"},
        },
        {"name": "laptop", "provider": "outscale", "account_id": PROD, "credentials": {"profile": "me"}},
        {
            "name": "badkeys",
            "provider": "outscale",
            "account_id": PROD,
            "credentials": {"secret_id": "vifgate/prod/targets/not-keys"},
        },
    ]
    doc["chat"]["destinations"].append(
        {"name": "noc", "kind": "mattermost", "url": {"secret_id": "vifgate/prod/targets/osc-prod"}}
    )
    doc["approvals"]["signing_key"] = {"secret_id": "vifgate/prod/chat/slack"}
    code, out, err = run(capsys, "config", "push", "--stage", "prod", "--source", SSM_SOURCE, write(doc))
    assert code == 2 and out == ""
    for line in [
        "targets[1].credentials: secret vifgate/prod/other is outside vifgate/prod/targets/, "
        "the only path the poll function may read",
        "targets[2].credentials: cannot be read: vifgate/prod/targets/none: ResourceNotFoundException",
        "targets[3].credentials: profile 'me' exists only on this machine",
        "targets[4].credentials: secret vifgate/prod/targets/not-keys is not JSON with access_key_id "
        "and secret_access_key",
        "chat.destinations[1].url: secret vifgate/prod/targets/osc-prod is outside vifgate/prod/chat/, "
        "the only path the notify function may read",
        "approvals.signing_key: secret vifgate/prod/chat/slack is outside vifgate/prod/approvals, "
        "the only path the notify and api functions may read",
    ]:
        assert line in err, err
    assert err.rstrip().endswith("Nothing was uploaded.")
    assert boto3.client("ssm").describe_parameters()["Parameters"] == [], "nothing was uploaded"


def test_push_refuses_an_invalid_document_like_check_offline(cloud, write, capsys):
    doc = document(defualt_action="ask")
    doc["rules"][0]["gateway"] = "vgw-xyz"
    code, _, err = run(capsys, "config", "push", "--stage", "prod", "--source", SSM_SOURCE, write(doc))
    assert code == 2
    assert "defualt_action: unknown field" in err and "rules[0].gateway: 'vgw-xyz' is not a virtual gateway id" in err
    assert "Nothing was uploaded." in err
    assert boto3.client("ssm").describe_parameters()["Parameters"] == []


@pytest.fixture
def appconfig(cloud, monkeypatch):
    client = AppConfigFake(boto3.client("appconfig"))
    app = client.create_application(Name="vif-gatekeeper-prod")["Id"]
    client.create_environment(ApplicationId=app, Name="prod")
    client.create_configuration_profile(ApplicationId=app, Name="policy", LocationUri="hosted", Type="AWS.Freeform")
    client.create_deployment_strategy(Name="vif-gatekeeper-prod")
    monkeypatch.setattr(
        configstore, "store_for", lambda source, strategy=None, **_: AppConfigStore(source, client, strategy)
    )
    return client


@pytest.fixture
def stages(tmp_path) -> str:
    """A .chalice/config.json whose prod stage reads AppConfig (the stage decides the source, not the code)."""
    path = tmp_path / "config.json"
    stage = {"environment_variables": {"VIFGATE_CONFIG": APPCONFIG_SOURCE}}
    path.write_text(json.dumps({"stages": {"prod": stage, "dev": {"environment_variables": {}}}}))
    return str(path)


def test_push_to_appconfig_from_the_stage_config_then_diff(appconfig, stages, write, capsys):
    code, out, err = run(capsys, "config", "push", "--stage", "prod", "--chalice-config", stages, write(document()))
    assert (code, err) == (0, ""), err
    assert "published to AppConfig vif-gatekeeper-prod/prod/policy: version 1, deployment 1 started" in out
    assert appconfig.created[0]["ContentType"] == "application/json"
    appconfig.finish()

    wider = document(auto_confirm=False)
    code, out, _ = run(capsys, "config", "push", "--stage", "prod", "--chalice-config", stages, write(wider))
    assert code == 0 and "trust narrowed: auto-confirm PAUSED" in out and "version 2, deployment 2" in out
    appconfig.finish()

    changed = document(default_action="reject")
    changed["rules"][0].update(connections=None, any_connection=True, vlan={"min": 100, "max": 299})
    changed["rules"][1].update(approvers=["alice", "bob"])
    changed["rules"].append(
        {
            "name": "lab",
            "accounts": ["444455556666"],
            "any_connection": True,
            "gateway": "vgw-87654321",
            "action": "confirm",
        }
    )
    changed["rules"][0].pop("connections")
    code, out, _ = run(
        capsys, "config", "diff", "--stage", "prod", "--chalice-config", stages, "--exit-code", write(changed)
    )
    assert code == 3
    assert f"against {APPCONFIG_SOURCE} (version 2, deployment 2 (COMPLETE))" in out
    for line in [
        "  ~ rule partner-prod: connections [dxcon-fg5678gh] -> none, any_connection False -> True, "
        "vlan 100-199 -> 100-299",
        "  ! TRUST WIDENED: rule partner-prod trusts ANY connection (any_connection: true)",
        "  ! TRUST WIDENED: rule partner-prod matches more by vlan: 100-199 -> 100-299",
        "  ! TRUST WIDENED: rule prod-ask may be approved by bob too",
        "  + rule lab (confirm)",
        "  ! TRUST WIDENED: rule lab confirms accounts [444455556666] on any connection with vgw-87654321",
        "  ! TRUST WIDENED: auto-confirm turned back ON (auto_confirm: true): confirm rules confirm again",
        "  v trust narrowed: default_action ask -> reject",
    ]:
        assert line in out, out
    assert len(appconfig.created) == 2, "diff uploads nothing"


def test_diff_without_changes_exits_0(appconfig, stages, write, capsys):
    assert run(capsys, "config", "push", "--stage", "prod", "--chalice-config", stages, write(document()))[0] == 0
    code, out, _ = run(
        capsys, "config", "diff", "--stage", "prod", "--chalice-config", stages, "--exit-code", write(document())
    )
    assert code == 0 and out.rstrip().endswith("no change")


@pytest.mark.parametrize(
    "stage, message",
    [("qa", "stage 'qa' is not in"), ("dev", "stage dev of")],
)
def test_a_stage_without_a_source_is_refused(stages, write, capsys, stage, message):
    code, _, err = run(capsys, "config", "diff", "--stage", stage, "--chalice-config", stages, write(document()))
    assert code == 2 and message in err


def test_the_repository_stages_name_their_source(tmp_path):
    # Read, not hardcoded: whatever .chalice/config.json says each stage reads.
    stages = json.loads(Path(".chalice/config.json").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["environment_variables"]["VIFGATE_CONFIG"].startswith(("ssm:", "appconfig:")), name


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["config", "push", "--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out and "nothing was uploaded" in out and "3  diff --exit-code" in out


def test_resolve_secret_names_the_aws_error_code(cloud):
    # Powertools raises GetParameterError inside its own except: the AWS error is the exception's context.
    from chalicelib.config import SecretRef
    from chalicelib.runtime import resolve_secret

    with pytest.raises(LookupError) as info:
        resolve_secret(SecretRef(secret_id="vifgate/prod/targets/none"))
    assert str(info.value) == "vifgate/prod/targets/none: ResourceNotFoundException"
