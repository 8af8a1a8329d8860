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

from .config import ConfigError
from .ledger import Ledger, OutboxItem, iso
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

    schema = commands.add_parser("schema", help="print the JSON Schema of every event on the queue")
    schema.set_defaults(func=_schema)

    demo = commands.add_parser("demo", help="the whole story on the embedded sandbox, in under a minute")
    demo.set_defaults(func=_demo)
    return parser


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
    return EXIT_OK if report.ok else EXIT_TARGET_FAILED


def _check(args: argparse.Namespace) -> int:
    try:
        runtime = _runtime(args)
        policy = runtime.policy
    except ConfigError as exc:
        return _bad_config(exc)
    if not args.json:
        allow = policy.allowlist()
        print(
            f"config OK: {len(policy.targets)} target(s), {len(policy.rules)} rule(s), "
            f"default_action {policy.default_action}; confirm rules trust "
            f"{len(allow['accounts'])} account(s) and {len(allow['gateways'])} gateway(s)"
        )
    if args.offline:
        return EXIT_OK
    targets, flush = _split(args.budget)
    report = run_cycle(runtime, dry_run=True, record=False, budget_seconds=targets, flush_seconds=flush)
    _print_report(report, as_json=args.json, what_if=True)
    return EXIT_OK if report.ok else EXIT_TARGET_FAILED


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


def _sandbox(args: argparse.Namespace) -> int:
    from sandbox.local import serve  # not deployed: needs the [sandbox] extra

    return serve(port=args.port, aws_port=args.aws_port, env_file=args.env_file)


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
