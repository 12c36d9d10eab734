"""Deep Feature Reweighting (DFR): retrain only the last layer on bias-free data.

Kirichenko, Izmailov, Wilson, "Last Layer Re-Training is Sufficient for Robustness to Spurious
Correlations", ICLR 2023. The ERM backbone is kept; the final linear layer is refitted as a
standardised, L1-regularised logistic regression on the penultimate features of a small
group-balanced dataset, averaging the weights of several balanced subsamples, with the inverse
regularisation ``C`` chosen by worst-group accuracy on a held-out half.

What information it uses: the ERM model and the small bias-free specialist subset (the same one
the teacher gets), including that subset's ``group`` (or only its labels when it has no groups).
It never sees the biased training set.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.networks import eval_mode
from torch import nn

from shortcut_kd.errors import ConfigError, DataError

__all__ = ["dfr_retrain", "extract_head_inputs"]

logger = logging.getLogger(__name__)

DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
"""The inverse-regularisation grid of the DFR paper."""


def extract_head_inputs(
    model: nn.Module,
    head_name: str,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    image_key: str = "image",
    label_key: str = "label",
    group_key: str = "group",
) -> dict[str, Any]:
    """The features the head receives (its input), with labels and groups, for every sample of ``loader``.

    A forward *pre*-hook on the head records its input. ``FeatureCapture`` records module outputs;
    the head's input is not always a module's output (MONAI's ResNet flattens the pooled map in
    ``forward``), so the pre-hook is the one place that sees exactly what the head sees.

    Args:
        model: the network (run in eval mode; its mode is restored).
        head_name: ``get_submodule`` name of the final linear layer.
        loader: batches of dicts with ``image_key``, ``label_key`` and optionally ``group_key``.
        device: where to run the model.
        image_key: batch key of the images.
        label_key: batch key of the integer labels.
        group_key: batch key of the group index; absent from every batch means "no groups".

    Returns:
        ``{"features": (N, D) float64, "label": (N,) int, "group": (N,) int or None}``.
    """
    head = _get_head(model, head_name)
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach().float().reshape(args[0].shape[0], -1).cpu())

    labels, groups, has_groups = [], [], []
    handle = head.register_forward_pre_hook(record)
    try:
        with eval_mode(model):  # MONAI's: eval mode and no_grad for the block, the mode restored after
            for batch in loader:
                if image_key not in batch or label_key not in batch:
                    raise DataError(f"the batch has no '{image_key}' / '{label_key}' (keys: {sorted(batch)}).",
                                    column=label_key, fix="load the specialist datalist as dicts with image and label.")
                model(torch.as_tensor(batch[image_key]).to(device))
                labels.append(torch.as_tensor(batch[label_key]).reshape(-1).long().cpu())
                has_groups.append(group_key in batch)
                if group_key in batch:
                    groups.append(torch.as_tensor(batch[group_key]).reshape(-1).long().cpu())
    finally:
        handle.remove()
    if not captured:
        raise DataError("the loader gave no batches.", fix="pass a loader over the bias-free specialist subset.")
    if len(captured) != len(labels):
        raise RuntimeError(f"the head '{head_name}' ran {len(captured)} times for {len(labels)} batches. "
                           "Fix: give the final linear layer that runs once per forward pass.")
    if any(has_groups) and not all(has_groups):
        raise DataError("some batches have a group and others not.", column=group_key,
                        fix="give every specialist item a group (2 * label + bias), or none.")
    return {
        "features": torch.cat(captured).double().numpy(),
        "label": torch.cat(labels).numpy(),
        "group": torch.cat(groups).numpy() if groups else None,
    }


def dfr_retrain(
    model: nn.Module,
    head_name: str,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    seed: int = 0,
    c_grid: Sequence[float] = DFR_C_GRID,
    balance: bool = True,
    penalty: str = "l1",
    n_repeats: int = 10,
    image_key: str = "image",
    label_key: str = "label",
    group_key: str = "group",
) -> nn.Module:
    """Refit the head of ``model`` on the bias-free subset in ``loader`` (DFR); return a new network.

    Steps: penultimate features of every sample (:func:`extract_head_inputs`); standardise them; pick
    ``C`` from ``c_grid`` by worst-group accuracy on a held-out half (group-stratified split); fit a
    logistic regression on ``n_repeats`` group-balanced subsamples (equal count per (label, bias)
    group, or per label when the data has no groups) of the whole subset and average the weights;
    undo the standardisation and write the weights into the head of a *copy* of ``model``. The
    copy's backbone and ``model`` itself are untouched; the result is an ordinary network whose
    ``softmax(logits)[:, 1]`` is the logistic regression's probability.

    Args:
        model: the ERM network (two output logits).
        head_name: ``get_submodule`` name of its final ``nn.Linear`` (``shortcut_kd.nets.get_head_name``).
        loader: batches of the bias-free specialist subset (no random augmentation).
        device: where to run the feature extraction (the model must already be there).
        seed: seed of the splits and subsamples (same seed, same head).
        c_grid: inverse regularisation strengths to choose from; one value skips the choice.
        balance: group-balanced subsampling (the paper's); ``False`` fits on the whole subset once.
        penalty: ``"l1"`` (the paper's) or ``"l2"``.
        n_repeats: balanced subsamples whose weights are averaged (the paper uses 10).
        image_key: batch key of the images.
        label_key: batch key of the integer labels.
        group_key: batch key of the group index.

    Example (bundle JSON)::

        "dfr_model": {"_target_": "shortcut_kd.baselines.dfr_retrain", "model": "@network",
                      "head_name": "fc", "loader": "@specialist_loader", "device": "@device", "seed": 0}
    """
    if penalty not in ("l1", "l2"):
        raise ConfigError("penalty", penalty, "use 'l1' (the DFR paper) or 'l2'.")
    c_grid = [float(c) for c in c_grid]
    if not c_grid or any(c <= 0 for c in c_grid):
        raise ConfigError("c_grid", c_grid, "give positive inverse regularisation strengths, e.g. [1, 0.1, 0.01].")
    if int(n_repeats) < 1:
        raise ConfigError("n_repeats", n_repeats, "use at least 1 subsample.")
    head = _get_head(model, head_name)
    data = extract_head_inputs(model, head_name, loader, device, image_key, label_key, group_key)
    x, y = data["features"], data["label"]
    if x.shape[1] != head.in_features:
        raise ConfigError("head_name", head_name, f"its input has {x.shape[1]} features but the layer expects "
                                                  f"{head.in_features}; name the final linear layer.")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise DataError(f"the subset has labels {sorted(np.unique(y).tolist())}; DFR needs both 0 and 1.",
                        column=label_key, fix="give a specialist subset with both classes.")
    keys = data["group"] if data["group"] is not None else y

    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    rng = np.random.RandomState(seed)
    best_c = c_grid[0]
    if len(c_grid) > 1:
        best_c = _choose_c(z, y, keys, c_grid, balance, penalty, int(n_repeats), rng, seed)
    w, b = _fit_averaged(z, y, keys, best_c, balance, penalty, int(n_repeats), rng, seed)
    w_raw = w / scaler.scale_
    b_raw = b - float(np.sum(w * scaler.mean_ / scaler.scale_))

    new_model = copy.deepcopy(model)
    new_head = _get_head(new_model, head_name)
    with torch.no_grad():
        # two logits whose difference is the logistic regression's decision function
        weight = torch.as_tensor(np.stack([-w_raw / 2, w_raw / 2]), dtype=new_head.weight.dtype)
        new_head.weight.copy_(weight.to(new_head.weight.device))
        if new_head.bias is not None:
            new_head.bias.copy_(torch.tensor([-b_raw / 2, b_raw / 2], dtype=new_head.bias.dtype,
                                             device=new_head.bias.device))
        elif abs(b_raw) > 0:
            logger.warning("DFR: head '%s' has no bias; the fitted intercept %.4f is dropped.", head_name, b_raw)
    logger.info("DFR: refitted head '%s' on %d samples (C=%g, %s, %d balanced subsample(s)).",
                head_name, len(y), best_c, penalty, int(n_repeats) if balance else 1)
    new_model.eval()
    return new_model


def _get_head(model: nn.Module, head_name: str) -> nn.Linear:
    try:
        head = model.get_submodule(head_name)
    except AttributeError as e:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError("head_name", head_name, f"use the final linear layer; linear layers here: {names}.") from e
    if not isinstance(head, nn.Linear) or head.out_features != 2:
        raise ConfigError("head_name", head_name, "name the final nn.Linear layer with 2 outputs.")
    return head


def _logistic(c: float, penalty: str, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    kwargs: dict[str, Any] = {"C": c, "solver": "liblinear", "random_state": seed, "max_iter": 1000}
    # scikit-learn >= 1.8 sets the penalty through l1_ratio (``penalty`` is deprecated there)
    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        kwargs["l1_ratio"] = 1.0 if penalty == "l1" else 0.0
    else:
        kwargs["penalty"] = penalty
    return LogisticRegression(**kwargs)


def _balanced_indices(keys: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Equal count (that of the smallest group) from every group, drawn without replacement."""
    values, counts = np.unique(keys, return_counts=True)
    m = counts.min()
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(keys == v), m, replace=False) for v in values]))


def _fit_averaged(z: np.ndarray, y: np.ndarray, keys: np.ndarray, c: float, balance: bool, penalty: str,
                  n_repeats: int, rng: np.random.RandomState, seed: int) -> tuple[np.ndarray, float]:
    coefs, intercepts = [], []
    for _ in range(n_repeats if balance else 1):
        idx = _balanced_indices(keys, rng) if balance else np.arange(len(y))
        if len(np.unique(y[idx])) < 2:
            raise DataError("a balanced subsample holds a single class.", column="label",
                            fix="give a specialist subset with both classes in every group.")
        lr = _logistic(c, penalty, seed).fit(z[idx], y[idx])
        coefs.append(lr.coef_[0])
        intercepts.append(lr.intercept_[0])
    return np.mean(coefs, axis=0), float(np.mean(intercepts))


def _worst_key_accuracy(z: np.ndarray, y: np.ndarray, keys: np.ndarray, w: np.ndarray, b: float) -> float:
    pred = (z @ w + b > 0).astype(int)
    return min(float(np.mean(pred[keys == v] == y[keys == v])) for v in np.unique(keys))


def _choose_c(z: np.ndarray, y: np.ndarray, keys: np.ndarray, c_grid: list[float], balance: bool, penalty: str,
              n_repeats: int, rng: np.random.RandomState, seed: int) -> float:
    """``C`` with the best worst-group accuracy on a held-out half (group-stratified split)."""
    values, counts = np.unique(keys, return_counts=True)
    if counts.min() < 2:
        logger.warning("DFR: a group has fewer than 2 samples; C is not tuned (C=%g).", c_grid[0])
        return c_grid[0]
    fit_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    for v in values:
        idx = rng.permutation(np.flatnonzero(keys == v))
        half = len(idx) // 2
        fit_parts.append(idx[:half])
        val_parts.append(idx[half:])
    fit_idx, val_idx = np.sort(np.concatenate(fit_parts)), np.sort(np.concatenate(val_parts))
    if len(np.unique(y[fit_idx])) < 2:
        return c_grid[0]
    scores = []
    for c in c_grid:
        w, b = _fit_averaged(z[fit_idx], y[fit_idx], keys[fit_idx], c, balance, penalty, n_repeats, rng, seed)
        scores.append(_worst_key_accuracy(z[val_idx], y[val_idx], keys[val_idx], w, b))
    best = int(np.argmax(scores))  # first best: the grid's order breaks ties
    logger.info("DFR: held-out worst-group accuracy per C: %s", {c: round(s, 4) for c, s in zip(c_grid, scores)})
    return c_grid[best]
