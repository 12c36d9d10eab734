"""The dataset registry: one entry per supported dataset pipeline.

Adding a dataset is one entry here (its reader, the splits present on disk, how its synthetic stand-in is
written, its default shortcuts) and one MONAI bundle under ``bundles/`` (dimensionality, channels,
intensity normalisation, image size and network live in the bundle's ``configs/train.json``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from shortcut_kd.errors import ConfigError

__all__ = ["DatasetEntry", "DATASETS", "get_dataset"]


@dataclass(frozen=True)
class DatasetEntry:
    """Static facts about one dataset pipeline.

    Every native split of a dataset is pooled and re-split patient-disjointly by the split builder: the
    official splits carry no shortcut design.

    Args:
        name: registry key (also the ``read_dataset`` and ``synthesize`` name).
        reader: ``reader(root, split, **kwargs) -> datalist`` for one native split.
        available_splits: ``available_splits(root) -> tuple`` of the native splits present on disk.
        bundle: the folder of the dataset's MONAI bundle under ``bundles/``.
        default_shortcuts: the demo's shortcuts (a localized and a diffuse one, or ``native``).
        native_bias: the data carries its own bias flag (SimBA ``_B`` files); no shortcut is injected
            unless one is asked for.
        group_key: the field that must never straddle two splits (the patient).
    """

    name: str
    reader: Callable[..., list[dict]]
    available_splits: Callable[[str | os.PathLike], tuple[str, ...]]
    bundle: str
    default_shortcuts: tuple[str, ...]
    native_bias: bool = False
    group_key: str | None = "patient"


def _entries() -> dict[str, DatasetEntry]:
    from shortcut_kd.data import chexpert, isic2017, simba

    return {
        "isic2017": DatasetEntry("isic2017", isic2017.read_isic2017, isic2017.available_splits,
                                 "isic2017_shortcut_kd", ("patch", "noise"), group_key=None),
        "chexpert": DatasetEntry("chexpert", chexpert.read_chexpert, chexpert.available_splits,
                                 "chexpert_shortcut_kd", ("tag", "noise")),
        "simba": DatasetEntry("simba", simba.read_simba, simba.available_splits, "simba_shortcut_kd", ("native",),
                              native_bias=True, group_key=None),
    }


DATASETS: dict[str, DatasetEntry] = _entries()


def get_dataset(name: str) -> DatasetEntry:
    """The :class:`DatasetEntry` of ``name``, with an error listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError("dataset", name, f"use one of {sorted(DATASETS)}.") from None
