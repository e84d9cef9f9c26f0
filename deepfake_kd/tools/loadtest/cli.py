"""`python -m deepfake_kd loadtest`: the command line of the load-and-fault test (`run`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...roles import add_reference_arguments
from .run import Config, format_report, run

DESCRIPTION = ("Load and fault test of the served app: many users at once, broken uploads and "
               "hostile files.")


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "loadtest", help="load-and-fault test of the served app (starts it itself)",
        description=DESCRIPTION)
    parser.add_argument("--requests", type=int, default=20, help="requests under load (20)")
    parser.add_argument("--concurrency", type=int, default=6, help="client threads (6)")
    parser.add_argument("--frames", type=int, default=32,
                        help="frames per analysis (32, the app's default)")
    add_reference_arguments(parser, default="the app's")
    parser.add_argument("--untrained", action="store_true",
                        help="random weights in the released architectures (same compute)")
    parser.add_argument("--timeout-s", type=float, default=240.0,
                        help="limit for one request, queueing included (240)")
    parser.add_argument("--rss-growth-mb", type=float, default=1536.0,
                        help="bound on the server's peak RSS above its RSS at rest (1536)")
    parser.add_argument("--cache-ttl-s", type=int, default=30,
                        help="lifetime of the server's temporary files (30)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep clips, logs and temp folders")
    parser.set_defaults(run=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if args.untrained and (args.teacher or args.student):
        raise SystemExit("error: --untrained replaces --teacher/--student")
    config = Config(requests=args.requests, concurrency=args.concurrency, frames=args.frames,
                    teacher=args.teacher or "", student=args.student or "",
                    untrained=args.untrained, timeout_s=args.timeout_s,
                    rss_growth_mb=args.rss_growth_mb, cache_ttl_s=args.cache_ttl_s,
                    keep=args.keep)
    report = run(config, log=lambda text: print(text, flush=True))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1
