"""The multi-stage protocol: run the chosen methods of one experiment and write results.json."""

from __future__ import annotations

import logging
from typing import Sequence

from shortcut_kd.evaluation.schema import SCHEMA
from shortcut_kd.io import read_json, write_json
from shortcut_kd.workflows.experiment import Experiment
from shortcut_kd.workflows.settings import METHODS, ExperimentSettings
from shortcut_kd.workflows.stages import run_stage

logger = logging.getLogger(__name__)

QUICK_METHODS = ("erm", "teacher", "kd", "oracle")


def shortcut_entry(exp: Experiment) -> dict:
    """The ``shortcut`` block of results.json."""
    s = exp.settings
    if exp.native_bias:
        return {"name": "native", "kind": "native", "p_bias_pos": None, "p_bias_neg": None}
    from shortcut_kd.shortcuts import shortcut_kind

    return {"name": s.shortcut, "kind": shortcut_kind(s.shortcut), "p_bias_pos": s.p_bias_pos,
            "p_bias_neg": s.p_bias_neg}


def collect_results(exp: Experiment, methods: Sequence[str] | None = None) -> dict:
    """results.json of the finished stages of ``exp`` (DESIGN.md schema)."""
    methods = [m for m in (methods or METHODS) if exp.is_done(m)]
    return {"schema": SCHEMA, "dataset": exp.settings.dataset, "architecture": exp.architecture,
            "shortcut": shortcut_entry(exp), "seed": exp.settings.seed,
            "methods": {m: {"test": read_json(exp.stage_dir(m) / "metrics.json")["test"]} for m in methods}}


def run_protocol(settings: ExperimentSettings, methods: Sequence[str] = QUICK_METHODS, fresh: bool = False,
                 progress: bool = True) -> dict:
    """Run ``methods`` in dependency order, write ``results.json`` and the settings, return the results."""
    exp = Experiment(settings)
    exp.root.mkdir(parents=True, exist_ok=True)
    write_json(exp.root / "settings.json", settings.to_dict())
    ordered = [m for m in METHODS if m in methods]
    for i, method in enumerate(ordered, 1):
        logger.info("[%d/%d] %s", i, len(ordered), method)
        run_stage(exp, method, fresh=fresh, progress=progress)
    results = collect_results(exp, ordered)
    write_json(exp.root / "results.json", results)
    return results
