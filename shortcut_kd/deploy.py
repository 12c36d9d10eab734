"""What a MONAI Deploy application needs from a shortcut-kd bundle, without the MONAI Deploy SDK.

The reference application in the repository's ``deploy/`` folder chains the SDK's DICOM loader and series
selector, :func:`instance_image` (the model's gate and its pixel pipeline on each selected instance), the
SDK's ``MonaiBundleInferenceOperator`` and a structured-report writer. Everything here is plain Python on
pydicom datasets, so it is tested on CPU where the SDK (which needs CUDA) is not installed.

Why not the SDK's ``DICOMSeriesToVolumeOperator`` for radiographs: it applies the modality LUT but neither
the VOI LUT / window nor the MONOCHROME1 inversion, while the models were trained on display-ready images;
:func:`instance_image` gives exactly the pixels the bundle's own DICOM reader gives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from shortcut_kd.errors import DataError

__all__ = ["BundleSettings", "NotForModel", "bundle_settings", "series_selection_rules", "instance_image",
           "positive_probability", "write_study_report"]


class NotForModel(ValueError):
    """An instance the model was not trained for (modality, view, samples per pixel, frames); the message
    is the reason written to the output."""


@dataclass
class BundleSettings:
    """The settings of a bundle an application needs, read from its ``configs/inference.json`` and
    ``configs/metadata.json``."""

    name: str
    version: str
    spatial_dims: int
    in_channels: int
    threshold: float = 0.5
    dicom_gate: dict = field(default_factory=dict)
    finding: dict = field(default_factory=dict)


def bundle_settings(bundle_dir: str | os.PathLike) -> BundleSettings:
    """Read :class:`BundleSettings` from a bundle folder (e.g. one written by ``shortcut-kd export-bundle``)."""
    configs = Path(bundle_dir) / "configs"
    try:
        inference = json.loads((configs / "inference.json").read_text())
        meta = json.loads((configs / "metadata.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the bundle's configs ({e}).", file=str(configs),
                        fix="point the application at a bundle folder holding configs/inference.json and "
                            "configs/metadata.json.") from e
    return BundleSettings(
        name=str(meta.get("name", Path(bundle_dir).name)), version=str(meta.get("version", "")),
        spatial_dims=int(inference["spatial_dims"]), in_channels=int(inference["in_channels"]),
        threshold=float(inference.get("threshold", 0.5)), dicom_gate=dict(inference.get("dicom_gate") or {}),
        finding=dict((inference.get("structured_report") or {}).get("finding") or {}),
    )


def series_selection_rules(settings: BundleSettings) -> dict:
    """Rules for MONAI Deploy's ``DICOMSeriesSelectorOperator``: the series whose ``Modality`` the model
    reads (every series when the bundle names none). The view, samples per pixel and frame count are checked
    per instance by :func:`instance_image`, which says why an instance is refused."""
    modalities = [str(m).upper() for m in settings.dicom_gate.get("modalities") or []]
    conditions = {"Modality": f"(?i)^({'|'.join(modalities)})$"} if modalities else {}
    return {"selections": [{"name": f"{settings.name}: {'/'.join(modalities) or 'any'} series",
                            "conditions": conditions, "all_matched": True}]}


def instance_image(ds: Any, settings: BundleSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """The pixels and metadata of one DICOM instance as the bundle's reader gives them, for a 2D bundle.

    Returns an array indexed ``(columns, rows)`` (colour last) and metadata with ``original_channel_dim``,
    so the bundle's preprocessing without its loader (what the SDK's bundle operator runs) places the
    channel and gives the same tensor as the bundle's own inference on the file.

    Raises:
        NotForModel: the gate of the bundle refuses the instance; the message says why.
        DataError: the instance holds no decodable pixel data.
    """
    from monai.utils import MetaKeys

    from shortcut_kd.data.dicom import dicom_gate_reason, display_pixels, gate_config

    reason = dicom_gate_reason(ds, **gate_config(settings.dicom_gate)) if settings.dicom_gate else None
    if reason:
        raise NotForModel(reason)
    if settings.spatial_dims != 2:
        raise NotForModel(f"a {settings.spatial_dims}D bundle reads whole series: use the SDK's "
                          "DICOMSeriesToVolumeOperator for it.")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:  # from the header, before decoding anything
        raise NotForModel("a multi-frame instance: this model reads single-frame images; not predicted.")
    try:
        pixels = display_pixels(ds)
    except Exception as e:  # no pixel data, unsupported compression: the instance is reported, not predicted
        raise DataError(f"cannot decode the pixel data ({type(e).__name__}: {e}).",
                        file=str(ds.get("SOPInstanceUID", "?")), fix="check the instance's transfer syntax.") from e
    colour = pixels.ndim == 3
    pixels = np.swapaxes(pixels, 0, 1)  # (rows, cols[, 3]) -> (cols, rows[, 3]), as MONAI's readers index
    spatial = pixels.shape[:2]
    meta: dict[str, Any] = {MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if colour else "no_channel",
                            MetaKeys.SPATIAL_SHAPE: np.asarray(spatial), MetaKeys.AFFINE: np.eye(3),
                            MetaKeys.ORIGINAL_AFFINE: np.eye(3)}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
        meta[key] = str(ds.get(key, ""))
    return pixels.astype(np.float32), meta


def positive_probability(output: Any) -> float:
    """The finding's probability from what the SDK's bundle operator emits for a ``probabilities`` output
    (``{"result": ..., "probabilities": array}``) or from a tensor / array of the two class probabilities."""
    value: Any = output.get("probabilities") if isinstance(output, Mapping) else output
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    flat = np.asarray(value, dtype=np.float64).reshape(-1)
    if flat.size != 2:
        raise DataError(f"the output holds {flat.size} value(s); expected the two class probabilities.",
                        column="pred", fix="use the bundle's softmax postprocessing on a two-logit network.")
    return float(flat[1])


def write_study_report(datasets: list, probability: float, settings: BundleSettings, output_dir: str | os.PathLike,
                       checkpoint: str | os.PathLike | None = None) -> Path:
    """The DICOM Structured Report of one prediction on ``datasets`` (the instance(s) the image was made of),
    written as ``<output_dir>/<StudyInstanceUID>.sr.dcm`` by :mod:`shortcut_kd.workflows.dicom_sr`; the
    algorithm is the bundle's name and version with the sha256 of ``checkpoint``."""
    from shortcut_kd.provenance import file_sha256
    from shortcut_kd.workflows.dicom_sr import write_study_reports

    if not datasets:
        raise DataError("no source instance to report on.", column="datasets",
                        fix="pass the instance(s) the predicted image was made of.")
    present = float(probability) >= settings.threshold
    study = str(datasets[0].StudyInstanceUID)
    sha = (file_sha256(checkpoint) if checkpoint is not None else None) or ""
    finding = settings.finding or {"scheme": "99SHORTCUTKD", "value": "FINDING", "meaning": "Finding"}
    return write_study_reports({study: [(ds, float(probability), present) for ds in datasets]}, output_dir, finding,
                               settings.name, settings.version, sha, settings.threshold)[0]
