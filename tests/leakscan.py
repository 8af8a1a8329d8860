"""A pytest plugin: no secret a test configures may show up in what the test printed, logged or published.

Secrets are collected from where the suites make them:
- the sandbox's BGP keys (authKey), generated or given, as each VIF is allocated;
- keys a DirectLink client signs with (secret access keys and session tokens, from Secrets Manager or STS),
  and each external_id sent to AssumeRole;
- the sandbox scenario's signing secrets and secret keys;
- every test module's constants named like a secret (SIGNING_KEY, SLACK_SECRET, AUTH_KEY, EXTERNAL_ID, ...);
- anything a test hands to register(value, kind).

After each phase of each test, the plugin scans that phase's captured stdout, stderr and log, what the
test read through capsys / capfd (it is gone from the report), its caplog records, and the body of
every event serialized meanwhile (each event that reaches the outbox is). An occurrence fails the test
with the secret's kind, never its value (the value is also cut out of the report's sections). At the
end: "leak scan: N tests, M captured chars, K secrets found" (with xdist, summed over the workers).

Registered by tests/conftest.py; `-p tests.leakscan` loads it elsewhere (its own test does).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable
from typing import Any

import pytest

MIN_LENGTH = 8  # shorter values ("testing", moto's fake key) are not secrets and would match anywhere
_SECRET_NAME = re.compile(r"(SECRET|SIGNING|AUTH_KEY|EXTERNAL_ID|PASSWORD|BOT_TOKEN|(^|_)KEY$)")

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> kind
_pattern: re.Pattern[str] | None = None
_pending: list[tuple[str, str]] = []  # (where, text) seen since the last scan: capsys reads, event bodies
_scanned_modules: set[str] = set()
_totals = {"tests": 0, "chars": 0, "found": 0, "skipped": 0}


def register(value: object, kind: str) -> None:
    """Scan every later test's output for `value` (a str of MIN_LENGTH or more; anything else is ignored)."""
    global _pattern
    if not isinstance(value, str) or len(value) < MIN_LENGTH:
        return
    with _lock:
        if value not in _secrets:
            _secrets[value] = kind
            _pattern = None


def _seen(where: str, text: object) -> None:
    if isinstance(text, str) and text:
        with _lock:
            _pending.append((where, text))


def _compiled() -> re.Pattern[str] | None:
    """One regex over every secret, shared prefixes folded into a trie: thousands of BGP keys stay fast."""
    global _pattern
    with _lock:
        if _pattern is None and _secrets:
            _pattern = re.compile(_trie_regex(sorted(_secrets)))
        return _pattern


def _trie_regex(words: list[str]) -> str:
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return build(trie)


def find(texts: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(where, kind) of every secret in the texts; never the value."""
    pattern = _compiled()
    if pattern is None:
        return []
    found = []
    for where, text in texts:
        for match in pattern.finditer(text):
            kind = _secrets.get(match.group())
            if kind is not None:  # a trie match may stop at a registered prefix of a longer secret
                found.append((where, kind))
    return found


def _redact(text: str) -> str:
    pattern = _compiled()
    return (
        pattern.sub(lambda m: f"[{_secrets.get(m.group(), 'secret')} removed by leakscan]", text) if pattern else text
    )


# --- where secrets are born -----------------------------------------------------------------------


def _hook_sources() -> None:
    """Wrap the places that make or use secrets, once per process; nothing in chalicelib changes behaviour."""
    from chalicelib import directlink, events
    from chalicelib.ledger import base as ledger_base
    from sandbox import directlink_state, scenario

    if getattr(directlink_state.DirectLinkState._vif_settings, "leakscan", False):
        return

    settings = directlink_state.DirectLinkState._vif_settings

    @functools.wraps(settings)
    def vif_settings(self, *args, **kwargs):
        result = settings(self, *args, **kwargs)
        register(result.get("auth_key"), "authKey (sandbox BGP key)")
        return result

    vif_settings.leakscan = True  # type: ignore[attr-defined]
    directlink_state.DirectLinkState._vif_settings = vif_settings  # type: ignore[method-assign]

    keys_init = directlink._Keys.__init__

    def keys(self, *args, **kwargs):
        keys_init(self, *args, **kwargs)
        register(self.secret_key, "secret access key")
        register(self.token, "session token")

    directlink._Keys.__init__ = keys  # type: ignore[method-assign]

    assume = directlink.DirectLinkClients._assume_role

    def assume_role(self, target, *args, **kwargs):
        register(target.external_id, "external_id")
        return assume(self, target, *args, **kwargs)

    directlink.DirectLinkClients._assume_role = assume_role  # type: ignore[method-assign]

    to_json = events.to_json

    def serialized(event):
        body = to_json(event)
        _seen("an event body", body)
        return body

    events.to_json = serialized
    ledger_base.to_json = serialized  # the outbox imports it by name

    for _account, (_key, secret) in scenario.KEYS.items():
        register(secret, "sandbox secret access key")
    register(scenario.SIGNING_KEY, "approvals signing key")
    register(scenario.SLACK_SIGNING_SECRET, "Slack signing secret")


def _register_module(module: object) -> None:
    """A test module's constants named like secrets (references such as secret ids are not secrets)."""
    name = getattr(module, "__name__", "")
    if name in _scanned_modules:
        return
    _scanned_modules.add(name)
    for attr, value in vars(module).items():
        if not attr.isupper() or not _SECRET_NAME.search(attr) or not isinstance(value, str):
            continue
        if value.startswith(("vifgate/", "/", "arn:", "http")) or (attr.endswith("_ID") and "EXTERNAL" not in attr):
            continue  # a reference or a name, not the secret
        register(value, f"{attr.lower()} ({name.rsplit('.', 1)[-1]})")


# --- the hooks ------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    _hook_sources()
    capture = pytest.CaptureFixture.readouterr

    def readouterr(self):
        result = capture(self)
        _seen("what the test read from capsys", result.out)
        _seen("what the test read from capsys (stderr)", result.err)
        return result

    if not getattr(pytest.CaptureFixture.readouterr, "leakscan", False):
        readouterr.leakscan = True  # type: ignore[attr-defined]
        pytest.CaptureFixture.readouterr = readouterr  # type: ignore[method-assign]


def pytest_runtest_setup(item: pytest.Item) -> None:
    module = getattr(item, "module", None)
    if module is not None:
        _register_module(module)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    when = report.when
    # The captured log is scanned as records (the same ones the "Captured log" section is written from),
    # so that third-party DEBUG records can be told apart (see THIRD_PARTY_DEBUG).
    texts = [
        (title, content)
        for title, content in report.sections
        if title.endswith(f" {when}") and not title.startswith("Captured log")
    ]
    from _pytest.logging import caplog_records_key

    records = item.stash.get(caplog_records_key, {}).get(when, [])
    ours = [r for r in records if not _third_party_debug(r)]
    texts += [("the captured log", _record_text(r)) for r in ours]
    with _lock:
        texts += _pending
        _pending.clear()
    chars = sum(len(t) for _, t in texts)
    found = find(texts)
    skipped = len(records) - len(ours)
    report.user_properties.append(
        ("leakscan", {"test": when == "call", "chars": chars, "found": len(found), "skipped": skipped})
    )
    if found:
        kinds = sorted({f"{kind} in {where}" for where, kind in found})
        report.sections = [(title, _redact(content)) for title, content in report.sections]
        report.outcome = "failed"
        report.longrepr = "leak scan: a configured secret appeared: " + "; ".join(kinds)


# botocore logs every request's headers at DEBUG, the STS session token (x-amz-security-token) included.
# Nothing deployed runs these loggers at DEBUG (botocore's default is WARNING; the stages set INFO), so
# their DEBUG records, captured only where a test turns them up, are counted apart and not scanned.
THIRD_PARTY_DEBUG = ("botocore", "boto3", "urllib3", "s3transfer")


def _third_party_debug(record: Any) -> bool:
    return record.levelno <= 10 and record.name.split(".")[0] in THIRD_PARTY_DEBUG


def _record_text(record: Any) -> str:
    try:
        return f"{record.getMessage()} {record.__dict__}"
    except Exception:  # a record whose message cannot be formatted is still scanned by its fields
        return str(record.__dict__)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Runs where the reports arrive: the controller with xdist, so the totals cover every worker."""
    for name, value in report.user_properties:
        if name == "leakscan":
            _totals["tests"] += value["test"]
            _totals["chars"] += value["chars"]
            _totals["found"] += value["found"]
            _totals["skipped"] += value.get("skipped", 0)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    t = _totals
    terminalreporter.write_line(
        f"leak scan: {t['tests']} tests, {t['chars']} captured chars, {t['found']} secrets found"
    )
    if t["skipped"]:
        terminalreporter.write_line(
            f"leak scan: {t['skipped']} botocore/urllib3 DEBUG log records not scanned"
            " (they show request headers; only tests turn them up)"
        )
