"""Turn a dataset in its native layout into an experiment's split datalists (reused while unchanged)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from shortcut_kd.io import read_json

logger = logging.getLogger(__name__)

__all__ = ["prepare_splits"]


def prepare_splits(dataset: str, dataset_dir: str | os.PathLike, split_dir: str | os.PathLike, settings,
                   ood_dir: str | os.PathLike | None = None) -> Path:
    """Read ``dataset`` under ``dataset_dir``, drop undecodable images, build the splits and write them.

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
    from shortcut_kd.data.image_check import check_images
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
    pool, _ = check_images(read_dataset(dataset, dataset_dir, "all"), on_error="skip")
    ood = check_images(read_dataset(dataset, ood_dir, "all"), on_error="skip")[0] if ood_dir else None
    write_splits(build_splits(pool, settings, ood_datalist=ood), split_dir, settings, source=source)
    return split_dir


def _plain(data: dict) -> dict:
    """``data`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(data))
