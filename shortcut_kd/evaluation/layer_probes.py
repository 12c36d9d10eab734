"""Per-layer shortcut analysis: how linearly decodable the bias (and the label) is at each tap.

For each tap, the feature maps are global-average-pooled to one vector per image and a standardised
logistic regression is fit on one half of held-out data and scored on the other. A tap where the
bias is decodable is one where the model represents the shortcut; comparing ERM with KD shows
whether distillation removed it, and :func:`choose_taps` turns the analysis into ``layers: auto``.

Rows (one per model, tap and target) are plain dicts, JSON- and CSV-ready::

    {"model": "erm", "tap": "layer1", "depth": 0, "target": "bias", "auc": 0.97,
     "balanced_accuracy": 0.91, "n_train": 200, "n_test": 200, "note": ""}
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from monai.networks import eval_mode
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from shortcut_kd.io import write_text
from shortcut_kd.nets import FeatureCapture
from shortcut_kd.seeding import sample_uniform

__all__ = ["pool_features", "extract_features", "probe_layers", "choose_taps", "split_by_id", "plot_layer_probes",
           "format_probe_table", "write_probe_table", "AUTO_THRESHOLD"]

AUTO_THRESHOLD = 0.75
"""Bias-probe AUC from which a tap counts as encoding the shortcut (0.5 is chance; with a few hundred
held-out images the AUC's sampling error is about +-0.05, so 0.75 is well clear of chance)."""

ROW_KEYS = ("model", "tap", "depth", "target", "auc", "balanced_accuracy", "n_train", "n_test", "note")


def pool_features(features: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a ``(N, C, *spatial)`` feature map (2D or 3D) to ``(N, C)``.

    ``(N, C)`` inputs (e.g. a linear layer's output) pass through; ``(N,)`` becomes ``(N, 1)``.
    """
    if features.ndim > 2:
        return features.flatten(2).mean(dim=2)
    return features.reshape(len(features), -1)


def extract_features(model: nn.Module, taps: Sequence[str], loader: Iterable, keys: Sequence[str] = ("bias", "label"),
                     device: str | torch.device = "cpu", max_samples: int | None = None,
                     image_key: str = "image") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pooled tap outputs and the per-sample ``keys`` for (at most ``max_samples`` of) ``loader``.

    The model runs in eval mode without gradients; its training mode is restored afterwards.

    Returns:
        ``({tap: (N, C) float array}, {key: (N,) array})``; a key missing from the batches is left out.
    """
    device = torch.device(device)
    feats: dict[str, list[np.ndarray]] = {t: [] for t in taps}
    values: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    seen = 0
    with eval_mode(model), FeatureCapture(model, taps, detach=True) as capture:  # eval_mode: also no_grad
        for batch in loader:
            if max_samples is not None and seen >= max_samples:
                break
            images = batch[image_key]
            images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)
            take = len(images) if max_samples is None else min(len(images), max_samples - seen)
            model(images[:take].to(device))
            for tap in taps:
                feats[tap].append(pool_features(capture.features[tap]).float().cpu().numpy()[:take])
            for key in keys:
                if key in batch:
                    v = batch[key]
                    v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                    values[key].append(v.reshape(len(images), -1)[:take, 0])
            seen += take
    pooled = {t: np.concatenate(v) if v else np.zeros((0, 0)) for t, v in feats.items()}
    return pooled, {k: np.concatenate(v) for k, v in values.items() if v and len(v) == len(feats[taps[0]])}


def _fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
               C: float, seed: int) -> dict[str, Any]:
    y_train, y_test = y_train.astype(int), y_test.astype(int)
    if len(np.unique(y_train)) < 2:
        return {"auc": None, "balanced_accuracy": None, "note": "one class only in the probe's training half"}
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    clf.fit(x_train, y_train)
    if len(np.unique(y_test)) < 2:
        return {"auc": None, "balanced_accuracy": float(balanced_accuracy_score(y_test, clf.predict(x_test))),
                "note": "one class only in the probe's test half"}
    proba = clf.predict_proba(x_test)[:, list(clf.classes_).index(1)]
    return {"auc": float(roc_auc_score(y_test, proba)),
            "balanced_accuracy": float(balanced_accuracy_score(y_test, clf.predict(x_test))), "note": ""}


def probe_layers(model: nn.Module, taps: Sequence[str], train_loader: Iterable, test_loader: Iterable,
                 targets: Sequence[str] = ("bias", "label"), device: str | torch.device = "cpu",
                 max_samples: int | None = 2000, model_name: str = "model", C: float = 1.0,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Linear-probe decodability of each target at each tap.

    Args:
        model: the trained network (left unchanged).
        taps: sub-module names, shallow to deep (``shortcut_kd.nets.get_taps(model)``).
        train_loader: batches the probes are fit on (held-out data, e.g. half of ``test_unbiased``,
            where the bias is independent of the label, so decoding one is not decoding the other).
        test_loader: batches the probes are scored on (the other half).
        targets: batch keys to decode (binary 0/1).
        device: where to run the model.
        max_samples: at most this many images from each loader (None: all).
        model_name: written into each row's ``model`` field (to compare e.g. ERM and KD in one plot).
        C: inverse L2 strength of the logistic regression (on standardised features).
        seed: seed of the solver.

    Returns:
        one row per tap and target, taps in the given order (see the module docstring).
    """
    taps = list(taps)
    if not taps:
        raise ValueError("no taps to probe. Fix: pass layer names, e.g. shortcut_kd.nets.get_taps(model).")
    x_train, y_train = extract_features(model, taps, train_loader, targets, device, max_samples)
    x_test, y_test = extract_features(model, taps, test_loader, targets, device, max_samples)
    rows = []
    for target in targets:
        if target not in y_train or target not in y_test:
            raise ValueError(f"the batches carry no '{target}' field. Fix: probe only fields present in the "
                             f"datalist (e.g. 'bias', 'label').")
        for depth, tap in enumerate(taps):
            result = _fit_probe(x_train[tap], y_train[target], x_test[tap], y_test[target], C, seed)
            rows.append({"model": model_name, "tap": tap, "depth": depth, "target": target, **result,
                         "n_train": int(len(y_train[target])), "n_test": int(len(y_test[target]))})
    return [{k: row.get(k) for k in ROW_KEYS} for row in rows]


def choose_taps(rows: Sequence[dict], threshold: float = AUTO_THRESHOLD, target: str = "bias",
                metric: str = "auc", model: str | None = None) -> list[str]:
    """``layers: auto``: the taps to distil, from a per-layer probe of the (ERM) model.

    Rule: find the shallowest tap where the ``target`` probe's ``metric`` reaches ``threshold``, and
    distil that tap and every deeper one: once a layer represents the shortcut, every later layer
    can carry it on, so the teacher must guide them all. If no tap reaches the threshold the probe
    gives no evidence where the shortcut lives, and all taps are returned (the safe choice).

    Args:
        rows: output of :func:`probe_layers` (or its JSON).
        threshold: decodability that counts as "encoded" (default :data:`AUTO_THRESHOLD`).
        target: the row target to read (``"bias"``).
        metric: ``"auc"`` or ``"balanced_accuracy"``.
        model: which model's rows to use when ``rows`` hold several (required then).

    Returns:
        tap names, shallow to deep.
    """
    models = list(dict.fromkeys(r.get("model", "model") for r in rows))
    if model is None:
        if len(models) > 1:
            raise ValueError(f"rows hold several models {models}. Fix: pass model=... (e.g. the ERM model's name).")
        model = models[0] if models else None
    selected = sorted((r for r in rows if r.get("model", "model") == model and r["target"] == target),
                      key=lambda r: r.get("depth", 0))
    if not selected:
        raise ValueError(f"no '{target}' rows for model {model!r}. Fix: probe the target '{target}' first.")
    taps = [r["tap"] for r in selected]
    for i, row in enumerate(selected):
        value = row.get(metric)
        if value is not None and value >= threshold:
            return taps[i:]
    return taps


def split_by_id(items: Sequence[dict], fraction: float = 0.5, seed: int = 0, id_key: str = "id",
                salt: str = "layer-probe") -> tuple[list[dict], list[dict]]:
    """Split a datalist into a probe-training and a probe-test part, each sample by its id.

    A sample goes to the first part when ``sample_uniform(seed, id, salt) < fraction``, so the split
    is the same on every run and machine and does not depend on the datalist's order.
    """
    first: list[dict] = []
    second: list[dict] = []
    for i, item in enumerate(items):
        sid = item.get(id_key)
        if sid is None:
            raise ValueError(f"datalist item {i} has no '{id_key}'. Fix: build the datalist with the split builder.")
        (first if sample_uniform(seed, str(sid), salt) < fraction else second).append(item)
    return first, second


def plot_layer_probes(rows: Sequence[dict], path: str | os.PathLike, title: str | None = None,
                      metric: str = "auc") -> Path:
    """Decodability per layer: one line per model and target (bias solid, label dashed), chance at 0.5.

    Args:
        rows: rows of one or several models (e.g. ``erm`` and ``kd`` probed with the same taps).
        path: the PNG to write.
        title: figure title.
        metric: ``"auc"`` or ``"balanced_accuracy"``.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from shortcut_kd.evaluation.report import save_figure

    models = list(dict.fromkeys(r.get("model", "model") for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    styles = ["-", "--", ":", "-."]
    cmap = colormaps["tab10"]
    taps_by_model = {m: [r["tap"] for r in sorted((r for r in rows if r.get("model", "model") == m
                                                   and r["target"] == targets[0]), key=lambda r: r["depth"])]
                     for m in models}
    depth = max(len(t) for t in taps_by_model.values())
    fig = Figure(figsize=(max(4.5, 0.9 * depth + 2.5), 3.4))
    ax = fig.subplots()
    for i, m in enumerate(models):
        for j, target in enumerate(targets):
            sel = sorted((r for r in rows if r.get("model", "model") == m and r["target"] == target),
                         key=lambda r: r["depth"])
            x = [r["depth"] for r in sel]
            y = [np.nan if r.get(metric) is None else r[metric] for r in sel]
            label = target if len(models) == 1 else f"{m}: {target}"
            ax.plot(x, y, styles[j % len(styles)], marker="o", color=cmap(i % 10), label=label)
    names = list(taps_by_model.values())
    ticks = [" / ".join(dict.fromkeys(t[k] for t in names if k < len(t))) for k in range(depth)]
    ax.set_xticks(range(depth), ticks, rotation=30 if max(map(len, ticks)) > 8 else 0, ha="right"
                  if max(map(len, ticks)) > 8 else "center", fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    lowest = min((r[metric] for r in rows if r.get(metric) is not None), default=0.5)
    ax.set_ylim(min(0.4, lowest - 0.05), 1.02)
    ax.set_ylabel({"auc": "probe AUC", "balanced_accuracy": "probe balanced accuracy"}.get(metric, metric))
    ax.set_xlabel("tap (shallow → deep)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def format_probe_table(rows: Sequence[dict], metric: str = "auc") -> str:
    """Markdown table: one row per tap, one column per model and target."""
    columns = list(dict.fromkeys((r.get("model", "model"), r["target"]) for r in rows))
    single = len({m for m, _ in columns}) == 1
    taps = list(dict.fromkeys(r["tap"] for r in sorted(rows, key=lambda r: r["depth"])))
    value = {(r.get("model", "model"), r["target"], r["tap"]): r.get(metric) for r in rows}
    header = ["tap"] + [f"{t} {metric}" if single else f"{m} {t} {metric}" for m, t in columns]
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * len(columns)]
    for tap in taps:
        cells = [f"`{tap}`"]
        for m, t in columns:
            v = value.get((m, t, tap))
            cells.append("–" if v is None else f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_probe_table(rows: Sequence[dict], path: str | os.PathLike, metric: str = "auc") -> Path:
    """Write the rows as CSV (``.csv``: every field, one row per model, tap and target) or else as the
    Markdown table of :func:`format_probe_table`, atomically."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(ROW_KEYS), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in ROW_KEYS})
        return write_text(path, buffer.getvalue())
    return write_text(path, format_probe_table(rows, metric) + "\n")
