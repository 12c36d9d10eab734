"""Turn a dataset in its native layout into an experiment's split datalists (reused while unchanged)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from shortcut_kd.io import read_json, write_json

logger = logging.getLogger(__name__)

__all__ = ["PROBLEMS_FILE", "prepare_splits"]

PROBLEMS_FILE = "problems.json"
"""Written beside the splits: every input left out (bad row, missing or undecodable image) and why."""


def prepare_splits(dataset: str, dataset_dir: str | os.PathLike, split_dir: str | os.PathLike, settings,
                   ood_dir: str | os.PathLike | None = None) -> Path:
    """Read ``dataset`` under ``dataset_dir``, leave out bad rows (a label outside the allowed values, a
    blank or missing path) and undecodable images, build the splits and write them with
    :data:`PROBLEMS_FILE` listing what was left out and why.

    The splits are rebuilt when the settings or the source folders change; otherwise the written datalists
    are reused, so every stage and rerun sees the same samples and bias flags.

    Args:
        dataset: a key of ``shortcut_kd.data.registry.DATASETS``.
        dataset_dir: the dataset in its native layout.
        split_dir: where the datalists and their manifest ``splits.json`` go.
        settings: the :class:`~shortcut_kd.data.splits.SplitSettings`.
        ood_dir: an optional shifted source in the same layout (the ``ood`` test set).

    Returns:
        ``split_dir``.
    """
    from shortcut_kd.data.readers import read_dataset
    from shortcut_kd.data.splits import build_splits, write_splits

    split_dir = Path(split_dir)
    source = {"dataset": dataset, "dataset_dir": str(dataset_dir), "ood_dir": str(ood_dir) if ood_dir else None}
    manifest = split_dir / "splits.json"
    if manifest.is_file():
        old = read_json(manifest)
        if old.get("settings") == _plain(settings.to_dict()) and old.get("source") == source:
            return split_dir
        logger.warning("split settings changed: rebuilding %s", split_dir)
    problems: list[dict] = []
    pool = _readable(read_dataset(dataset, dataset_dir, "all", problems=problems), problems)
    ood = _readable(read_dataset(dataset, ood_dir, "all", problems=problems), problems) if ood_dir else None
    write_splits(build_splits(pool, settings, ood_datalist=ood), split_dir, settings, source=source)
    write_json(split_dir / PROBLEMS_FILE, {"left_out": len(problems), "kept": len(pool) + len(ood or []),
                                           "problems": problems})
    if problems:
        logger.warning("%d input(s) left out (bad rows or undecodable images), each with its reason in %s",
                       len(problems), split_dir / PROBLEMS_FILE)
    return split_dir


def _readable(items: list[dict], problems: list[dict]) -> list[dict]:
    """The items whose image decodes; the others are added to ``problems`` with the reason."""
    from shortcut_kd.data.image_check import check_images

    kept, bad = check_images(items, on_error="skip")
    problems += [{"file": p["image"], "row": p.get("id"), "column": "image", "image": p["image"],
                  "reason": p["error"]} for p in bad]
    return kept


def _plain(data: dict) -> dict:
    """``data`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(data))
