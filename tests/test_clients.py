"""DirectLinkClients: one boto3 Session for all targets' keys; keys refreshed spread out, clients kept if unchanged."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from collections import Counter

import boto3
import botocore.client
import botocore.session
import pytest
from botocore.exceptions import ClientError

from chalicelib import directlink
from chalicelib.config import Target
from chalicelib.directlink import REFRESH_MARGIN_SECONDS, DirectLinkClients, TargetError
from chalicelib.log import logger
from chalicelib.runtime import Runtime, Settings

MINUTE = 60


class ShiftedTime:
    """Stands in for directlink's `time` module: its wall clock runs `shift` seconds ahead."""

    def __init__(self) -> None:
        self.shift = 0.0

    def time(self) -> float:
        return time.time() + self.shift

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.fixture
def later(monkeypatch) -> ShiftedTime:
    """Moves the client cache's clock only: moto and botocore keep real time."""
    shifted = ShiftedTime()
    monkeypatch.setattr(directlink, "time", shifted)
    return shifted


@pytest.fixture
def built(monkeypatch) -> dict[str, list]:
    """Every botocore Session constructed, and every client created, by service name."""
    seen: dict[str, list] = {"sessions": [], "clients": []}
    init, create = botocore.session.Session.__init__, botocore.session.Session.create_client

    def counting_init(self, *args, **kwargs):
        seen["sessions"].append(self)
        init(self, *args, **kwargs)

    def counting_create(self, service_name, *args, **kwargs):
        seen["clients"].append(service_name)
        return create(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "__init__", counting_init)
    monkeypatch.setattr(botocore.session.Session, "create_client", counting_create)
    return seen


class Reads:
    """A Secrets Manager client that counts reads per secret, and can be slowed down or made to fail."""

    def __init__(self, delay: float = 0.0):
        self.client = boto3.client("secretsmanager")
        self.count: Counter[str] = Counter()
        self.delay = delay
        self.fail_with: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Reads:  # DirectLinkClients takes a factory
        return self

    def get_secret_value(self, SecretId: str) -> dict:
        with self._lock:
            self.count[SecretId] += 1
        time.sleep(self.delay)
        if self.fail_with:
            raise ClientError({"Error": {"Code": self.fail_with, "Message": "slow down"}}, "GetSecretValue")
        return self.client.get_secret_value(SecretId=SecretId)


def keys(i: int, version: int = 0) -> tuple[str, str]:
    return f"AKIDCLIENTS{i:05d}V{version:03d}", f"clients-secret-{i}-version-{version}"


def put_keys(i: int, version: int = 0) -> None:
    """Create or rotate target i's secret."""
    access_key, secret_key = keys(i, version)
    value = json.dumps({"access_key_id": access_key, "secret_access_key": secret_key})
    sm = boto3.client("secretsmanager")
    try:
        sm.put_secret_value(SecretId=f"vifgate/test/t{i}", SecretString=value)
    except sm.exceptions.ResourceNotFoundException:
        sm.create_secret(Name=f"vifgate/test/t{i}", SecretString=value)


def secret_target(i: int) -> Target:
    return Target.model_validate(
        {
            "name": f"t{i}",
            "provider": "outscale",
            "account_id": f"{100000000000 + i}",
            "credentials": {"secret_id": f"vifgate/test/t{i}"},
        }
    )


def signing_keys(api) -> tuple[str, str, str | None]:
    creds = api.client._request_signer._credentials
    return creds.access_key, creds.secret_key, creds.token


def test_fifty_targets_share_one_session_and_one_secrets_client(aws, built):
    for i in range(50):
        put_keys(i)
    built["sessions"].clear()
    built["clients"].clear()
    clients = DirectLinkClients()
    apis = [clients.get(secret_target(i)) for i in range(50)]
    assert [signing_keys(api)[:2] for api in apis] == [keys(i) for i in range(50)], (
        "each client signs with its own keys"
    )
    assert len(built["sessions"]) == 1, f"{len(built['sessions'])} boto3 Sessions for 50 targets"
    assert Counter(built["clients"]) == {"directconnect": 50, "secretsmanager": 1}


def test_a_rotated_secret_gets_a_new_client_and_an_unchanged_one_keeps_its_client(aws, later):
    put_keys(0)
    put_keys(1)
    reads = Reads()
    clients = DirectLinkClients(secrets_client=reads)
    rotated, unchanged = clients.get(secret_target(0)), clients.get(secret_target(1))
    put_keys(0, version=1)  # new keys
    put_keys(1, version=0)  # a new version of the secret with the same keys
    later.shift = 30 * MINUTE  # every secret is due to be read again
    assert clients.get(secret_target(1)) is unchanged
    fresh = clients.get(secret_target(0))
    assert fresh is not rotated and signing_keys(fresh)[:2] == keys(0, version=1)
    assert reads.count == {"vifgate/test/t0": 2, "vifgate/test/t1": 2}, "both secrets were read again"


def test_a_fleet_reads_its_secrets_again_spread_over_minutes_not_all_at_once(aws, later):
    fleet = 100
    for i in range(fleet):
        put_keys(i)
    reads = Reads()
    clients = DirectLinkClients(secrets_client=reads)
    targets = [secret_target(i) for i in range(fleet)]
    per_minute = []
    for minute in range(40):  # one poll cycle a minute, as the schedule runs
        later.shift = minute * MINUTE
        before = sum(reads.count.values())
        for target in targets:
            clients.get(target)
        per_minute.append(sum(reads.count.values()) - before)
    assert per_minute[0] == fleet
    refreshed = per_minute[1:]
    assert all(reads.count[f"vifgate/test/t{i}"] >= 2 for i in range(fleet)), "every secret is read again"
    assert max(refreshed) <= fleet // 3, f"refreshes bunched up: {refreshed}"
    assert sum(1 for n in refreshed if n) >= 5, f"refreshes fell in too few cycles: {refreshed}"


def test_eight_threads_asking_for_one_target_build_it_once(aws):
    put_keys(0)
    reads = Reads(delay=0.1)  # a slow secret read: every thread arrives while the first is still building
    clients = DirectLinkClients(secrets_client=reads)
    start = threading.Barrier(8)
    got: list = []

    def worker() -> None:
        start.wait()
        got.append(clients.get(secret_target(0)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and all(api is got[0] for api in got)
    assert reads.count == {"vifgate/test/t0": 1}


def test_one_targets_slow_refresh_does_not_hold_up_the_others(aws):
    put_keys(0)
    put_keys(1)
    release = threading.Event()

    class Stalling(Reads):
        def get_secret_value(self, SecretId: str) -> dict:
            if SecretId == "vifgate/test/t0":
                release.wait(5)
            return super().get_secret_value(SecretId=SecretId)

    clients = DirectLinkClients(secrets_client=Stalling())
    stalled = threading.Thread(target=clients.get, args=(secret_target(0),))
    stalled.start()
    try:
        started = time.monotonic()
        clients.get(secret_target(1))
        assert time.monotonic() - started < 2, "t1 waited for t0's secret"
    finally:
        release.set()
        stalled.join()


@pytest.fixture
def role(aws) -> str:
    return boto3.client("iam").create_role(RoleName="vif-gatekeeper", AssumeRolePolicyDocument="{}")["Role"]["Arn"]


def role_target(i: int, role_arn: str) -> Target:
    return Target(
        name=f"hub{i}", provider="aws", region="eu-west-1", role_arn=role_arn, account_id=f"{444455550000 + i}"
    )


def test_assumed_role_keys_are_renewed_before_they_expire(role, later):
    clients = DirectLinkClients()
    target = role_target(0, role)
    first = clients.get(target)
    later.shift = directlink.ROLE_SESSION_SECONDS - 2 * REFRESH_MARGIN_SECONDS - 5
    assert clients.get(target) is first, "valid keys are kept"
    later.shift = directlink.ROLE_SESSION_SECONDS - REFRESH_MARGIN_SECONDS + 1  # expiring within the margin
    renewed = clients.get(target)
    assert renewed is not first and signing_keys(renewed)[0] != signing_keys(first)[0]
    assert signing_keys(renewed)[2], "the renewed keys carry a session token"


def test_assumed_roles_share_one_sts_client(role, built):
    built["clients"].clear()
    clients = DirectLinkClients()
    apis = [clients.get(role_target(i, role)) for i in range(5)]
    assert len({signing_keys(api)[0] for api in apis}) == 5, "each target signs with its own role session"
    assert Counter(built["clients"]) == {"directconnect": 5, "sts": 1}


def test_profiles_get_one_session_each(built, tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[osc-a]\naws_access_key_id = AKIDPROFILEA0000001\naws_secret_access_key = profile-a-secret\n"
        "[osc-b]\naws_access_key_id = AKIDPROFILEB0000001\naws_secret_access_key = profile-b-secret\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    targets = [
        Target.model_validate(
            {"name": f"p{i}", "provider": "outscale", "account_id": "111122223333", "credentials": {"profile": profile}}
        )
        for i, profile in enumerate(["osc-a", "osc-b", "osc-a", "osc-b"])
    ]
    built["sessions"].clear()
    clients = DirectLinkClients()
    apis = [clients.get(t) for t in targets]
    assert [signing_keys(api)[0] for api in apis] == ["AKIDPROFILEA0000001", "AKIDPROFILEB0000001"] * 2
    assert len(built["sessions"]) == 2, "one Session per profile name"


def test_a_refresh_that_fails_for_now_keeps_the_client_and_a_deleted_secret_fails(aws, later):
    put_keys(0)
    reads = Reads()
    clients = DirectLinkClients(secrets_client=reads)
    first = clients.get(secret_target(0))
    later.shift = 30 * MINUTE
    reads.fail_with = "ThrottlingException"
    assert clients.get(secret_target(0)) is first, "the keys read a moment ago still work"
    reads.fail_with = None
    assert clients.get(secret_target(0)) is first and reads.count["vifgate/test/t0"] == 3, "tried again next cycle"
    boto3.client("secretsmanager").delete_secret(SecretId="vifgate/test/t0", ForceDeleteWithoutRecovery=True)
    later.shift = 60 * MINUTE
    with pytest.raises(TargetError) as info:
        clients.get(secret_target(0))
    assert info.value.code == "ResourceNotFoundException", "a secret taken away stops the target (fail closed)"


def test_keys_never_reach_logs_or_error_texts(aws, later, capsys, caplog):
    logger.setLevel("DEBUG")
    put_keys(0)
    reads = Reads()
    clients = DirectLinkClients(secrets_client=reads)
    clients.get(secret_target(0))
    put_keys(0, version=1)
    later.shift = 30 * MINUTE
    clients.get(secret_target(0))
    later.shift = 60 * MINUTE
    reads.fail_with = "ThrottlingException"
    clients.get(secret_target(0))
    reads.fail_with = "AccessDeniedException"
    later.shift = 90 * MINUTE
    with pytest.raises(TargetError) as info:
        clients.get(secret_target(0))
    said = capsys.readouterr().out + caplog.text + str(info.value)
    assert "t0" in said, "the refreshes were logged (by target)"
    for secret in [*keys(0, 0), *keys(0, 1)]:
        assert secret not in said


@pytest.mark.parametrize("workers, pool", [(1, 10), (8, 10), (16, 16), (64, 64)])
def test_the_ledger_client_has_a_connection_per_worker(workers, pool, monkeypatch):
    """Fewer pooled connections than worker threads: urllib3 opens and drops connections every cycle."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    runtime = Runtime(Settings(config_source="test", max_workers=workers), session=boto3.Session())
    assert runtime.ledger.client.meta.config.max_pool_connections == pool
    assert runtime.ledger.client.meta.config.retries["mode"] == "standard", "the shared client settings are kept"


# --- the cache is bounded: a `work` instance meets any batch of a large fleet ----------------------


def test_the_cache_holds_at_most_max_clients_and_drops_the_least_recently_used(aws, built):
    for i in range(6):
        put_keys(i)
    reads = Reads()
    clients = DirectLinkClients(secrets_client=reads, max_clients=3)
    first = {i: clients.get(secret_target(i)) for i in range(3)}
    assert clients.get(secret_target(0)) is first[0]  # 0 is now the most recently used: 1 goes first
    built["clients"].clear()
    later = {i: clients.get(secret_target(i)) for i in (3, 4)}
    assert clients.held == 3
    assert clients.get(secret_target(0)) is first[0], "the most recently used client was kept"
    again = clients.get(secret_target(1))
    assert again is not first[1], "the least recently used client was dropped and built again"
    assert signing_keys(again)[:2] == keys(1), "with that target's own keys"
    assert clients.get(secret_target(4)) is later[4]
    assert clients.held == 3 and Counter(built["clients"]) == {"directconnect": 3}  # 3, 4, then 1 again
    assert reads.count == {f"vifgate/test/t{i}": 1 for i in range(5)}, "a dropped client's keys are not read again"


def test_a_dropped_assumed_role_client_is_built_again_without_another_assume_role(role, monkeypatch):
    calls = Counter()
    original = botocore.client.BaseClient._make_api_call

    def counting(self, operation, params):
        calls[operation] += 1
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting)
    clients = DirectLinkClients(max_clients=2)
    first = [clients.get(role_target(i, role)) for i in range(5)]
    again = [clients.get(role_target(i, role)) for i in range(5)]
    assert calls["AssumeRole"] == 5, "each target's role is assumed once; its keys outlive its client"
    assert clients.held == 2 and clients.clients_built == 10
    assert [signing_keys(a) for a in again] == [signing_keys(f) for f in first]


def test_a_fleet_larger_than_the_cache_keeps_memory_bounded(aws):
    """200 targets through a cache of 20: the clients held stay at 20, whatever the order of the batches."""
    clients = DirectLinkClients(
        base_session=lambda: boto3.Session(aws_access_key_id="k", aws_secret_access_key="s"), max_clients=20
    )
    targets = [
        Target(name=f"acct{i}", provider="aws", region="eu-west-1", account_id=f"{555566660000 + i}")
        for i in range(200)
    ]
    alive = []
    for _ in range(2):
        for target in targets:
            alive.append(weakref.ref(clients.get(target)))
    gc.collect()
    assert clients.held == 20
    assert sum(1 for ref in alive if ref() is not None) == 20, "dropped clients are freed"


QUEUE = {"VIFGATE_WORK_QUEUE": "https://sqs.eu-west-1.amazonaws.com/123456789012/vifgate-dev-work.fifo"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 1_000_000),  # no work queue: one cycle polls every target each minute, so all are kept
        (QUEUE, 100),  # fanout_above: poll never drops a client of the targets it polls itself
        (QUEUE | {"VIFGATE_FANOUT_ABOVE": "0"}, 10),  # always fanned out: a message's 10 targets
        (QUEUE | {"VIFGATE_FANOUT_ABOVE": "0", "VIFGATE_MAX_WORKERS": "32"}, 32),
        (QUEUE | {"VIFGATE_MAX_CLIENTS": "250"}, 250),
        ({"VIFGATE_MAX_CLIENTS": "250"}, 250),
    ],
)
def test_the_runtime_bounds_its_clients(env, expected):
    runtime = Runtime(Settings.from_env({"VIFGATE_CONFIG": "x.yaml", **env}))
    assert runtime.directlink._max_clients == expected


def test_a_bad_max_clients_is_refused_with_its_name():
    with pytest.raises(Exception, match="VIFGATE_MAX_CLIENTS"):
        Settings.from_env({"VIFGATE_CONFIG": "x.yaml", "VIFGATE_MAX_CLIENTS": "many"})
