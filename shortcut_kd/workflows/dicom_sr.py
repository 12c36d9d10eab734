"""DICOM Structured Report output of inference: one TID 1500 Measurement Report per study.

For every study with at least one predicted DICOM input, :func:`write_structured_reports` writes a
Comprehensive 3D SR ``<StudyInstanceUID>.sr.dcm`` holding, per predicted image, a measurement group with
the model's probability of the finding (a numeric measurement), the finding present / absent at the
threshold (a qualitative evaluation), the algorithm (name, version, checkpoint sha256) and a reference to
the image. Patient and study attributes come from the source images (highdicom's ``evidence``).

MONAI writes images (``SaveImage``), not DICOM SR documents, so the SR is built here with highdicom
(the optional extra ``pip install 'shortcut-kd[dicom-sr]'``), imported only when reports are written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.io import atomic_path

__all__ = ["SR_SUFFIX", "PRESENT", "ABSENT", "PROBABILITY", "PROBABILITY_UNIT", "require_highdicom",
           "finding_code", "structured_report_name", "write_structured_reports", "write_study_reports"]

logger = logging.getLogger(__name__)

SR_SUFFIX = ".sr.dcm"
"""File name ending of a report: ``<StudyInstanceUID>.sr.dcm``."""

PRESENT = ("SCT", "52101004", "Present")
ABSENT = ("SCT", "2667000", "Absent")
PROBABILITY = ("DCM", "122157", "Probability")
PROBABILITY_UNIT = ("UCUM", "{probability}", "probability")
PROCEDURE = ("SCT", "363679005", "Imaging procedure")
INSTALL_HINT = "pip install 'shortcut-kd[dicom-sr]'"


def require_highdicom() -> Any:
    """The ``highdicom`` module, or an ImportError that says how to install it."""
    try:
        import highdicom
    except ImportError as e:
        raise ImportError(f"DICOM Structured Report output needs highdicom, which is not installed: "
                          f"{INSTALL_HINT} (or set structured_report#enabled to false).") from e
    return highdicom


def finding_code(finding: Mapping[str, Any], key: str = "structured_report#finding") -> tuple[str, str, str]:
    """``(scheme, value, meaning)`` of a finding given as ``{"scheme": ..., "value": ..., "meaning": ...}``."""
    if not isinstance(finding, Mapping) or not all(str(finding.get(k, "")).strip()
                                                   for k in ("scheme", "value", "meaning")):
        raise ConfigError(key, finding, "give the finding as {\"scheme\": \"SCT\", \"value\": \"60046008\", "
                                        "\"meaning\": \"Pleural effusion\"} (all three non-empty).")
    return str(finding["scheme"]).strip(), str(finding["value"]).strip(), str(finding["meaning"]).strip()


def structured_report_name(study_instance_uid: str) -> str:
    """The file name of a study's report, ``<StudyInstanceUID>.sr.dcm`` (characters outside a UID replaced)."""
    safe = "".join(c if c.isdigit() or c == "." else "_" for c in str(study_instance_uid).strip())
    return f"{safe}{SR_SUFFIX}"


def _lo(text: str) -> str:
    """``text`` cut to the 64 characters of a DICOM Long String (bundle names are longer)."""
    return str(text)[:64]


def _read_source(file: str) -> Any | None:
    """The header of a predicted DICOM file, or None (with a warning) when it cannot be referenced."""
    from shortcut_kd.data.dicom import dicom_header

    ds = dicom_header(file)
    if ds is None:  # predicted already, so rare: the CSV row stands, only the report leaves it out
        logger.warning("not in the structured report: %s: header unreadable", file)
        return None
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
               if not str(ds.get(k, "")).strip()]
    if missing:
        logger.warning("not in the structured report: %s: no %s", file, ", ".join(missing))
        return None
    return ds


def _predicted_dicoms(rows: Iterable[Mapping[str, Any]], threshold: float) -> dict[str, list[tuple[Any, float, bool]]]:
    """``{StudyInstanceUID: [(header, probability, present), ...]}`` of the ``ok`` DICOM rows, in row order; a
    series folder (read as one volume) gives the list of its instances' headers as one entry."""
    from shortcut_kd.data.dicom import is_dicom_file

    studies: dict[str, list[tuple[Any, float, bool]]] = {}
    seen: set[str] = set()
    for row in rows:
        file = str(row.get("file", ""))
        if row.get("status", "ok") != "ok" or row.get("probability") in (None, ""):
            continue
        if os.path.isdir(file):  # a series read as one volume: one prediction on all its instances
            from shortcut_kd.workflows.inference import series_files

            headers = [ds for ds in map(_read_source, series_files(file)) if ds is not None]
        elif os.path.isfile(file) and is_dicom_file(file):
            headers = [ds for ds in [_read_source(file)] if ds is not None]
        else:
            continue  # NIfTI / PNG / JPEG inputs have no study to report to
        fresh = [ds for ds in headers if ds.SOPInstanceUID not in seen]
        if len(fresh) < len(headers):
            logger.warning("not in the structured report twice: %s repeats a SOP Instance UID", file)
        if not fresh:
            continue
        seen.update(ds.SOPInstanceUID for ds in fresh)
        p = float(row["probability"])
        label = row.get("predicted_label")
        present = bool(int(label)) if label not in (None, "") else p >= threshold
        studies.setdefault(str(fresh[0].StudyInstanceUID), []).append((fresh if len(fresh) > 1 else fresh[0], p,
                                                                       present))
    return studies


def write_structured_reports(rows: Iterable[Mapping[str, Any]], output_dir: str | os.PathLike,
                             finding: Mapping[str, Any], model_name: str, model_version: str = "",
                             checkpoint_sha256: str = "", threshold: float = 0.5, manufacturer: str = "shortcut-kd",
                             series_number: int = 900) -> list[Path]:
    """Write one DICOM SR (TID 1500 Measurement Report) per study with predicted DICOM images.

    Args:
        rows: prediction rows with ``file``, ``status`` (only ``ok`` rows are reported), ``probability`` and
            optionally ``predicted_label`` (else ``probability >= threshold``); other keys are ignored.
            Rows of non-DICOM files are ignored.
        output_dir: where the ``<StudyInstanceUID>.sr.dcm`` files go (created when needed).
        finding: the coded finding, ``{"scheme": "SCT", "value": "60046008", "meaning": "Pleural effusion"}``.
        model_name: the algorithm's name.
        model_version: the algorithm's version.
        checkpoint_sha256: the weights' sha256, recorded as an algorithm parameter.
        threshold: the probability at which the finding is ``Present``.
        manufacturer: the SR's Manufacturer.
        series_number: the SR's Series Number.

    Returns:
        The written files, in the order the studies first appear in ``rows``.
    """
    require_highdicom()
    return write_study_reports(_predicted_dicoms(rows, float(threshold)), output_dir, finding, model_name,
                               model_version, checkpoint_sha256, threshold, manufacturer, series_number)


def write_study_reports(studies: Mapping[str, list[tuple[Any, float, bool]]], output_dir: str | os.PathLike,
                        finding: Mapping[str, Any], model_name: str, model_version: str = "",
                        checkpoint_sha256: str = "", threshold: float = 0.5, manufacturer: str = "shortcut-kd",
                        series_number: int = 900) -> list[Path]:
    """:func:`write_structured_reports` from datasets in memory (as a DICOM application holds them):
    ``{StudyInstanceUID: [(pydicom dataset, probability, present), ...]}``; the other arguments as there."""
    hd = require_highdicom()
    from highdicom.sr import (
        AlgorithmIdentification, CodedConcept, Comprehensive3DSR, DeviceObserverIdentifyingAttributes, Measurement,
        MeasurementReport, MeasurementsAndQualitativeEvaluations, ObservationContext, ObserverContext,
        QualitativeEvaluation, SourceImageForMeasurement, SourceImageForMeasurementGroup, TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    def concept(code: tuple[str, str, str]) -> Any:
        return CodedConcept(value=code[1], scheme_designator=code[0], meaning=code[2])

    scheme, value, meaning = finding_code(finding)
    finding_concept = concept((scheme, value, meaning))
    name = str(model_name).strip() or "shortcut-kd model"
    version = str(model_version).strip() or "unknown"
    parameters = [f"threshold={float(threshold):g}"] + ([f"checkpoint_sha256={checkpoint_sha256}"]
                                                        if checkpoint_sha256 else [])
    algorithm = AlgorithmIdentification(name=name, version=version, parameters=parameters)
    # one device identity per model (name, version, weights): the same model gives the same observer UID
    device_uid = generate_uid(entropy_srcs=[name, version, str(checkpoint_sha256)])
    observer = ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=(
        DeviceObserverIdentifyingAttributes(uid=device_uid, name=name, manufacturer_name=manufacturer,
                                            model_name=name)))
    private = hd.coding_schemes.CodingSchemeIdentificationItem(designator=scheme, name=f"{manufacturer} private codes")
    coding_schemes = [private] if scheme.startswith("99") else None  # a private scheme is declared in the SR

    out_dir = Path(output_dir)
    written = []
    for study_uid, images in studies.items():
        groups = []
        for i, (source, p, present) in enumerate(images, start=1):
            sources = source if isinstance(source, list) else [source]  # a series volume: all its instances
            groups.append(MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=f"{meaning}, image {i}"),
                finding_type=finding_concept,
                algorithm_id=algorithm,
                source_images=[SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
                measurements=[Measurement(name=concept(PROBABILITY), value=p, unit=concept(PROBABILITY_UNIT),
                                          algorithm_id=algorithm,
                                          referenced_images=[SourceImageForMeasurement.from_source_image(ds)
                                                             for ds in sources])],
                qualitative_evaluations=[QualitativeEvaluation(name=finding_concept,
                                                               value=concept(PRESENT if present else ABSENT))]))
        evidence = [ds for source, _, _ in images for ds in (source if isinstance(source, list) else [source])]
        report = MeasurementReport(observation_context=ObservationContext(observer_device_context=observer),
                                   procedure_reported=concept(PROCEDURE), imaging_measurements=groups,
                                   referenced_images=evidence)
        try:
            document = Comprehensive3DSR(
                evidence=evidence, content=report, series_instance_uid=generate_uid(), series_number=series_number,
                sop_instance_uid=generate_uid(), instance_number=1, manufacturer=_lo(manufacturer),
                manufacturer_model_name=_lo(name), software_versions=_lo(version),
                series_description=_lo(f"{meaning}: {name}"), content_qualification="RESEARCH",
                coding_schemes=coding_schemes, is_complete=True)
        except Exception as e:  # e.g. a source header without what an SR must copy (patient / study module)
            raise DataError(f"cannot build the structured report of study {study_uid}: {e}",
                            file=str(out_dir / structured_report_name(study_uid)),
                            fix="check the source DICOM headers and the model's name / version, or set "
                                "structured_report#enabled to false.") from e
        path = out_dir / structured_report_name(study_uid)
        with atomic_path(path) as tmp:
            document.save_as(tmp, enforce_file_format=True)
        logger.info("structured report of %d image(s) of study %s written to %s", len(images), study_uid, path)
        written.append(path)
    return written
