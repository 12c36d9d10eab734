"""Decode every image of a datalist once, before training, so that a damaged file is met here
with its path and not in a DataLoader worker hours into a run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shortcut_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ON_ERROR = ("skip", "raise")
_MAX_ERROR_CHARS = 300


def _error_text(error: BaseException) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def check_images(datalist: Sequence[dict], on_error: str = "skip", key: str = "image", progress: bool = False,
                 reader: Any = None, num_workers: int = 0) -> tuple[list[dict], list[dict]]:
    """Decode every image of ``datalist`` once with MONAI's ``LoadImage``.

    The whole image is decoded, not only its header, so a truncated JPEG, PNG, NIfTI or DICOM
    file is caught.

    Args:
        datalist: items with an image path under ``key`` and an ``id``.
        on_error: ``"skip"``: leave undecodable images out, logging a warning for each and a
            summary count; ``"raise"``: raise at the first one.
        key: the item key holding the image path.
        progress: show a progress bar (tqdm).
        reader: passed to ``LoadImage``; default: MONAI's own choice of reader by file type.
        num_workers: threads decoding at once (0: decode in this thread). Decoders release the GIL
            for most of their work, so threads speed up a large dataset on a multi-core machine.

    Returns:
        ``(kept, problems)``: the items that decode, in their order, and one
        ``{"id", "image", "error"}`` per item that does not.

    Raises:
        ConfigError: ``on_error`` is not ``"skip"`` or ``"raise"``.
        DataError: with ``on_error="raise"``, naming the first file that does not decode.
    """
    if on_error not in ON_ERROR:
        raise ConfigError("check_images", on_error, f"use one of {list(ON_ERROR)}.")
    from monai.transforms import LoadImage

    local = threading.local()  # one loader per thread: readers keep per-call state

    def try_load(item: dict) -> str | None:
        if not hasattr(local, "loader"):
            local.loader = LoadImage(reader=reader, image_only=True)
        try:
            local.loader(item[key])
        except Exception as e:  # any decoder failure means the same: this file cannot be used
            return _error_text(e)
        return None

    if num_workers > 0:
        pool = ThreadPoolExecutor(max_workers=num_workers)
        results = pool.map(try_load, datalist)
    else:
        pool, results = None, map(try_load, datalist)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(datalist), desc="checking images", unit="img")

    kept: list[dict] = []
    problems: list[dict] = []
    try:
        for item, error in zip(datalist, results):
            if error is None:
                kept.append(item)
                continue
            problem = {"id": str(item.get("id", "")), "image": str(item[key]), "error": error}
            if on_error == "raise":
                raise DataError(f"the image cannot be decoded ({error}).", file=problem["image"], row=problem["id"],
                                column=key, fix="re-download or re-export the file, remove its row from the list, "
                                                "or check images with on_error='skip' to leave such files out.")
            logger.warning("skipping '%s' (id %s): cannot be decoded: %s", problem["image"], problem["id"], error)
            problems.append(problem)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if problems:
        logger.warning("left out %d of %d image(s) that cannot be decoded.", len(problems), len(datalist))
    return kept, problems
