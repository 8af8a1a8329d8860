"""Settings from the environment, the policy document, and lazily built clients.

Lambda and the CLI both build a Runtime; tests hand in their own clock and clients.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from .config import Chat, ConfigError, Policy, SecretRef, parse_policy
from .directlink import CLIENT_CONFIG, DirectLinkClients
from .ledger import Ledger, RecordCache

if TYPE_CHECKING:
    from .approvals.trigger import Trigger
    from .organizations import OrganizationTargets

SECRET_MAX_AGE = 300  # seconds a chat secret is cached in a warm Lambda
# Secret store answers that a later try can get past (anything else is missing, denied or malformed).
TRANSIENT = {
    "ThrottlingException",
    "TooManyRequestsException",
    "InternalServiceError",
    "InternalServerError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


UNBOUNDED_CLIENTS = 1_000_000


@dataclass(frozen=True)
class Settings:
    config_source: str
    table_name: str = "vifgate-ledger"
    dry_run: bool = False
    max_workers: int = 8
    events_queue: str | None = None
    dead_letter_queue: str | None = None
    poll_function: str | None = None  # the poll function an approval's vote invokes (the API function only)
    work_queue: str | None = None  # the fan-out's SQS FIFO work queue (see chalicelib/fanout.py)
    fanout_above: int = 100  # more targets than this: the scheduled function enqueues them instead of polling
    targets_per_message: int = 10
    # DirectLink clients held at once (least recently used dropped; every target's keys kept); see client_bound.
    max_clients: int | None = None
    org_cache_seconds: int = 900  # how long an Organizations listing is used before it is listed again
    # Whether this function lists Organizations sources (the api and notify functions do not: no grant, no need).
    list_organizations: bool = True

    @property
    def client_bound(self) -> int:
        """DirectLink clients held at once: max_clients, else what one invocation polls at most.

        Without a work queue one cycle polls every target, each minute: dropping clients would only
        rebuild them. With one, `poll` polls up to fanout_above targets and a `work` message
        targets_per_message.
        """
        if self.max_clients:
            return self.max_clients
        if self.work_queue is None:
            return UNBOUNDED_CLIENTS
        return max(self.fanout_above, self.targets_per_message, self.max_workers)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env  # looked up per call: chalice's test Client swaps it
        source = env.get("VIFGATE_CONFIG", "").strip()
        if not source:
            raise ConfigError(
                "VIFGATE_CONFIG",
                ["VIFGATE_CONFIG is not set: give a file path, ssm:/parameter/name or appconfig:app/env/profile"],
            )
        workers = env.get("VIFGATE_MAX_WORKERS", "8")
        if not workers.isdigit() or not 1 <= int(workers) <= 64:
            raise ConfigError("VIFGATE_MAX_WORKERS", [f"VIFGATE_MAX_WORKERS: {workers!r} is not a number from 1 to 64"])
        numbers = {}
        for name, default, low, high in (
            ("VIFGATE_FANOUT_ABOVE", "100", 0, 1_000_000),
            ("VIFGATE_TARGETS_PER_MESSAGE", "10", 1, 100),
            ("VIFGATE_MAX_CLIENTS", "0", 0, 100_000),
            ("VIFGATE_ORG_CACHE_SECONDS", "900", 0, 86_400),
        ):
            text = env.get(name, default).strip()
            if not text.isdigit() or not low <= int(text) <= high:
                raise ConfigError(name, [f"{name}: {text[:32]!r} is not a number from {low} to {high}"])
            numbers[name] = int(text)
        return cls(
            config_source=source,
            table_name=env.get("VIFGATE_TABLE", cls.table_name),
            dry_run=_flag(env.get("VIFGATE_DRY_RUN")),
            max_workers=int(workers),
            events_queue=env.get("VIFGATE_EVENTS_QUEUE") or None,
            dead_letter_queue=env.get("VIFGATE_EVENTS_DLQ") or None,
            poll_function=env.get("VIFGATE_POLL_FUNCTION") or None,
            work_queue=env.get("VIFGATE_WORK_QUEUE") or None,
            fanout_above=numbers["VIFGATE_FANOUT_ABOVE"],
            targets_per_message=numbers["VIFGATE_TARGETS_PER_MESSAGE"],
            max_clients=numbers["VIFGATE_MAX_CLIENTS"] or None,
            org_cache_seconds=numbers["VIFGATE_ORG_CACHE_SECONDS"],
            list_organizations=_flag(env.get("VIFGATE_LIST_ORGANIZATIONS", "true")),
        )


def read_config_text(source: str) -> str:
    """The policy document's text from a file, `ssm:/name` or `appconfig:app/env/profile` (see configstore)."""
    from . import configstore

    return configstore.read_text(source)


def resolve_secret(ref: SecretRef) -> str:
    """A chat secret's value from Secrets Manager or SSM, cached; `key` picks a field of a JSON secret."""
    from aws_lambda_powertools.utilities import parameters

    from .chatops import SecretUnavailable

    try:
        if ref.secret_id:
            value = parameters.get_secret(ref.secret_id, max_age=SECRET_MAX_AGE)
        else:
            assert ref.parameter is not None  # SecretRef holds exactly one of the two
            value = parameters.get_parameter(ref.parameter, decrypt=True, max_age=SECRET_MAX_AGE)
    except parameters.exceptions.GetParameterError as exc:
        cause = exc.__cause__ or exc.__context__  # Powertools raises inside its except: the context is the cause
        code = getattr(cause, "response", {}).get("Error", {}).get("Code") or type(cause).__name__
        if code in TRANSIENT:
            raise SecretUnavailable(code) from None
        raise LookupError(f"{ref.secret_id or ref.parameter}: {code}") from None
    if ref.key is None:
        return value
    try:
        return json.loads(value)[ref.key]
    except (ValueError, KeyError, TypeError):  # never echo the secret's text
        raise LookupError(f"{ref.secret_id or ref.parameter} is not JSON with a {ref.key!r} field") from None


def load_policy(source: str) -> Policy:
    return _parsed(read_config_text(source), source)


@lru_cache(maxsize=4)
def _parsed(text: str, source: str) -> Policy:
    """Parsing is pure: a warm Lambda reading the same text again reuses the validated policy."""
    return parse_policy(text, source)


class Runtime:
    """Everything a cycle needs; clients are built on first use and reused while warm."""

    def __init__(
        self,
        settings: Settings,
        *,
        policy: Policy | None = None,
        clock: Callable[[], datetime] = utc_now,
        session: boto3.Session | None = None,
        directlink: DirectLinkClients | None = None,
        dynamodb=None,
        sqs=None,
        resolve: Callable[[SecretRef], str] = resolve_secret,
        trigger: Trigger | None = None,
        organizations: OrganizationTargets | None = None,
    ):
        self.settings = settings
        self.clock = clock
        self._policy = policy
        self._session = session
        self._directlink = directlink
        self._dynamodb = dynamodb
        self._sqs = sqs
        self._resolve = resolve
        self._trigger = trigger
        self._organizations = organizations
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._queue_urls: dict[str, str] = {}
        self._notifier: tuple[Any, Any] | None = None

    @property
    def policy(self) -> Policy:
        """The validated policy, its Organizations sources' targets added; ConfigError when it is invalid.

        (Callers then confirm nothing.) A source whose listing failed adds its last good listing's
        targets, or none (organizations.OrganizationTargets); the explicit targets are always there.
        """
        document = self.document_policy
        if not document.organizations or not self.settings.list_organizations:
            return document
        return self.organizations.expanded(document)

    @property
    def document_policy(self) -> Policy:
        """The policy as written: its sources not listed (`vifgate check --offline`)."""
        return self._policy if self._policy is not None else load_policy(self.settings.config_source)

    @cached_property
    def organizations(self) -> OrganizationTargets:
        """Each Organizations source's listing, kept VIFGATE_ORG_CACHE_SECONDS (imported only when a source exists)."""
        if self._organizations is not None:
            return self._organizations
        from .organizations import OrganizationsLister, OrganizationTargets

        lister = OrganizationsLister(lambda: self.session)
        return OrganizationTargets(lister, ttl=self.settings.org_cache_seconds, on_failure=_count_listing_failure)

    @property
    def session(self) -> boto3.Session:
        """The one boto3 Session every client is built from (each Session costs ~8 MB): built once, under a lock."""
        with self._session_lock:
            if self._session is None:
                self._session = boto3.Session()
            return self._session

    @cached_property
    def directlink(self) -> DirectLinkClients:
        return self._directlink or DirectLinkClients(
            base_session=lambda: self.session, pool=self.settings.max_workers, max_clients=self.settings.client_bound
        )

    def warm(self, *, ledger: bool) -> None:
        """Build the shared clients once, before worker threads race to build them."""
        _ = self.directlink
        if ledger:
            _ = self.ledger, self.sqs

    @cached_property
    def sqs(self):
        return self._sqs or self.session.client("sqs", config=CLIENT_CONFIG)

    @property
    def publishing(self) -> bool:
        """Events are written and sent only when there is a queue to send them to."""
        return self.settings.events_queue is not None

    def queue_url(self, name: str) -> str:
        """Queue names are per stage, URLs per account and region: look them up once."""
        with self._lock:
            if name not in self._queue_urls:
                self._queue_urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            return self._queue_urls[name]

    def secret(self, ref: SecretRef) -> str:
        """A secret's value through this runtime's resolver (cached while warm by resolve_secret)."""
        return self._resolve(ref)

    @property
    def notifier(self):
        """Chat destinations from the policy; rebuilt when the document's chat or approvals section changes."""
        from .chatops import ApprovalLinks, Notifier

        policy = self.policy
        chat: Chat = policy.chat
        sections = (chat, policy.approvals)
        with self._lock:
            if self._notifier is None or self._notifier[0] != sections:
                # The signing key is read per message (ApprovalLinks.signer), through the cached resolver.
                links = ApprovalLinks.from_policy(policy.approvals, self._resolve)
                notifier = Notifier(chat.destinations, self._resolve, approvals=links, clock=self.clock)
                self._notifier = (sections, notifier)
            return self._notifier[1]

    @cached_property
    def trigger(self) -> Trigger | None:
        """How a decided vote asks the poller to act now; None: the next scheduled cycle does it."""
        if self._trigger is not None:
            return self._trigger
        if self.settings.work_queue:  # the fan-out's path: a poll-now message on the work queue
            from .approvals.trigger import QueueTrigger

            return QueueTrigger(lambda: (self.sqs, self.queue_url(self.settings.work_queue or "")), self.clock)
        if not self.settings.poll_function:
            return None
        from .approvals.trigger import LambdaTrigger

        client = self.session.client("lambda", config=CLIENT_CONFIG)
        return LambdaTrigger(client, self.settings.poll_function, self.clock)

    @cached_property
    def ledger(self) -> Ledger:
        # Every worker thread reads and writes the ledger: with fewer connections than workers, urllib3
        # opens and drops connections every cycle (a pool of 10 churned 13-85 per cycle at 16+ workers).
        pool = Config(max_pool_connections=max(10, self.settings.max_workers))
        client = self._dynamodb or self.session.client("dynamodb", config=CLIENT_CONFIG.merge(pool))
        # Each target's records are kept between cycles and reused while its version is unchanged
        # (ledger.records.RecordCache): an idle cycle reads one small item per target, not every record.
        return Ledger(client, self.settings.table_name, cache=RecordCache(self.settings.client_bound))


def _count_listing_failure(source: str, code: str, skipped: bool) -> None:
    """OrganizationListingFailures in the invocation's metrics (the log line names the source and the code)."""
    from aws_lambda_powertools.metrics import MetricUnit

    from .metrics import metrics

    metrics.add_metric(name="OrganizationListingFailures", unit=MetricUnit.Count, value=1)


# One runtime per kind (a poller's, a reader's), rebuilt when its settings change; None: none yet.
_cached: dict[bool, tuple[Settings, Runtime]] | None = None


def get(env: Mapping[str, str] | None = None) -> Runtime:
    """The Lambda's runtime, rebuilt only when its settings change between invocations."""
    return _get(Settings.from_env(env))


def get_reader(env: Mapping[str, str] | None = None) -> Runtime:
    """The runtime of a function that reads the policy but never lists Organizations (api, notify).

    Only the pollers hold the grant: the others judge a listed account's target from its name.
    """
    return _get(replace(Settings.from_env(env), list_organizations=False))


def _get(settings: Settings) -> Runtime:
    """A Lambda is one kind; a process serving both (the sandbox, the CLI) keeps one of each."""
    global _cached
    slots = _cached if _cached is not None else {}
    kept = slots.get(settings.list_organizations)
    if kept is None or kept[0] != settings:
        kept = slots[settings.list_organizations] = (settings, Runtime(settings))
    _cached = slots
    return kept[1]
