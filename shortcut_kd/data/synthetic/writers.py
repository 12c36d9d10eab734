"""Write generated images and tables atomically and reproducibly.

Images are encoded in memory and moved into place through :func:`shortcut_kd.io.atomic_path`,
so an interrupted run never leaves a truncated JPEG or NIfTI that a reader would later trip on.
Encoders are deterministic: JPEG/PNG bytes depend only on the pixels, and ``.nii.gz`` files
are gzipped with a zero timestamp and no embedded file name.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from shortcut_kd.io import atomic_path, write_text


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """Encode a ``uint8`` array ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB) as baseline JPEG."""
    from PIL import Image

    mode = "L" if pixels.ndim == 2 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode=mode).save(buf, format="JPEG", quality=int(quality),
                                                                  subsampling=0 if mode == "RGB" else -1)
    return buf.getvalue()


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a ``uint8`` array ``(H, W)`` or ``(H, W, 3)`` as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def encode_nifti_gz(volume: np.ndarray, affine: np.ndarray) -> bytes:
    """Encode a 3D volume as gzipped NIfTI-1 with ``affine`` as both qform and sform (millimetres)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units(xyz="mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a CSV table atomically with ``\\n`` line ends, values written as given."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
    return write_text(path, buf.getvalue())


def label_text(value: float | None) -> str:
    """A CheXpert/ISIC-style label cell: ``1.0``, ``0.0``, ``-1.0`` or blank for ``None``."""
    return "" if value is None else f"{float(value):.1f}"
