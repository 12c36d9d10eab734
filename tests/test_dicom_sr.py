"""DICOM Structured Report output of inference, on pydicom's real CT and MR test files: one TID 1500
report per study, referencing exactly the predicted images, with each image's probability and finding."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from shortcut_kd.errors import ConfigError
from shortcut_kd.workflows.dicom_sr import structured_report_name, write_structured_reports
from shortcut_kd.workflows.inference import InferenceInputs, PredictionWriter

REPO = Path(__file__).resolve().parents[1]
PLEURAL_EFFUSION = {"scheme": "SCT", "value": "60046008", "meaning": "Pleural effusion"}
PRESENT, ABSENT = "52101004", "2667000"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def bundle_name(name: str) -> str:
    """``_meta_#name`` of a bundle (longer than the 64 characters of a DICOM Long String for some)."""
    return json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())["name"]


def dicom_copy(src: str, dest: Path, new_study: bool = False) -> Path:
    """A copy of ``src`` with a new SOP Instance UID (and a new study when asked)."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if new_study:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.save_as(dest)
    return dest


@pytest.fixture
def cases(tmp_path):
    """Study A: three CT images (two predicted, one skipped); study B: one MR image; study C: one MR image,
    skipped; plus a PNG and a missing file. ``rows`` as PredictionWriter gives them."""
    folder = tmp_path / "cases"
    folder.mkdir()
    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    a1 = Path(shutil.copy(ct, folder / "a1.dcm"))
    a2 = dicom_copy(ct, folder / "a2.dcm")
    a3 = dicom_copy(ct, folder / "a3.dcm")
    b1 = Path(shutil.copy(mr, folder / "b1"))  # PACS-style, no extension
    c1 = dicom_copy(mr, folder / "c1.dcm", new_study=True)
    png = folder / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    probabilities = {a1: 0.8, a2: 0.3, b1: 0.55, png: 0.9}
    rows = [{"file": str(f), "status": "ok", "probability": p, "predicted_label": int(p >= 0.5)}
            for f, p in probabilities.items()]
    rows += [{"file": str(a3), "status": "skipped", "probability": "", "reason": "not for this model"},
             {"file": str(c1), "status": "skipped", "probability": "", "reason": "not for this model"},
             {"file": str(folder / "gone.dcm"), "status": "error", "probability": "", "reason": "file not found."}]
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in (a1, a2, a3, b1, c1)}
    return SimpleNamespace(folder=folder, rows=rows, probabilities=probabilities, headers=headers,
                           a=(a1, a2, a3), b1=b1, c1=c1, png=png)


def content_items(ds):
    """Every SR content item below ``ds``, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


def text_values(sr, code: str) -> list[str]:
    return [item.TextValue for item in content_items(sr) if "ConceptNameCodeSequence" in item and concept(item) == code]


def per_image(sr) -> dict[str, dict]:
    """``{SOP Instance UID: {"probability", "finding", "evaluation", "measured_image"}}`` of each group."""
    from highdicom.sr import srread

    out = {}
    for group in srread(sr.filename).content.get_image_measurement_groups():
        (source,) = group.source_images
        (measurement,) = group.get_measurements()
        (evaluation,) = group.get_qualitative_evaluations()
        (measured,) = measurement.referenced_images
        out[source.referenced_sop_instance_uid] = {
            "probability": measurement.value, "unit": measurement.unit.value, "finding": group.finding_type.value,
            "evaluated": evaluation.name.value, "evaluation": evaluation.value.value,
            "measured_image": measured.referenced_sop_instance_uid}
    return out


def evidence_uids(sr) -> set[str]:
    return {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}


def library_uids(sr) -> set[str]:
    """The images of the report's Image Library (TID 1600)."""
    (library,) = [item for item in sr.ContentSequence if item.ValueType == "CONTAINER" and concept(item) == "111028"]
    return {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in content_items(library)
            if item.ValueType == "IMAGE"}


def test_one_report_per_study_referencing_only_predicted_images(cases, tmp_path):
    out, model = tmp_path / "sr", bundle_name("chexpert_shortcut_kd")
    written = write_structured_reports(cases.rows, out, PLEURAL_EFFUSION, model_name=model,
                                       model_version="0.4.0", checkpoint_sha256="ab" * 32)
    a1, a2, a3 = cases.a
    study_a, study_b = cases.headers[a1].StudyInstanceUID, cases.headers[cases.b1].StudyInstanceUID
    assert study_a != study_b
    assert written == [out / f"{study_a}.sr.dcm", out / f"{study_b}.sr.dcm"], "one per study, in row order"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written), "no temporary left, no C"

    expected = {study_a: {a1: 0.8, a2: 0.3}, study_b: {cases.b1: 0.55}}
    for path in written:
        sr = pydicom.dcmread(path)
        study = sr.StudyInstanceUID
        source = cases.headers[next(iter(expected[study]))]
        assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.Modality == "SR"
        assert (sr.PatientID, sr.PatientName, sr.StudyID) == (source.PatientID, source.PatientName, source.StudyID)
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        predicted = {cases.headers[f].SOPInstanceUID: p for f, p in expected[study].items()}
        assert evidence_uids(sr) == set(predicted) == library_uids(sr)
        assert cases.headers[a3].SOPInstanceUID not in evidence_uids(sr) | library_uids(sr)
        groups = per_image(sr)
        assert set(groups) == set(predicted), "one measurement group per predicted image"
        for uid, p in predicted.items():
            g = groups[uid]
            assert g["probability"] == pytest.approx(p) and g["unit"] == "{probability}"
            assert g["measured_image"] == uid
            assert g["finding"] == g["evaluated"] == "60046008"
            assert g["evaluation"] == (PRESENT if p >= 0.5 else ABSENT)
        assert set(text_values(sr, "111001")) == {model}  # Algorithm Name
        assert set(text_values(sr, "111003")) == {"0.4.0"}  # Algorithm Version
        assert f"checkpoint_sha256={'ab' * 32}" in text_values(sr, "111002")  # Algorithm Parameters


def test_threshold_decides_the_finding_when_rows_have_no_label(cases, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "predicted_label"} for r in cases.rows]
    (path, _) = write_structured_reports(rows, tmp_path, PLEURAL_EFFUSION, "m", "1", threshold=0.25)
    evaluations = {g["evaluation"] for g in per_image(pydicom.dcmread(path)).values()}
    assert evaluations == {PRESENT}, "0.8 and 0.3 are both >= 0.25"


def test_study_without_predicted_image_gets_no_report(cases, tmp_path):
    skipped_only = [r for r in cases.rows if r["status"] != "ok"]
    assert write_structured_reports(skipped_only, tmp_path / "sr", PLEURAL_EFFUSION, "m", "1") == []
    png_only = [r for r in cases.rows if r["file"] == str(cases.png)]
    assert write_structured_reports(png_only, tmp_path / "sr", PLEURAL_EFFUSION, "m", "1") == []
    assert not (tmp_path / "sr").exists() or not any((tmp_path / "sr").iterdir())


def test_private_finding_code_is_declared(cases, tmp_path):
    simba = {"scheme": "99SHORTCUTKD", "value": "SIMBA-CLASS-1", "meaning": "SimBA class 1"}
    rows = [r for r in cases.rows if r["file"] == str(cases.b1)]
    model = bundle_name("simba_shortcut_kd")
    assert len(model) > 64
    (path,) = write_structured_reports(rows, tmp_path, simba, model, "0.4.0")
    sr = pydicom.dcmread(path)
    assert text_values(sr, "111001") == [model] * 2, "the full name, in the group and its measurement"
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == ["99SHORTCUTKD"]
    (group,) = per_image(sr).values()
    assert group["finding"] == "SIMBA-CLASS-1" and group["evaluation"] == PRESENT
    with pytest.raises(ConfigError, match="finding"):
        write_structured_reports(rows, tmp_path, {"scheme": "SCT", "value": "60046008"}, "m", "1")


def fake_engine(files: list[Path], probabilities: list[float]) -> SimpleNamespace:
    """What PredictionWriter.collect reads of an ignite engine: one batch and its softmax outputs."""
    pred = torch.tensor([[1 - p, p] for p in probabilities])
    return SimpleNamespace(state=SimpleNamespace(batch={"file": [str(f) for f in files]}, output={"pred": pred}))


def prediction_writer(cases, out: Path, structured_report=None) -> PredictionWriter:
    ok = [f for f in cases.probabilities]
    skipped = [cases.a[2], cases.c1]
    inputs = InferenceInputs(readable=[{"image": str(f), "file": str(f)} for f in ok],
                             failures=[{"file": str(f), "reason": "not for this model", "status": "skipped"}
                                       for f in skipped],
                             files=[str(f) for f in ok + skipped])
    ckpt = out / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"weights")
    writer = PredictionWriter(out / "predictions.csv", inputs, threshold=0.5, structured_report=structured_report,
                              provenance={"model": "chexpert_shortcut_kd", "version": "0.4.0", "checkpoint": ckpt})
    writer.collect(fake_engine(ok, list(cases.probabilities.values())))
    return writer


def test_prediction_writer_writes_reports_and_lists_them(cases, tmp_path):
    out = tmp_path / "eval"
    config = {"enabled": True, "output_dir": str(out / "sr"), "finding": PLEURAL_EFFUSION}
    prediction_writer(cases, out, config).write()
    summary = json.loads((out / "predictions.summary.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    studies = [cases.headers[cases.a[0]].StudyInstanceUID, cases.headers[cases.b1].StudyInstanceUID]
    assert summary["structured_reports"] == [f"sr/{structured_report_name(s)}" for s in studies]
    assert summary["predicted"] == 4 and summary["skipped"] == 2
    reported = set()
    for name in summary["structured_reports"]:
        sr = pydicom.dcmread(out / name)
        reported |= evidence_uids(sr)
        assert text_values(sr, "111001") and set(text_values(sr, "111001")) == {"chexpert_shortcut_kd"}
        sha = hashlib.sha256(b"weights").hexdigest()
        assert f"checkpoint_sha256={sha}" in text_values(sr, "111002")
        for uid, group in per_image(sr).items():
            (row,) = [r for r in rows if r["SOPInstanceUID"] == uid]
            assert group["probability"] == pytest.approx(float(row["probability"]), abs=1e-6)
            assert group["evaluation"] == (PRESENT if row["predicted_label"] == "1" else ABSENT)
    predicted_dicom = {r["SOPInstanceUID"] for r in rows if r["status"] == "ok" and r["SOPInstanceUID"]}
    assert reported == predicted_dicom and len(reported) == 3, "the CSV's predicted DICOM images, no other"


def test_prediction_writer_default_is_unchanged(cases, tmp_path):
    plain, off = tmp_path / "plain", tmp_path / "off"
    prediction_writer(cases, plain).write()
    prediction_writer(cases, off, {"enabled": False, "output_dir": str(off / "sr"), "finding": {}}).write()
    assert (plain / "predictions.csv").read_text().splitlines()[0] == (off / "predictions.csv").read_text(
    ).splitlines()[0]
    assert "structured_reports" not in json.loads((off / "predictions.summary.json").read_text())
    assert not (off / "sr").exists()


def test_missing_highdicom_names_the_extra(cases, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'shortcut-kd\[dicom-sr\]'"):
        prediction_writer(cases, tmp_path, {"enabled": True, "finding": PLEURAL_EFFUSION})
    prediction_writer(cases, tmp_path, {"enabled": False}).write()  # off: highdicom is not needed


@pytest.mark.parametrize("name, finding", [
    ("chexpert_shortcut_kd", ("SCT", "60046008", "Pleural effusion")),
    ("isic2017_shortcut_kd", ("SCT", "372244006", "Malignant melanoma")),
    ("simba_shortcut_kd", ("99SHORTCUTKD", "SIMBA-CLASS-1", "SimBA class 1")),
])
def test_bundle_configs(name, finding, tmp_path):
    from monai.bundle import ConfigParser

    config = json.loads((REPO / "bundles" / name / "configs" / "inference.json").read_text())
    block = config["structured_report"]
    assert block["enabled"] is False
    assert (block["finding"]["scheme"], block["finding"]["value"], block["finding"]["meaning"]) == finding
    assert config["writer"]["structured_report"] == "@structured_report"
    parser = ConfigParser(config)
    parser["output_dir"] = str(tmp_path)
    assert parser.get_parsed_content("structured_report")["output_dir"] == f"{tmp_path}/sr"


def test_bundle_inference_writes_reports(tmp_path):
    """The CheXpert bundle (tiny, untrained weights) with ``structured_report#enabled``: one SR per study of
    its DICOM inputs, named in the summary, with the bundle's name from its metadata."""
    from test_bundle_inference import bundle_with_weights, predict

    folder = tmp_path / "cases"
    folder.mkdir()
    ct = Path(shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm"))
    dicom_copy(str(ct), folder / "ct2.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    bundle = bundle_with_weights("chexpert", tmp_path)
    out = tmp_path / "out"
    rows = predict(bundle, folder, out, **{"dicom_gate": None, "structured_report#enabled": True})
    summary = json.loads((out / "predictions.summary.json").read_text())
    assert len(summary["structured_reports"]) == 2 and all(p.startswith("sr/") for p in summary["structured_reports"])
    reported = {}
    for name in summary["structured_reports"]:
        sr = pydicom.dcmread(out / name)
        assert text_values(sr, "111001")[0] == bundle_name("chexpert_shortcut_kd")
        reported.update({uid: g["probability"] for uid, g in per_image(sr).items()})
    assert reported == pytest.approx({r["SOPInstanceUID"]: float(r["probability"]) for r in rows}, abs=1e-6)


def test_a_series_volume_is_one_measurement_on_all_its_instances(tmp_path):
    """A series folder predicted as one volume: its row carries the Study and Series UIDs, and the report
    holds one measurement group referencing every instance of the series."""
    from shortcut_kd.workflows.inference import dicom_uids

    series = tmp_path / "series"
    series.mkdir()
    mr = get_testdata_file("MR_small.dcm")
    files = [Path(shutil.copy(mr, series / "s0.dcm"))] + [dicom_copy(mr, series / f"s{i}.dcm") for i in (1, 2)]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert dicom_uids(str(series)) == (headers[0].StudyInstanceUID, headers[0].SeriesInstanceUID, "")
    rows = [{"file": str(series), "status": "ok", "probability": 0.25, "predicted_label": 0}]
    (path,) = write_structured_reports(rows, tmp_path / "sr", PLEURAL_EFFUSION, "m", "1")
    sr = pydicom.dcmread(path)
    assert evidence_uids(sr) == {h.SOPInstanceUID for h in headers}
    from highdicom.sr import srread

    (group,) = srread(path).content.get_image_measurement_groups()
    assert {s.referenced_sop_instance_uid for s in group.source_images} == {h.SOPInstanceUID for h in headers}
    assert group.get_measurements()[0].value == pytest.approx(0.25)
