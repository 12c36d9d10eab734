"""report.md and its figures from a results.json (one experiment or a results set, see ``schema``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from shortcut_kd.evaluation.schema import (
    REFERENCE_METHODS, experiments_of, merge_results, order_methods, order_test_sets, validate_results,
)
from shortcut_kd.io import atomic_path, write_text

__all__ = ["write_report", "format_table", "plot_auc_bars", "validate_results", "merge_results",
           "experiment_title", "save_figure"]

MISSING = "–"


def experiment_title(exp: dict) -> str:
    """``isic2017 · resnet18 · patch (localized, bias on 95 % of positives / 5 % of negatives)``."""
    sc = exp["shortcut"]
    rates = ""
    if sc.get("p_bias_pos") is not None and sc.get("p_bias_neg") is not None:
        rates = f", bias on {sc['p_bias_pos']:.0%} of positives / {sc['p_bias_neg']:.0%} of negatives"
    return f"{exp['dataset']} · {exp['architecture']} · {sc['name']} ({sc['kind']}{rates})"


def _tests_of(exp: dict, test_sets: Sequence[str] | None) -> list[str]:
    present = [t for body in exp["methods"].values() for t in body["test"]]
    return [t for t in test_sets if t in present] if test_sets else order_test_sets(present)


def _best(values: dict[str, float | None], key, exclude: Sequence[str]) -> set[str]:
    """The method(s) with the best value (ties all count), ignoring references and missing values."""
    scored = {m: key(v) for m, v in values.items() if v is not None and m not in exclude}
    if not scored:
        return set()
    top = max(scored.values())
    return {m for m, v in scored.items() if np.isclose(v, top, rtol=0, atol=1e-12)}


def _format_experiment_table(exp: dict, test_sets: Sequence[str] | None, exclude: Sequence[str]) -> str:
    methods = order_methods(exp["methods"])
    tests = _tests_of(exp, test_sets)
    entry = (lambda m, t: exp["methods"][m]["test"].get(t))
    # ΔTPR is shown for a test set only where some method has it (it needs positives with and
    # without the shortcut, which only `unbiased` has by construction)
    dtpr_tests = {t for t in tests if any((entry(m, t) or {}).get("delta_tpr") is not None for m in methods)}
    header, align, columns = ["method"], [":---"], []
    for t in tests:
        n = next((entry(m, t)["n"] for m in methods if entry(m, t)), None)
        header.append(f"{t} AUC [95 % CI]" + (f" (n={n})" if n is not None else ""))
        align.append(":---:")
        columns.append((t, "auc"))
        if t in dtpr_tests:
            header.append(f"{t} ΔTPR")
            align.append(":---:")
            columns.append((t, "delta_tpr"))
    best = {}
    for t, metric in columns:
        values = {m: (entry(m, t) or {}).get(metric) for m in methods}
        # higher AUC is better; for ΔTPR the smallest magnitude (a model that ignores the shortcut)
        best[(t, metric)] = _best(values, (lambda v: v) if metric == "auc" else (lambda v: -abs(v)), exclude)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for m in methods:
        cells = [f"`{m}`"]
        for t, metric in columns:
            e = entry(m, t)
            if e is None:
                cells.append(MISSING)
                continue
            value = e.get(metric)
            if value is None:
                cells.append("n/a")
                continue
            if metric == "auc":
                text = f"{value:.3f}"
                if e.get("auc_ci"):
                    text += f" [{e['auc_ci'][0]:.3f}, {e['auc_ci'][1]:.3f}]"
            else:
                text = f"{value:+.3f}"
            cells.append(f"**{text}**" if m in best[(t, metric)] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(results: dict, test_sets: Sequence[str] | None = None,
                 exclude_from_best: Sequence[str] = REFERENCE_METHODS) -> str:
    """The comparison table in Markdown: methods x test sets, AUC [95 % CI] and ΔTPR.

    The best value of each column is in bold: the highest AUC, the ΔTPR closest to zero. Methods in
    ``exclude_from_best`` (the oracle, which needs a large bias-free set) are shown but not marked.

    Args:
        results: one experiment or a results set (one table per experiment, each under its title).
        test_sets: columns to show, in this order (default: those present, in the test-set order of
            shortcut_kd.data.splits.TEST_SETS).
        exclude_from_best: methods never marked best.
    """
    experiments = experiments_of(results)
    tables = [_format_experiment_table(exp, test_sets, exclude_from_best) for exp in experiments]
    if len(tables) == 1:
        return tables[0]
    return "\n\n".join(f"{experiment_title(exp)}\n\n{table}" for exp, table in zip(experiments, tables))


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_auc_bars(results: dict, path: str | os.PathLike, test_sets: Sequence[str] | None = None,
                  title: str | None = None) -> Path:
    """Grouped bar plot of AUC per method per test set, with the bootstrap CI as error bars.

    Args:
        results: one experiment or a results set (one panel per experiment).
        path: the PNG to write.
        test_sets: groups to show (default: those present, in the test-set order of shortcut_kd.data.splits.TEST_SETS).
        title: figure title (default: none for a set, the experiment title for one experiment).
    """
    from matplotlib.figure import Figure

    experiments = experiments_of(results)
    fig = Figure(figsize=(max(6.0, 1.6 * max(len(_tests_of(e, test_sets)) for e in experiments) + 3),
                          3.6 * len(experiments)))
    axes = fig.subplots(len(experiments), 1, squeeze=False)[:, 0]
    for ax, exp in zip(axes, experiments):
        methods = order_methods(exp["methods"])
        tests = _tests_of(exp, test_sets)
        width = 0.8 / max(1, len(methods))
        colours = _colours(len(methods))
        for i, m in enumerate(methods):
            auc = np.full(len(tests), np.nan)
            err = np.full((2, len(tests)), np.nan)  # NaN: nothing drawn for a missing entry
            for j, t in enumerate(tests):
                e = exp["methods"][m]["test"].get(t)
                if e and e.get("auc") is not None:
                    auc[j] = e["auc"]
                    err[:, j] = 0.0
                    if e.get("auc_ci"):
                        err[:, j] = [max(0.0, e["auc"] - e["auc_ci"][0]), max(0.0, e["auc_ci"][1] - e["auc"])]
            x = np.arange(len(tests)) - 0.4 + width * (i + 0.5)
            ax.bar(x, auc, width, yerr=err, capsize=2, label=m, color=colours[i],
                   error_kw={"elinewidth": 0.8})
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(tests)), tests)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("AUC")
        ax.set_title(title if title and len(experiments) == 1 else experiment_title(exp), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _relative(path: str | os.PathLike, start: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).as_posix()


def write_report(results: dict, out_dir: str | os.PathLike, figures: dict[str, str | os.PathLike] | None = None,
                 settings: dict | None = None, test_sets: Sequence[str] | None = None,
                 results_dir: str | os.PathLike | None = None) -> Path:
    """Write ``out_dir/report.md`` and the AUC bar plot(s) under ``out_dir/figures/``.

    Per experiment: its title, the comparison table (:func:`format_table`), the bar plot, the
    Grad-CAM attention on the shortcut when recorded, and the figures it lists under ``figures``.
    Then the extra ``figures`` given here, and the settings (with the seed) that produced the results.

    Args:
        results: one experiment or a results set (validated first).
        out_dir: where report.md and figures/ go.
        figures: caption -> PNG path, linked relative to ``out_dir`` (e.g. the layer-probe plot and
            Grad-CAM panels).
        settings: the experiment settings; default: each experiment's own ``settings`` entry.
        test_sets: the columns of the tables (default: those present).
        results_dir: folder the paths in an experiment's ``figures`` entry are relative to
            (default: ``out_dir``).

    Returns:
        the path of report.md.
    """
    validate_results(results)
    out_dir = Path(out_dir)
    base = Path(results_dir) if results_dir is not None else out_dir
    experiments = experiments_of(results)
    lines = ["# shortcut-kd report", ""]
    lines.append("AUC with its 95 % bootstrap CI (stratified by label) and ΔTPR = TPR(positives with the "
                 "shortcut) − TPR(positives without), signed, shown where a test set has both groups. **Bold**: "
                 f"best of the column (highest AUC, ΔTPR closest to 0); {', '.join(REFERENCE_METHODS)} is a "
                 "reference trained on a large bias-free set and is not marked.")
    lines.append("")
    for k, exp in enumerate(experiments):
        lines += [f"## {experiment_title(exp)}", "", format_table(exp, test_sets), ""]
        stem = f"auc_{k}_{exp['shortcut']['name']}" if len(experiments) > 1 else "auc"
        bars = plot_auc_bars(exp, out_dir / "figures" / f"{_safe(stem)}.png", test_sets)
        lines += [f"![AUC per method and test set]({_relative(bars, out_dir)})", ""]
        attention = exp.get("attention_on_shortcut")
        if attention:
            lines += ["Grad-CAM mass inside the shortcut region (1 = the model looks only at the shortcut; "
                      "the region's share of the image is the level of a map that ignores it):", "",
                      "| method | attention on shortcut |", "|:---|:---:|"]
            for m in order_methods(attention):
                value = attention[m]
                lines.append(f"| `{m}` | {MISSING if value is None else f'{value:.3f}'} |")
            lines.append("")
        for caption, rel in (exp.get("figures") or {}).items():
            lines += [f"**{caption}**", "", f"![{caption}]({_relative(base / rel, out_dir)})", ""]
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures.items():
            lines += [f"**{caption}**", "", f"![{caption}]({_relative(path, out_dir)})", ""]
    lines += _settings_section(experiments, settings)
    return write_text(out_dir / "report.md", "\n".join(lines).rstrip() + "\n")


def _settings_section(experiments: list[dict], settings: dict | None) -> list[str]:
    blocks: list[tuple[str | None, dict, Any]] = []
    if settings is not None:
        blocks.append((None, settings, settings.get("seed")))
    else:
        for exp in experiments:
            if "settings" in exp or "seed" in exp:
                s = exp.get("settings") or {}
                blocks.append((experiment_title(exp) if len(experiments) > 1 else None, s,
                               exp.get("seed", s.get("seed"))))
    if not blocks:
        return ["## Settings", "", "No settings were recorded with these results."]
    lines = ["## Settings", ""]
    for title, s, seed in blocks:
        if title:
            lines += [f"### {title}", ""]
        lines.append(f"Seed: `{seed}`" if seed is not None else "Seed: not recorded.")
        if s:
            lines += ["", "```yaml", yaml.safe_dump(_plain(s), sort_keys=False).rstrip(), "```"]
        lines.append("")
    return lines


def _plain(value: Any) -> Any:
    """Settings as YAML-safe builtins (tuples, paths and numpy scalars become lists / str / numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
