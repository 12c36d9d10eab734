"""A study's ablations: the points of one experiment axis (teacher-set size, teacher source, distilled layers,
teacher network), each a variant of the study (or the main cell itself), reported as a table and a figure.

At every point KD is compared with the teacher it was distilled from (the paired bootstrap of the
conflicting-test AUC over the shared test images, pooled over seeds), and every method's conflicting and OOD
AUC are given as mean ± sd over the seeds. A variant that runs only some methods and changes no
experiment-wide setting shares the others with the main cell (e.g. a KD with other layers keeps the cell's
teacher, reused by its fingerprint); one that changes the experiment (``experiment:``) shows only its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shortcut_kd.study.config import StudyConfig

__all__ = ["ablation_points", "format_ablation", "plot_ablation", "ABLATION_METRICS"]

ABLATION_METRICS = (("conflicting", "auc"), ("ood", "auc"))
"""What an ablation's table and figure show: AUC on the bias-conflicting and on the shifted (OOD) test."""


def _points(cfg: StudyConfig, name: str) -> list[tuple[str | None, Any]]:
    """``(variant or None for the main cell, value)`` of ablation ``name``: sorted by value on a numeric axis,
    else the main cell first, then the variants as the study lists them."""
    spec = cfg.ablations.get(name) or {}
    points: list[tuple[str | None, Any]] = [(None, spec["main"])] if spec.get("main") is not None else []
    points += [(v, s.get("value", v)) for v, s in cfg.variants.items() if s.get("ablation") == name]
    if spec.get("numeric"):
        points.sort(key=lambda p: float(p[1]))
    return points


def ablation_points(cfg: StudyConfig, name: str, rows: dict[str, dict], variants: dict[str, dict],
                    paired: Any, n_bootstrap: int) -> dict:
    """One ablation of one pipeline × shortcut: per point, each method's runs summarised and KD vs its teacher.

    Args:
        cfg: the study.
        name: the ablation (a key of ``cfg.ablations``).
        rows: the main cell's method -> seed -> run.
        variants: variant -> method -> seed -> run.
        paired: ``(kd_runs, other_runs, test, n_bootstrap) -> paired test`` (the aggregate's).
        n_bootstrap: bootstrap resamples.
    """
    from shortcut_kd.study.stats import mean_sd

    spec = cfg.ablations.get(name) or {}
    out: dict[str, Any] = {"title": spec.get("title", name), "axis": spec.get("axis", name),
                           "numeric": bool(spec.get("numeric")), "points": []}
    for variant, value in _points(cfg, name):
        if variant is None:
            runs = rows
        else:
            own = variants.get(variant, {})
            shares = not cfg.variants[variant].get("experiment")
            runs = {**({m: r for m, r in rows.items() if m not in own} if shares else {}), **own}
        methods = {m: r for m, r in runs.items() if r}
        point: dict[str, Any] = {"variant": variant, "value": value, "methods": {}}
        for method, by_seed in methods.items():
            point["methods"][method] = {
                f"{test}_{metric}": mean_sd([(r["test"].get(test) or {}).get(metric) for r in by_seed.values()])
                for test, metric in ABLATION_METRICS}
            point["methods"][method]["seeds"] = sorted(by_seed)
        if "kd" in methods and "teacher" in methods:
            point["kd_vs_teacher"] = paired(methods["kd"], methods["teacher"], ABLATION_METRICS[0][0], n_bootstrap)
        out["points"].append(point)
    return out


def _cell(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat.get("sd") is not None else "")


def _methods(ablation: dict) -> list[str]:
    from shortcut_kd.evaluation.schema import METHOD_ORDER

    seen = {m for p in ablation["points"] for m in p["methods"]}
    return [m for m in METHOD_ORDER if m in seen]


def format_ablation(ablation: dict) -> list[str]:
    """Markdown: one row per point, each method's conflicting / OOD AUC, KD − teacher with its CI and p."""
    methods = _methods(ablation)
    if not methods:
        return ["No finished run yet.", ""]
    head = " | ".join(f"`{m}` conflicting / OOD AUC" for m in methods)
    lines = [f"| {ablation['axis']} | {head} | KD − teacher (conflicting) [95 % CI], p | W/T/L |",
             "|:---|" + ":---:|" * len(methods) + ":---:|:---:|"]
    for point in ablation["points"]:
        label = f"{point['value']}" + (" (main cell)" if point["variant"] is None else f" (`{point['variant']}`)")
        cells = [f"{_cell(point['methods'].get(m, {}).get('conflicting_auc'))} / "
                 f"{_cell(point['methods'].get(m, {}).get('ood_auc'))}" for m in methods]
        test = point.get("kd_vs_teacher")
        if test:
            p, wtl = test["pooled"], test["win_tie_loss"]
            vs = f"{p['diff']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}], p={p['p_value']:.3g}"
            wtl_text = f"{wtl['win']}/{wtl['tie']}/{wtl['loss']}"
        else:
            vs, wtl_text = "–", "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {vs} | {wtl_text} |")
    return [*lines, ""]


def plot_ablation(by_cell: dict[str, dict], path: Path) -> None:
    """One column per pipeline × shortcut, one row per metric; a line per method (bars for a categorical axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from shortcut_kd.evaluation.report import save_figure

    names = [n for n, a in by_cell.items() if a["points"]]
    if not names:
        return
    fig, axes = plt.subplots(len(ABLATION_METRICS), len(names), figsize=(4.6 * len(names), 3.2 * len(ABLATION_METRICS)),
                             squeeze=False)
    named = {"kd": "tab:red", "teacher": "tab:blue", "dfr": "tab:green", "finetune": "tab:purple",
             "erm": "tab:grey", "oracle": "k"}
    spare = iter(["tab:cyan", "tab:olive", "tab:brown", "tab:pink", "tab:orange", "gold", "navy", "teal"])
    every = dict.fromkeys(m for a in by_cell.values() for m in _methods(a))
    colours = {m: named.get(m) or next(spare, None) for m in every}
    for col, name in enumerate(names):
        ablation = by_cell[name]
        points, methods = ablation["points"], _methods(ablation)
        x = np.arange(len(points))
        for row, (test, metric) in enumerate(ABLATION_METRICS):
            ax = axes[row][col]
            width = 0.8 / max(len(methods), 1)
            for k, method in enumerate(methods):
                stats = [p["methods"].get(method, {}).get(f"{test}_{metric}") or {} for p in points]
                mean = np.array([s.get("mean") if s.get("mean") is not None else np.nan for s in stats], dtype=float)
                sd = np.array([s.get("sd") or 0.0 for s in stats], dtype=float)
                colour = colours.get(method)
                if ablation["numeric"]:
                    ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=method, color=colour)
                else:
                    ax.bar(x - 0.4 + width * (k + 0.5), mean, width, yerr=sd, capsize=2, label=method, color=colour)
            ax.set_xticks(x, [str(p["value"]) for p in points], rotation=0 if ablation["numeric"] else 30,
                          ha="center" if ablation["numeric"] else "right", fontsize=8)
            ax.set_ylim(0.0, 1.0)  # from 0: a method that takes the shortcut scores far below chance here
            ax.axhline(0.5, color="k", lw=0.5, ls=":")
            ax.set_ylabel(f"{test} {metric.upper()}")
            ax.set_title(f"{name}" if row == 0 else "")
            if row == len(ABLATION_METRICS) - 1:
                ax.set_xlabel(ablation["axis"])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(next(iter(by_cell.values()))["title"])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
