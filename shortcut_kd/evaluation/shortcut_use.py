"""Per-layer shortcut *use*: does a layer's label read-out change when the shortcut disagrees with the label?

Decodability (:mod:`~shortcut_kd.evaluation.layer_probes`) says where the shortcut is *encoded*; an oracle
that never relied on it can still encode it (a bright patch is easy to see). Use is measured differently:

1. at each tap, a label probe (standardised logistic regression on the pooled features) is fitted on
   bias-free images, where the shortcut is independent of the label, so a probe gains nothing from a
   shortcut feature kept apart from the label features and gives it no weight;
2. the probe is scored on the bias-aligned and on the bias-conflicting test images;
3. ``use = AUC(aligned) - AUC(conflicting)``.

A layer that keeps the shortcut in its own direction scores the same on both sets (use ≈ 0, however well the
shortcut can be decoded). A layer that has merged it into the features that carry the label — what a model
that relies on the shortcut does before its classifier — is better when the shortcut agrees with the label
and worse when it does not (use > 0). The last row, ``output``, is not a probe: it scores the model's own
prediction (its positive-class probability), so its use is the model's own aligned-vs-conflicting AUC gap. A
probe refitted on the logits could weigh them so as to cancel a shortcut the model's decision relies on.

:func:`uptake_depth` gives the shallowest tap whose use reaches :data:`USE_THRESHOLD`: where the shortcut is
taken up. Comparing it between a localized and a diffuse shortcut tests whether they are taken up at
different depths.

Rows, JSON- and CSV-ready::

    {"model": "erm", "tap": "layer3", "depth": 2, "auc_aligned": 0.97, "auc_conflicting": 0.62, "use": 0.35,
     "n_fit": 200, "n_aligned": 150, "n_conflicting": 150, "note": ""}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from shortcut_kd.evaluation.layer_probes import extract_features

__all__ = ["shortcut_use", "uptake_depth", "format_use_table", "plot_shortcut_use", "USE_THRESHOLD", "OUTPUT_TAP"]

USE_THRESHOLD = 0.1
"""Use (aligned minus conflicting probe AUC) from which a tap counts as using the shortcut. With about a
hundred images per test set the AUC difference has a sampling error near ±0.05; 0.1 is twice that."""
OUTPUT_TAP = "output"
"""The row name of the model's own prediction (scored as it is, not probed)."""
USE_KEYS = ("model", "tap", "depth", "auc_aligned", "auc_conflicting", "use", "n_fit", "n_aligned",
            "n_conflicting", "note")


def _auc(clf: Any, x: np.ndarray, y: np.ndarray) -> float | None:
    y = y.astype(int)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, clf.predict_proba(x)[:, list(clf.classes_).index(1)]))


def _own_score(logits: np.ndarray) -> np.ndarray:
    """The model's own positive-class score from its logits (one logit: that logit; else class 1's softmax)."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.exp(shifted[:, 1]) / np.exp(shifted).sum(axis=1)


def _score_auc(score: np.ndarray, y: np.ndarray) -> float | None:
    y = y.astype(int)
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def shortcut_use(model: nn.Module, taps: Sequence[str], fit_loader: Iterable, aligned_loader: Iterable,
                 conflicting_loader: Iterable, device: str = "cpu", max_samples: int | None = 2000,
                 model_name: str = "model", C: float = 1.0, seed: int = 0, with_output: bool = True) -> list[dict]:
    """Per-tap use of the shortcut (see the module docstring).

    Args:
        model: the trained network (left unchanged).
        taps: sub-module names, shallow to deep.
        fit_loader: bias-free batches (``label`` and ``bias`` independent) the label probes are fitted on.
        aligned_loader: test batches where the shortcut agrees with the label.
        conflicting_loader: test batches where it disagrees; disjoint from ``fit_loader``'s images.
        device: where to run the model.
        max_samples: at most this many images from each loader (None: all).
        model_name: written into each row's ``model`` field.
        C: inverse L2 strength of the logistic regression (standardised features).
        seed: seed of the solver.
        with_output: add the ``output`` row (the model's own prediction, no probe).

    Returns:
        one row per tap (then ``output``), shallow to deep.
    """
    if not taps:
        raise ValueError("no taps to probe. Fix: pass layer names, e.g. shortcut_kd.nets.get_taps(model).")
    names = list(taps) + ([""] if with_output else [])  # "" is the model itself: its output, the logits
    fit_x, fit_y = extract_features(model, names, fit_loader, ("label",), device, max_samples)
    al_x, al_y = extract_features(model, names, aligned_loader, ("label",), device, max_samples)
    co_x, co_y = extract_features(model, names, conflicting_loader, ("label",), device, max_samples)
    if "label" not in fit_y or "label" not in al_y or "label" not in co_y:
        raise ValueError("the batches carry no 'label' field. Fix: probe datalists with labels.")
    rows = []
    for depth, name in enumerate(names):
        row: dict[str, Any] = {"model": model_name, "tap": name or OUTPUT_TAP, "depth": depth,
                               "n_fit": int(len(fit_y["label"])), "n_aligned": int(len(al_y["label"])),
                               "n_conflicting": int(len(co_y["label"])), "note": ""}
        y = fit_y["label"].astype(int)
        if not name:  # the model's own decision: nothing is fitted
            aligned = _score_auc(_own_score(al_x[name]), al_y["label"])
            conflicting = _score_auc(_own_score(co_x[name]), co_y["label"])
            use = None if aligned is None or conflicting is None else aligned - conflicting
            rows.append({**row, "n_fit": 0, "auc_aligned": aligned, "auc_conflicting": conflicting, "use": use,
                         "note": "" if use is not None else "one class only in a test set"})
            continue
        if len(np.unique(y)) < 2:
            rows.append({**row, "auc_aligned": None, "auc_conflicting": None, "use": None,
                         "note": "one class only in the probe's fitting data"})
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
        clf.fit(fit_x[name], y)
        aligned, conflicting = _auc(clf, al_x[name], al_y["label"]), _auc(clf, co_x[name], co_y["label"])
        use = None if aligned is None or conflicting is None else aligned - conflicting
        note = "" if use is not None else "one class only in a test set"
        rows.append({**row, "auc_aligned": aligned, "auc_conflicting": conflicting, "use": use, "note": note})
    return [{k: r.get(k) for k in USE_KEYS} for r in rows]


def uptake_depth(rows: Sequence[dict], model: str | None = None, threshold: float = USE_THRESHOLD,
                 include_output: bool = False) -> dict | None:
    """The shallowest row of ``model`` whose use reaches ``threshold`` (its ``tap`` and ``depth``), or None
    when no tap uses the shortcut. The ``output`` row counts only with ``include_output``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    if model is None:
        if len(models) > 1:
            raise ValueError(f"rows hold several models {models}. Fix: pass model=...")
        model = models[0] if models else None
    for row in sorted((r for r in rows if r["model"] == model), key=lambda r: r["depth"]):
        if row["tap"] == OUTPUT_TAP and not include_output:
            continue
        if row.get("use") is not None and row["use"] >= threshold:
            return {"tap": row["tap"], "depth": row["depth"],
                    "relative_depth": row["depth"] / max(1, sum(1 for r in rows if r["model"] == model) - 1)}
    return None


def format_use_table(rows: Sequence[dict]) -> str:
    """Markdown: one row per tap, per model the aligned / conflicting probe AUC and the use."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    taps = list(dict.fromkeys(r["tap"] for r in sorted(rows, key=lambda r: r["depth"])))
    by = {(r["model"], r["tap"]): r for r in rows}

    def cell(row: dict | None) -> str:
        if not row or row.get("use") is None:
            return "–"
        return f"{row['auc_aligned']:.3f} / {row['auc_conflicting']:.3f} / **{row['use']:+.3f}**"

    lines = ["| tap | " + " | ".join(f"`{m}` aligned / conflicting / use" for m in models) + " |",
             "|:---|" + ":---:|" * len(models)]
    lines += [f"| `{t}` | " + " | ".join(cell(by.get((m, t))) for m in models) + " |" for t in taps]
    return "\n".join(lines)


def plot_shortcut_use(rows: Sequence[dict], path: str | os.PathLike, title: str | None = None,
                      threshold: float = USE_THRESHOLD) -> Path:
    """Use per layer, one line per model; zero (no use) and the uptake threshold drawn."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from shortcut_kd.evaluation.report import save_figure

    models = list(dict.fromkeys(r["model"] for r in rows))
    taps = list(dict.fromkeys(r["tap"] for r in sorted(rows, key=lambda r: r["depth"])))
    fig = Figure(figsize=(max(4.5, 0.9 * len(taps) + 2.5), 3.4))
    ax = fig.subplots()
    cmap = colormaps["tab10"]
    for i, m in enumerate(models):
        sel = sorted((r for r in rows if r["model"] == m), key=lambda r: r["depth"])
        ax.plot([r["depth"] for r in sel], [np.nan if r["use"] is None else r["use"] for r in sel], "-o",
                color=cmap(i % 10), label=m)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(taps)), taps, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("use: label-probe AUC aligned − conflicting")
    ax.set_xlabel("tap (shallow → deep), then the logits")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
