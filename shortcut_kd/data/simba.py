"""SimBA (simulated bias in 3D brain MRI) in its native layout.

::

    train.csv  val.csv  test.csv      filename, filepath, class_label, bias_label, ... (other columns kept out)
    train/00000_0.1_S_1.2_D_2.0_B.nii.gz
    val/...    test/...

A file whose name carries ``_B`` holds the bias effect; ``bias_label`` says the same per row.
``filepath`` usually is an absolute path on the machine that generated the data.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from shortcut_kd.data.generic import (
    canonical_split, is_blank, leave_out, leave_out_missing, parse_number, read_table, require_columns,
)
from shortcut_kd.errors import DataError

logger = logging.getLogger(__name__)

NATIVE_SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"valid": "val", "validation": "val"}
_BIAS_IN_NAME = re.compile(r"_B(\.nii(\.gz)?)?$")


def _canonical_split(split: str) -> str:
    return canonical_split(split, NATIVE_SPLITS, SPLIT_ALIASES)


def available_splits(root: str | os.PathLike) -> tuple[str, ...]:
    """The native splits whose CSV exists in ``root``."""
    return tuple(s for s in NATIVE_SPLITS if (Path(root) / f"{s}.csv").is_file())


def _stem(filename: str) -> str:
    name = Path(filename).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_simba(root: str | os.PathLike, split: str = "train", check_files: bool = True,
               problems: list | None = None) -> list[dict]:
    """Read a SimBA split as a MONAI datalist.

    The image is ``filepath`` when that file exists (an absolute path, or one relative to
    ``root``), else ``<root>/<split>/<filename>``: SimBA's CSVs carry absolute paths from the
    machine that generated the data, so a copied dataset is found by its own folder layout.

    Args:
        root: the folder holding ``train.csv``, ``val.csv``, ``test.csv`` and the split folders.
        split: ``"train"``, ``"val"`` or ``"test"``.
        check_files: raise if any volume is found neither at ``filepath`` nor in the split folder.
        problems: a list that receives one entry per bad row (blank name, bad label, missing volume),
            which is then left out instead of raised (see :func:`~shortcut_kd.data.generic.leave_out`).

    Returns:
        items ``{"image", "label", "id", "bias"}``: ``label`` from ``class_label``, ``bias`` from
        ``bias_label`` (when the CSV has no ``bias_label`` column, from the ``_B`` suffix of the file
        name, SimBA's own convention), ``id`` is ``<split>/<file name without .nii.gz>``
        (file names restart at 00000 in every split).

    Raises:
        ConfigError: an unknown split.
        DataError: a missing CSV, column or volume, or a label value other than 0 or 1;
            all missing volumes are reported at once.
    """
    split = _canonical_split(split)
    root = Path(root)
    csv_path = root / f"{split}.csv"
    columns, rows = read_table(csv_path)
    require_columns(columns, ["filename", "class_label"], csv_path,
                    fix="use the split CSV that SimBA's generator wrote (filename, filepath, class_label, bias_label).")
    has_bias = "bias_label" in columns
    if not has_bias:
        logger.info("%s: no bias_label column; bias is read from the '_B' suffix of the file names.", csv_path)

    items: list[dict] = []
    missing: list[tuple[int, str]] = []
    for i, row in enumerate(rows, start=1):
        filename = row.get("filename")
        if is_blank(filename):
            leave_out(problems, DataError("the file name is empty.", file=str(csv_path), row=i, column="filename",
                                          fix="repair the row or use the CSV that SimBA's generator wrote."))
            continue
        filename = str(filename).strip()
        image = root / split / Path(filename).name
        filepath = row.get("filepath")
        if not is_blank(filepath):
            given = Path(str(filepath).strip()).expanduser()
            given = given if given.is_absolute() else root / given
            if given.is_file():
                image = given
        try:
            label = int(parse_number(row.get("class_label"), (0, 1), csv_path, i, "class_label"))
            if has_bias:
                bias = int(parse_number(row.get("bias_label"), (0, 1), csv_path, i, "bias_label"))
            else:
                bias = int(bool(_BIAS_IN_NAME.search(filename)))
        except DataError as e:
            leave_out(problems, e, os.path.abspath(image))
            continue
        items.append({"image": os.path.abspath(image), "label": label, "id": f"{split}/{_stem(filename)}",
                      "bias": bias})
        if check_files and not image.is_file():
            missing.append((i, os.path.abspath(image)))
    gone = leave_out_missing(problems, missing, len(items), csv_path, "filepath",
                             fix=f"put the volumes in {root / split}/ under the names in 'filename' "
                                 "(or make 'filepath' point at them).")
    return [item for item in items if item["image"] not in gone]
