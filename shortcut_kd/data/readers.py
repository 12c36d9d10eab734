"""The reader registry: one name per native dataset layout, and :func:`read_dataset`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from shortcut_kd.data.generic import read_generic
from shortcut_kd.data.registry import DATASETS
from shortcut_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

READERS: dict[str, Callable[..., list[dict]]] = {**{k: d.reader for k, d in DATASETS.items()},
                                                 "generic": read_generic}
"""name -> reader: the registry's datasets (``shortcut_kd.data.registry``) and generic file lists."""
AVAILABLE_SPLITS: dict[str, Callable[[str | os.PathLike], tuple[str, ...]]] = {
    k: d.available_splits for k, d in DATASETS.items()}
"""name -> function listing the native splits present under a dataset folder."""
ALL = "all"
_GENERIC_SPLITS = ("train", "val", "valid", "test")
_GENERIC_SUFFIXES = (".csv", ".json")


def _generic_files(root: Path, split: str) -> list[Path]:
    """The list file(s) that ``read_dataset("generic", root, split)`` reads."""
    if root.is_file() or root.suffix.lower() in _GENERIC_SUFFIXES:
        return [root]
    names = _GENERIC_SPLITS if split == ALL else (split,)
    files = [root / f"{n}{s}" for n in names for s in _GENERIC_SUFFIXES if (root / f"{n}{s}").is_file()]
    if not files:
        wanted = " or ".join(f"{names[0]}{s}" for s in _GENERIC_SUFFIXES)
        raise DataError(f"no list file for split '{split}' ({wanted}).", file=str(root),
                        fix="pass a CSV/JSON list file, or a folder holding <split>.csv or <split>.json.")
    return files


def read_dataset(name: str, root: str | os.PathLike, split: str = "train", **kwargs) -> list[dict]:
    """Read a dataset in its native layout as a MONAI datalist.

    Args:
        name: a key of :data:`READERS`: ``chexpert``, ``isic2017``, ``simba`` or ``generic``.
        root: the dataset folder; for ``generic`` a list file, or a folder holding ``<split>.csv``
            or ``<split>.json``.
        split: a native split of the dataset, or ``"all"`` for every native split present on disk,
            concatenated (the split builder then makes its own patient-disjoint partition).
        kwargs: passed to the reader (e.g. ``label``, ``uncertainty``, ``frontal_only`` for CheXpert).

    Raises:
        ConfigError: an unknown dataset name.
        DataError: as the reader; also when ``"all"`` finds no split, or ids repeat across splits.
    """
    key = name.lower()
    if key not in READERS:
        raise ConfigError("dataset", name, f"use one of {sorted(READERS)}.")
    root = Path(root)
    if key == "generic":
        parts = [read_generic(f, **kwargs) for f in _generic_files(root, split)]
    elif split == ALL:
        splits = AVAILABLE_SPLITS[key](root)
        if not splits:
            # No native split found: reading "train" raises an error naming exactly what is missing.
            READERS[key](root, "train", **kwargs)
        logger.info("%s: reading the native split(s) %s.", root, list(splits))
        parts = [READERS[key](root, s, **kwargs) for s in splits]
    else:
        parts = [READERS[key](root, split, **kwargs)]
    items = [item for part in parts for item in part]
    seen: set[str] = set()
    for item in items:
        if item["id"] in seen:
            raise DataError(f"id '{item['id']}' occurs in more than one split or list.", file=str(root), row=item["id"],
                            column="id", fix="give every sample a unique id across the lists.")
        seen.add(item["id"])
    return items
