"""The ``shortcut-kd`` command.

Each sub-command lives beside the code it drives: the module named below has
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
sub-command runs, so ``shortcut-kd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("shortcut_kd.data.synthetic.cli", "write a synthetic dataset in a real dataset's native layout"),
    "splits": ("shortcut_kd.data.splits_cli", "build biased / bias-free / test datalists from a dataset on disk"),
    "stage": ("shortcut_kd.workflows.cli", "run one protocol stage (erm, teacher, kd, oracle or a baseline)"),
    "protocol": ("shortcut_kd.workflows.cli_protocol", "run several stages and write results.json and the report"),
    "probe-layers": ("shortcut_kd.workflows.probe_layers_cli", "per-layer decodability of the shortcut and the label"),
    "report": ("shortcut_kd.evaluation.report_cli", "build report.md and figures from a results.json"),
    "demo": ("shortcut_kd.workflows.demo", "generate data, run every method, print and write the comparison"),
    "study": ("shortcut_kd.study.cli", "tune on the validation split, run seeds, paired tests: study.json/.md"),
    "run": ("shortcut_kd.workflows.bundle_cli", "run a stage of a MONAI bundle (e.g. run isic2017 distill)"),
    "bundle-performance": ("shortcut_kd.study.bundle_performance",
                           "write a bundle's Performance table and metadata eval_metrics from a results.json"),
    "export-bundle": ("shortcut_kd.workflows.export_bundle",
                      "write a MONAI model zoo submission of a bundle with a run's weights, then check it"),
    "validate-bundle": ("shortcut_kd.workflows.zoo_checks", "run the MONAI model zoo's CI checks on a bundle folder"),
}


def build_parser() -> argparse.ArgumentParser:
    from shortcut_kd import __version__

    parser = argparse.ArgumentParser(prog="shortcut-kd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"shortcut-kd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"shortcut-kd {name}", description=COMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    from shortcut_kd.errors import ShortcutKDError

    try:
        return int(module.run(args) or 0)
    except ShortcutKDError as e:  # bad input or settings: the message says what to fix
        print(f"shortcut-kd {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
