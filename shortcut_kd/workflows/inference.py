"""Inference for clinical pipelines: DICOM / NIfTI / PNG / JPEG files in, one CSV row per file out.

A bundle's ``inference.json`` composes these pieces around a stock MONAI ``SupervisedEvaluator``:

- :func:`list_inputs`: the files to predict, from a folder (searched recursively; DICOM files without an
  extension are recognised by their ``DICM`` marker), a text/CSV list of paths, or a list.
- :func:`check_inputs`: runs the bundle's preprocessing (the training pipeline without the shortcut) on
  every file once and sets aside those that cannot be read or do not fit the network, with the reason,
  so one broken file never stops the others.
- :class:`PredictionWriter`: a handler that writes ``predictions.csv`` atomically, in input order, with
  ``file, probability, predicted_label, status, reason`` (and ``gradcam`` when overlays are written).
- :class:`GradCAMWriter`: a handler that writes a Grad-CAM overlay PNG per image (optional).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from torch import nn

from shortcut_kd.data.dicom import has_dicom_marker
from shortcut_kd.errors import DataError
from shortcut_kd.io import write_json, write_text

__all__ = [
    "INPUT_SUFFIXES",
    "CSV_COLUMNS",
    "InferenceInputs",
    "list_inputs",
    "check_inputs",
    "existing_checkpoint",
    "overlay_name",
    "PredictionWriter",
    "GradCAMWriter",
]

logger = logging.getLogger(__name__)

INPUT_SUFFIXES = (".dcm", ".dicom", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg")
"""File name endings :func:`list_inputs` collects from a folder (plus DICOM files without an extension)."""

CSV_COLUMNS = ("file", "probability", "predicted_label", "status", "reason")
"""Columns of ``predictions.csv``; ``probability`` is ``softmax(logits)[1]``, the positive class."""

_LIST_SUFFIXES = (".txt", ".csv", ".lst")


def _is_input(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    if name.startswith("."):
        return False
    if any(name.endswith(s) for s in suffixes):
        return True
    return "." not in name and has_dicom_marker(path)


def _read_list_file(path: Path) -> list[str]:
    """Paths from a text file (one per line) or a CSV whose ``file``/``image``/``path`` column (or first
    column) holds them; relative paths are taken relative to the list file's folder."""
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in ("file", "image", "path", "filename") if c in header), None)
    body = rows[1:] if column is not None else rows
    column = column or 0
    files = []
    for row in body:
        if len(row) > column and row[column].strip() and not row[column].lstrip().startswith("#"):
            value = row[column].strip()
            files.append(value if os.path.isabs(value) else str(path.parent / value))
    return files


def _dicom_header(path: str) -> Any:
    """The header of a DICOM file, or None when it cannot be read (the file is listed by path and gets its
    error row later) or has no UIDs."""
    from shortcut_kd.data.dicom import dicom_header

    ds = dicom_header(path)
    return ds if ds is not None and (ds.get("StudyInstanceUID") or ds.get("SeriesInstanceUID")) else None


def _dicom_sort_key(path: str, ds: Any) -> tuple:
    """(StudyInstanceUID, SeriesInstanceUID, InstanceNumber, path); a missing InstanceNumber sorts last."""
    try:
        number = (0, float(ds.get("InstanceNumber")))
    except (TypeError, ValueError):
        number = (1, 0.0)
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")), number, path


_SERIES_FIELDS = ("ImageOrientationPatient", "Rows", "Columns", "SliceThickness", "SeriesNumber", "SequenceName",
                  "SeriesDate")
"""Header fields every slice of a series read as one volume shares (GDCM's series details and ITKReader's
SeriesDate restriction, plus the orientation)."""


def _series_folder(files: list[str], headers: Mapping[str, Any]) -> str | None:
    """The folder of a series' files when MONAI can read it as one volume, else None.

    MONAI reads a DICOM series from its folder (``ITKReader``: GDCM's series reader, slices sorted along
    the slice normal by ImagePositionPatient); a list of files would be stacked as channels. So a series
    is one volume only when its files are single-frame, the only DICOM files of their folder, and agree
    on orientation and on the fields by which GDCM splits a folder into series (else ITK would read a part).
    """
    from shortcut_kd.data.dicom import is_dicom_file

    members = set(files)
    folders = {os.path.dirname(f) for f in files}
    geometry = {tuple(str(headers[f].get(k, "")) for k in _SERIES_FIELDS) for f in files}
    frames = {int(headers[f].get("NumberOfFrames", 1) or 1) for f in files}
    if len(files) < 2 or len(folders) != 1 or len(geometry) != 1 or frames != {1}:
        return None
    folder = folders.pop()
    with os.scandir(folder or ".") as entries:
        if any(e.is_file() and e.path not in members and is_dicom_file(e.path) for e in entries):
            return None
    return folder


def _dicom_items(files: list[str], group: bool, as_volume: bool) -> list[dict]:
    """The items of a folder's ``files`` (path order) with DICOM files grouped and series collapsed (see
    :func:`list_inputs`)."""
    from shortcut_kd.data.dicom import is_dicom_file

    headers = {f: _dicom_header(f) for f in files if is_dicom_file(f)}
    headers = {f: ds for f, ds in headers.items() if ds is not None}
    if group:
        files = sorted(headers, key=lambda f: _dicom_sort_key(f, headers[f])) + [f for f in files if f not in headers]
    image: dict[str, str | None] = {f: f for f in files}  # file -> its item's image; None: in a series volume
    if as_volume:
        series: dict[tuple, list[str]] = {}
        for f in files:
            if f in headers:
                series.setdefault(_dicom_sort_key(f, headers[f])[:2], []).append(f)
        for members in series.values():
            folder = _series_folder(members, headers)
            if folder is not None:
                image.update({f: None for f in members[1:]})
                image[members[0]] = folder
            elif len(members) > 1:
                logger.warning("DICOM series %s is predicted file by file, not as one volume: give it a folder of "
                               "its own, of single-frame files.", headers[members[0]].get("SeriesInstanceUID", ""))
    return [{"image": image[f], "file": image[f]} for f in files if image[f] is not None]


def list_inputs(source: str | os.PathLike | Sequence[str | os.PathLike],
                suffixes: Sequence[str] = INPUT_SUFFIXES, group_dicom: bool = True,
                dicom_series_as_volume: bool = False) -> list[dict]:
    """The files to predict, as a MONAI datalist ``[{"image": path, "file": path}]`` in a stable order.

    Args:
        source: a folder (searched recursively for ``suffixes``, sorted by path; DICOM files without an
            extension are included), a single image file, a ``.txt`` / ``.csv`` list of paths (relative to
            the list's folder), or a list of paths (kept in the given order, also when a file is missing:
            it gets a row with the reason; a listed folder is read as one DICOM series).
        suffixes: file name endings collected from a folder.
        group_dicom: in a folder, list the DICOM files first, by (StudyInstanceUID, SeriesInstanceUID,
            InstanceNumber, path) read from their headers, then the other files (and DICOM files whose
            header cannot be read) by path.
        dicom_series_as_volume: in a folder, give a DICOM series as one item ``{"image": its folder,
            "file": its folder}``, read as one 3D volume by MONAI's DICOM series reader, when its
            single-frame files of one size and orientation are the only DICOM files of that folder; any
            other series stays one item per file.

    Raises:
        DataError: ``source`` does not exist, or a folder holds no image.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_input(p, suffixes))
            if not files:
                raise DataError(f"no image files ({', '.join(suffixes)} or DICOM) in the folder.", file=str(path),
                                fix="point dataset_dir at the folder of DICOM / NIfTI / PNG / JPEG files to predict.")
        elif path.is_file() and path.name.lower().endswith(_LIST_SUFFIXES):
            files = _read_list_file(path)
        elif path.is_file():
            files = [str(path)]
        else:
            raise DataError("input folder or file not found.", file=str(path),
                            fix="set dataset_dir to a folder of images, an image, or a text/CSV list of paths.")
        if path.is_dir() and (group_dicom or dicom_series_as_volume):
            return _dicom_items(files, group_dicom, dicom_series_as_volume)
    else:
        files = [str(p) for p in source]
    return [{"image": f, "file": f} for f in files]


@dataclass
class InferenceInputs:
    """The outcome of :func:`check_inputs`.

    Args:
        readable: datalist items the preprocessing accepts (the evaluator's data).
        failures: ``{"file": ..., "reason": ...}`` of every file it rejects.
        files: every input file, in input order (the CSV's row order).
    """

    readable: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _reason(error: BaseException) -> str:
    """A one-line reason, from the deepest toolkit error in the chain when there is one."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__
    if cause is None:
        text = f"{type(error).__name__}: {error}"
    else:
        text = str(cause)
        prefix = f"file '{cause.file}'"
        if cause.file is not None and text.startswith(prefix):  # the CSV row names the file already
            text = text[len(prefix):].lstrip(" ,:")
    return " ".join(text.split())


def check_inputs(datalist: Sequence[dict], transform: Callable, spatial_dims: int | None = None,
                 in_channels: int | None = None, image_key: str = "image",
                 dicom_gate: Mapping[str, Any] | None = None) -> InferenceInputs:
    """Run ``transform`` on every item once; keep the items it accepts and record why it rejects the rest.

    A file is rejected when it is missing, cannot be decoded (truncated, no pixel data, unsupported
    compression), or does not give an image of ``in_channels`` channels and ``spatial_dims`` dimensions
    after preprocessing (e.g. a 3D volume given to a 2D bundle). Each file is decoded twice (here and in
    the evaluator), which keeps memory flat for folders of any size.

    Args:
        datalist: items from :func:`list_inputs`.
        transform: the bundle's inference preprocessing.
        spatial_dims: the network's spatial dimensions (checked when given).
        in_channels: the network's input channels (checked when given).
        image_key: the image field.
        dicom_gate: what a DICOM input must be for this model (``modalities``, ``reject_views``,
            ``samples_per_pixel``, ``max_frames``; see :func:`~shortcut_kd.data.dicom.dicom_gate_reason`);
            a file it refuses gets status ``skipped`` and the reason, and is not predicted.
    """
    from shortcut_kd.data.dicom import dicom_gate_reason, gate_config, is_dicom_file

    gate = gate_config(dicom_gate) if dicom_gate else None
    out = InferenceInputs()
    for item in datalist:
        file = str(item.get("file", item[image_key]))
        out.files.append(file)
        try:
            if not os.path.exists(str(item[image_key])):
                raise DataError("file not found.", file=file, fix="check the path.")
            path = str(item[image_key])
            skip = dicom_gate_reason(path, **gate) if gate and os.path.isfile(path) and is_dicom_file(path) else None
            if skip:
                logger.warning("not for this model: %s: %s", file, skip)
                out.failures.append({"file": file, "reason": skip, "status": "skipped"})
                continue
            image = transform(dict(item))[image_key]
            shape = tuple(image.shape)
            if spatial_dims is not None and len(shape) - 1 != int(spatial_dims):
                raise DataError(f"preprocessed image has shape {shape}, not {spatial_dims} spatial dimensions.",
                                file=file, fix=f"give this bundle {spatial_dims}D images.")
            if in_channels is not None and shape[0] != int(in_channels):
                raise DataError(f"preprocessed image has {shape[0]} channels; the network expects {in_channels}.",
                                file=file, fix=f"give images with {in_channels} channel(s) (e.g. not a 4D series).")
            out.readable.append(dict(item))
        except Exception as e:  # any failure of one file: report it and go on with the others
            reason = _reason(e)
            logger.warning("skipped %s: %s", file, reason)
            out.failures.append({"file": file, "reason": reason, "status": "error"})
    logger.info("%d of %d inputs readable", len(out.readable), len(out.files))
    return out


def existing_checkpoint(path: str | os.PathLike) -> str:
    """``path`` if the checkpoint exists, else a DataError saying which stage writes it."""
    if not Path(path).is_file():
        raise DataError("checkpoint not found.", file=str(path),
                        fix="train the model first (models/model_kd.pt: the 'distill' stage, models/model.pt: "
                            "'train'), or set ckpt_path to an existing checkpoint.")
    return str(path)


def overlay_name(file: str) -> str:
    """The Grad-CAM PNG name of an input: its stem plus a short hash of its full path (unique per file)."""
    name = Path(file).name
    for suffix in sorted(INPUT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"
    return f"{safe}_{digest}.png"


def _items(engine: Engine, file_key: str = "file") -> list[tuple[dict, dict]]:
    """(input item, output item) pairs of the current iteration (decollated or not)."""
    # ignite annotates State.batch and State.output as ints; they hold the loader's batch and the outputs
    batch: Any = engine.state.batch
    output: Any = engine.state.output
    if isinstance(batch, dict):
        n = len(batch[file_key])
        batch = [{k: v[i] for k, v in batch.items() if isinstance(v, (list, tuple, torch.Tensor)) and len(v) == n}
                 for i in range(n)]
    if isinstance(output, dict):
        output = [{"pred": p} for p in output["pred"]]
    return list(zip(batch, output))


UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
PROVENANCE_COLUMNS = ("model", "model_version", "checkpoint_sha256", "preprocessing_hash")


def series_files(folder: str | os.PathLike) -> list[str]:
    """The DICOM files of a series folder (an input read as one volume), sorted by name."""
    from shortcut_kd.data.dicom import is_dicom_file

    return sorted(str(p) for p in Path(folder).iterdir() if p.is_file() and is_dicom_file(p))


def dicom_uids(file: str) -> tuple[str, str, str]:
    """The Study, Series and SOP Instance UIDs of a DICOM file (empty for other files or unreadable headers);
    for a series folder read as one volume, its Study and Series UIDs and no SOP Instance UID."""
    from shortcut_kd.data.dicom import dicom_header, is_dicom_file

    if os.path.isdir(file):
        files = series_files(file)
        study, series, _ = dicom_uids(files[0]) if files else ("", "", "")
        return study, series, ""
    if not (os.path.isfile(file) and is_dicom_file(file)):
        return "", "", ""
    ds = dicom_header(file)
    if ds is None:  # a broken header: its row already says why it was not predicted
        return "", "", ""
    return tuple(str(ds.get(k, "")) for k in UID_COLUMNS)  # type: ignore[return-value]


def model_provenance(model: str = "", version: str = "", checkpoint: str | os.PathLike | None = None,
                     preprocessing: Any = None) -> dict[str, str]:
    """What made a prediction: the bundle's name and version, the checkpoint's sha256 and a hash of the
    preprocessing (the transforms' pickled state, as the preprocessing cache keys it)."""
    from shortcut_kd.data.cache import transform_hash
    from shortcut_kd.provenance import file_sha256

    digest = (file_sha256(checkpoint) if checkpoint is not None else None) or ""
    transforms = getattr(preprocessing, "transforms", preprocessing)
    prep = transform_hash(list(transforms)).decode() if transforms is not None else ""
    return {"model": str(model), "model_version": str(version), "checkpoint_sha256": digest,
            "preprocessing_hash": prep}


class PredictionWriter:
    """Collect the positive-class probability of every image and write ``predictions.csv`` at the end.

    Rows follow the input order; a file that could not be read has ``status`` ``error`` and the reason,
    the others ``ok``. The CSV is written atomically (also when every file failed: call :meth:`write`).

    Args:
        output_file: the CSV to write.
        inputs: the :class:`InferenceInputs` from :func:`check_inputs`.
        threshold: ``predicted_label = 1`` when ``probability >= threshold``.
        gradcam_dir: the folder of :class:`GradCAMWriter` overlays; adds a ``gradcam`` column.
        pred_key: output field with the softmax probabilities (``Activationsd(softmax=True)``).
        file_key: input field with the file path.
        provenance: ``model``, ``version``, ``checkpoint`` and ``preprocessing`` (:func:`model_provenance`):
            adds the DICOM UIDs of each input and the model's name, version, checkpoint sha256 and
            preprocessing hash to every row.
        structured_report: ``enabled``, ``output_dir`` (default: ``sr`` beside the CSV) and ``finding``
            (``{"scheme", "value", "meaning"}``): when enabled, :meth:`write` also writes one DICOM SR per
            study of the predicted DICOM inputs (:func:`~shortcut_kd.workflows.dicom_sr.write_structured_reports`,
            needs ``pip install 'shortcut-kd[dicom-sr]'``) and lists them in the summary.
    """

    def __init__(self, output_file: str | os.PathLike, inputs: InferenceInputs, threshold: float = 0.5,
                 gradcam_dir: str | os.PathLike | None = None, pred_key: str = "pred", file_key: str = "file",
                 provenance: Mapping[str, Any] | None = None,
                 structured_report: Mapping[str, Any] | None = None) -> None:
        self.output_file, self.inputs, self.threshold = Path(output_file), inputs, float(threshold)
        self.gradcam_dir = Path(gradcam_dir) if gradcam_dir else None
        self.pred_key, self.file_key = pred_key, file_key
        self.probabilities: dict[str, float] = {}
        self.provenance = model_provenance(**provenance) if provenance else None
        self.structured_report: dict[str, Any] | None = None
        if structured_report and structured_report.get("enabled", False):
            from shortcut_kd.workflows.dicom_sr import finding_code, require_highdicom

            require_highdicom()  # fail before inference runs, not after
            finding_code(structured_report.get("finding", {}))
            self.structured_report = dict(structured_report)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, lambda e: self.write())

    def collect(self, engine: Engine) -> None:
        for item, out in _items(engine, self.file_key):
            pred = torch.as_tensor(out[self.pred_key]).detach().float().reshape(-1)
            if pred.numel() < 2:
                raise DataError(f"prediction has {pred.numel()} value(s); expected two class probabilities.",
                                file=str(item[self.file_key]),
                                fix="use a two-logit network and softmax post-processing.")
            self.probabilities[str(item[self.file_key])] = float(pred[1])

    def rows(self) -> list[list[Any]]:
        """The CSV rows (without the header)."""
        failures = {f["file"]: (f.get("status", "error"), f["reason"]) for f in self.inputs.failures}
        rows = []
        for file in self.inputs.files:
            if file in self.probabilities:
                p = self.probabilities[file]
                row = [file, f"{p:.6f}", int(p >= self.threshold), "ok", ""]
                extra = [str(self.gradcam_dir / overlay_name(file))] if self.gradcam_dir else []
            else:
                status, reason = failures.get(file, ("error", "not processed"))
                row = [file, "", "", status, reason]
                extra = [""] if self.gradcam_dir else []
            if self.provenance is not None:
                row += [*dicom_uids(file), *self.provenance.values()]
            rows.append(row + extra)
        return rows

    @property
    def summary_file(self) -> Path:
        """``<csv>.summary.json`` beside the CSV: the counts of the run."""
        return self.output_file.with_suffix(".summary.json")

    def summary(self) -> dict[str, Any]:
        """How many files were given, predicted and rejected, and every rejected file with its reason."""
        rejected = [{"file": row[0], "status": row[3], "reason": row[4]} for row in self.rows() if row[3] != "ok"]
        errors = sum(r["status"] == "error" for r in rejected)
        return {"files": len(self.inputs.files), "predicted": len(self.inputs.files) - len(rejected),
                "errors": errors, "skipped": len(rejected) - errors, "rejected": rejected}

    def write(self) -> Path:
        """Write the CSV and its summary atomically and return the CSV's path."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        provenance = [*UID_COLUMNS, *PROVENANCE_COLUMNS] if self.provenance is not None else []
        writer.writerow(list(CSV_COLUMNS) + provenance + (["gradcam"] if self.gradcam_dir else []))
        writer.writerows(self.rows())
        write_text(self.output_file, buf.getvalue())
        summary = self.summary()
        if self.structured_report is not None:
            summary["structured_reports"] = [self._summary_path(p) for p in self.write_structured_reports()]
        write_json(self.summary_file, summary)
        logger.info("predictions for %d of %d files written to %s", len(self.probabilities), len(self.inputs.files),
                    self.output_file)
        return self.output_file

    def write_structured_reports(self) -> list[Path]:
        """Write one DICOM SR per study of the predicted DICOM inputs (see ``structured_report``)."""
        from shortcut_kd.workflows.dicom_sr import write_structured_reports

        config = self.structured_report or {}
        provenance = self.provenance or {}
        rows = [{"file": f, "status": "ok", "probability": self.probabilities[f],
                 "predicted_label": int(self.probabilities[f] >= self.threshold)}
                for f in self.inputs.files if f in self.probabilities]
        return write_structured_reports(rows, config.get("output_dir") or self.output_file.parent / "sr",
                                        config["finding"], model_name=provenance.get("model", ""),
                                        model_version=provenance.get("model_version", ""),
                                        checkpoint_sha256=provenance.get("checkpoint_sha256", ""),
                                        threshold=self.threshold)

    def _summary_path(self, path: Path) -> str:
        """``path`` relative to the summary's folder when inside it, else as given."""
        try:
            return str(Path(path).resolve().relative_to(self.summary_file.parent.resolve()))
        except ValueError:
            return str(path)


class GradCAMWriter:
    """Write a Grad-CAM overlay of the positive class for every image, one PNG per input file.

    Uses ``shortcut_kd.evaluation.gradcam_maps`` (MONAI ``GradCAM`` on a copy of the network) and
    ``save_gradcam_panel`` (3D volumes: the mid axial slice). Files are named by :func:`overlay_name`.

    Args:
        network: the model of the evaluator.
        target_layer: the layer to explain, e.g. ``layer4`` (ResNet), ``features.denseblock4`` (DenseNet),
            ``block5`` (SimBA CNN).
        output_dir: where the PNGs go.
        class_idx: the class to explain (1: the finding).
        file_key: input field with the file path.
    """

    def __init__(self, network: nn.Module, target_layer: str, output_dir: str | os.PathLike, class_idx: int = 1,
                 file_key: str = "file") -> None:
        self.network, self.target_layer, self.output_dir = network, target_layer, Path(output_dir)
        self.class_idx, self.file_key = int(class_idx), file_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from shortcut_kd.evaluation import gradcam_maps, save_gradcam_panel

        pairs = _items(engine, self.file_key)
        images = torch.stack([torch.as_tensor(item["image"]).detach().float() for item, _ in pairs])
        device = next(self.network.parameters()).device
        maps = gradcam_maps(self.network, images, self.target_layer, class_idx=self.class_idx, device=device)
        for i, (item, out) in enumerate(pairs):
            file = str(item[self.file_key])
            p = float(torch.as_tensor(out["pred"]).reshape(-1)[1])
            save_gradcam_panel(images[i:i + 1].cpu(), None, {"Grad-CAM": maps[i:i + 1]},
                               self.output_dir / overlay_name(file), titles=[f"{Path(file).name}  p={p:.2f}"])
