"""`vifgate`: the same poll cycle as the Lambda, run by hand; plus the local sandbox and demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .approvals import tokens
from .approvals.model import ApprovalRequest, Refused, Vote
from .config import ConfigError, Policy
from .ledger import Ledger, OutboxItem, VifRecord, iso, parse_iso
from .log import logger
from .reconcile import CycleReport, run_cycle
from .runtime import Runtime, Settings, load_policy, utc_now

EXIT_OK, EXIT_TARGET_FAILED, EXIT_BAD_CONFIG = 0, 1, 2
# A slow-drip server can hold a request open for ever (each byte within botocore's read timeout):
# a run by hand gives up on such targets after this long.
DEFAULT_BUDGET = 120.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The CLI prints outcomes and failures itself; the JSON log lines are for -v.
    logger.setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vifgate",
        description=("Confirm hosted DirectLink / Direct Connect virtual interfaces that your allowlist trusts."),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each decision (JSON, on stderr)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    poll = commands.add_parser("poll", help="run one poll cycle now")
    _config_args(poll)
    poll.add_argument("--dry-run", action="store_true", help="decide and record, but confirm nothing")
    poll.add_argument("--json", action="store_true", help="one JSON object per VIF per line")
    _budget_arg(poll)
    poll.set_defaults(func=_poll)

    check = commands.add_parser("check", help="validate the config; show what each current VIF would get")
    _config_args(check)
    check.add_argument("--offline", action="store_true", help="only validate the document")
    _budget_arg(check)
    check.add_argument("--json", action="store_true", help="one JSON object per VIF per line")
    check.set_defaults(func=_check)

    sandbox = commands.add_parser("sandbox", help="run the local DirectLink sandbox + AWS emulator")
    sandbox.add_argument("--port", type=int, default=4566, help="DirectLink sandbox port (default 4566)")
    sandbox.add_argument("--aws-port", type=int, default=5005, help="AWS emulator (moto) port (default 5005)")
    sandbox.add_argument(
        "--api-port", type=int, default=8000, help="the approval routes (the Chalice app) (default 8000; 0 = any)"
    )
    sandbox.add_argument(
        "--env-file", help="where to write the variables to `source` (default .vifgate-sandbox.env; removed on exit)"
    )
    sandbox.set_defaults(func=_sandbox)

    outbox = commands.add_parser("outbox", help="list the events not yet sent to SQS; release or drop a parked one")
    outbox.add_argument(
        "--table",
        default=os.environ.get("VIFGATE_TABLE", "vifgate-ledger"),
        help="DynamoDB ledger table (default: $VIFGATE_TABLE or vifgate-ledger)",
    )
    outbox.add_argument("--json", action="store_true", help="one JSON object per event per line")
    act = outbox.add_mutually_exclusive_group()
    act.add_argument(
        "--release",
        metavar="ID",
        help="un-park this event (its id, or the first 8+ characters) and reset its tries: the next cycle sends it",
    )
    act.add_argument("--release-all", action="store_true", help="un-park every parked event")
    act.add_argument("--drop", metavar="ID", help="delete this event for good; needs --confirm-loss")
    outbox.add_argument("--confirm-loss", action="store_true", help="with --drop: yes, this event is never sent")
    outbox.set_defaults(func=_outbox)

    approvals = commands.add_parser(
        "approvals", help="the approval requests waiting, with each approver's signed link (a bearer credential)"
    )
    _config_args(approvals)
    approvals.add_argument("--json", action="store_true", help="one JSON object per request per line")
    approvals.set_defaults(func=_approvals)

    for verb, what in (
        ("approve", "approve a VIF's request, then confirm it at once when that decides it"),
        ("reject", "reject a VIF's request (a veto), then delete the VIF at once"),
    ):
        vote = commands.add_parser(verb, help=what)
        _config_args(vote)
        vote.add_argument("vif", metavar="VIF", help="the VIF's id (dxvif-…) or its name, when no other VIF has it")
        vote.add_argument(
            "--as", dest="approver", required=True, metavar="NAME", help="your approver name in the policy"
        )
        if verb == "approve":
            vote.add_argument(
                "--gateway", metavar="vgw-…", help="the gateway to confirm with, when the request offers several"
            )
        vote.add_argument(
            "--dry-run", action="store_true", help="record the vote, but carry nothing out (a live cycle will)"
        )
        _budget_arg(vote)
        vote.set_defaults(func=_vote, vote=verb)

    status = commands.add_parser(
        "status", help="every VIF the ledger tracks: state, deadline, last decision, approvals and their votes"
    )
    _config_args(status)
    status.add_argument("--json", action="store_true", help="one JSON object per VIF per line")
    status.set_defaults(func=_status)

    _config_commands(commands)

    notify_test = commands.add_parser(
        "notify-test",
        help="send one sample message of every kind to one chat destination, to see the formatting",
        description="Sends one plainly fake sample of every event kind (15) to DESTINATION, whatever its "
        "`events` filter; nothing is written to the ledger. Exit 0 when every sample was posted, 1 when "
        "a post failed, 2 when the destination is unknown or the config is invalid.",
    )
    _config_args(notify_test)
    notify_test.add_argument("destination", help="a name from the policy's chat.destinations")
    notify_test.set_defaults(func=_notify_test)

    schema = commands.add_parser("schema", help="print the JSON Schema of every event on the queue")
    schema.set_defaults(func=_schema)

    demo = commands.add_parser("demo", help="the whole story on the embedded sandbox, in under a minute")
    demo.set_defaults(func=_demo)
    return parser


EXIT_CHANGES = 3  # `config diff --exit-code`: the document differs from the deployed one
_CONFIG_EXITS = """exit codes:
  0  push: published (or nothing to change); diff: compared (with --exit-code: no change)
  1  the store could not be read or written (missing stack resources, denied, a concurrent push)
  2  the document is invalid or refers to secrets that are missing or outside their function's path:
     nothing was uploaded
  3  diff --exit-code: the document differs from the deployed one"""


def _config_commands(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="validate, compare and publish the policy document of a deployed stage",
        description="Publish the policy document of a stage: `config diff` shows what would change, "
        "`config push` validates fully, shows the diff, then publishes.",
        epilog=_CONFIG_EXITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = config.add_subparsers(required=True, metavar="VERB")
    for verb, what in (
        (
            "push",
            "validate FILE (as `check --offline`, plus: every secret reference exists, resolves, and lies under "
            "the path its function may read), show the diff, then publish it; an invalid document is never uploaded",
        ),
        ("diff", "what FILE would change against the deployed document (targets, rules, trust widened or narrowed)"),
    ):
        command = verbs.add_parser(
            verb,
            help=what,
            description=what,
            epilog=_CONFIG_EXITS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument(
            "--stage", required=True, help="the stage (dev, prod…): its VIFGATE_CONFIG and secret paths"
        )
        command.add_argument(
            "--source",
            help="the store to compare with / publish to (ssm:/name or appconfig:APP/ENV/PROFILE); "
            "default: the stage's VIFGATE_CONFIG in .chalice/config.json",
        )
        command.add_argument(
            "--chalice-config",
            default=".chalice/config.json",
            metavar="PATH",
            help="where the stages are (default .chalice/config.json)",
        )
        command.add_argument("file", metavar="FILE", help="the policy document (YAML or JSON)")
        if verb == "diff":
            command.add_argument("--exit-code", action="store_true", help="exit 3 when the document differs")
        command.set_defaults(func=_config_push if verb == "push" else _config_diff)


def _notify_test(args: argparse.Namespace) -> int:
    from .chatops.samples import UnknownDestination, send_samples

    runtime = _runtime(args)
    try:
        results = send_samples(runtime, args.destination)
    except UnknownDestination as exc:
        print(f"vifgate: {exc}", file=sys.stderr)
        return 2
    for result in results:
        mark = "sent  " if result.sent else "FAILED"
        note = "" if result.subscribed else "  (its events filter leaves this kind out of real traffic)"
        print(f"{mark} {result.event_type}{note}" + (f": {result.error}" if result.error else ""))
    failed = [r for r in results if not r.sent]
    print(f"{len(results) - len(failed)} of {len(results)} samples posted to {args.destination}")
    return 1 if failed else 0


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("VIFGATE_CONFIG"),
        help="policy file (YAML/JSON) or ssm:/parameter (default: $VIFGATE_CONFIG)",
    )
    parser.add_argument(
        "--table",
        default=os.environ.get("VIFGATE_TABLE", "vifgate-ledger"),
        help="DynamoDB ledger table (default: $VIFGATE_TABLE or vifgate-ledger)",
    )


def _runtime(args: argparse.Namespace) -> Runtime:
    env = dict(os.environ, VIFGATE_CONFIG=args.config or "", VIFGATE_TABLE=args.table)
    settings = Settings.from_env(env)
    # Validated now: an invalid document stops here, before any client exists.
    policy = load_policy(settings.config_source)
    return Runtime(settings, policy=policy, clock=_clock(env.get("VIFGATE_CLOCK", "")))


def _clock(url: str) -> Callable[[], datetime]:
    """This machine's clock, or the sandbox's when VIFGATE_CLOCK names it (the env file of `vifgate sandbox`)."""
    if not url:
        return utc_now
    from sandbox.remote_clock import ClockUnavailable, RemoteClock  # not deployed: the Lambda keeps the real clock

    try:
        clock = RemoteClock(url)
        clock.now()  # a stopped sandbox is one clear error now, not a failure per target mid-cycle
    except ClockUnavailable as exc:
        raise ConfigError("VIFGATE_CLOCK", [str(exc)]) from None
    return clock


def _budget_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        type=_seconds,
        default=DEFAULT_BUDGET,
        metavar="SECONDS",
        help=f"give up on targets still busy after this long (default {DEFAULT_BUDGET:.0f})",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 1 to 3600")
    return value


def _split(budget: float) -> tuple[float, float]:
    """Most of the budget for the targets, the rest (at most 20 s) for sending the outbox."""
    flush = min(20.0, budget / 4)
    return budget - flush, flush


def _poll(args: argparse.Namespace) -> int:
    try:
        runtime = _runtime(args)
        targets, flush = _split(args.budget)
        report = run_cycle(runtime, dry_run=args.dry_run or None, budget_seconds=targets, flush_seconds=flush)
    except ConfigError as exc:
        return _bad_config(exc)
    _print_report(report, as_json=args.json)
    skipped = _print_skipped_sources(runtime, as_json=args.json)
    return EXIT_OK if report.ok and not skipped else EXIT_TARGET_FAILED


def _check(args: argparse.Namespace) -> int:
    try:
        runtime = _runtime(args)
        # --offline validates the document alone: its Organizations sources are not listed.
        policy = runtime.document_policy if args.offline else runtime.policy
    except ConfigError as exc:
        return _bad_config(exc)
    if not args.json:
        allow = policy.allowlist()
        print(
            f"config OK: {len(policy.targets)} target(s), {len(policy.rules)} rule(s), "
            f"default_action {policy.default_action}; confirm rules trust "
            f"{len(allow['accounts'])} account(s) and {len(allow['gateways'])} gateway(s)"
        )
        for line in _source_lines(runtime, offline=args.offline):
            print(line)
        if not policy.auto_confirm:
            print(_paused_line(policy))
    if args.offline:
        return EXIT_OK
    targets, flush = _split(args.budget)
    report = run_cycle(runtime, dry_run=True, record=False, budget_seconds=targets, flush_seconds=flush)
    _print_report(report, as_json=args.json, what_if=True)
    skipped = _print_skipped_sources(runtime, as_json=args.json, listed=True)
    return EXIT_OK if report.ok and not skipped else EXIT_TARGET_FAILED


def _source_statuses(runtime: Runtime) -> list[Any]:
    """What each Organizations source gave the last time the policy was read (none: no source, or listing off)."""
    if not runtime.document_policy.organizations or not runtime.settings.list_organizations:
        return []
    return list(runtime.organizations.statuses)


def _source_lines(runtime: Runtime, *, offline: bool) -> list[str]:
    """Per Organizations source: how many accounts and targets it produced, or that it was not listed."""
    sources = runtime.document_policy.organizations
    if offline or not runtime.settings.list_organizations:
        why = "--offline" if offline else "VIFGATE_LIST_ORGANIZATIONS is off"
        return [
            f"  from_organization {s.name}: not listed ({why}); {len(s.ous)} OU/root id(s), "
            f"{len(s.regions)} region(s), {len(s.exclude)} account(s) excluded"
            for s in sources
        ]
    return [f"  from_organization {status.source}: {status.describe()}" for status in _source_statuses(runtime)]


def _print_skipped_sources(runtime: Runtime, *, as_json: bool, listed: bool = False) -> bool:
    """Name each source whose targets were skipped (never listed); True when there is one (exit 1)."""
    skipped = [s for s in _source_statuses(runtime) if s.state == "skipped"]
    for status in skipped:
        if as_json or listed:
            print(f"vifgate: from_organization {status.source} failed: {status.describe()}", file=sys.stderr)
        else:
            print(f"  FAILED from_organization {status.source}: {status.describe()}")
    return bool(skipped)


def _paused_line(policy: Policy) -> str:
    who = ", ".join(policy.default_approvers) if policy.default_approvers else None
    return "auto-confirm is PAUSED (auto_confirm: false): every VIF a confirm rule matches is asked about, " + (
        f"and {who} may approve it" if who else "notify-only (set default_approvers so someone may approve)"
    )


def _bad_config(exc: ConfigError) -> int:
    print(f"vifgate: {exc}\nNothing was confirmed.", file=sys.stderr)
    return EXIT_BAD_CONFIG


def _print_report(report: CycleReport, *, as_json: bool, what_if: bool = False) -> None:
    if as_json:
        for outcome in report.outcomes:
            print(json.dumps(outcome.as_json(), sort_keys=True))
        for failure in report.failures:
            print(f"vifgate: target {failure.target} failed: {failure.message}", file=sys.stderr)
        return
    print(format_table(report))
    counts = ", ".join(f"{n} {a}" for a, n in sorted(report.counts().items())) or "no VIFs seen"
    mode = "what-if (nothing changed)" if what_if else ("dry run" if report.dry_run else "live")
    print(f"\n{mode}: {counts}; targets OK: {', '.join(report.targets_ok) or 'none'}")
    for failure in report.failures:
        print(f"  FAILED {failure.target}: {failure.message}")


def format_table(report: CycleReport) -> str:
    headers = ("TARGET", "VIF", "NAME", "OWNER", "VLAN", "STATE", "ACTION", "RULE/GATEWAY", "REASON")
    rows = [
        (
            o.target,
            o.virtualInterfaceId,
            o.virtualInterfaceName or "",
            o.ownerAccount or "",
            str(o.vlan or ""),
            o.state,
            o.action,
            "/".join(filter(None, (o.rule, o.virtualGatewayId))) or "-",
            o.reason,
        )
        for o in sorted(report.outcomes, key=lambda o: (o.target, o.virtualInterfaceId))
    ]
    if not rows:
        return "(no virtual interfaces seen)"
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


class _Refused(Exception):
    """`config push/diff` stops: the lines say why, nothing was uploaded."""

    def __init__(self, lines: list[str], code: int = EXIT_BAD_CONFIG):
        super().__init__("\n".join(lines))
        self.lines, self.code = lines, code


def _stage_source(args: argparse.Namespace) -> str:
    """--source, or the stage's VIFGATE_CONFIG in .chalice/config.json (helper A's infra decides it, not this code)."""
    if args.source:
        return args.source
    path = Path(args.chalice_config)
    try:
        stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {})
    except (OSError, ValueError) as exc:
        raise _Refused([f"cannot read {path} ({type(exc).__name__}): give --source"]) from None
    stage = stages.get(args.stage) if isinstance(stages, dict) else None
    if not isinstance(stage, dict):
        known = ", ".join(sorted(stages)) if isinstance(stages, dict) else "none"
        raise _Refused([f"stage {_printable(args.stage)!r} is not in {path} (stages: {known})"])
    source = (stage.get("environment_variables") or {}).get("VIFGATE_CONFIG")
    if not source:
        raise _Refused([f"stage {args.stage} of {path} sets no VIFGATE_CONFIG: give --source"])
    return str(source)


def _load_document(path: str) -> tuple[Policy, Any]:
    """FILE -> (the validated policy, the loaded document); _Refused with every problem (as `check --offline`)."""
    from .config import _PolicyLoader, parse_policy

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Refused([f"cannot read {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}"]) from None
    try:
        policy = parse_policy(text, path)
    except ConfigError as exc:
        raise _Refused([str(exc)]) from None
    import yaml

    document = yaml.load(text, Loader=_PolicyLoader)  # the same loader parse_policy used: it cannot fail now
    return policy, document


def _secret_problems(policy: Policy, stage: str) -> list[str]:
    """Every reference outside its function's path, missing, unreadable or malformed; values are never shown."""
    from .approvals.tokens import MIN_KEY_LENGTH
    from .chatops import SecretUnavailable
    from .config import SecretRef
    from .configstore import references
    from .runtime import resolve_secret

    problems = []
    for ref in references(policy, stage):
        if ref.kind == "profile":
            problems.append(
                f"{ref.field}: profile {ref.name!r} exists only on this machine; the deployed {ref.readers} function "
                f"reads a Secrets Manager secret under {ref.allowed}"
            )
            continue
        if not ref.allowed_here():
            where = "SSM parameter" if ref.kind == "parameter" else "secret"
            shown = ref.allowed if ref.kind == "secret" else "/" + ref.allowed
            problems.append(
                f"{ref.field}: {where} {ref.name} is outside {shown}, the only path the {ref.readers} "
                f"function{'s' if ' and ' in ref.readers else ''} may read"
            )
            continue
        as_ref = (
            SecretRef(secret_id=ref.name, key=ref.key)
            if ref.kind == "secret"
            else SecretRef(parameter=ref.name, key=ref.key)
        )
        try:
            value = resolve_secret(as_ref)
        except (LookupError, SecretUnavailable) as exc:
            problems.append(f"{ref.field}: cannot be read: {exc}")
            continue
        if ref.field.startswith("targets["):
            try:
                keys = json.loads(value)
                ok = isinstance(keys, dict) and all(
                    isinstance(keys.get(k), str) for k in ("access_key_id", "secret_access_key")
                )
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{ref.field}: secret {ref.name} is not JSON with access_key_id and secret_access_key")
        elif ref.field == "approvals.signing_key" and len(value) < MIN_KEY_LENGTH:
            problems.append(f"{ref.field}: the key in {ref.name} is shorter than {MIN_KEY_LENGTH} characters")
        elif not value:
            problems.append(f"{ref.field}: {ref.name} is empty")
    return problems


def _validated(args: argparse.Namespace, *, secrets: bool) -> tuple[str, Policy, str]:
    """(source, policy, JSON text to upload), or _Refused naming every problem."""
    from .configschema import policy_json_schema
    from .configstore import to_json

    source = _stage_source(args)
    policy, document = _load_document(args.file)
    problems = []
    try:
        text = to_json(document)
    except (TypeError, ValueError):
        text = ""
        problems.append("the document holds values JSON cannot (a YAML date or set?): write them as strings")
    if text:
        import jsonschema

        validator = jsonschema.Draft4Validator(policy_json_schema())
        for error in validator.iter_errors(json.loads(text)):
            where = ".".join(str(p) for p in error.absolute_path) or "(document)"
            problems.append(f"{where}: refused by infra/config-schema.json: {error.message[:200]}")
    if secrets:
        problems += _secret_problems(policy, args.stage)
    if problems:
        raise _Refused([f"invalid config {args.file} for stage {args.stage}:", *(f"  - {p}" for p in problems)])
    return source, policy, text


def _deployed_policy(store: Any) -> tuple[Policy | None, str]:
    """The deployed document as a Policy (None: nothing deployed, or it does not parse) and how it was found."""
    from .config import parse_policy

    deployed = store.deployed()
    if deployed.text is None:
        return None, deployed.describe()
    try:
        return parse_policy(deployed.text, store.source.text), deployed.describe()
    except ConfigError:
        return None, deployed.describe() + "; it does not validate any more, so everything is shown as new"


def _print_diff(source: str, file: str, found: str, changes: Any) -> None:
    print(f"{file} against {source} ({found}):")
    for line in changes.lines():
        print(line)
    print(changes.summary())


def _compare(args: argparse.Namespace, *, secrets: bool) -> tuple[Any, Policy | None, Policy, str, Any]:
    """Validate FILE for the stage, read what the stage runs now and print the difference."""
    from .configdiff import diff
    from .configstore import parse_source, store_for

    source, policy, text = _validated(args, secrets=secrets)
    store = store_for(parse_source(source), strategy=f"vif-gatekeeper-{args.stage}")
    old, found = _deployed_policy(store)
    changes = diff(old, policy)
    _print_diff(source, args.file, found, changes)
    return store, old, policy, text, changes


def _config_failed(exc: Exception, after: str = "") -> int:
    """Say why `config diff/push` stopped; `after` follows a problem with the document, not with the store."""
    if isinstance(exc, _Refused):
        print("vifgate: " + "\n".join(exc.lines) + after, file=sys.stderr)
        return exc.code
    if isinstance(exc, ConfigError):
        print(f"vifgate: {exc}{after}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"vifgate: {exc}", file=sys.stderr)  # the store could not be read or written
    return EXIT_TARGET_FAILED


def _config_diff(args: argparse.Namespace) -> int:
    """`vifgate config diff --stage S FILE`: what would change against what the stage runs now."""
    from .configstore import StoreError

    try:
        *_, changes = _compare(args, secrets=False)
    except (_Refused, ConfigError, StoreError) as exc:
        return _config_failed(exc)
    return EXIT_CHANGES if args.exit_code and changes.changes else EXIT_OK


def _config_push(args: argparse.Namespace) -> int:
    """`vifgate config push --stage S FILE`: validate fully, show the diff, publish; nothing uploaded on any problem."""
    from .configstore import StoreError

    try:
        store, old, policy, text, _changes = _compare(args, secrets=True)
        if old is not None and old == policy:
            print("nothing to publish: the deployed document already says this")
            return EXIT_OK
        published = store.publish(text)
    except (_Refused, ConfigError, StoreError) as exc:
        return _config_failed(exc, after="\nNothing was uploaded.")
    print(published.summary())
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from .events import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def _outbox(args: argparse.Namespace) -> int:
    """`vifgate outbox`: what waits to be sent, why, and the operator's two ways out of a parked event."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from .directlink import CLIENT_CONFIG

    if args.confirm_loss and not args.drop:
        print("vifgate: --confirm-loss goes with --drop ID", file=sys.stderr)
        return EXIT_BAD_CONFIG
    ledger = Ledger(boto3.client("dynamodb", config=CLIENT_CONFIG), args.table)
    try:
        items = ledger.pending_events(limit=sys.maxsize)
        if args.release or args.drop:
            return _outbox_act(ledger, items, args)
        if args.release_all:
            parked = [i for i in items if i.parked_reason]
            for item in parked:
                _said(item, "released" if ledger.release_event(item) else "already sent", args.json)
            if not args.json:
                print(f"{len(parked)} parked event(s) released: the next poll cycle sends them, each VIF in order")
            return EXIT_OK
    except (ClientError, BotoCoreError) as exc:
        code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
        why = "does not exist in this account/region" if code == "ResourceNotFoundException" else f"failed: {exc}"
        print(f"vifgate: ledger table {args.table} {why}", file=sys.stderr)
        return EXIT_TARGET_FAILED
    _print_outbox(args.table, items, as_json=args.json)
    return EXIT_OK


def _outbox_act(ledger: Ledger, items: list[OutboxItem], args: argparse.Namespace) -> int:
    """--release ID or --drop ID: the ID is an event id (or a unique prefix of 8+ characters) or a sort key."""
    ref = (args.release or args.drop).strip()
    found = [i for i in items if ref in (i.event_id, i.sort_key) or (len(ref) >= 8 and i.event_id.startswith(ref))]
    ids = sorted({i.event_id for i in found})
    if len(ids) != 1:
        what = "matches no event in the outbox" if not ids else f"matches {len(ids)} events: {', '.join(ids)}"
        print(f"vifgate: {_printable(ref)!s} {what} (see `vifgate outbox`)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    # The same event may sit twice (two pollers wrote it): both copies go the same way.
    held = _held(items)
    behind = sum(1 for i in items if held.get(i.sort_key) == ids[0])
    if args.release:
        for item in found:
            _said(item, "released" if ledger.release_event(item) else "already sent", args.json)
        if not args.json:
            print(f"The next poll cycle sends it, then the {behind} event(s) held behind it, in order.")
        return EXIT_OK
    if not args.confirm_loss:
        for item in found:
            _said(item, "would drop", args.json)
        print(
            "vifgate: --drop loses this event for good (it is never sent); add --confirm-loss to drop it",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    for item in found:
        _said(item, "dropped" if ledger.drop_event(item) else "already sent", args.json)
    if not args.json:
        print(f"It will never be sent. The {behind} event(s) held behind it go with the next poll cycle.")
    return EXIT_OK


def _held(items: list[OutboxItem]) -> dict[str, str]:
    """sort key -> the parked event id it waits behind (the first parked event of its group)."""
    blocker: dict[str, str] = {}
    held: dict[str, str] = {}
    for item in items:
        if item.group in blocker:
            held[item.sort_key] = blocker[item.group]
        elif item.parked_reason:
            blocker[item.group] = item.event_id
    return held


def _outbox_row(item: OutboxItem, held: dict[str, str], now: datetime) -> dict:
    from .publish import message_size

    created = item.created_at
    state = "parked" if item.parked_reason else "held" if item.sort_key in held else "pending"
    return {
        "state": state,
        "event_id": item.event_id,
        "type": item.type,
        "group": item.group,
        "created_at": iso(created) if created else None,
        "age_seconds": int((now - created).total_seconds()) if created else None,
        "tries": item.tries,
        "last_error": item.last_error,
        "parked_reason": item.parked_reason,
        "parked_at": item.parked_at,
        "held_behind": held.get(item.sort_key),
        "size_bytes": message_size(item),
        "sort_key": item.sort_key,
    }


def _said(item: OutboxItem, action: str, as_json: bool) -> None:
    row = _outbox_row(item, {}, utc_now())
    if as_json:
        print(json.dumps({"action": action, **row}, sort_keys=True))
        return
    was = "parked" if action == "would drop" else "was parked"
    why = f"; {was}: {row['parked_reason']}" if row["parked_reason"] else ""
    print(
        f"{action}: event {item.event_id} ({_printable(item.type)}, group {_printable(item.group)}, "
        f"created {row['created_at']}, {row['size_bytes']:,} bytes, tries {item.tries}{_printable(why)})"
    )


def _print_outbox(table: str, items: list[OutboxItem], *, as_json: bool) -> None:
    held, now = _held(items), utc_now()
    rows = [_outbox_row(i, held, now) for i in items]
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    if not rows:
        print(f"outbox of {table} is empty: SQS has accepted every event")
        return
    states = {s: sum(r["state"] == s for r in rows) for s in ("parked", "held", "pending")}
    print(
        f"outbox of {table}: {len(rows)} event(s): {states['parked']} parked, {states['held']} held behind a "
        f"parked event of their VIF, {states['pending']} to be sent by the next poll cycle\n"
    )
    headers = ("STATE", "EVENT", "TYPE", "GROUP (VIF)", "AGE", "TRIES", "BYTES", "WHY")
    cells = [
        (
            r["state"],
            r["event_id"],
            _printable(r["type"]),
            _printable(r["group"]),
            _age(r["age_seconds"]),
            str(r["tries"]),
            f"{r['size_bytes']:,}",
            _printable(
                r["parked_reason"]
                or (f"waits behind {r['held_behind']}" if r["held_behind"] else "")
                or (f"last refused: {r['last_error']}" if r["last_error"] else "")
            ),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in (headers, *cells)) for i in range(len(headers) - 1)]
    for line in (headers, *cells):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1])
    if states["parked"]:
        print(
            "\nA parked event holds back its VIF's later events. Fix the cause, then either\n"
            "  vifgate outbox --release ID              the next cycle sends it, then the ones held behind it\n"
            "  vifgate outbox --drop ID --confirm-loss  it is never sent; the ones held behind it go next cycle"
        )


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if days:
        return f"{days}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{minutes}m" if minutes else f"{max(seconds, 0)}s"


def _printable(text: str) -> str:
    """A string from the API or the ledger, shown as data: control characters escaped, not obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# --- approvals ---------------------------------------------------------------------------------

EXIT_REFUSED = 2  # the vote was refused (403/404/409/410 and bad input): nothing changed


class _Unreadable(Exception):
    """The ledger (or a secret) could not be read: an operational failure, exit 1."""


def _ledger_failure(table: str, exc: Exception) -> str:
    from botocore.exceptions import ClientError

    code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
    return f"ledger table {table} " + (
        "does not exist in this account/region" if code == "ResourceNotFoundException" else f"failed: {code}"
    )


def _when(text: str | None) -> str:
    moment = parse_iso(text)
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "-"


def _deadline(record: VifRecord) -> str:
    if not record.deadline:
        return "unknown"
    if record.deadline_certain:
        return _when(record.deadline)
    return f"{_when(record.deadline)} at the latest (it was already waiting when first seen)"


def _vif_name(record: VifRecord) -> str:
    name = record.snapshot.get("virtualInterfaceName")
    return _printable(name) if isinstance(name, str) else ""


def _vote_json(vote: Vote) -> dict:
    return {
        "approver": vote.approver,
        "vote": vote.vote,
        "channel": vote.channel,
        "user_id": vote.user_id,
        "gateway": vote.gateway,
        "at": vote.at,
    }


def _request_json(request: ApprovalRequest) -> dict:
    return {
        "request_id": request.request_id,
        "status": request.status,
        "progress": request.progress(),
        "created_at": request.created_at,
        "expires_at": request.expires_at,
        "decided_at": request.decided_at,
        "rule": request.rule,
        "approvers": list(request.approvers),
        "min_approvals": request.min_approvals,
        "approvals": list(request.approvals),
        "gateways": list(request.gateways),
        "gateway": request.gateway,
        "votes": [_vote_json(v) for v in request.votes],
        "trail": [dict(vars(t)) for t in request.trail],
    }


def _vif_json(record: VifRecord) -> dict:
    return {
        "target": record.target,
        "virtualInterfaceId": record.vif_id,
        "virtualInterfaceName": record.snapshot.get("virtualInterfaceName"),
        "ownerAccount": record.snapshot.get("ownerAccount"),
        "state": record.state,
        "deadline": record.deadline,
        "deadlineCertain": record.deadline_certain,
    }


class _Links:
    """Each approver's signed link to a request's page; None with the reason when links cannot be made."""

    def __init__(self, runtime: Runtime) -> None:
        from .chatops import SecretUnavailable
        from .chatops.links import LINK_PATH

        self._path = LINK_PATH
        self._key: str | None = None
        self.unavailable: str | None = None
        approvals = runtime.policy.approvals
        self.ttl = approvals.link_ttl if approvals else None
        self.base_url = approvals.base_url if approvals else None
        if approvals is None:
            self.unavailable = "the policy has no approvals section"
        elif not approvals.base_url:
            self.unavailable = "approvals.base_url is not set (where the link routes are served)"
        elif approvals.signing_key is None:
            self.unavailable = "approvals.signing_key is not set"
        else:
            try:
                self._key = runtime.secret(approvals.signing_key)
            except (SecretUnavailable, LookupError) as exc:  # names the reference, never the value
                raise _Unreadable(f"approvals.signing_key cannot be read: {exc}") from None

    def for_request(self, request: ApprovalRequest, now: datetime) -> tuple[dict[str, str], datetime] | None:
        """approver -> link, for those who have not voted yet, and when the links expire."""
        if self._key is None or self.base_url is None or self.ttl is None:
            return None
        expires = parse_iso(request.expires_at)
        assert expires is not None  # every request has one
        until = tokens.link_expiry(now, expires, self.ttl)
        voted = {v.approver for v in request.votes}
        try:
            links = {
                name: self.base_url + self._path + tokens.mint_link(self._key, request.request_id, name, until)
                for name in request.approvers
                if name not in voted
            }
        except tokens.WeakKey as exc:
            raise _Unreadable(str(exc)) from None
        return links, until


def request_links(runtime: Runtime, request: ApprovalRequest, now: datetime) -> tuple[dict[str, str], datetime] | None:
    """Each approver's link to `request` (for those who have not voted), and their expiry; None without links."""
    return _Links(runtime).for_request(request, now)


def _commands(request: ApprovalRequest) -> list[str]:
    choose = " --gateway vgw-…" if len(request.gateways) > 1 else ""
    return [
        f"vifgate approve {request.vif_id}{choose} --as NAME",
        f"vifgate reject {request.vif_id} --as NAME",
    ]


def _approvals(args: argparse.Namespace) -> int:
    """`vifgate approvals`: what waits for a person, and each approver's link (printed here only, never logged)."""
    try:
        runtime = _runtime(args)
        pending = runtime.ledger.approvals("pending")
        links = _Links(runtime)
    except ConfigError as exc:
        return _bad_config(exc)
    except _Unreadable as exc:
        print(f"vifgate: {exc}", file=sys.stderr)
        return EXIT_TARGET_FAILED
    except (ClientError, BotoCoreError) as exc:
        print(f"vifgate: {_ledger_failure(args.table, exc)}", file=sys.stderr)
        return EXIT_TARGET_FAILED
    now = runtime.clock()
    try:
        rows = []
        for request, record in sorted(pending, key=lambda found: found[0].expires_at):
            made = links.for_request(request, now)
            row = {**_vif_json(record), **_request_json(request)}
            row["links"] = made[0] if made else None
            row["links_expire_at"] = iso(made[1]) if made else None
            row["links_unavailable"] = links.unavailable
            row["commands"] = _commands(request)
            rows.append(row)
    except _Unreadable as exc:
        print(f"vifgate: {exc}", file=sys.stderr)
        return EXIT_TARGET_FAILED
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return EXIT_OK
    if not rows:
        print("no approval request is waiting")
        return EXIT_OK
    print(f"{len(rows)} approval request(s) waiting:")
    for row, (request, record) in zip(rows, sorted(pending, key=lambda found: found[0].expires_at), strict=True):
        print(_request_text(request, record, row))
    if links.unavailable:
        print(f"\nNo links: {links.unavailable}. Decide with the commands above.")
    else:
        print(
            "\nEach link is a bearer credential: whoever opens it decides as that approver. "
            "Send it to that person only; it is shown here and nowhere else."
        )
    return EXIT_OK


def _request_text(request: ApprovalRequest, record: VifRecord, row: dict) -> str:
    gateways = ", ".join(request.gateways) or "none available: confirm by hand, or add one to the rule"
    lines = [
        "",
        f"{request.vif_id}  {_vif_name(record)}  (target {record.target}, account "
        f"{_printable(str(record.snapshot.get('ownerAccount') or '?'))})  request {request.request_id}",
        f"  deadline   {_deadline(record)}"
        + ("" if request.expires_at == record.deadline else f"; the request expires {_when(request.expires_at)}"),
        f"  gateways   {gateways}",
        f"  approvals  {request.progress()}",
        f"  who        {', '.join(request.approvers)}",
    ]
    for vote in request.votes:
        lines.append(f"  vote       {vote.approver} {vote.vote}d via {vote.channel} at {_when(vote.at)}")
    if row["links"] is not None:
        lines.append(f"  links      (until {_when(row['links_expire_at'])})")
        width = max((len(name) for name in row["links"]), default=0)
        lines += [f"    {name:<{width}}  {url}" for name, url in row["links"].items()]
    lines += [f"  or         {command}" for command in row["commands"]]
    return "\n".join(lines)


def _find_request(runtime: Runtime, ref: str) -> tuple[ApprovalRequest, VifRecord]:
    """The approval request of a VIF given by id or by a name no other VIF in the ledger has."""
    ledger = runtime.ledger
    found = ledger.approval_for_vif(ref)
    if found is not None:
        return found
    known = [record for target in runtime.policy.targets for record in ledger.load(target.name).vifs.values()]
    # An id is never looked up as a name: names are the partner's choice, and a VIF named after
    # another VIF's id must not receive the vote typed for that id.
    named = [record for record in known if record.vif_id == ref]
    if not named and not ref.startswith("dxvif-"):
        named = [record for record in known if record.snapshot.get("virtualInterfaceName") == ref]
    if not named:
        raise Refused(404, f"no VIF {_printable(ref)!r} in the ledger: give its id or name as `vifgate status` shows")
    asked = [r for r in named if r.approval is not None]
    if not asked:
        raise Refused(404, f"VIF {_printable(ref)!r} has no approval request (nobody was asked to decide it)")
    pending = [r for r in asked if r.approval is not None and r.approval.status == "pending"]
    chosen = pending if pending else asked
    if len(chosen) > 1:
        ids = ", ".join(sorted(r.vif_id for r in chosen))
        raise Refused(409, f"{_printable(ref)!r} names {len(chosen)} VIFs with a request ({ids}); give the id")
    found = ledger.approval_for_vif(chosen[0].vif_id)
    if found is None:
        raise Refused(404, f"VIF {chosen[0].vif_id} has no approval request")
    return found


def _vote(args: argparse.Namespace) -> int:
    """`vifgate approve` / `reject`: record the vote (the terminal's AWS credentials are the proof), then act."""
    from .approvals import service

    try:
        runtime = _runtime(args)
        approvals = runtime.policy.approvals
        if approvals is None:
            raise Refused(404, "the policy has no approvals section: nobody may approve or reject")
        if approvals.approver(args.approver) is None:
            known = ", ".join(a.name for a in approvals.approvers)
            raise Refused(403, f"{_printable(args.approver)!r} is not an approver in the policy (approvers: {known})")
        request, _record = _find_request(runtime, args.vif.strip())
        result = service.record_vote(
            runtime.ledger,
            runtime.policy,
            request.request_id,
            approver=args.approver,
            user_id=None,
            channel="cli",
            vote=args.vote,
            gateway=getattr(args, "gateway", None),
            clock=runtime.clock,
            publishing=runtime.publishing,
        )
    except ConfigError as exc:
        return _bad_config(exc)
    except Refused as exc:
        print(f"vifgate: {args.vote} refused ({exc.status}): {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    except (ClientError, BotoCoreError) as exc:
        print(f"vifgate: {_ledger_failure(args.table, exc)}; nothing was recorded", file=sys.stderr)
        return EXIT_TARGET_FAILED
    decided = result.request
    if not result.decided:
        missing = decided.min_approvals - len(decided.approvals)
        print(f"{result.summary}: waiting for {missing} more")
        return EXIT_OK
    print(result.summary)
    return _carry_out(runtime, decided, args)


def _carry_out(runtime: Runtime, request: ApprovalRequest, args: argparse.Namespace) -> int:
    """Run the poll cycle for the request's target now: it confirms or deletes the VIF, as the poller would."""
    targets, flush = _split(args.budget)
    report = run_cycle(
        runtime, dry_run=args.dry_run or None, budget_seconds=targets, flush_seconds=flush, targets=[request.target]
    )
    for failure in report.failures:
        print(
            f"vifgate: the vote is recorded, but target {failure.target} failed: {failure.message}; "
            "the next poll cycle carries it out",
            file=sys.stderr,
        )
        return EXIT_TARGET_FAILED
    outcome = next((o for o in report.outcomes if o.virtualInterfaceId == request.vif_id), None)
    if outcome is None:
        print(f"the poll cycle did not see {request.vif_id}: it is no longer listed by {request.target}")
        return EXIT_OK
    said = {
        "confirmed": f"confirmed {request.vif_id} with {outcome.virtualGatewayId}",
        "would_confirm": f"dry run: would confirm {request.vif_id} with {outcome.virtualGatewayId}; "
        "a live cycle carries the approval out",
        "rejected": f"rejected {request.vif_id}: deleted",
        "would_reject": f"dry run: would delete {request.vif_id}; a live cycle carries the rejection out",
    }.get(outcome.action)
    if said is not None:
        print(said)
        return EXIT_OK
    print(f"the poll cycle did not carry it out: {outcome.action}: {_printable(outcome.reason)}")
    return EXIT_TARGET_FAILED if outcome.action in ("failed", "unknown") else EXIT_OK


def _decision(record: VifRecord) -> str:
    """What was decided for good (confirmed, rejected), else what the last cycle decided."""
    if record.confirmed_at:
        return f"confirmed {_when(record.confirmed_at)}" + (f" with {record.gateway}" if record.gateway else "")
    if record.rejected_at:
        return f"rejected {_when(record.rejected_at)}"
    return _printable(record.last_decision or "-")


def _status(args: argparse.Namespace) -> int:
    """`vifgate status`: every VIF the ledger tracks, across the policy's targets."""
    try:
        runtime = _runtime(args)
        records = [
            record
            for target in runtime.policy.targets
            for record in sorted(runtime.ledger.load(target.name).vifs.values(), key=lambda r: r.vif_id)
        ]
    except ConfigError as exc:
        return _bad_config(exc)
    except (ClientError, BotoCoreError) as exc:
        print(f"vifgate: {_ledger_failure(args.table, exc)}", file=sys.stderr)
        return EXIT_TARGET_FAILED
    if args.json:
        for record in records:
            row = {
                **_vif_json(record),
                "lastDecision": record.last_decision,
                "decisionReason": record.decision_reason,
                "rule": record.rule,
                "gateway": record.gateway,
                "firstSeenAt": record.first_seen_at,
                "confirmedAt": record.confirmed_at,
                "rejectedAt": record.rejected_at,
                "goneAt": record.gone_at,
                "approval": _request_json(record.approval) if record.approval else None,
            }
            print(json.dumps(row, sort_keys=True))
        return EXIT_OK
    if not records:
        print(f"the ledger {args.table} tracks no VIF yet (run `vifgate poll`)")
        return EXIT_OK
    headers = ("TARGET", "VIF", "NAME", "STATE", "DEADLINE", "LAST DECISION", "APPROVAL")
    cells = [
        (
            r.target,
            r.vif_id,
            _vif_name(r),
            _printable(r.state),
            (_when(r.deadline) + ("" if r.deadline_certain else " (at the latest)")) if r.deadline else "-",
            _decision(r),
            f"{r.approval.status}: {r.approval.progress()}" if r.approval else "-",
        )
        for r in records
    ]
    widths = [max(len(c[i]) for c in (headers, *cells)) for i in range(len(headers) - 1)]
    for line in (headers, *cells):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1])
    pending = [r for r in records if r.approval is not None and r.approval.status == "pending"]
    for record in pending:
        request = record.approval
        assert request is not None
        print(
            f"\n{record.vif_id} ({_vif_name(record)}): {request.progress()}; "
            f"{request.min_approvals} needed from {', '.join(request.approvers)} by {_when(request.expires_at)}"
        )
        for vote in request.votes:
            print(f"  {_when(vote.at)}  {vote.approver} {vote.vote}d via {vote.channel}")
    return EXIT_OK


def _sandbox(args: argparse.Namespace) -> int:
    from sandbox.local import serve  # not deployed: needs the [sandbox] extra

    return serve(port=args.port, aws_port=args.aws_port, env_file=args.env_file, api_port=args.api_port)


def _demo(args: argparse.Namespace) -> int:
    from sandbox.demo import run_demo

    return run_demo()


def console() -> None:
    """The `vifgate` command: exit with main's code, without waiting for abandoned poll threads.

    A target given up on at its budget may still be blocked in a socket read; its thread does
    nothing more (every step checks the deadline), so the process need not wait for it to end.
    """
    code = main()
    if any(t.name.startswith("poll") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
