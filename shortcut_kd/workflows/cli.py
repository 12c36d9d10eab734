"""``shortcut-kd stage METHOD``: run one protocol stage of an experiment through its bundle config."""

from __future__ import annotations

import argparse
import json
import logging

from shortcut_kd.workflows.experiment import STAGE_METHODS
from shortcut_kd.workflows.settings import ExperimentSettings, read_settings


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``stage`` and ``protocol``: a settings YAML plus the common overrides."""
    parser.add_argument("--config", help="settings YAML (see configs/protocols/); flags below override it")
    parser.add_argument("--dataset", help="isic2017, chexpert or simba")
    parser.add_argument("--dataset-dir", help="the dataset in its native layout")
    parser.add_argument("--ood-dir", help="an out-of-distribution source in the same layout")
    parser.add_argument("--output-dir", help="where splits, checkpoints and results go")
    parser.add_argument("--shortcut", help="shortcut preset, or 'native' for data with its own bias")
    parser.add_argument("--architecture")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device")
    parser.add_argument("--amp", action="store_true", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="any other setting, e.g. --set distill.weight=30 --set p_bias_pos=0.9")


def settings_from_args(args: argparse.Namespace) -> ExperimentSettings:
    overrides = {k: getattr(args, k) for k in ("dataset", "dataset_dir", "ood_dir", "output_dir", "shortcut",
                                               "architecture", "epochs", "seed", "device", "amp")}
    settings = read_settings(args.config, **overrides) if args.config else \
        ExperimentSettings(**{k: v for k, v in overrides.items() if v is not None})
    nested = parse_overrides(args.set)
    return settings.replace(**nested) if nested else settings


def parse_overrides(items: list[str]) -> dict:
    """``--set key=json`` items as a nested dict (``distill.weight=30`` -> ``{"distill": {"weight": 30}}``);
    a value that is not JSON is taken as a string."""
    from shortcut_kd.workflows.settings import nested_settings

    flat: dict = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            flat[key] = json.loads(raw)
        except json.JSONDecodeError:
            flat[key] = raw
    return nested_settings(flat)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=STAGE_METHODS)
    add_settings_arguments(parser)
    parser.add_argument("--fresh", action="store_true", help="rerun the stage even if an identical run is recorded")


def run(args: argparse.Namespace) -> int:
    from shortcut_kd.evaluation.report import format_table
    from shortcut_kd.workflows.experiment import Experiment
    from shortcut_kd.workflows.protocol import collect_results
    from shortcut_kd.workflows.runner import run_stage

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    exp = Experiment(settings_from_args(args))
    run_stage(exp, args.method, fresh=args.fresh)
    print(format_table(collect_results(exp, [args.method])))
    return 0
