"""Turn a dataset in its native layout into the experiment's split datalists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from shortcut_kd.io import read_json

if TYPE_CHECKING:
    from shortcut_kd.workflows.experiment import Experiment

logger = logging.getLogger(__name__)


def prepare_splits(exp: "Experiment") -> Path:
    """Build (or reuse) the splits of ``exp``; returns the split folder.

    The splits are rebuilt when the settings that define them change; otherwise the written
    datalists are reused, so every stage and rerun sees the same samples and bias flags.
    """
    from shortcut_kd.data.image_check import check_images
    from shortcut_kd.data.readers import read_dataset
    from shortcut_kd.data.splits import SplitSettings, build_splits, write_splits

    s = exp.settings
    split_settings = SplitSettings(seed=s.seed, p_bias_pos=s.p_bias_pos, p_bias_neg=s.p_bias_neg,
                                   specialist_size=s.specialist_size, val_fraction=s.val_fraction,
                                   test_fraction=s.test_fraction, bias_free=s.bias_free,
                                   group_key=exp.spec.group_key, native_bias=exp.native_bias)
    source = {"dataset": s.dataset, "dataset_dir": str(s.dataset_dir), "ood_dir": s.ood_dir and str(s.ood_dir)}
    manifest = exp.split_dir / "splits.json"
    if manifest.is_file():
        old = read_json(manifest)
        if old.get("settings") == _plain(split_settings.to_dict()) and old.get("source") == source:
            return exp.split_dir
        logger.warning("split settings changed: rebuilding %s", exp.split_dir)

    pool, _ = check_images(read_dataset(s.dataset, s.dataset_dir, "all"), on_error="skip")
    ood = None
    if s.ood_dir:
        ood, _ = check_images(read_dataset(s.dataset, s.ood_dir, "all"), on_error="skip")
    splits = build_splits(pool, split_settings, ood_datalist=ood)
    write_splits(splits, exp.split_dir, split_settings, source=source)
    return exp.split_dir


def _plain(data: dict) -> dict:
    """``data`` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(data))
