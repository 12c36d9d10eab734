"""ISIC 2017 (skin lesion classification, part 3) in its native layout.

::

    ISIC-2017_Training_Data/ISIC_0000000.jpg          (+ *_superpixels.png, a metadata CSV)
    ISIC-2017_Training_Part3_GroundTruth.csv          image_id, melanoma, seborrheic_keratosis
    ISIC-2017_Validation_Data/  ISIC-2017_Validation_Part3_GroundTruth.csv
    ISIC-2017_Test_v2_Data/     ISIC-2017_Test_v2_Part3_GroundTruth.csv

The task is melanoma (1) against everything else (0).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shortcut_kd.data.generic import (
    canonical_split, is_blank, leave_out, leave_out_missing, parse_age, parse_number, read_table, require_columns,
    splits_found,
)
from shortcut_kd.errors import DataError

logger = logging.getLogger(__name__)

# split -> the name ISIC uses in its folder and file names
SPLIT_NAMES = {"train": "Training", "val": "Validation", "test": "Test_v2"}
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val"}
NATIVE_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # in order of preference when one id has several


def _names(split: str) -> tuple[str, str, str]:
    name = SPLIT_NAMES[split]
    return (f"ISIC-2017_{name}_Data", f"ISIC-2017_{name}_Part3_GroundTruth.csv",
            f"ISIC-2017_{name}_Data_metadata.csv")


def _canonical_split(split: str) -> str:
    return canonical_split(split, NATIVE_SPLITS, SPLIT_ALIASES)


def find_isic2017_files(root: str | os.PathLike, split: str = "train") -> tuple[Path, Path]:
    """The image folder and the ground-truth CSV of one split.

    ``root`` is the folder holding the ``ISIC-2017_*_Data`` folders, or one such data folder itself.
    The CSV is looked for in ``root``, inside the data folder, beside it, and in a
    ``ISIC-2017_*_Part3_GroundTruth/`` folder (as some unzip tools leave it).

    Raises:
        DataError: the data folder or the CSV is not found.
    """
    split = _canonical_split(split)
    data_name, csv_name, _ = _names(split)
    root = Path(root)
    data_dir = root if root.name == data_name else root / data_name
    if not data_dir.is_dir():
        raise DataError(f"image folder {data_name}/ not found.", file=str(data_dir),
                        fix="pass the folder holding the unzipped ISIC-2017 data folders.")
    candidates = [root / csv_name, data_dir / csv_name, data_dir.parent / csv_name,
                  data_dir.parent / Path(csv_name).stem / csv_name]
    for csv_path in candidates:
        if csv_path.is_file():
            return data_dir, csv_path
    raise DataError("ground-truth CSV not found.", file=str(candidates[0]),
                    fix=f"put {csv_name} (from the ISIC 2017 'Part 3' ground truth download) beside {data_name}/.")


def available_splits(root: str | os.PathLike) -> tuple[str, ...]:
    """The native splits whose image folder and ground-truth CSV exist under ``root``."""
    return splits_found(NATIVE_SPLITS, lambda split: find_isic2017_files(root, split))


def _read_metadata(path: Path) -> dict[str, tuple[str, int]]:
    """``image_id -> (sex, age)`` from the metadata CSV ISIC ships in the data folder. Metadata is
    optional: a file without the expected columns is ignored with a warning."""
    columns, rows = read_table(path)
    if "image_id" not in columns:
        logger.warning("%s: no image_id column; sex and age are left out.", path)
        return {}
    out = {}
    for row in rows:
        sex = (row.get("sex") or "").strip() or "unknown"
        out[(row.get("image_id") or "").strip()] = (sex, parse_age(row.get("age_approximate")))
    return out


def read_isic2017(root: str | os.PathLike, split: str = "train", check_files: bool = True,
                  problems: list | None = None) -> list[dict]:
    """Read an ISIC 2017 split as a MONAI datalist (melanoma vs. not).

    Args:
        root: the folder holding the ``ISIC-2017_*_Data`` folders and the ground-truth CSVs.
        split: ``"train"``, ``"val"`` or ``"test"`` (ISIC's Training, Validation and Test_v2 sets).
        check_files: raise if any image listed in the CSV is not in the data folder.
        problems: a list that receives one entry per bad row (blank id, bad label, missing image), which
            is then left out instead of raised (see :func:`~shortcut_kd.data.generic.leave_out`).

    Returns:
        items ``{"image", "label", "id", "seborrheic_keratosis"}``, ``id`` being the ISIC image id;
        plus ``"sex"`` and ``"age"`` (-1 where unknown) when the data folder holds ISIC's
        ``*_Data_metadata.csv``. Other files in the data folder (superpixels, metadata) are ignored.

    Raises:
        ConfigError: an unknown split.
        DataError: a missing folder, CSV, column or image, or a label value other than 0 or 1;
            all missing images are reported at once.
    """
    split = _canonical_split(split)
    data_dir, csv_path = find_isic2017_files(root, split)
    columns, rows = read_table(csv_path)
    require_columns(columns, ["image_id", "melanoma"], csv_path,
                    fix="use the ISIC 2017 Part 3 ground truth (image_id, melanoma, seborrheic_keratosis).")
    has_sk = "seborrheic_keratosis" in columns

    # One listing of the folder instead of a stat per row; keyed by file stem, so only files
    # named exactly after an image id are ever picked (never ISIC_xxx_superpixels.png).
    files: dict[str, Path] = {}
    for path in data_dir.iterdir():
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES and path.is_file():
            previous = files.get(path.stem)
            if previous is None or IMAGE_SUFFIXES.index(suffix) < IMAGE_SUFFIXES.index(previous.suffix.lower()):
                files[path.stem] = path
    metadata_path = data_dir / _names(split)[2]
    metadata = _read_metadata(metadata_path) if metadata_path.is_file() else None

    items: list[dict] = []
    missing: list[tuple[int, str]] = []
    for i, row in enumerate(rows, start=1):
        image_id = (row.get("image_id") or "").strip()
        if is_blank(image_id):
            leave_out(problems, DataError("the image id is empty.", file=str(csv_path), row=i, column="image_id",
                                          fix="repair the row or use the unmodified ISIC ground-truth CSV."))
            continue
        image_path = files.get(image_id)
        if image_path is None:
            missing.append((i, str(data_dir / f"{image_id}.jpg")))
            if check_files:
                continue
            image_path = data_dir / f"{image_id}.jpg"
        try:
            item = {
                "image": os.path.abspath(image_path),
                "label": int(parse_number(row.get("melanoma"), (0, 1), csv_path, i, "melanoma")),
                "id": image_id,
                "seborrheic_keratosis": int(parse_number(row.get("seborrheic_keratosis"), (0, 1), csv_path, i,
                                                         "seborrheic_keratosis")) if has_sk else 0,
            }
        except DataError as e:
            leave_out(problems, e, os.path.abspath(image_path))
            continue
        if metadata is not None:
            item["sex"], item["age"] = metadata.get(image_id, ("unknown", -1))
        items.append(item)
    if check_files:
        leave_out_missing(problems, missing, len(rows), csv_path, "image_id",
                          fix=f"extract every image of the ISIC 2017 {SPLIT_NAMES[split]} set into {data_dir}.")
    return items
