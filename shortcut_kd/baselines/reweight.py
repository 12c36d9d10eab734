"""Group-balanced reweighting and resampling (inverse group frequency).

The classic importance-weighting baseline of the group-robustness literature (e.g. Sagawa et al.
2020; Idrissi, Arjovsky, Pezeshki, Lopez-Paz, "Simple data balancing achieves competitive
worst-group-accuracy", CLeaR 2022): every (label, bias) group contributes equally.

What information it uses: the group of every training sample, i.e. the bias attribute of the
large biased training set. It does not use the bias-free subset.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import WeightedRandomSampler

from shortcut_kd.errors import ConfigError, DataError

__all__ = ["group_balanced_weights", "group_balanced_sampler"]


def group_balanced_weights(datalist: Sequence[Mapping[str, Any]], group_key: str = "group") -> list[float]:
    """Per-sample weights ``N / (G · n_g)``: inverse group frequency, mean weight 1.

    Each of the ``G`` groups present gets the same total weight ``N / G``; the weights can be used as
    loss weights or as sampling weights.

    Args:
        datalist: the training datalist (dicts with ``group_key``).
        group_key: field of the group index (``2 * label + bias``).
    """
    if len(datalist) == 0:
        raise DataError("the datalist is empty.", column=group_key, fix="pass the training datalist.")
    groups = []
    for row, item in enumerate(datalist, start=1):
        if group_key not in item:
            raise DataError(f"sample {item.get('id', '?')!r} has no group.", row=row, column=group_key,
                            fix="add 'group' (= 2 * label + bias) to every item (the split builder does).")
        groups.append(_hashable(item[group_key]))
    counts = Counter(groups)
    n, g = len(groups), len(counts)
    return [n / (g * counts[grp]) for grp in groups]


def group_balanced_sampler(
    datalist: Sequence[Mapping[str, Any]],
    num_samples: int | None = None,
    seed: int = 0,
    group_key: str = "group",
) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` that draws every group equally often (with replacement).

    Use it as the training ``DataLoader``'s ``sampler`` (with ``shuffle=False``).

    Args:
        datalist: the training datalist (dicts with ``group_key``), in the dataset's order.
        num_samples: draws per epoch (default: the datalist's length).
        seed: seed of the sampler's own ``torch.Generator``: same seed, same draws.
        group_key: field of the group index (``2 * label + bias``).

    Example (bundle JSON)::

        "sampler": {"_target_": "shortcut_kd.baselines.group_balanced_sampler",
                    "datalist": "@train#dataset#data", "seed": 0}
    """
    weights = group_balanced_weights(datalist, group_key)
    num_samples = len(weights) if num_samples is None else int(num_samples)
    if num_samples < 1:
        raise ConfigError("num_samples", num_samples, "use a positive number of draws, or null for len(datalist).")
    generator = torch.Generator().manual_seed(int(seed))
    # the sampler keeps the weights as a float64 tensor
    return WeightedRandomSampler(weights, num_samples=num_samples, replacement=True, generator=generator)


def _hashable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    return value
