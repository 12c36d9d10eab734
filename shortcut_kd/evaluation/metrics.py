"""Per-test-set metrics: one results.json test entry from labels, scores and the bias flag.

Conventions (also in docs/architecture.md):

- ``scores`` are positive-class probabilities, ``softmax(logits)[:, 1]``; a sample is predicted
  positive when ``score >= threshold``.
- ``tpr_bias`` / ``tpr_nobias``: true positive rate among the positives that carry the shortcut
  (``bias == 1``) / that do not (``bias == 0``).
- ``delta_tpr = tpr_bias - tpr_nobias``, **signed**: positive when the model finds the finding more
  easily where the shortcut is present (the usual shortcut failure), 0 for a model that ignores it.
  It is ``None`` when one of the two groups has no positives, which is the case by construction on the
  ``aligned``, ``conflicting``, ``clean`` and ``ood`` test sets; it is defined on ``unbiased``.
- ``worst_group_accuracy``: the lowest accuracy over the (label, bias) groups present (over the
  classes alone when there is no bias flag).
- ``auc_ci``: percentile bootstrap, resampling positives and negatives separately (stratified), so
  every resample holds both classes and the CI is reproducible from ``seed``.

An undefined value is ``None`` (JSON ``null``, never NaN) and a ``note`` entry says why.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from monai.networks import eval_mode
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score
from torch import nn

__all__ = ["TEST_ENTRY_KEYS", "predict", "compute_metrics", "bootstrap_auc_ci", "evaluate"]

TEST_ENTRY_KEYS = ("auc", "auc_ci", "accuracy", "balanced_accuracy", "tpr_bias", "tpr_nobias", "delta_tpr",
                   "worst_group_accuracy", "n")
"""The keys of one results.json test entry (schema ``shortcut-kd/results/v1``)."""


def predict(model: nn.Module, loader: Any, device: str | torch.device = "cpu", amp: bool = False,
            image_key: str = "image") -> dict[str, np.ndarray | None]:
    """Run ``model`` over ``loader`` and collect what the metrics need.

    The model is put in eval mode for the pass and restored to its previous mode afterwards.

    Args:
        model: a network with two output logits (negative, positive).
        loader: iterable of dict batches with ``image_key``, ``"label"`` and optionally ``"bias"``
            and ``"id"`` (a MONAI ``DataLoader`` over a datalist).
        device: where to run the model.
        amp: autocast to half precision (CUDA only; ignored on CPU).
        image_key: the batch key of the input images.

    Returns:
        ``{"labels": int array, "scores": float array (softmax positive-class probability),
        "bias": int array or None when the batches carry no "bias", "ids": str array}``.
    """
    device = torch.device(device)
    labels, scores, biases, ids = [], [], [], []
    has_bias, seen = True, 0
    # MONAI's eval_mode also runs the block under torch.no_grad and restores the training mode after it
    with eval_mode(model), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        for batch in loader:
            images = batch[image_key]
            images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)
            logits = model(images.to(device))
            if logits.ndim != 2 or logits.shape[1] != 2:
                raise ValueError(f"model output has shape {tuple(logits.shape)}, expected (batch, 2). "
                                 "Fix: build the network with num_classes=2 (negative, positive logits).")
            scores.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
            n = len(logits)
            labels.append(_flat(batch["label"]).astype(int))
            if has_bias and "bias" in batch:
                biases.append(_flat(batch["bias"]).astype(int))
            else:
                has_bias = False
            batch_ids = batch.get("id")
            ids.append(np.asarray([str(i) for i in batch_ids]) if batch_ids is not None
                       else np.asarray([str(seen + i) for i in range(n)]))
            seen += n
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
    return {"labels": cat(labels, int), "scores": cat(scores, float),
            "bias": cat(biases, int) if has_bias and biases else None, "ids": cat(ids, str)}


def _flat(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value).reshape(-1)


def compute_metrics(labels: Any, scores: Any, bias: Any = None, threshold: float = 0.5, n_bootstrap: int = 1000,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """One results.json test entry (see the module docstring for the definitions).

    Args:
        labels: binary labels (1 = the finding).
        scores: positive-class probabilities, same length.
        bias: 0/1 shortcut flags, same length, or None (then the bias metrics are None).
        threshold: a sample is predicted positive when its score is at least this.
        n_bootstrap: bootstrap resamples for ``auc_ci`` (0 disables the CI).
        seed: seed of the bootstrap.
        ci: coverage of the interval (0.95 gives the 2.5th and 97.5th percentiles).

    Returns:
        a dict with exactly ``TEST_ENTRY_KEYS``, plus ``note`` when a value is undefined.
    """
    y = np.asarray(labels).reshape(-1).astype(int)
    s = np.asarray(scores, dtype=float).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"labels ({len(y)}) and scores ({len(s)}) differ in length. Fix: pass one score per sample.")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(np.unique(y).tolist()))}. "
                         "Fix: binarise the labels (1 = the finding).")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity. Fix: check the model's outputs.")
    b = None if bias is None else np.asarray(bias).reshape(-1).astype(int)
    if b is not None and len(b) != len(y):
        raise ValueError(f"bias ({len(b)}) and labels ({len(y)}) differ in length. Fix: pass one flag per sample.")
    pred = (s >= threshold).astype(int)
    notes: list[str] = []
    out: dict[str, Any] = dict.fromkeys(TEST_ENTRY_KEYS)
    out["n"] = int(len(y))
    if len(y) == 0:
        out["note"] = "empty test set."
        return out

    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos and n_neg:
        out["auc"] = float(roc_auc_score(y, s))
        if n_bootstrap > 0:
            out["auc_ci"] = bootstrap_auc_ci(y, s, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    else:
        notes.append(f"AUC undefined: only {'positives' if n_pos else 'negatives'} in the test set.")
    out["accuracy"] = float(accuracy_score(y, pred))
    # over the classes present: the mean recall per class (sklearn would warn on a single class)
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred)) if n_pos and n_neg \
        else out["accuracy"]

    if b is not None:
        for key, flag in (("tpr_bias", 1), ("tpr_nobias", 0)):
            positives = (y == 1) & (b == flag)
            if positives.any():
                out[key] = float(recall_score(y[positives], pred[positives], zero_division=0))
            else:
                notes.append(f"{key} undefined: no positives with bias={flag}.")
        if out["tpr_bias"] is not None and out["tpr_nobias"] is not None:
            out["delta_tpr"] = out["tpr_bias"] - out["tpr_nobias"]
        else:
            notes.append("delta_tpr undefined: it needs positives with and without the shortcut.")
        groups = y * 2 + b
    else:
        notes.append("bias metrics undefined: no bias flags given; worst group is over the classes.")
        groups = y
    out["worst_group_accuracy"] = float(min(accuracy_score(y[groups == g], pred[groups == g])
                                            for g in np.unique(groups)))
    if notes:
        out["note"] = " ".join(notes)
    return out


def bootstrap_auc_ci(labels: Any, scores: Any, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95,
                     chunk_elements: int = 4_000_000) -> list[float]:
    """Percentile bootstrap interval of the AUC, resampling within each class.

    Positives and negatives are resampled separately (with replacement, their counts fixed), so every
    resample has both classes. The AUC of all resamples is computed at once from within-row ranks (the
    Mann-Whitney form of the AUC, which equals ``roc_auc_score`` with ties counted one half): calling
    sklearn once per resample costs about a millisecond each, which adds up over methods x test sets.

    Args:
        labels: binary labels with both classes present.
        scores: positive-class scores.
        n_bootstrap: number of resamples.
        seed: seed of ``numpy.random.default_rng``.
        ci: coverage of the interval.
        chunk_elements: bound on resamples x samples held in memory at once.

    Returns:
        ``[low, high]``.
    """
    y = np.asarray(labels).reshape(-1).astype(int)
    s = np.asarray(scores, dtype=float).reshape(-1)
    pos, neg = s[y == 1], s[y == 0]
    n_pos, n_neg = len(pos), len(neg)
    if not (n_pos and n_neg):
        raise ValueError("the bootstrap AUC needs positives and negatives. Fix: check the test set's labels.")
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_bootstrap)
    step = max(1, chunk_elements // (n_pos + n_neg))
    for start in range(0, n_bootstrap, step):
        b = min(step, n_bootstrap - start)
        sample = np.concatenate([pos[rng.integers(0, n_pos, (b, n_pos))], neg[rng.integers(0, n_neg, (b, n_neg))]],
                                axis=1)
        rank_sum = rankdata(sample, axis=1)[:, :n_pos].sum(axis=1)
        aucs[start:start + b] = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    alpha = (1.0 - ci) / 2
    low, high = np.quantile(aucs, [alpha, 1 - alpha])
    return [float(low), float(high)]


def evaluate(model: nn.Module, loaders: Mapping[str, Any], device: str | torch.device = "cpu", amp: bool = False,
             **metric_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Metrics of ``model`` on every test set.

    Args:
        model: a two-logit network.
        loaders: test-set name (``unbiased``, ``aligned``, ``conflicting``, ``clean``, ``ood``) -> loader.
        device: where to run the model.
        amp: autocast on CUDA.
        metric_kwargs: passed to :func:`compute_metrics` (``threshold``, ``n_bootstrap``, ``seed``, ``ci``).

    Returns:
        ``{test_name: test entry}``, the ``methods.<method>.test`` part of results.json.
    """
    results = {}
    for name, loader in loaders.items():
        pred = predict(model, loader, device=device, amp=amp)
        results[name] = compute_metrics(pred["labels"], pred["scores"], pred["bias"], **metric_kwargs)
    return results
