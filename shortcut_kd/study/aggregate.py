"""The study's aggregate: ``study.json`` (every number, with its provenance) and ``study.md`` (the protocol,
tables, paired tests, rank comparison and figures), built from the cells' results and predictions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shortcut_kd.io import read_json, write_json, write_text
from shortcut_kd.study.ablations import ablation_points, format_ablation, plot_ablation
from shortcut_kd.study.config import StudyConfig
from shortcut_kd.study.jobs import cell_dir, chosen_path
from shortcut_kd.study.layer_use import format_layer_use, plot_layer_use, summarise_layer_use
from shortcut_kd.study.tuning import SELECTION_RULE

logger = logging.getLogger(__name__)

__all__ = ["INFORMATION", "aggregate", "PRIMARY", "format_cell", "headline", "update_readme"]

STUDY_SCHEMA = "shortcut-kd/study/v1"
PRIMARY = ("conflicting", "auc")
"""The test set and metric of the paired tests and the ranks: AUC on the bias-conflicting test."""
REPORTED = (("conflicting", "auc"), ("unbiased", "auc"), ("unbiased", "delta_tpr"), ("ood", "auc"),
            ("aligned", "auc"))

INFORMATION = {
    "erm": "biased training set",
    "randconv": "biased training set (augmented)",
    "mixup": "biased training set (augmented)",
    "cutmix": "biased training set (augmented)",
    "groupdro": "biased training set + its bias labels",
    "reweight": "biased training set + its bias labels",
    "jtt": "biased training set (error-set groups)",
    "dfr": "ERM features + bias-annotated specialist subset",
    "finetune": "ERM + bias-annotated specialist subset",
    "teacher": "ERM + bias-annotated specialist subset",
    "kd": "biased training set + teacher (specialist subset)",
    "oracle": "bias-free training set (reference)",
}
"""What each method uses beyond the validation split (which every method uses for its settings)."""


def _predictions(folder: Path, method: str) -> dict | None:
    path = folder / "stages" / f"{method}.predictions.json"
    if not path.is_file():
        return None
    return (read_json(path).get("methods") or {}).get(method)


def is_row_variant(cfg: StudyConfig, name: str) -> bool:
    """A variant shown as a row of the cell's table: one method, no experiment-wide change, no ablation."""
    spec = cfg.variants[name]
    return len(cfg.variant_methods(name)) == 1 and not spec.get("experiment") and not spec.get("ablation")


def _collect(cfg: StudyConfig, out: Path, dataset: str,
             shortcut: str) -> tuple[dict[str, dict[int, dict]], dict[str, dict[str, dict[int, dict]]]]:
    """The finished runs: row -> seed -> {"test", "provenance", "predictions"} (the methods and the row
    variants), and variant -> method -> seed -> the same (every variant)."""
    rows: dict[str, dict[int, dict]] = {}
    variants: dict[str, dict[str, dict[int, dict]]] = {}
    for seed in cfg.seeds:
        folder = cell_dir(out, dataset, shortcut, seed)
        path = folder / "results.json"
        if path.is_file():
            for method, body in read_json(path)["methods"].items():
                rows.setdefault(method, {})[seed] = {**body, "predictions": _predictions(folder, method)}
        for name in cfg.variants:
            vfolder = cell_dir(out, dataset, shortcut, seed, name)
            vpath = vfolder / "results.json"
            if not vpath.is_file():
                continue
            found = read_json(vpath)["methods"]
            for method in cfg.variant_methods(name):
                if found.get(method):
                    run = {**found[method], "predictions": _predictions(vfolder, method)}
                    variants.setdefault(name, {}).setdefault(method, {})[seed] = run
                    if is_row_variant(cfg, name):
                        rows.setdefault(name, {})[seed] = run
    return rows, variants


def _paired(kd: dict[int, dict], other: dict[int, dict], test: str, n_bootstrap: int) -> dict | None:
    from shortcut_kd.study.stats import paired_bootstrap_auc, pooled_paired_bootstrap_auc

    groups, per_seed = [], {}
    for seed in sorted(set(kd) & set(other)):
        a, b = (kd[seed].get("predictions") or {}).get(test), (other[seed].get("predictions") or {}).get(test)
        if not a or not b or a["id"] != b["id"]:
            continue
        groups.append((a["label"], a["score"], b["score"]))
        per_seed[str(seed)] = paired_bootstrap_auc(a["label"], a["score"], b["score"], n_bootstrap=n_bootstrap,
                                                   seed=seed)
    if not groups:
        return None
    from shortcut_kd.study.stats import win_tie_loss

    return {"pooled": pooled_paired_bootstrap_auc(groups, n_bootstrap=n_bootstrap, seed=0), "per_seed": per_seed,
            "win_tie_loss": win_tie_loss(per_seed.values())}


def _summary(runs: dict[int, dict]) -> dict:
    from shortcut_kd.study.stats import mean_sd

    out: dict[str, Any] = {}
    for test, metric in REPORTED:
        values = [(r["test"].get(test) or {}).get(metric) for r in runs.values()]
        out[f"{test}_{metric}"] = mean_sd(values)
    prov = [r.get("provenance") or {} for r in runs.values()]
    images = [(p.get("train_images") or {}).get("images") for p in prov]
    out["compute"] = {"seconds": mean_sd([p.get("seconds") for p in prov]),
                      "epochs": next(((p.get("train_images") or {}).get("epochs") for p in prov), None),
                      "images": mean_sd(images)}
    return out


def _wall_seconds(out: Path) -> float | None:
    """From the first job start to the last job end in ``jobs.log`` (all workers, all sessions)."""
    import datetime

    path = out / "jobs.log"
    if not path.is_file():
        return None
    stamps = [datetime.datetime.fromisoformat(line.split()[0]) for line in path.read_text().splitlines() if line]
    return (max(stamps) - min(stamps)).total_seconds() if stamps else None


def _run_environments(cfg: StudyConfig, out: Path) -> dict:
    """What the cells ran with (from their results' provenance): commits, versions, devices, threads."""
    seen: dict[str, set] = {k: set() for k in ("git_commit", "shortcut_kd", "torch", "monai", "device", "threads")}
    for dataset, shortcut in cfg.cells():
        for seed in cfg.seeds:
            path = cell_dir(out, dataset, shortcut, seed) / "results.json"
            if path.is_file():
                prov = read_json(path).get("provenance") or {}
                for key in seen:
                    seen[key].add(str(prov.get(key)))
    return {k: sorted(v) for k, v in seen.items()}


def _tuning_cost(out: Path, dataset: str, shortcut: str) -> dict[str, dict]:
    path = out / "tune" / dataset / shortcut / "trials.json"
    cost: dict[str, dict] = {}
    for t in (read_json(path)["trials"] if path.is_file() else []):
        c = cost.setdefault(t["method"], {"trials": 0, "seconds": 0.0})
        c["trials"] += 1
        c["seconds"] += t.get("seconds") or 0.0
    return cost


def aggregate(cfg: StudyConfig, out: Path, n_bootstrap: int = 1000) -> dict:
    """Build ``study.json``, ``study.md`` and the figures from what has finished; return the study dict."""
    from shortcut_kd.provenance import environment
    from shortcut_kd.study.stats import plot_critical_difference, rank_comparison

    cells: dict[str, Any] = {}
    blocks: dict[str, dict[str, float]] = {}
    for dataset, shortcut in cfg.cells():
        rows, variants = _collect(cfg, out, dataset, shortcut)
        chosen_file = chosen_path(out, dataset, shortcut)
        tuning = read_json(chosen_file) if chosen_file.is_file() else None
        entry: dict[str, Any] = {"rows": {}, "kd_vs": {}, "tuning": tuning,
                                 "tuning_cost": _tuning_cost(out, dataset, shortcut),
                                 "ablations": {name: ablation_points(cfg, name, rows, variants, _paired, n_bootstrap)
                                               for name in cfg.ablations}}
        for row, runs in rows.items():
            method = cfg.variant_methods(row)[0] if row in cfg.variants else row
            variant = f" (variant of {method})" if row in cfg.variants else ""
            entry["rows"][row] = {"information": INFORMATION.get(method, "?") + variant,
                                  "seeds": sorted(runs), "summary": _summary(runs),
                                  "per_seed": {str(k): r["test"] for k, r in runs.items()}}
        if "kd" in rows:
            for row, runs in rows.items():
                if row != "kd":
                    entry["kd_vs"][row] = _paired(rows["kd"], runs, PRIMARY[0], n_bootstrap)
        for seed in cfg.seeds:
            scores = {row: (runs[seed]["test"].get(PRIMARY[0]) or {}).get(PRIMARY[1])
                      for row, runs in rows.items() if seed in runs and row not in cfg.variants}
            if scores and all(v is not None for v in scores.values()):
                blocks[f"{dataset}/{shortcut}/seed{seed}"] = {k: float(v) for k, v in scores.items() if v is not None}
        cells[f"{dataset}/{shortcut}"] = entry
    ranks: dict[str, Any] = (rank_comparison(blocks) if len(blocks) >= 2
                             else {"friedman": None, "reason": "fewer than 2 blocks"})
    figures: dict[str, str] = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if ranks.get("friedman"):
        plot_critical_difference(ranks, out / "figures" / "critical_difference.png")
        figures["Critical difference (conflicting AUC, Nemenyi)"] = "figures/critical_difference.png"
    if any(c["rows"] for c in cells.values()):
        _plot_cells(cells, out / "figures" / "conflicting_auc.png")
        figures["Conflicting-test AUC, mean ± sd over seeds"] = "figures/conflicting_auc.png"
    for name, spec in cfg.ablations.items():
        by_cell = {cell: body["ablations"][name] for cell, body in cells.items()}
        if any(a["points"] and any(p["methods"] for p in a["points"]) for a in by_cell.values()):
            plot_ablation(by_cell, out / "figures" / f"ablation_{name}.png")
            figures[f"{spec.get('title', name)}: conflicting and OOD AUC, mean ± sd over seeds"] = \
                f"figures/ablation_{name}.png"
    layer_use = summarise_layer_use(cfg, out)
    if layer_use["cells"]:
        plot_layer_use(layer_use, out / "figures" / "layer_use.png")
        figures["Shortcut use per layer (label-probe AUC aligned − conflicting), mean over seeds"] = \
            "figures/layer_use.png"
    runs_env = _run_environments(cfg, out)
    study = {"schema": STUDY_SCHEMA, "name": cfg.name, "config": cfg.to_dict(), "selection": SELECTION_RULE,
             "primary": {"test": PRIMARY[0], "metric": PRIMARY[1]}, "cells": cells, "ranks": ranks,
             "figures": figures, "wall_seconds": _wall_seconds(out), "environment": environment(),
             "runs": runs_env, "layer_use": layer_use}
    write_json(out / "study.json", study)
    write_text(out / "study.md", format_study(study))
    return study


def _plot_cells(cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shortcut_kd.evaluation.report import save_figure

    names = list(cells)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = cells[name]["rows"]
        labels = list(rows)
        means = [rows[r]["summary"]["conflicting_auc"]["mean"] or 0 for r in labels]
        sds = [rows[r]["summary"]["conflicting_auc"]["sd"] or 0 for r in labels]
        colours = ["tab:red" if r == "kd" else "tab:grey" if r == "oracle" else "tab:blue" for r in labels]
        ax.bar(range(len(labels)), means, yerr=sds, color=colours, capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set_title(name)
        ax.set_ylabel("conflicting AUC")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _fmt(stat: dict | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}"
    return text + (f" ± {stat['sd']:.3f}" if stat.get("sd") is not None else "")


def format_study(study: dict) -> str:
    """``study.md``: the protocol, one table per pipeline × shortcut, the rank comparison, the figures."""
    cfg = study["config"]
    seeds = ", ".join(map(str, cfg["seeds"]))
    lines = [f"# Study `{study['name']}`", "",
             "**Protocol.** Every method runs through the bundle configs (`python -m monai.bundle run`). Its "
             f"settings are chosen on a bias-annotated validation split, disjoint from the training, specialist and "
             f"test pools, by {study['selection']}; each method gets the same budget — {cfg['trials']} trial(s) "
             f"(the bundle defaults, then random draws from its declared search space) on tuning seed(s) "
             f"{', '.join(map(str, cfg['tuning_seeds']))}, which are not reported. The test sets are read only "
             f"after the settings are fixed, on the reported seeds {seeds} (a seed changes the split, the shortcut "
             "assignment and the initialisation). Every model is the last epoch's. The KD student is the paper's: "
             "trained on the biased set with probe-KL at the intermediate layers plus a final-layer term, from the "
             "same initialisation as ERM; the teacher and ERM fine-tuned on the specialist subset are rows like "
             "any baseline, and KD's compute column leaves out its teacher's (the teacher's own row). The oracle, "
             "trained on bias-free data, is a reference. KD − row: the paired, class-"
             "stratified bootstrap of the conflicting-test AUC difference over the shared test images, pooled over "
             "seeds (mean of per-seed differences), with its 95 % CI and two-sided p; W/T/L counts the seeds where "
             "KD is significantly better / not different / significantly worse (p < 0.05).", ""]
    for name, cell in study["cells"].items():
        lines += [f"## {name}", "", *format_cell(cell, tuning=True)]
        for ablation in (cell.get("ablations") or {}).values():
            lines += [f"### {name}: {ablation['title']}", "", *format_ablation(ablation)]
    if (study.get("layer_use") or {}).get("cells"):
        lines += ["## Where the shortcut is used, layer by layer", "",
                  "At each tap a label probe is fitted on half of `test_unbiased` (shortcut independent of the "
                  "label) and scored on `test_aligned` and `test_conflicting` (without that half); use = AUC aligned "
                  "− AUC conflicting (0: the layer's label read-out ignores the shortcut, however decodable it is). "
                  f"Uptake: the shallowest tap with use ≥ {study['layer_use']['threshold']} (relative depth in "
                  "brackets); `output` is the model's own prediction: its aligned − conflicting test AUC, no "
                  "probe.", "", *format_layer_use(study["layer_use"])]
    ranks = study["ranks"]
    lines += ["## Ranks across cells", ""]
    if ranks.get("friedman"):
        avg = sorted(ranks["average_ranks"].items(), key=lambda kv: kv[1])
        lines += [f"Average rank of the conflicting-test AUC over {len(ranks['blocks'])} blocks (pipeline × shortcut "
                  f"× seed; 1 = best): " + ", ".join(f"`{m}` {r:.2f}" for m, r in avg) + ". "
                  f"Friedman χ² = {ranks['friedman']['statistic']:.2f}, p = {ranks['friedman']['p_value']:.3g}; "
                  f"Nemenyi critical difference {ranks['critical_difference']:.2f} at α = {ranks['alpha']}.", ""]
    else:
        lines += [f"Not computed: {ranks.get('reason')}.", ""]
    for caption, path in study["figures"].items():
        lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    env = study["environment"]
    runs = study.get("runs") or {}
    wall = study.get("wall_seconds")
    lines += ["## Provenance", "",
              f"The cells ran shortcut-kd {', '.join(runs.get('shortcut_kd', [])) or '?'} (commit "
              f"{', '.join(runs.get('git_commit', [])) or '?'}), torch {', '.join(runs.get('torch', [])) or '?'}, "
              f"MONAI {', '.join(runs.get('monai', [])) or '?'}, device {', '.join(runs.get('device', [])) or '?'}, "
              f"{', '.join(runs.get('threads', [])) or '?'} thread(s) per worker; aggregated by commit "
              f"{env.get('git_commit') or 'not a git checkout'} on {env.get('platform')}"
              + (f"; wall time from the first job to the last {wall / 60:.1f} min" if wall else "") + ". Each cell's "
              "`results.json` and each stage's `stages/<method>.json` hold the resolved settings, split hash, "
              "upstream checkpoint hashes and timing.", ""]
    return "\n".join(lines)


def format_cell(cell: dict, tuning: bool) -> list[str]:
    """One pipeline × shortcut: the table (and the chosen settings when ``tuning``)."""
    lines: list[str] = []
    if not cell["rows"]:
        return ["No finished run yet.", ""]
    lines += ["| method | information used | compute: epochs × images (s) | conflicting AUC | unbiased AUC | "
              "unbiased ΔTPR | OOD AUC | aligned AUC | KD − method [95 % CI], p | W/T/L |",
              "|:---|:---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|"]
    for row, body in cell["rows"].items():
        s = body["summary"]
        comp = s["compute"]
        images = comp["images"]["mean"]
        seconds = comp["seconds"]["mean"]
        compute = (f"{comp['epochs']} × {int(images / comp['epochs']) if images and comp['epochs'] else '–'}"
                   f" ({seconds:.0f})" if seconds is not None else "–")
        test = cell["kd_vs"].get(row)
        if test:
            p = test["pooled"]
            wtl = test["win_tie_loss"]
            vs = f"{p['diff']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}], p={p['p_value']:.3g}"
            wtl_text = f"{wtl['win']}/{wtl['tie']}/{wtl['loss']}"
        else:
            vs, wtl_text = ("—" if row == "kd" else "–"), "—" if row == "kd" else "–"
        label = f"**`{row}`**" if row == "kd" else f"`{row}`"
        lines.append(f"| {label} (n={len(body['seeds'])}) | {body['information']} | {compute} | "
                     f"{_fmt(s['conflicting_auc'])} | {_fmt(s['unbiased_auc'])} | "
                     f"{_fmt(s['unbiased_delta_tpr'], signed=True)} | {_fmt(s['ood_auc'])} | "
                     f"{_fmt(s['aligned_auc'])} | {vs} | {wtl_text} |")
    lines.append("")
    if tuning and cell.get("tuning"):
        lines += ["Settings chosen on the validation split (validation score of the chosen trial):", ""]
        for method, params in cell["tuning"]["chosen"].items():
            score = cell["tuning"]["scores"].get(method)
            cost = cell.get("tuning_cost", {}).get(method, {})
            lines.append(f"- `{method}`: {params or 'the bundle defaults'}"
                         + (f" ({score:.3f})" if score is not None else "")
                         + (f"; {cost['trials']} trial(s), {cost['seconds'] / 60:.1f} min" if cost else ""))
        lines.append("")
    return lines


README_BEGIN = "<!-- study headline: generated from {source}; do not edit by hand -->"
README_END = "<!-- study headline: end -->"


def headline(study: dict, source: str) -> str:
    """The README's headline: every pipeline × shortcut table of the study, between the markers."""
    lines = [README_BEGIN.format(source=source), ""]
    seeds = ", ".join(map(str, study["config"]["seeds"]))
    for name, cell in study["cells"].items():
        done = sorted({k for row in cell["rows"].values() for k in row["seeds"]})
        status = "" if done == sorted(study["config"]["seeds"]) else f" — partial: seeds {done} of {seeds} finished"
        lines += [f"**{name}** (mean ± sd over seeds {seeds}; `{source}`){status}", "", *format_cell(cell, False)]
    ranks = study["ranks"]
    if ranks.get("friedman"):
        avg = sorted(ranks["average_ranks"].items(), key=lambda kv: kv[1])
        lines += ["Average rank (conflicting AUC, 1 = best) over the cells: "
                  + ", ".join(f"`{m}` {r:.2f}" for m, r in avg)
                  + f"; Friedman p = {ranks['friedman']['p_value']:.3g}, "
                  f"Nemenyi CD {ranks['critical_difference']:.2f}.", ""]
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(readme: Path, study_file: Path, source: str, check: bool = False) -> bool:
    """Write (or with ``check``, compare) the README's headline section from ``study_file``; True if it
    differs from what the study gives."""
    import re

    text = readme.read_text()
    begin = re.escape(README_BEGIN.split("{source}")[0])
    pattern = re.compile(begin + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        from shortcut_kd.errors import DataError

        raise DataError("no study headline section.", file=str(readme), column="<!-- study headline -->",
                        fix=f"add the two marker lines ({README_END!r} closes it) where the table belongs.")
    new = pattern.sub(lambda _: headline(read_json(study_file), source), text, count=1)
    if new != text and not check:
        write_text(readme, new)
    return new != text
