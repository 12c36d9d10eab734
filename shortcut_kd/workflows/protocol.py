"""The multi-stage protocol: run the chosen methods of one experiment and write results.json."""

from __future__ import annotations

import logging
from typing import Sequence

from shortcut_kd.evaluation.schema import METHOD_ORDER, SCHEMA
from shortcut_kd.io import write_json
from shortcut_kd.workflows.experiment import Experiment
from shortcut_kd.workflows.runner import run_stage, stage_record
from shortcut_kd.workflows.settings import ExperimentSettings

logger = logging.getLogger(__name__)

QUICK_METHODS = ("erm", "teacher", "kd", "oracle")

__all__ = ["QUICK_METHODS", "collect_results", "run_protocol"]


def collect_results(exp: Experiment, methods: Sequence[str] | None = None) -> dict:
    """results.json of the finished stages of ``exp``, each with its provenance (``stages/<method>.json``)."""
    from shortcut_kd.provenance import environment
    from shortcut_kd.workflows.bundle import shortcut_entry

    entries = {}
    for method in methods or METHOD_ORDER:
        record = stage_record(exp, method) if exp.is_done(method) else None
        if record and "test" in record:
            entries[method] = {"test": record["test"], "provenance": {
                k: record.get(k) for k in ("fingerprint", "config_files", "overrides", "split_manifest_sha256",
                                           "upstream_sha256", "outputs_sha256", "seconds", "train_images",
                                           "environment")}}
    shortcut = exp.parser("erm")["shortcut"]
    return {"schema": SCHEMA, "dataset": exp.settings.dataset, "architecture": exp.architecture,
            "shortcut": shortcut_entry(shortcut["name"], shortcut["p_bias_pos"], shortcut["p_bias_neg"]),
            "seed": exp.settings.seed, "methods": entries,
            "provenance": {"bundle": exp.bundle_dir.name, "settings": exp.settings.to_dict(),
                           **environment(exp.device)}}


def run_protocol(settings: ExperimentSettings, methods: Sequence[str] = QUICK_METHODS, fresh: bool = False,
                 progress: bool = True) -> dict:
    """Run ``methods`` in dependency order, write ``results.json`` and the settings, return the results."""
    exp = Experiment(settings)
    exp.root.mkdir(parents=True, exist_ok=True)
    write_json(exp.root / "settings.json", settings.to_dict())
    ordered = [m for m in METHOD_ORDER if m in methods]
    unknown = sorted(set(methods) - set(METHOD_ORDER))
    if unknown:
        from shortcut_kd.errors import ConfigError

        raise ConfigError("methods", unknown[0], f"use some of {list(METHOD_ORDER)}.")
    for i, method in enumerate(ordered, 1):
        logger.info("[%d/%d] %s", i, len(ordered), method)
        run_stage(exp, method, fresh=fresh, progress=progress)
    from shortcut_kd.provenance import portable_paths

    results = collect_results(exp, ordered)
    write_json(exp.root / "results.json", portable_paths(results, exp.root))
    return results
