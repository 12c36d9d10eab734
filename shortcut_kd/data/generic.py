"""The generic reader (a CSV or JSON list of image files with binary labels) and the table
helpers that every native reader shares: reading a table, checking its columns, parsing a
label, reporting missing images.

Every problem is raised as a :class:`~shortcut_kd.errors.DataError` naming the file, the row
(1-based, header excluded) and the column, before any training starts.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.io import read_json

logger = logging.getLogger(__name__)

# Fields a datalist item may carry besides image / label / id (docs/architecture.md, "Datalist items").
GROUP_FIELDS = ("patient", "sex", "age", "view", "site")
# Shown in errors about missing images; the full list is always counted.
MAX_LISTED = 5


def read_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str | None]]]:
    """Read a CSV file with a header row.

    Args:
        path: the CSV file.

    Returns:
        the column names and one dict per row (a short row has ``None`` for its missing cells).

    Raises:
        DataError: the file does not exist or has no header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found.", file=str(path), fix="check the dataset folder or the list file path.")
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would otherwise
    # become part of the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        rows = list(reader)
    if not columns:
        raise DataError("the file is empty (no header row).", file=str(path), row="header",
                        fix="write a header row naming the columns.")
    return columns, rows


def require_columns(columns: Iterable[str], required: Sequence[str], file: str | os.PathLike, fix: str = "") -> None:
    """Raise a :class:`DataError` naming the first missing column of ``required``.

    Args:
        columns: the columns the file has.
        required: the columns the reader needs.
        file: the file, for the message.
        fix: what the user should do; a default is given.
    """
    present = set(columns)
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; the file has {sorted(present)}.", file=str(file), row="header",
            column=missing[0], fix=fix or f"add the column(s) {missing} or point the reader at the right file.")


def is_blank(value: Any) -> bool:
    """``True`` for ``None`` and for empty or whitespace-only strings."""
    return value is None or (isinstance(value, str) and not value.strip())


def parse_number(value: Any, allowed: Sequence[float], file: str | os.PathLike, row: int | str, column: str,
                 fix: str = "") -> float:
    """Parse a cell as a number from ``allowed`` (e.g. ``(0, 1)`` for a binary label).

    Accepts numbers, booleans and numeric strings such as ``"1"``, ``"1.0"`` or ``"-1.0"``.

    Raises:
        DataError: naming the file, the row and the column, when the cell is blank, not a number or
            not one of ``allowed``.
    """
    number: float | None = None
    if isinstance(value, bool):
        number = float(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or number not in {float(a) for a in allowed}:
        shown = ", ".join(str(a) for a in allowed)
        raise DataError(f"value {value!r} is not one of {shown}.", file=str(file), row=row, column=column,
                        fix=fix or f"write one of {shown} in this cell, or drop the row.")
    return number


def parse_age(value: Any) -> int:
    """An age in whole years, or -1 where the cell is blank or not a number (age is metadata,
    never a label, so an odd value is not fatal). -1 keeps every item's keys and types the
    same, which MONAI's collate needs."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return -1


def leave_out(problems: list | None, error: DataError, image: str | None = None) -> None:
    """Record a bad row in ``problems`` (the reader leaves it out and goes on), or raise ``error`` when
    ``problems`` is None (the readers' default: any bad row stops the read)."""
    if problems is None:
        raise error
    problems.append({"file": error.file, "row": error.row, "column": error.column, "image": image,
                     "reason": str(error)})
    logger.warning("left out: %s", error)


def leave_out_missing(problems: list | None, missing: Sequence[tuple[int | str, str]], total: int,
                      file: str | os.PathLike, column: str, fix: str) -> set[str]:
    """:func:`raise_missing_images`, or, with ``problems``, one entry per missing image; returns the
    missing paths so the caller drops their items."""
    if problems is None:
        raise_missing_images(missing, total, file, column, fix)
        return set()
    for row, image in missing:
        leave_out(problems, DataError("image file not found.", file=str(file), row=row, column=column, fix=fix), image)
    return {image for _, image in missing}


def raise_missing_images(missing: Sequence[tuple[int | str, str]], total: int, file: str | os.PathLike,
                         column: str, fix: str) -> None:
    """Raise one :class:`DataError` for all missing images, with the count and the first few.

    Args:
        missing: ``(row, path)`` of every image that does not exist.
        total: how many images were listed.
        file: the list file.
        column: the column holding the image path.
        fix: what the user should do.
    """
    if not missing:
        return
    examples = "; ".join(f"row {r}: {p}" for r, p in missing[:MAX_LISTED])
    more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    raise DataError(f"{len(missing)} of {total} listed image file(s) do not exist, e.g. {examples}{more}.",
                    file=str(file), row=missing[0][0], column=column, fix=fix)


def canonical_split(split: str, splits: Sequence[str], aliases: Mapping[str, str]) -> str:
    """``split`` with an alias (e.g. ``"valid"``) replaced by its name in ``splits``.

    Raises:
        ConfigError: the split is not one of ``splits`` (nor an alias of one).
    """
    split = aliases.get(split, split)
    if split not in splits:
        raise ConfigError("split", split, f"use one of {list(splits)}.")
    return split


def splits_found(splits: Sequence[str], find: Callable[[str], object]) -> tuple[str, ...]:
    """The ``splits`` for which ``find(split)`` raises no :class:`DataError` (their files exist)."""
    found = []
    for split in splits:
        try:
            find(split)
            found.append(split)
        except DataError:
            pass
    return tuple(found)


def resolve_path(value: str, base: str | os.PathLike) -> str:
    """``value`` as an absolute path; a relative one is taken relative to ``base``."""
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = Path(base) / path
    return os.path.abspath(path)


def _json_rows(path: Path, data_list_key: str | None) -> tuple[list[str], list[Mapping[str, Any]]]:
    data = read_json(path)
    if isinstance(data, Mapping):
        if data_list_key is not None:
            if data_list_key not in data:
                raise DataError(f"no key '{data_list_key}'; the keys are {sorted(data)}.", file=str(path),
                                column=data_list_key, fix="pass the key that holds the list of items.")
            data = data[data_list_key]
        else:
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"expected a list of items or an object with one list; found list keys {lists}.",
                                file=str(path), fix="pass data_list_key to say which key holds the items.")
            data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"expected a list of items, found {type(data).__name__}.", file=str(path),
                        fix="write a JSON list of objects such as {\"image\": \"a.nii.gz\", \"label\": 1}.")
    columns: dict[str, None] = {}
    for i, item in enumerate(data, start=1):
        if not isinstance(item, Mapping):
            raise DataError(f"item is a {type(item).__name__}, not an object.", file=str(path), row=i,
                            fix="write each item as an object with an image path and a label.")
        columns.update(dict.fromkeys(item))
    return list(columns), data


def read_generic(list_file: str | os.PathLike, root: str | os.PathLike | None = None, image_column: str = "image",
                 label_column: str = "label", id_column: str = "id", data_list_key: str | None = None,
                 check_files: bool = True, problems: list | None = None) -> list[dict]:
    """Read a CSV or JSON list of image files with binary labels.

    The images may be DICOM files (``.dcm`` or without extension) or DICOM series folders,
    NIfTI, PNG or JPEG files: anything MONAI's ``LoadImage`` reads. Use
    :func:`shortcut_kd.data.image_check.check_images` to make sure each one decodes.

    Columns (CSV) or keys (JSON): ``image_column`` (required), ``label_column`` (required,
    0 or 1), ``id_column`` (optional; defaults to the image path as written), the group fields
    ``patient``, ``sex``, ``age``, ``view``, ``site`` where present, and ``bias`` (0 or 1) where
    the data carries a real bias of its own. Other columns are ignored.

    Args:
        list_file: a ``.csv`` file, or a ``.json`` file holding a list of objects (or an object
            with one such list, e.g. MONAI's ``{"training": [...]}``).
        root: folder that relative image paths are resolved against; default: the list file's folder.
        image_column: column holding the image path.
        label_column: column holding the label.
        id_column: column holding a unique sample id.
        data_list_key: for a JSON object holding several lists, the key of the one to read.
        check_files: raise if any listed image does not exist.
        problems: a list that receives one ``{"file", "row", "column", "image", "reason"}`` per bad row
            (blank path, bad label or bias, duplicate id, missing image), which is then left out
            instead of raised.

    Returns:
        the datalist: ``{"image": absolute path, "label": 0|1, "id": str, ...}`` per row.

    Raises:
        DataError: a missing file, a missing column, a blank or bad label or bias value, a
            duplicate id; the message names the file, the row and the column.
    """
    path = Path(list_file)
    base = Path(root) if root is not None else path.parent
    rows: Sequence[Mapping[str, Any]]
    if path.suffix.lower() == ".json":
        columns, rows = _json_rows(path, data_list_key)
    else:
        columns, rows = read_table(path)
    require_columns(columns, [image_column, label_column], path)
    fields = [f for f in GROUP_FIELDS if f in columns]
    has_bias = "bias" in columns

    items: list[dict] = []
    seen: dict[str, int] = {}
    missing: list[tuple[int, str]] = []
    for i, row in enumerate(rows, start=1):
        value = row.get(image_column)
        image = None if is_blank(value) else resolve_path(str(value), base)
        try:
            if image is None:
                raise DataError("the image path is empty.", file=str(path), row=i, column=image_column,
                                fix="give every row an image path, or drop the row.")
            item: dict[str, Any] = {
                "image": image,
                "label": int(parse_number(row.get(label_column), (0, 1), path, i, label_column)),
            }
            sample_id = row.get(id_column)
            item["id"] = str(value).strip() if is_blank(sample_id) else str(sample_id).strip()
            if item["id"] in seen:
                raise DataError(f"id '{item['id']}' was already used in row {seen[item['id']]}.", file=str(path),
                                row=i, column=id_column if id_column in columns else image_column,
                                fix="give every sample a unique id (or list each image once).")
            for f in fields:
                cell = row.get(f)
                item[f] = parse_age(cell) if f == "age" else ("" if is_blank(cell) else str(cell).strip())
            if has_bias:
                item["bias"] = int(parse_number(row.get("bias"), (0, 1), path, i, "bias"))
        except DataError as e:
            leave_out(problems, e, image)
            continue
        seen[item["id"]] = i
        if check_files and not os.path.exists(image):
            missing.append((i, image))
        items.append(item)
    gone = leave_out_missing(problems, missing, len(items), path, image_column,
                             fix=f"check the paths in '{image_column}'; relative paths are resolved against '{base}'.")
    return [item for item in items if item["image"] not in gone]
