"""``shortcut-kd report RESULTS_JSON [--out DIR]``: report.md and figures from a results.json, table printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from shortcut_kd.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results.json (one experiment or a results set)")
    parser.add_argument("--out", default=None, help="folder for report.md and figures/ (default: beside the results)")
    parser.add_argument("--figure", action="append", default=[], metavar="CAPTION=PNG",
                        help="an extra figure to link (repeatable), e.g. 'Layer probes=probes/layer_probes.png'")
    parser.add_argument("--tests", default=None,
                        help="comma-separated test sets to show, in order (default: all present)")


def run(args: argparse.Namespace) -> int:
    from shortcut_kd.evaluation.report import format_table, write_report
    from shortcut_kd.evaluation.schema import validate_results
    from shortcut_kd.io import read_json

    results_path = Path(args.results)
    results = read_json(results_path)
    validate_results(results, source=str(results_path))
    figures = {}
    for item in args.figure:
        caption, sep, path = item.partition("=")
        if not sep or not caption or not path:
            raise ConfigError("--figure", item,
                              "write it as CAPTION=PATH, e.g. 'Layer probes=probes/layer_probes.png'.")
        if not Path(path).is_file():
            raise ConfigError("--figure", item, f"'{path}' does not exist; give the path of a PNG.")
        figures[caption] = path
    out = Path(args.out) if args.out else results_path.parent
    tests = [t.strip() for t in args.tests.split(",") if t.strip()] if args.tests else None
    report = write_report(results, out, figures=figures or None, test_sets=tests, results_dir=results_path.parent)
    print(format_table(results, test_sets=tests))
    print(f"\nreport: {report}")
    return 0
