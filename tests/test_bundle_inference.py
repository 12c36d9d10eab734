"""Bundle inference for clinical pipelines on real DICOM and NIfTI files (pydicom's and nibabel's test data),
with broken files among them: one CSV row per input, a prediction for every readable file, the reason
for every other one, Grad-CAM overlays on request."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from test_bundles import network_of, run_stage, tiny_bundle

DICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
NIFTI_DATA = Path(nibabel.__file__).parent / "tests" / "data"


def bundle_with_weights(name: str, dest: Path) -> Path:
    """A tiny bundle whose ``models/model.pt`` holds (untrained) weights of its network."""
    bundle = tiny_bundle(name, dest)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(network_of(bundle).state_dict(), bundle / "models" / "model.pt")
    return bundle


def predict(bundle: Path, inputs: Path, out: Path, **overrides) -> list[dict]:
    run_stage(bundle, "inference", dataset_dir=str(inputs), output_dir=str(out), bundle_root=str(bundle), **overrides)
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def truncated_copy(src: Path, dest: Path, keep: float = 0.3) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def check_rows(rows: list[dict], readable: set[str], broken: set[str], folder: Path) -> None:
    from shortcut_kd.workflows.inference import list_inputs

    names = [Path(r["file"]).name for r in rows]
    assert sorted(names) == sorted(readable | broken), "one row per input file"
    assert [r["file"] for r in rows] == [d["file"] for d in list_inputs(folder)], "rows in input (folder) order"
    for row in rows:
        name = Path(row["file"]).name
        if name in readable:
            p = float(row["probability"])
            assert row["status"] == "ok" and row["reason"] == "" and 0.0 <= p <= 1.0, row
            assert int(row["predicted_label"]) == int(p >= 0.5)
        else:
            assert row["status"] == "error" and row["probability"] == "" and len(row["reason"]) > 10, row


def test_dicom_png_jpeg_folder_2d(tmp_path):
    """The CheXpert bundle (2D grey) on a folder of real DICOM files (one without an extension), a PNG and an
    RGB JPEG, plus a truncated DICOM, a DICOM without pixel data and a cut-off copy of a good one."""
    folder = tmp_path / "cases"
    (folder / "series").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(DICOM_DATA / name, folder / name)
    shutil.copy(DICOM_DATA / "MR_small_bigendian.dcm", folder / "series" / "IM0001")  # PACS-style, no extension
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(folder / "xray.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    shutil.copy(DICOM_DATA / "MR_truncated.dcm", folder / "MR_truncated.dcm")
    shutil.copy(DICOM_DATA / "rtplan.dcm", folder / "rtplan.dcm")
    truncated_copy(DICOM_DATA / "CT_small.dcm", folder / "CT_cut.dcm")

    bundle = bundle_with_weights("chexpert", tmp_path)
    out = tmp_path / "out"
    rows = predict(bundle, folder, out, **{"gradcam#enabled": True, "dicom_gate": None})  # reading only: no gate
    readable = {"CT_small.dcm", "MR_small.dcm", "IM0001", "xray.png", "photo.jpg"}
    check_rows(rows, readable, {"MR_truncated.dcm", "rtplan.dcm", "CT_cut.dcm"}, folder)
    for row in rows:
        if row["status"] == "ok":
            assert Path(row["gradcam"]).is_file() and Path(row["gradcam"]).parent == out / "gradcam"
        else:
            assert row["gradcam"] == ""
    assert len(list((out / "gradcam").glob("*.png"))) == len(readable)


def test_nifti_folder_3d(tmp_path):
    """The SimBA bundle (3D) on nibabel's NIfTI files: 3D volumes get predictions; truncated volumes and a
    2D picture get a row with the reason."""
    folder = tmp_path / "volumes"
    folder.mkdir()
    for name in ("anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"):
        shutil.copy(NIFTI_DATA / name, folder / name)
    truncated_copy(NIFTI_DATA / "anatomical.nii", folder / "anatomical_cut.nii")
    truncated_copy(NIFTI_DATA / "example4d.nii.gz", folder / "example_cut.nii.gz")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(folder / "slice.png")

    bundle = bundle_with_weights("simba", tmp_path)
    rows = predict(bundle, folder, tmp_path / "out")
    check_rows(rows, {"anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"},
               {"anatomical_cut.nii", "example_cut.nii.gz", "slice.png"}, folder)
    reasons = {Path(r["file"]).name: r["reason"] for r in rows}
    assert "spatial dimensions" in reasons["slice.png"] and "decode" in reasons["anatomical_cut.nii"]


def test_list_file_with_only_bad_inputs_still_writes_the_csv(tmp_path):
    """A text list whose files are all missing or broken: no prediction, but a complete CSV."""
    bad = truncated_copy(DICOM_DATA / "MR_small.dcm", tmp_path / "cut.dcm", keep=0.1)
    listing = tmp_path / "list.csv"
    listing.write_text("file,comment\ncut.dcm,broken\n" + str(tmp_path / "gone.png") + ",missing\n")
    bundle = bundle_with_weights("isic2017", tmp_path)
    rows = predict(bundle, listing, tmp_path / "out")
    assert [r["file"] for r in rows] == [str(bad), str(tmp_path / "gone.png")]
    assert all(r["status"] == "error" for r in rows) and "not found" in rows[1]["reason"]


def test_inputs_and_missing_checkpoint_errors(tmp_path):
    from shortcut_kd.errors import DataError
    from shortcut_kd.workflows.inference import existing_checkpoint, list_inputs, overlay_name

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no image files"):
        list_inputs(tmp_path / "a")
    with pytest.raises(DataError, match="not found"):
        list_inputs(tmp_path / "nothing_here")
    with pytest.raises(DataError, match="distill"):
        existing_checkpoint(tmp_path / "models" / "model.pt")
    assert list_inputs([tmp_path / "x.dcm"]) == [{"image": str(tmp_path / "x.dcm"), "file": str(tmp_path / "x.dcm")}]
    assert overlay_name("/a/scan.nii.gz") != overlay_name("/b/scan.nii.gz")
    assert overlay_name("/a/scan.nii.gz").startswith("scan_")
