"""The statistics of a study: paired AUC bootstraps, win/tie/loss counts and rank tests over cells.

- :func:`paired_bootstrap_auc` compares two models on the same test images; :func:`pooled_paired_bootstrap_auc`
  does so over several seeds, each with its own test images, and reports the mean difference over seeds.
  Both resample positives and negatives separately (class-stratified), so every replicate holds both classes,
  and draw the same indices for both models (paired).
- Bootstrap p-values are two-sided and never exactly 0: with ``B`` replicate differences ``d``,
  ``p = min(1, 2 * min((1 + #{d <= 0}) / (1 + B), (1 + #{d >= 0}) / (1 + B)))``; the smallest reachable value
  is ``2 / (1 + B)`` and identical models give ``p = 1``.
- :func:`rank_comparison` ranks methods within every block (a cell such as ``"isic2017/patch/seed0"``),
  runs the Friedman test, the Nemenyi post-hoc test and gives the Nemenyi critical difference (Demsar, 2006);
  :func:`plot_critical_difference` draws the matching critical-difference diagram.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from shortcut_kd.io import atomic_path

__all__ = ["paired_bootstrap_auc", "pooled_paired_bootstrap_auc", "win_tie_loss", "rank_comparison",
           "plot_critical_difference", "mean_sd"]

_CHUNK_ELEMENTS = 4_000_000
"""Bound on replicates x images held in memory at once by the bootstraps."""

_Group = tuple[np.ndarray, np.ndarray, np.ndarray]


def paired_bootstrap_auc(labels: Any, scores_a: Any, scores_b: Any, n_bootstrap: int = 2000,
                         seed: int = 0) -> dict[str, Any]:
    """Paired, class-stratified bootstrap of the AUC difference of two models on the same test images.

    Args:
        labels: binary labels (0/1) of the shared test images, both classes present.
        scores_a: positive-class scores of model A, one per image.
        scores_b: positive-class scores of model B, one per image.
        n_bootstrap: number of replicates.
        seed: seed of the resampling.

    Returns:
        ``{"auc_a", "auc_b", "diff" (auc_a - auc_b on all images), "ci" ([low, high], 95 % percentile interval
        of the replicate differences), "p_value" (two-sided, see the module docstring), "n" (images),
        "n_bootstrap"}``.

    Raises:
        ValueError: lengths differ, a class is missing, labels are not 0/1 or a score is not finite.
    """
    return _bootstrap([(labels, scores_a, scores_b)], n_bootstrap, seed, pooled=False)


def pooled_paired_bootstrap_auc(groups: Sequence[tuple[Any, Any, Any]], n_bootstrap: int = 2000,
                                seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of the mean AUC difference over groups (seeds), each with its own test images.

    Every replicate resamples within every group (class-stratified, the same indices for both models) and
    takes the mean over groups of the per-group AUC difference. One group gives the result of
    :func:`paired_bootstrap_auc` with the same seed.

    Args:
        groups: one ``(labels, scores_a, scores_b)`` per seed.
        n_bootstrap: number of replicates.
        seed: seed of the resampling.

    Returns:
        The keys of :func:`paired_bootstrap_auc`, where ``auc_a``, ``auc_b`` and ``diff`` are means over groups
        and ``n`` is the number of images over all groups, plus ``"n_groups"``.

    Raises:
        ValueError: no groups, or a group fails the checks of :func:`paired_bootstrap_auc`.
    """
    return _bootstrap(list(groups), n_bootstrap, seed, pooled=True)


def win_tie_loss(comparisons: Iterable[Mapping[str, Any]], alpha: float = 0.05) -> dict[str, int]:
    """Count wins, ties and losses of model A over model B.

    Args:
        comparisons: dicts with ``"diff"`` (A - B) and ``"p_value"``, e.g. outputs of :func:`paired_bootstrap_auc`.
        alpha: significance level.

    Returns:
        ``{"win": diff > 0 and p < alpha, "tie": the others, "loss": diff < 0 and p < alpha}`` as counts.

    Raises:
        ValueError: a comparison lacks a finite ``diff`` or ``p_value``.
    """
    counts = {"win": 0, "tie": 0, "loss": 0}
    for i, c in enumerate(comparisons):
        diff, p = c.get("diff"), c.get("p_value")
        if diff is None or p is None or not (math.isfinite(diff) and math.isfinite(p)):
            raise ValueError(f"comparison {i} has diff={diff!r}, p_value={p!r}; both must be finite numbers.")
        significant = p < alpha
        counts["win" if significant and diff > 0 else "loss" if significant and diff < 0 else "tie"] += 1
    return counts


def rank_comparison(scores: Mapping[str, Mapping[str, float | None]], alpha: float = 0.05) -> dict[str, Any]:
    """Friedman test, average ranks, Nemenyi post-hoc p-values and critical difference of methods over blocks.

    Only methods with a finite score in every block are compared; the others are reported under ``"dropped"``.

    Args:
        scores: block name (a cell, e.g. ``"isic2017/patch/seed0"``) -> ``{method: score}``, higher is better.
            A ``None`` or NaN score counts as missing.
        alpha: significance level of the Nemenyi critical difference.

    Returns:
        ``{"methods", "blocks", "average_ranks" ({method: mean rank}, rank 1 = best, ties get the average rank),
        "friedman" ({"statistic", "p_value"}), "nemenyi_p" ({method: {method: p}}), "critical_difference",
        "alpha", "dropped" ({method: [blocks where it is missing]}), "reason"}``. With fewer than 3 methods or
        2 blocks, or when every block ties all methods, ``friedman``, ``nemenyi_p`` and ``critical_difference``
        are ``None`` and ``reason`` says why (it is ``None`` otherwise).

    Raises:
        ValueError: ``alpha`` is not in (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r} must lie in (0, 1).")
    blocks = list(scores)
    finite = {b: {m: float(v) for m, v in scores[b].items() if v is not None and math.isfinite(v)} for b in blocks}
    order = list(dict.fromkeys(m for b in blocks for m in scores[b]))  # first appearance, stable
    methods = [m for m in order if all(m in finite[b] for b in blocks)]
    dropped = {m: [b for b in blocks if m not in finite[b]] for m in order if m not in methods}
    result: dict[str, Any] = {"methods": methods, "blocks": blocks, "average_ranks": {}, "friedman": None,
                              "nemenyi_p": None, "critical_difference": None, "alpha": alpha, "dropped": dropped,
                              "reason": None}
    if not (blocks and methods):
        result["reason"] = "no method has a score in every block"
        return result
    table = np.array([[finite[b][m] for m in methods] for b in blocks])
    ranks = stats.rankdata(-table, axis=1, method="average")  # negated: the highest score gets rank 1
    result["average_ranks"] = {m: float(r) for m, r in zip(methods, ranks.mean(axis=0))}
    k, n = len(methods), len(blocks)
    if k < 3 or n < 2:
        result["reason"] = f"the Friedman test needs at least 3 methods and 2 blocks; got {k} and {n}"
        return result
    if np.all(table == table[:, :1]):
        result["reason"] = "every block ties all methods"
        return result
    friedman = stats.friedmanchisquare(*table.T)
    result["friedman"] = {"statistic": float(friedman.statistic), "p_value": float(friedman.pvalue)}

    import pandas as pd
    import scikit_posthocs as sp

    nemenyi = sp.posthoc_nemenyi_friedman(pd.DataFrame(table, columns=methods))
    result["nemenyi_p"] = {a: {b: float(nemenyi.loc[a, b]) for b in methods} for a in methods}
    q_alpha = stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    result["critical_difference"] = float(q_alpha * math.sqrt(k * (k + 1) / (6.0 * n)))
    return result


def plot_critical_difference(ranking: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw the critical-difference diagram of a :func:`rank_comparison` result and save it as PNG, atomically.

    Methods joined by a bar do not differ significantly (Nemenyi p >= alpha).

    Args:
        ranking: the output of :func:`rank_comparison`, with the Nemenyi matrix.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: the ranking has no Nemenyi matrix (too few methods or blocks).
    """
    if ranking.get("nemenyi_p") is None:
        raise ValueError(f"the ranking has no Nemenyi p-values ({ranking.get('reason')}); "
                         "a critical-difference diagram needs at least 3 methods and 2 blocks.")
    import pandas as pd
    import scikit_posthocs as sp

    # matplotlib.figure.Figure saves PNG through the Agg canvas without pyplot, so no global backend is changed
    # and no figure is left registered with pyplot
    from matplotlib.figure import Figure

    methods = list(ranking["methods"])
    ranks = pd.Series({m: ranking["average_ranks"][m] for m in methods})
    sig = pd.DataFrame(ranking["nemenyi_p"]).loc[methods, methods]
    cd, alpha = ranking["critical_difference"], ranking["alpha"]
    fig = Figure(figsize=(max(6.0, 1.0 * len(methods) + 2.0), 0.35 * len(methods) + 1.6))
    ax = fig.subplots()
    sp.critical_difference_diagram(ranks, sig, cd=cd, alpha=alpha, ax=ax)
    fig.suptitle(f"Nemenyi critical difference CD = {cd:.3f} (alpha = {alpha:g}, {len(ranking['blocks'])} blocks)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def mean_sd(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation, ignoring ``None``.

    Args:
        values: numbers, ``None`` for missing ones.

    Returns:
        ``{"mean", "sd" (ddof=1; None for fewer than two values), "n"}``; ``mean`` is None when no value is left.
    """
    x = np.array([v for v in values if v is not None], dtype=float)
    return {"mean": float(x.mean()) if len(x) else None, "sd": float(x.std(ddof=1)) if len(x) > 1 else None,
            "n": int(len(x))}


def _check_group(labels: Any, scores_a: Any, scores_b: Any, where: str) -> _Group:
    """Flatten one (labels, scores_a, scores_b) triple and check it; ``where`` prefixes the error messages."""
    y = np.asarray(labels).reshape(-1)
    a = np.asarray(scores_a, dtype=float).reshape(-1)
    b = np.asarray(scores_b, dtype=float).reshape(-1)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"{where}labels, scores_a and scores_b have lengths {len(y)}, {len(a)}, {len(b)}; "
                         "they must be equal (one entry per test image, the same images for both models).")
    if not np.isin(y, [0, 1]).all():
        raise ValueError(f"{where}labels must be 0 or 1; got values {np.unique(y)[:10].tolist()}.")
    y = y.astype(int)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"{where}the AUC needs both classes; labels have {n_pos} positives and "
                         f"{len(y) - n_pos} negatives.")
    for name, s in (("scores_a", a), ("scores_b", b)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        if bad:
            raise ValueError(f"{where}{name} has {bad} non-finite value(s) (NaN or inf).")
    return y, a, b


def _replicate_diffs(group: _Group, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """AUC(A) - AUC(B) on ``n_bootstrap`` class-stratified resamples, the same indices for both models."""
    y, a, b = group
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_pos, n_neg = len(pos), len(neg)
    diffs = np.empty(n_bootstrap)
    step = max(1, _CHUNK_ELEMENTS // (n_pos + n_neg))
    for start in range(0, n_bootstrap, step):
        m = min(step, n_bootstrap - start)
        ip, ineg = pos[rng.integers(0, n_pos, (m, n_pos))], neg[rng.integers(0, n_neg, (m, n_neg))]
        # scipy's Mann-Whitney U over rows: U / (n_pos * n_neg) is the AUC with ties counted one half (what
        # roc_auc_score gives), for all replicates at once; one roc_auc_score call per replicate costs ~1 ms
        u_a = stats.mannwhitneyu(a[ip], a[ineg], axis=1, method="asymptotic").statistic
        u_b = stats.mannwhitneyu(b[ip], b[ineg], axis=1, method="asymptotic").statistic
        diffs[start:start + m] = (u_a - u_b) / (n_pos * n_neg)
    return diffs


def _bootstrap(raw: list[tuple[Any, Any, Any]], n_bootstrap: int, seed: int, pooled: bool) -> dict[str, Any]:
    """The shared body of the single and the pooled paired bootstrap."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap={n_bootstrap!r} must be a positive integer.")
    if not raw:
        raise ValueError("groups is empty; give one (labels, scores_a, scores_b) per seed.")
    groups = [_check_group(*g, where=f"group {i}: " if pooled else "") for i, g in enumerate(raw)]
    auc_a = np.array([roc_auc_score(y, a) for y, a, _ in groups])
    auc_b = np.array([roc_auc_score(y, b) for y, _, b in groups])
    # one independent stream per group: a group's replicates do not depend on the sizes of the others
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(groups))]
    diffs = np.mean([_replicate_diffs(g, int(n_bootstrap), r) for g, r in zip(groups, rngs)], axis=0)
    low, high = np.quantile(diffs, [0.025, 0.975])
    below = (1 + np.count_nonzero(diffs <= 0)) / (1 + n_bootstrap)
    above = (1 + np.count_nonzero(diffs >= 0)) / (1 + n_bootstrap)
    result: dict[str, Any] = {
        "auc_a": float(auc_a.mean()), "auc_b": float(auc_b.mean()), "diff": float(np.mean(auc_a - auc_b)),
        "ci": [float(low), float(high)], "p_value": float(min(1.0, 2.0 * min(below, above))),
        "n": int(sum(len(y) for y, _, _ in groups)), "n_bootstrap": int(n_bootstrap)}
    if pooled:
        result["n_groups"] = len(groups)
    return result
