"""The command line: parse the flags, run the checks (at the same time: the slow ones wait
in parallel), print one line per check in a fixed order, and exit with the verdict.

Exit status: 0 every check is ok (or could not tell), 1 a check found a problem (with
``--strict``, also when one could not tell), 2 the doctor could not run (a bad URL, or
no Switchboard doctor answers at that URL).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from .checks import CHECKS, PROBLEM, UNKNOWN, Options, Result, measure_echo
from .wire import Target

EPILOG = (
    """checks: """
    + ", ".join(CHECKS)
    + """

Each line reads: verdict, check, what was measured and what it means, and the line that
fixes it (or keeps it right). Every wait is bounded: the idle stream and the slow poll
default to the server's heartbeat and long-poll timeout plus 2 s, at most the server's
SWITCHBOARD_DOCTOR_MAX_WAIT (120 s)."""
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.doctor",
        description="Check the reverse proxy in front of a Switchboard server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="the server's base URL as browsers reach it, e.g. https://their.host/")
    parser.add_argument("--only", metavar="CHECKS", help="comma-separated checks to run (default: all)")
    parser.add_argument("--skip", metavar="CHECKS", help="comma-separated checks to leave out")
    parser.add_argument("--events", type=int, default=6, help="buffering: events in the timed stream (2-50; 6)")
    parser.add_argument("--interval", type=float, default=0.5, help="buffering: seconds between them (0.05-2; 0.5)")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        metavar="S",
        help="idle-cut: how long the stream stays silent (default: the heartbeat + 2 s)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        metavar="S",
        help="long-poll: how long the answer is held (default: the long-poll timeout + 2 s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds allowed to connect and for quick answers, and the grace after a wait (10)",
    )
    parser.add_argument("--origin", help="the Origin sent with the WebSocket upgrades (default: the URL's own)")
    parser.add_argument("--insecure", action="store_true", help="https: do not verify the certificate")
    parser.add_argument("--strict", action="store_true", help="exit 1 also when a check could not tell")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON array instead")
    args = parser.parse_args(argv)
    chosen = list(CHECKS)
    for flag, keep in (("only", True), ("skip", False)):
        value = getattr(args, flag)
        if value is None:
            continue
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in CHECKS]
        if unknown:
            parser.error(f"--{flag}: unknown check(s) {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
        chosen = [name for name in chosen if (name in names) == keep]
    args.checks = chosen
    if not 2 <= args.events <= 50 or not 0.05 <= args.interval <= 2 or args.events * args.interval > 20:
        parser.error("--events must be 2-50 and --interval 0.05-2 s, at most 20 s in all")
    for flag in ("idle_seconds", "poll_seconds"):
        value = getattr(args, flag)
        if value is not None and not 0.1 <= value <= 3600:
            parser.error(f"--{flag.replace('_', '-')} must be 0.1-3600 seconds (the server caps it further)")
    if not 0.5 <= args.timeout <= 300:
        parser.error("--timeout must be 0.5-300 seconds")
    return args


def run(target: Target, options: Options, checks: Sequence[str], out=sys.stdout) -> list[Result]:
    """Run ``checks`` against ``target``, print each line in order as soon as it is known.

    Raises:
        OSError, http.client.HTTPException, ValueError: the echo, which every check needs, failed.
    """
    probe = measure_echo(target, options.timeout)
    results = []
    with ThreadPoolExecutor(max_workers=len(checks) or 1) as pool:
        futures = [pool.submit(CHECKS[name], target, options, probe) for name in checks]
        for future in futures:
            result = future.result()
            results.append(result)
            if out is not None:
                print(result.line(), file=out, flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        target = Target.parse(args.url, insecure=args.insecure)
    except ValueError as exc:
        print(f"doctor: {exc}", file=sys.stderr)
        return 2
    options = Options(
        events=args.events,
        interval=args.interval,
        idle_seconds=args.idle_seconds,
        poll_seconds=args.poll_seconds,
        timeout=args.timeout,
        origin=args.origin,
    )
    try:
        results = run(target, options, args.checks, out=None if args.json else sys.stdout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        print(f"doctor: no Switchboard doctor answers at {args.url}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    counts = {verdict: sum(r.verdict == verdict for r in results) for verdict in ("ok", PROBLEM, UNKNOWN)}
    print(
        f"doctor: {counts['ok']} ok, {counts[PROBLEM]} problem(s), {counts[UNKNOWN]} could not tell "
        f"({target.origin}{target.prefix})",
        file=sys.stderr,
    )
    failed = {PROBLEM, UNKNOWN} if args.strict else {PROBLEM}
    return 1 if any(result.verdict in failed for result in results) else 0
