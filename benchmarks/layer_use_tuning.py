"""Per-layer shortcut *use* of the models a study trained on its tuning seed with the bundle defaults (trial 0),
for a pipeline whose reported cells are not finished: ERM's uptake depth of a localized against a diffuse
shortcut. Nothing here chooses a setting; the tuning seed is simply another seed.

    python benchmarks/layer_use_tuning.py configs/studies/chexpert_quick.yaml \
        --out benchmarks/results/layer_use_chexpert_tuning.json

Writes one JSON: per cell the rows of ``experiment_layer_use`` (tap, model, use, AUCs) and each model's uptake
depth (the first tap with use >= ``USE_THRESHOLD``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shortcut_kd.evaluation.shortcut_use import USE_THRESHOLD, uptake_depth
from shortcut_kd.io import write_json
from shortcut_kd.shortcuts.presets import shortcut_kind
from shortcut_kd.study.config import read_study
from shortcut_kd.study.jobs import experiment_settings, tune_dir
from shortcut_kd.workflows.experiment import Experiment
from shortcut_kd.workflows.probe_layers_cli import experiment_layer_use

METHODS = ("erm", "teacher", "kd", "oracle")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--study-dir", default=None, help="the study's output folder (default: its output_dir)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = read_study(args.config)
    out = Path(args.study_dir or cfg.output_dir or f"runs/studies/{cfg.name}")
    result: dict = {"command": " ".join(["python benchmarks/layer_use_tuning.py", *(argv or sys.argv[1:])]),
                    "use_threshold": USE_THRESHOLD, "cells": {}}
    for dataset, shortcut in cfg.cells():
        for seed in cfg.tuning_seeds:
            folder = tune_dir(out, dataset, shortcut) / f"seed{seed}"
            methods = [m for m in METHODS if m in cfg.methods and (folder / "stages" / f"{m}.json").is_file()]
            if not methods:
                continue
            exp = Experiment(experiment_settings(cfg, dataset, shortcut, seed, folder, out, {}))
            rows = experiment_layer_use(exp, methods)
            depth = {m: uptake_depth(rows, model=m) for m in methods}
            result["cells"][f"{dataset}/{shortcut}/seed{seed}"] = {
                "shortcut_kind": "native" if shortcut == "native" else shortcut_kind(shortcut), "rows": rows,
                "uptake_depth": depth}
            print(dataset, shortcut, seed, depth, flush=True)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
