"""KD variants scored on the bias-annotated validation split only (never a test set): which way of distilling
is worth a study row. The upstream stages (ERM, the teacher) use the settings a study chose; each KD variant
merges its settings (JSON, as a study's ``per_method`` entry) into KD's chosen ones.

    python benchmarks/kd_variants_validation.py configs/studies/isic2017_demo.yaml \\
        --variant mixup='{"distill": {"mix": "mixup"}}' \\
        --variant cutmix_e15='{"distill": {"mix": "cutmix"}, "epochs": 15}' \\
        --out benchmarks/results/kd_variants_validation.json

Writes, per shortcut and tuning seed, the validation score (the study's selection rule: the worst of the two
validation views' AUCs) and both AUCs of the teacher, KD as chosen, and each variant; rerunning reuses finished
stages.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from shortcut_kd.io import write_json
from shortcut_kd.provenance import environment, file_sha256
from shortcut_kd.study.config import read_study
from shortcut_kd.study.jobs import _deep_merge, _per_method, chosen_path, experiment_settings
from shortcut_kd.study.tuning import SELECTION_RULE, selection_score
from shortcut_kd.workflows.experiment import Experiment
from shortcut_kd.workflows.runner import run_stage


def _scores(validation: dict) -> dict:
    return {"score": selection_score(validation),
            "auc": {v: (validation.get(v) or {}).get("auc") for v in ("aligned", "conflicting")}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="the study whose chosen settings the stages use (its tune/*/chosen.json)")
    p.add_argument("--chosen-from", default=None,
                   help="the study folder holding tune/ (default: benchmarks/study/NAME)")
    p.add_argument("--variant", action="append", default=[], help="NAME=JSON of KD settings")
    p.add_argument("--work", default="runs/kd_variants_validation", help="where the stages run")
    p.add_argument("--out", default="benchmarks/results/kd_variants_validation.json")
    args = p.parse_args(argv)
    cfg = read_study(args.study)
    source = Path(args.chosen_from or f"benchmarks/study/{cfg.name}")
    variants = {name: json.loads(spec) for name, spec in (v.split("=", 1) for v in args.variant)}
    work = Path(args.work)
    result: dict = {"benchmark": "kd_variants_validation", "command": shlex.join(["python", *sys.argv]),
                    "selection": SELECTION_RULE, "study": args.study, "environment": environment(),
                    "variants": variants, "cells": {}}
    for dataset, shortcut in cfg.cells():
        chosen_file = chosen_path(source, dataset, shortcut)
        chosen = json.loads(chosen_file.read_text())["chosen"]
        per_method = _per_method(chosen)
        for seed in cfg.tuning_seeds:
            key = f"{dataset}/{shortcut}/seed{seed}"
            cell: dict = {"chosen_from": {"file": str(chosen_file), "sha256": file_sha256(chosen_file)}}
            folder = work / dataset / shortcut / f"seed{seed}"
            exp = Experiment(experiment_settings(cfg, dataset, shortcut, seed, folder, work, per_method))
            for method in ("erm", "teacher", "kd"):
                start = time.time()
                cell[method] = {**_scores(run_stage(exp, method, progress=False, evaluation="validation")),
                                "seconds": round(time.time() - start, 1)}
                print(f"{key} {method}: {cell[method]['score']}", flush=True)
            for name, extra in variants.items():
                vm = {**per_method, "kd": _deep_merge(per_method.get("kd", {}), extra)}
                vfolder = folder.parent / f"{folder.name}_{name}"
                vexp = Experiment(experiment_settings(cfg, dataset, shortcut, seed, vfolder, work, vm))
                _link_stages(exp, vexp)  # ERM and the teacher: the same runs, reused by their fingerprint
                start = time.time()
                cell[name] = {**_scores(run_stage(vexp, "kd", progress=False, evaluation="validation")),
                              "seconds": round(time.time() - start, 1)}
                print(f"{key} kd[{name}]: {cell[name]['score']}", flush=True)
            result["cells"][key] = cell
            write_json(args.out, result)
    return result


def _link_stages(src: Experiment, dst: Experiment) -> None:
    """Give ``dst`` the finished stages of ``src`` (records and checkpoints; a stage whose settings ``dst``
    changes runs again)."""
    from shortcut_kd.study.jobs import seed_variant

    seed_variant(Path(src.settings.output_dir), Path(dst.settings.output_dir))


if __name__ == "__main__":
    main()
