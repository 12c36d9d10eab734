"""CheXpert v1.0 (and v1.0-small) in its native layout.

::

    CheXpert-v1.0-small/
      train.csv   valid.csv
      train/patient00001/study1/view1_frontal.jpg
      valid/patient64541/study1/view1_frontal.jpg

The CSVs hold ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14 observations, each
valued 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned, read as
negative).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath

from shortcut_kd.data.generic import (
    is_blank, leave_out, leave_out_missing, parse_age, parse_number, read_table, require_columns, splits_found,
)
from shortcut_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
# U-Zeros, U-Ones and U-Ignore of the CheXpert paper (Irvin et al., 2019).
UNCERTAINTY_POLICIES = ("zeros", "ones", "ignore")
SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv", "val": "valid.csv", "test": "test.csv"}
NATIVE_SPLITS = ("train", "valid", "test")
DATASET_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATIENT = re.compile(r"^patient\d+$")


def find_chexpert_root(root: str | os.PathLike, csv_name: str = "train.csv") -> Path:
    """The CheXpert dataset folder: ``root`` itself when it holds ``csv_name``, else the child
    folder that does (e.g. ``root/CheXpert-v1.0-small``).

    Raises:
        DataError: neither holds ``csv_name``.
    """
    root = Path(root)
    if (root / csv_name).is_file():
        return root
    candidates = [root / name for name in DATASET_FOLDERS]
    if root.is_dir():
        candidates += sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        if (folder / csv_name).is_file():
            return folder
    raise DataError(f"no {csv_name} in this folder or in a sub-folder of it.", file=str(root / csv_name),
                    fix="pass the CheXpert folder (the one holding train.csv, valid.csv, train/ and valid/) "
                        "or the folder above it.")


def available_splits(root: str | os.PathLike) -> tuple[str, ...]:
    """The native splits (``train``, ``valid``, ``test``) whose CSV exists under ``root``."""
    return splits_found(NATIVE_SPLITS, lambda split: find_chexpert_root(root, SPLIT_FILES[split]))


def relative_image_path(path_value: str) -> PurePosixPath:
    """The part of a CSV ``Path`` below the dataset folder, whatever prefix the CSV carries.

    ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` and
    ``/data/x/CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg`` both give
    ``train/patient00001/study1/view1_frontal.jpg``: everything before the split folder
    (the one holding the ``patientNNNNN`` folders) is dropped.
    """
    parts = PurePosixPath(path_value.strip().replace("\\", "/")).parts
    for i, part in enumerate(parts):
        if _PATIENT.match(part) and i > 0:
            return PurePosixPath(*parts[i - 1:])
    # No patient folder: cut at the last split folder name, else drop a leading CheXpert folder.
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in NATIVE_SPLITS:
            return PurePosixPath(*parts[i:])
    parts = tuple(p for p in parts if p != "/")
    if parts and parts[0].startswith("CheXpert"):
        parts = parts[1:]
    return PurePosixPath(*parts)


def read_chexpert(root: str | os.PathLike, split: str = "train", label: str = "Pleural Effusion",
                  uncertainty: str = "zeros", frontal_only: bool = True, check_files: bool = True,
                  problems: list | None = None) -> list[dict]:
    """Read a CheXpert split as a MONAI datalist.

    Args:
        root: the CheXpert folder (holding ``train.csv``) or its parent.
        split: ``"train"``, ``"valid"`` (alias ``"val"``) or ``"test"`` (a ``test.csv`` in the same format).
        label: the observation that is the task label, one of :data:`OBSERVATIONS` (any column of the CSV works).
        uncertainty: what an uncertain (-1.0) label becomes: ``"zeros"`` (U-Zeros, negative),
            ``"ones"`` (U-Ones, positive) or ``"ignore"`` (U-Ignore, the row is dropped and counted in the log).
            A blank label means "not mentioned" and is always negative.
        frontal_only: keep frontal views only (``Frontal/Lateral == "Frontal"``).
        check_files: raise if any image does not exist.
        problems: a list that receives one entry per bad row (bad label, blank path, missing image), which
            is then left out instead of raised (see :func:`~shortcut_kd.data.generic.leave_out`).

    Returns:
        items ``{"image", "label", "id", "patient", "sex", "age", "view", "projection"}``; ``id`` is the
        path below the dataset folder (``train/patient00001/study1/view1_frontal.jpg``), ``age`` is -1
        where unknown, ``view`` is ``Frontal`` or ``Lateral`` and ``projection`` the ``AP/PA`` value.

    Raises:
        ConfigError: an unknown split or uncertainty policy.
        DataError: a missing CSV, column or image, or a label value other than 1.0, 0.0, -1.0 or blank;
            all missing images are reported at once.
    """
    if split not in SPLIT_FILES:
        raise ConfigError("split", split, f"use one of {sorted(SPLIT_FILES)}.")
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ConfigError("uncertainty", uncertainty,
                          f"use one of {list(UNCERTAINTY_POLICIES)} (U-Zeros, U-Ones, U-Ignore).")
    folder = find_chexpert_root(root, SPLIT_FILES[split])
    csv_path = folder / SPLIT_FILES[split]
    columns, rows = read_table(csv_path)
    require_columns(columns, ["Path", label] + (["Frontal/Lateral"] if frontal_only else []), csv_path,
                    fix=f"use a CheXpert CSV; the label must be a column, e.g. one of {list(OBSERVATIONS)}.")

    items: list[dict] = []
    missing: list[tuple[int, str]] = []
    n_uncertain = n_lateral = 0
    for i, row in enumerate(rows, start=1):
        view = (row.get("Frontal/Lateral") or "").strip()
        if frontal_only:
            if view not in ("Frontal", "Lateral"):
                raise DataError(f"value {view!r} is neither 'Frontal' nor 'Lateral'.", file=str(csv_path), row=i,
                                column="Frontal/Lateral", fix="repair the row, or read all views (frontal_only=False).")
            if view != "Frontal":
                n_lateral += 1
                continue
        cell = row.get(label)
        try:
            value = 0.0 if is_blank(cell) else parse_number(
                cell, (1.0, 0.0, -1.0), csv_path, i, label,
                fix="CheXpert labels are 1.0, 0.0, -1.0 (uncertain) or blank (not mentioned); repair the cell.")
        except DataError as e:
            path_cell = row.get("Path")
            leave_out(problems, e, None if is_blank(path_cell) else
                      os.path.abspath(folder / relative_image_path(str(path_cell))))
            continue
        if value == -1.0:
            n_uncertain += 1
            if uncertainty == "ignore":
                continue
            value = 1.0 if uncertainty == "ones" else 0.0
        path_value = row.get("Path")
        if is_blank(path_value):
            leave_out(problems, DataError("the image path is empty.", file=str(csv_path), row=i, column="Path",
                                          fix="repair the row or use an unmodified CheXpert CSV."))
            continue
        rel = relative_image_path(str(path_value))
        image = os.path.abspath(folder / rel)
        patient = next((p for p in rel.parts if _PATIENT.match(p)), rel.parts[1] if len(rel.parts) > 2 else "")
        items.append({
            "image": image,
            "label": int(value),
            "id": rel.as_posix(),
            "patient": patient,
            "sex": (row.get("Sex") or "").strip() or "Unknown",
            "age": parse_age(row.get("Age")),
            "view": view,
            "projection": (row.get("AP/PA") or "").strip(),
        })
        if check_files and not os.path.isfile(image):
            missing.append((i, image))
    gone = leave_out_missing(problems, missing, len(items), csv_path, "Path",
                             fix=f"pass the CheXpert folder holding {SPLIT_FILES[split]} and the "
                                 f"'{SPLIT_FILES[split][:-4]}/' image folder, with every image extracted.")
    items = [item for item in items if item["image"] not in gone]
    if n_uncertain:
        action = {"zeros": "read as negative (U-Zeros)", "ones": "read as positive (U-Ones)",
                  "ignore": "dropped (U-Ignore)"}[uncertainty]
        logger.info("%s: %d row(s) with an uncertain '%s' label %s.", csv_path, n_uncertain, label, action)
    if n_lateral:
        logger.info("%s: %d lateral view(s) left out (frontal_only).", csv_path, n_lateral)
    return items
