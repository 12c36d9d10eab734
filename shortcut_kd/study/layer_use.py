"""Where each shortcut is taken up: the per-layer use measure on a study's finished cells, and the test of
"localized shortcuts are taken up earlier than diffuse ones".

``shortcut-kd study CONFIG --layer-use`` measures every finished main cell once (``<cell>/layer_use.json``;
:func:`~shortcut_kd.workflows.probe_layers_cli.experiment_layer_use`, on the test splits: this is analysis of
trained models, never a choice of settings). The aggregate then gives, per pipeline × shortcut, each
method's mean use per layer over the seeds and its uptake depth (the shallowest tap whose use reaches
:data:`~shortcut_kd.evaluation.shortcut_use.USE_THRESHOLD`, as a fraction of the network's depth), and per
pipeline the ERM uptake depth of each localized shortcut against each diffuse one, seed by seed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shortcut_kd.io import read_json, write_json
from shortcut_kd.study.config import StudyConfig

__all__ = ["measure_layer_use", "summarise_layer_use", "format_layer_use", "plot_layer_use", "USE_METHODS"]

logger = logging.getLogger(__name__)

USE_METHODS = ("erm", "teacher", "kd", "oracle")
"""The models measured: the biased baseline, the teacher, the distilled student, the bias-free oracle."""


#: A dataset's own bias (SimBA's ``_B`` files) is neither an injected localized nor diffuse preset.
NATIVE = "native"


def measure_layer_use(cfg: StudyConfig, out: Path) -> list[Path]:
    """Write ``layer_use.json`` in every finished main cell that has none; returns the files written."""
    from shortcut_kd.study.jobs import cell_dir, cell_experiment, chosen_path
    from shortcut_kd.workflows.probe_layers_cli import experiment_layer_use

    written = []
    for dataset, shortcut in cfg.cells():
        for seed in cfg.seeds:
            folder = cell_dir(out, dataset, shortcut, seed)
            target = folder / "layer_use.json"
            if target.is_file() or not (folder / "results.json").is_file():
                continue
            chosen = read_json(chosen_path(out, dataset, shortcut))["chosen"]
            exp = cell_experiment(cfg, out, dataset, shortcut, seed, chosen)
            methods = [m for m in USE_METHODS if m in cfg.methods]
            logger.info("layer use %s/%s seed %d: %s", dataset, shortcut, seed, methods)
            write_json(target, {"rows": experiment_layer_use(exp, methods), "methods": methods})
            written.append(target)
    return written


def _with_own_output(rows: list[dict], results_path: Path) -> list[dict]:
    """``rows`` with each model's ``output`` row taken from the cell's test results: the model's own
    aligned − conflicting AUC, the numbers of the study's table (files measured before the output row scored
    the model's own prediction held a probe refitted on the logits there)."""
    from shortcut_kd.evaluation.shortcut_use import OUTPUT_TAP

    methods = read_json(results_path).get("methods", {}) if results_path.is_file() else {}
    fixed = []
    for row in rows:
        test = (methods.get(row["model"]) or {}).get("test") or {}
        aligned, conflicting = ((test.get(v) or {}).get("auc") for v in ("aligned", "conflicting"))
        if row["tap"] == OUTPUT_TAP and aligned is not None and conflicting is not None:
            row = {**row, "auc_aligned": aligned, "auc_conflicting": conflicting, "use": aligned - conflicting,
                   "note": "the model's own test AUCs (results.json)"}
        fixed.append(row)
    return fixed


def summarise_layer_use(cfg: StudyConfig, out: Path) -> dict[str, Any]:
    """Per cell the mean use per method and tap and the uptake depths; per pipeline localized vs diffuse."""
    import numpy as np

    from shortcut_kd.evaluation.shortcut_use import OUTPUT_TAP, USE_THRESHOLD, uptake_depth
    from shortcut_kd.shortcuts.presets import shortcut_kind
    from shortcut_kd.study.jobs import cell_dir

    cells: dict[str, Any] = {}
    for dataset, shortcut in cfg.cells():
        runs = {seed: _with_own_output(read_json(p)["rows"], p.parent / "results.json") for seed in cfg.seeds
                if (p := cell_dir(out, dataset, shortcut, seed) / "layer_use.json").is_file()}
        if not runs:
            continue
        methods = list(dict.fromkeys(r["model"] for rows in runs.values() for r in rows))
        per_method = {}
        for method in methods:
            taps = list(dict.fromkeys(r["tap"] for rows in runs.values() for r in rows if r["model"] == method))
            values = {t: [r["use"] for rows in runs.values() for r in rows
                          if r["model"] == method and r["tap"] == t and r["use"] is not None] for t in taps}
            mean_use = {t: float(np.mean(v)) if v else None for t, v in values.items()}
            uptake = {str(s): uptake_depth([r for r in rows if r["model"] == method], method)
                      for s, rows in runs.items()}
            per_method[method] = {"taps": taps, "mean_use": mean_use, "uptake": uptake}
        kind = NATIVE if shortcut == NATIVE else shortcut_kind(shortcut)
        cells[f"{dataset}/{shortcut}"] = {"dataset": dataset, "shortcut": shortcut, "kind": kind,
                                          "seeds": sorted(runs), "methods": per_method}
    comparisons = []
    for dataset in dict.fromkeys(c["dataset"] for c in cells.values()):
        mine = [c for c in cells.values() if c["dataset"] == dataset and "erm" in c["methods"]]
        for loc in (c for c in mine if c["kind"] == "localized"):
            for dif in (c for c in mine if c["kind"] == "diffuse"):
                pairs = []
                for seed in sorted(set(loc["seeds"]) & set(dif["seeds"])):
                    a = loc["methods"]["erm"]["uptake"].get(str(seed))
                    b = dif["methods"]["erm"]["uptake"].get(str(seed))
                    pairs.append({"seed": seed, "localized": None if a is None else a["relative_depth"],
                                  "diffuse": None if b is None else b["relative_depth"]})
                known = [p for p in pairs if p["localized"] is not None and p["diffuse"] is not None]
                earlier = sum(p["localized"] < p["diffuse"] for p in known)
                later = sum(p["localized"] > p["diffuse"] for p in known)
                # an order is claimed only when every seed measured both uptakes and agrees
                answer = ("no uptake measured in both" if not known else
                          f"not established: ordered on {len(known)} of {len(pairs)} seeds" if len(known) < len(pairs)
                          else "localized earlier" if earlier == len(known) else
                          "diffuse earlier" if later == len(known) else "not consistent")
                comparisons.append({"dataset": dataset, "localized": loc["shortcut"], "diffuse": dif["shortcut"],
                                    "seeds": pairs, "earlier": earlier, "same": len(known) - earlier - later,
                                    "later": later, "answer": answer})
    return {"threshold": USE_THRESHOLD, "output_tap": OUTPUT_TAP, "cells": cells, "localized_vs_diffuse": comparisons}


def _depth(value: dict | None) -> str:
    return "none" if value is None else f"`{value['tap']}` ({value['relative_depth']:.2f})"


def format_layer_use(summary: dict[str, Any]) -> list[str]:
    """Markdown: per cell, mean use per tap and model and the uptake per seed; then localized vs diffuse."""
    lines: list[str] = []
    for name, cell in summary["cells"].items():
        methods = list(cell["methods"])
        taps = list(dict.fromkeys(t for m in methods for t in cell["methods"][m]["taps"]))
        lines += [f"**{name}** ({cell['kind']}; seeds {cell['seeds']}): mean use per layer (label-probe AUC "
                  "aligned − conflicting)", "",
                  "| tap | " + " | ".join(f"`{m}`" for m in methods) + " |", "|:---|" + "---:|" * len(methods)]
        for tap in taps:
            values = [cell["methods"][m]["mean_use"].get(tap) for m in methods]
            lines.append(f"| `{tap}` | " + " | ".join("–" if v is None else f"{v:+.3f}" for v in values) + " |")
        lines.append("| uptake (per seed) | " + " | ".join(
            ", ".join(_depth(cell["methods"][m]["uptake"].get(str(s))) for s in cell["seeds"]) for m in methods)
            + " |")
        lines.append("")
    for comp in summary["localized_vs_diffuse"]:
        seeds = "; ".join(f"seed {p['seed']}: {p['localized']} vs {p['diffuse']}" for p in comp["seeds"])
        lines += [f"- **{comp['dataset']}**, ERM, `{comp['localized']}` (localized) vs `{comp['diffuse']}` "
                  f"(diffuse), relative uptake depth: {seeds} — localized earlier in {comp['earlier']}, same in "
                  f"{comp['same']}, later in {comp['later']}: **{comp['answer']}**."]
    return lines + [""] if lines else ["No cell measured yet (`--layer-use`).", ""]


def plot_layer_use(summary: dict[str, Any], path: Path) -> None:
    """One panel per cell: mean use per layer, a line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shortcut_kd.evaluation.report import save_figure

    cells = summary["cells"]
    if not cells:
        return
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.4), squeeze=False)
    for ax, (name, cell) in zip(axes[0], cells.items()):
        for method, body in cell["methods"].items():
            values = [body["mean_use"].get(t) for t in body["taps"]]
            ax.plot(range(len(values)), [float("nan") if v is None else v for v in values], "-o", label=method)
        taps = next(iter(cell["methods"].values()))["taps"]
        ax.set_xticks(range(len(taps)), taps, rotation=30, ha="right", fontsize=7)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.axhline(summary["threshold"], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{name} ({cell['kind']})", fontsize=9)
        ax.set_ylabel("use (AUC aligned − conflicting)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
