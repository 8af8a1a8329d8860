"""Targets from AWS Organizations: list each source's ACTIVE accounts (cached), then expand the policy.

A `targets` entry `from_organization` (config.OrganizationSource) names OUs or a root; every ACTIVE
account under them, child OUs included, minus `exclude`, becomes one aws target per region
(`<source>-<account>-<region>`, assuming `role_name` in that account). `expand` is pure: policy +
accounts per source -> a concrete policy. The listing is the only I/O: ListAccountsForParent and
ListChildren, paginated, botocore's standard retries, with the function's own credentials or with
`list_role_arn`'s.

`OrganizationTargets` keeps each source's last good listing for VIFGATE_ORG_CACHE_SECONDS (15
minutes). When a listing fails it goes on with the last good one (a warning); with none, that
source's targets are skipped for the cycle (an error, and OrganizationListingFailures) while the
explicit targets are polled as always. A target exists only because a listing named its account,
so nothing is confirmed in an account no listing returned.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from .config import ConfigError, OrganizationSource, Policy, Rule, Target, _describe
from .log import logger

DEFAULT_CACHE_SECONDS = 900
RETRY_SECONDS = 60  # after a failed listing, the next try: a failing Organizations API is not called on every read
ROLE_SESSION_SECONDS = 3600
REFRESH_MARGIN_SECONDS = 300
_ACCOUNT_ID = re.compile(r"\d{12}")

State = Literal["listed", "cached", "stale", "skipped"]


class ListingError(Exception):
    """A listing that failed; `code` is the API's error code or the exception's type (never a secret)."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def active_accounts(client: Any, parents: Sequence[str]) -> list[str]:
    """ACTIVE account ids under these roots or OUs and every OU below them: sorted, each once."""
    found: set[str] = set()
    seen: set[str] = set()
    waiting = list(parents)
    accounts = client.get_paginator("list_accounts_for_parent")
    children = client.get_paginator("list_children")
    while waiting:
        parent = waiting.pop()
        if parent in seen:
            continue
        seen.add(parent)
        for page in accounts.paginate(ParentId=parent):
            for account in page.get("Accounts") or ():
                # `State` replaces the deprecated `Status`; SUSPENDED, PENDING_CLOSURE, CLOSED... are left out.
                state = account.get("State") or account.get("Status")
                account_id = account.get("Id")
                if state == "ACTIVE" and isinstance(account_id, str) and _ACCOUNT_ID.fullmatch(account_id):
                    found.add(account_id)
        for page in children.paginate(ParentId=parent, ChildType="ORGANIZATIONAL_UNIT"):
            waiting.extend(child["Id"] for child in page.get("Children") or () if isinstance(child.get("Id"), str))
    return sorted(found)


class OrganizationsLister:
    """Lists a source's accounts with the session's credentials, or with its list_role_arn's (assumed, cached)."""

    def __init__(self, session: Callable[[], Any], clock: Callable[[], float] = time.time):
        self._session = session
        self._clock = clock
        self._clients: dict[str | None, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, source: OrganizationSource) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return active_accounts(self._client(source.list_role_arn), source.ous)
        except ClientError as exc:
            raise ListingError(exc.response.get("Error", {}).get("Code") or "ClientError") from None
        except BotoCoreError as exc:
            raise ListingError(type(exc).__name__) from None

    def _client(self, role_arn: str | None) -> Any:
        from .directlink import CLIENT_CONFIG

        with self._lock:
            cached = self._clients.get(role_arn)
            if cached is not None and cached[1] > self._clock() + REFRESH_MARGIN_SECONDS:
                return cached[0]
            session = self._session()
            region = session.region_name or "us-east-1"  # Organizations is global; its endpoint needs none
            if role_arn is None:
                client, expires = session.client("organizations", region_name=region, config=CLIENT_CONFIG), 1e18
            else:
                sts = session.client("sts", region_name=region, config=CLIENT_CONFIG)
                keys = sts.assume_role(
                    RoleArn=role_arn,
                    RoleSessionName="vif-gatekeeper-organizations",
                    DurationSeconds=ROLE_SESSION_SECONDS,
                )["Credentials"]
                client = session.client(
                    "organizations",
                    region_name=region,
                    config=CLIENT_CONFIG,
                    aws_access_key_id=keys["AccessKeyId"],
                    aws_secret_access_key=keys["SecretAccessKey"],
                    aws_session_token=keys["SessionToken"],
                )
                expires = keys["Expiration"].timestamp()
            self._clients[role_arn] = (client, expires)
            return client


@dataclass(frozen=True)
class Listing:
    accounts: tuple[str, ...]
    at: float  # the clock's time of the listing
    serial: int  # tells a new listing from the previous one (the expanded policy is kept per listing)


@dataclass(frozen=True)
class SourceStatus:
    """What a source gave: `listed` now, `cached`, `stale` (listing failed, the last good one used) or `skipped`."""

    source: str
    state: State
    accounts: int = 0  # listed ACTIVE accounts, `exclude` left out
    targets: int = 0
    error: str | None = None  # the last failure's code
    age_seconds: float | None = None  # of the listing used

    def describe(self) -> str:
        if self.state == "skipped":
            return f"NOT LISTED ({self.error}): its targets are skipped"
        said = f"{self.accounts} account(s) -> {self.targets} target(s) ({self.state}"
        if self.state == "stale":
            said += f": listing failed with {self.error}, using the one of {self.age_seconds or 0:.0f}s ago"
        return said + ")"


def expand(policy: Policy, accounts_by_source: Mapping[str, Iterable[str]]) -> Policy:
    """The policy with each source's targets added and rules' source names replaced by them; validated (ConfigError).

    A source missing from `accounts_by_source` (never listed) generates no target, and a rule naming
    only it matches no target.
    """
    if not policy.organizations:
        return policy
    generated = {s.name: s.targets(accounts_by_source.get(s.name, ())) for s in policy.organizations}
    names = {source: [t.name for t in targets] for source, targets in generated.items()}
    fields = {name: getattr(policy, name) for name in Policy.model_fields}
    fields |= {
        "organizations": [],
        "targets": [*policy.targets, *(t for targets in generated.values() for t in targets)],
        "rules": [_named(rule, names) for rule in policy.rules],
    }
    try:
        return Policy.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError("from_organization", [_describe(e) for e in exc.errors(include_url=False)]) from None


def target_named(policy: Policy, name: str) -> Target | None:
    """The target a source of `policy` generates under `name`, read from the name alone; None if none could.

    For readers that do not list (the api function deciding a vote on a generated target's VIF):
    the source, the region and `exclude` are checked, not whether the account is still under the OUs.
    The poller acts only on targets its listing produced.
    """
    for source in policy.organizations:
        rest = name.removeprefix(f"{source.name}-")
        account, _, region = rest.partition("-")
        if rest != name and _ACCOUNT_ID.fullmatch(account) and region in source.regions:
            return next(iter(source.targets([account])[source.regions.index(region) :]), None)
    return None


def for_target(policy: Policy, name: str) -> Policy:
    """The policy as a poller that listed `name`'s account sees it, for deciding about that one target.

    Without listing (the api function judging a vote): a generated target is read from its name and
    the rules naming its source are applied to it. Any other name leaves the policy as it is.
    """
    if not policy.organizations or any(t.name == name for t in policy.targets):
        return policy
    target = target_named(policy, name)
    if target is None:
        return policy
    source = next(s for s in policy.organizations if name.startswith(f"{s.name}-{target.account_id}-"))
    return expand(policy, {source.name: [target.account_id]})


def _named(rule: Rule, names: Mapping[str, list[str]]) -> Rule:
    if not rule.targets or not any(name in names for name in rule.targets):
        return rule
    targets = [generated for name in rule.targets for generated in names.get(name, [name])]
    return rule.model_copy(update={"targets": list(dict.fromkeys(targets))})


class OrganizationTargets:
    """Each source's listing, kept `ttl` seconds, and the policy expanded with it (kept while nothing changed)."""

    def __init__(
        self,
        lister: Callable[[OrganizationSource], list[str]],
        *,
        ttl: float = DEFAULT_CACHE_SECONDS,
        retry: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str, str, bool], object] | None = None,
    ):
        self._lister = lister
        self._ttl = ttl
        self._retry = min(retry, ttl) if ttl > 0 else 0
        self._clock = clock
        self._on_failure = on_failure
        self._listings: dict[tuple, Listing] = {}
        self._failures: dict[tuple, tuple[float, str]] = {}
        self._serial = 0
        self._expanded: tuple[Policy, tuple, Policy, dict[str, list[str]]] | None = None
        self._lock = threading.Lock()
        self.statuses: list[SourceStatus] = []

    def expanded(self, policy: Policy) -> Policy:
        """The policy with its sources' targets (see `expand`); a source never listed adds none this time."""
        with self._lock:
            used = {s.name: self._listing(s) for s in policy.organizations}
            key = tuple((name, listing.serial if listing else None) for name, (listing, _) in used.items())
            if self._expanded is None or self._expanded[0] is not policy or self._expanded[1] != key:
                accounts: dict[str, list[str]] = {}
                for source in policy.organizations:
                    listing, _ = used[source.name]
                    if listing is not None:
                        excluded = set(source.exclude)
                        accounts[source.name] = [a for a in listing.accounts if a not in excluded]
                try:
                    result = expand(policy, accounts)
                except ConfigError as exc:  # a bug, since parsing refused what could collide: explicit targets go on
                    logger.error(
                        "organization targets not added: the expanded policy is invalid",
                        extra={"problems": exc.problems},
                    )
                    accounts, result = {}, policy
                self._expanded = (policy, key, result, accounts)
            _, _, result, accounts = self._expanded
            self.statuses = [
                self._status(source, used[source.name], accounts.get(source.name)) for source in policy.organizations
            ]
            return result

    def _status(
        self, source: OrganizationSource, used: tuple[Listing | None, State], accounts: list[str] | None
    ) -> SourceStatus:
        listing, state = used
        failure = self._failures.get(_key(source))
        if listing is None or accounts is None:
            return SourceStatus(source.name, "skipped", error=failure[1] if failure else "not listed")
        return SourceStatus(
            source.name,
            state,
            accounts=len(accounts),
            targets=len(accounts) * len(source.regions),
            error=failure[1] if failure and state == "stale" else None,
            age_seconds=self._clock() - listing.at,
        )

    def _listing(self, source: OrganizationSource) -> tuple[Listing | None, State]:
        key = _key(source)
        listing = self._listings.get(key)
        now = self._clock()
        if listing is not None and now - listing.at < self._ttl:
            return listing, "cached"
        failed = self._failures.get(key)
        if failed is not None and now - failed[0] < self._retry:  # tried a moment ago: not again yet
            return listing, "stale" if listing else "skipped"
        started = time.monotonic()
        try:
            accounts = self._lister(source)
        except Exception as exc:  # whatever fails, the explicit targets are polled all the same
            code = exc.code if isinstance(exc, ListingError) else type(exc).__name__
            self._failures[key] = (now, code)
            self._failed(source, code, listing, now)
            return listing, "stale" if listing else "skipped"
        self._serial += 1
        listing = Listing(tuple(accounts), now, self._serial)
        self._listings[key] = listing
        self._failures.pop(key, None)
        logger.info(
            "organization listed",
            extra={
                "source": source.name,
                "accounts": len(accounts),
                "duration_ms": round((time.monotonic() - started) * 1000),
            },
        )
        return listing, "listed"

    def _failed(self, source: OrganizationSource, code: str, listing: Listing | None, now: float) -> None:
        where = {"source": source.name, "ous": source.ous, "error_code": code}
        if source.list_role_arn:
            where["list_role_arn"] = source.list_role_arn
        if listing is not None:
            logger.warning(
                "organization listing failed; its targets come from the last good listing",
                extra=where | {"accounts": len(listing.accounts), "listing_age_seconds": round(now - listing.at)},
            )
        else:
            logger.error(
                "organization listing failed and there is no earlier listing: its targets are skipped this cycle "
                "(the other targets are polled)",
                extra=where,
            )
        if self._on_failure is not None:
            self._on_failure(source.name, code, listing is None)


def _key(source: OrganizationSource) -> tuple:
    """What a listing depends on (`exclude` and the regions are applied to it afterwards)."""
    return (source.name, tuple(source.ous), source.list_role_arn)
