"""DICOM images as the models saw their training images (display-ready grey levels), and the gate that keeps
images a model was not trained for away from it.

MONAI's readers return a DICOM file's stored values; what they mean is in the header. ``DicomDisplayReader`` (a
MONAI ``ImageReader``, tried before MONAI's own for DICOM files) applies, with pydicom's own functions: the
modality LUT / rescale slope and intercept, the VOI LUT or window, and the photometric interpretation
(MONOCHROME1 is inverted: low values are bright), then scales the result to 0-255, as the 8-bit JPEG / PNG
images the models were trained on. It is written here because no MONAI reader applies these three steps.

``dicom_gate_reason`` reads the header only and says why a file must not be predicted (modality, view
position, samples per pixel, number of frames), or ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.data import ImageReader
from monai.utils import MetaKeys

__all__ = ["DicomDisplayReader", "dicom_gate_reason", "dicom_header", "is_dicom_file", "display_pixels",
           "LATERAL_VIEWS"]

LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")
_SUFFIXES = (".dcm", ".dicom")


def dicom_header(path: str | os.PathLike) -> Any | None:
    """The header of a DICOM file (pydicom, pixel data not read), or None when it cannot be read."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception:  # a broken header: the callers report the file by path
        return None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A ``.dcm`` / ``.dicom`` name, or a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    return str(path).lower().endswith(_SUFFIXES) or has_dicom_marker(path)


def has_dicom_marker(path: str | os.PathLike) -> bool:
    """A DICOM Part 10 file carries ``DICM`` after its 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def display_pixels(ds: Any) -> np.ndarray:
    """The display grey levels (float32, 0-255) of a pydicom dataset: modality LUT, VOI LUT / window,
    MONOCHROME1 inverted; colour images are returned as stored (``(rows, cols, 3)``), scaled to 0-255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds)
        arr = np.asarray(arr, dtype=np.float64)
        if photometric == "MONOCHROME1":
            arr = arr.max() + arr.min() - arr
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return scaled.astype(np.float32)


def dicom_gate_reason(path: str | os.PathLike | Any, modalities: Sequence[str] | None = None,
                      reject_views: Sequence[str] | None = None, samples_per_pixel: int | None = None,
                      max_frames: int | None = None) -> str | None:
    """Why the DICOM file at ``path`` is not for this model, from its header alone; ``None`` when it is.

    Args:
        path: a DICOM file, or a pydicom dataset already read (as a DICOM application holds it).
        modalities: accepted ``Modality`` values (e.g. ``CR``, ``DX`` for radiographs); None: any.
        reject_views: ``ViewPosition`` values refused (e.g. lateral views for a frontal model).
        samples_per_pixel: the required ``SamplesPerPixel`` (1: grey); None: any.
        max_frames: the largest ``NumberOfFrames`` accepted; None: any.
    """
    import pydicom

    ds = path if isinstance(path, pydicom.Dataset) else pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    modality = str(ds.get("Modality", "")).upper()
    if modalities and modality not in {m.upper() for m in modalities}:
        return (f"modality {modality or 'missing'}: this model reads {', '.join(modalities)} images only; "
                "not predicted.")
    view = str(ds.get("ViewPosition", "")).upper()
    if reject_views and view in {v.upper() for v in reject_views}:
        return f"view position {view}: this model was trained on frontal views only; not predicted."
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples_per_pixel is not None and samples != int(samples_per_pixel):
        return f"{samples} samples per pixel: this model reads {samples_per_pixel}-sample (grey) images; not predicted."
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if max_frames is not None and frames > int(max_frames):
        return f"{frames} frames: this model reads single-frame images; not predicted."
    return None


class DicomDisplayReader(ImageReader):
    """MONAI ``ImageReader`` for single DICOM files that returns display grey levels (:func:`display_pixels`).

    The array is indexed ``(columns, rows)`` like MONAI's ``PILReader`` (``reverse_indexing``), so a DICOM
    radiograph and the same picture saved as PNG give the same array. A folder (a series) is not read here:
    MONAI's own DICOM readers take it.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) == 1 and os.path.isfile(names[0]) and is_dicom_file(names[0])

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        import pydicom

        name = data if isinstance(data, (str, os.PathLike)) else data[0]
        return pydicom.dcmread(str(name), **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        pixels = display_pixels(img)
        frames = int(img.get("NumberOfFrames", 1) or 1)
        colour = pixels.ndim == (3 if frames == 1 else 4)
        if frames == 1:
            pixels = np.swapaxes(pixels, 0, 1)  # (rows, cols[, 3]) -> (cols, rows[, 3])
        spatial = pixels.shape[:-1] if colour else pixels.shape
        meta: dict[str, Any] = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(spatial), MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if colour else "no_channel",
            MetaKeys.AFFINE: np.eye(len(spatial) + 1), MetaKeys.ORIGINAL_AFFINE: np.eye(len(spatial) + 1),
            "filename_or_obj": str(getattr(img, "filename", "")),
            "Modality": str(img.get("Modality", "")),
            "PhotometricInterpretation": str(img.get("PhotometricInterpretation", "")),
        }
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            meta[key] = str(img.get(key, ""))
        return pixels, meta


def gate_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of :func:`dicom_gate_reason` from a bundle's ``dicom_gate`` entry."""
    allowed = ("modalities", "reject_views", "samples_per_pixel", "max_frames")
    config = dict(config or {})
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        from shortcut_kd.errors import ConfigError

        raise ConfigError(f"dicom_gate.{unknown[0]}", config[unknown[0]], f"known keys are {list(allowed)}.")
    return config
