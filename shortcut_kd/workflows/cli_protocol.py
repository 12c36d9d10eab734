"""``shortcut-kd protocol``: run several stages of one experiment and write results.json + report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from shortcut_kd.evaluation.schema import METHOD_ORDER
from shortcut_kd.workflows.cli import add_settings_arguments, settings_from_args
from shortcut_kd.workflows.protocol import QUICK_METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)
    parser.add_argument("--methods", default=",".join(QUICK_METHODS),
                        help=f"comma-separated subset of {','.join(METHOD_ORDER)} or 'all'")
    parser.add_argument("--fresh", action="store_true", help="start every stage over")


def run(args: argparse.Namespace) -> int:
    from shortcut_kd.evaluation.report import format_table, write_report
    from shortcut_kd.workflows.protocol import run_protocol

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = settings_from_args(args)
    methods = list(METHOD_ORDER) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    results = run_protocol(settings, methods, fresh=args.fresh)
    write_report(results, Path(settings.output_dir), settings=settings.to_dict())
    print(format_table(results))
    return 0
