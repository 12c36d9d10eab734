"""Bad inputs in bulk: 200 inputs to the chest X-ray bundle, 20 of them broken in five different ways (truncated
JPEG, zero-byte PNG, a NIfTI with a wrong header, DICOM without pixel data, a path that does not exist). Every
broken one is reported by path with its reason, every other one is predicted, and the counts are in the run's
output; a write that fails leaves no half-written result (``test_atomic_writes``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from test_bundle_inference import DICOM_DATA, NIFTI_DATA, bundle_with_weights, predict

GOOD = 180
BROKEN_EACH = 4  # five kinds x 4 = 20


def _broken_nifti_header(dest: Path) -> Path:
    data = bytearray((NIFTI_DATA / "anatomical.nii").read_bytes())
    data[0:4] = (12345).to_bytes(4, "little")  # sizeof_hdr must be 348
    data[344:348] = b"xyz\0"  # the magic must be "n+1" (single file) or "ni1"
    dest.write_bytes(bytes(data))
    return dest


def test_two_hundred_inputs_twenty_broken(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = []
    for i in range(GOOD):
        path = folder / (f"case{i:03d}.png" if i % 2 else f"case{i:03d}.jpg")
        Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(path)
        good.append(path)
    broken: dict[Path, str] = {}
    for i in range(BROKEN_EACH):
        jpeg = folder / f"truncated{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(jpeg)
        jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 3])
        broken[jpeg] = "truncated JPEG"
        empty = folder / f"empty{i}.png"
        empty.write_bytes(b"")
        broken[empty] = "zero-byte PNG"
        broken[_broken_nifti_header(folder / f"badheader{i}.nii")] = "NIfTI header"
        nopixels = folder / f"nopixels{i}.dcm"
        ds = pydicom.dcmread(DICOM_DATA / "MR_small.dcm")  # a radiograph's header, its pixel data removed
        ds.Modality = "DX"
        del ds.PixelData
        ds.save_as(nopixels)
        broken[nopixels] = "DICOM without pixel data"
        broken[folder / f"missing{i}.png"] = "missing"
    listing = tmp_path / "worklist.txt"  # a worklist naming every input, four of them gone from disk
    listing.write_text("".join(f"{p}\n" for p in [*good, *broken]))

    bundle = bundle_with_weights("chexpert", tmp_path)
    out = tmp_path / "out"
    rows = predict(bundle, listing, out)
    assert len(rows) == GOOD + len(broken) == 200
    by_file = {row["file"]: row for row in rows}
    for path in good:
        row = by_file[str(path)]
        assert row["status"] == "ok" and 0.0 <= float(row["probability"]) <= 1.0, row
    for path, kind in broken.items():
        row = by_file[str(path)]
        assert row["status"] == "error" and row["probability"] == "", (kind, row)
        assert len(row["reason"]) > 10 and row["reason"] != "not processed", (kind, row)
    expected = {"missing": "not found", "zero-byte PNG": "cannot decode", "truncated JPEG": "cannot decode",
                "NIfTI header": "cannot decode", "DICOM without pixel data": "cannot decode"}
    for path, kind in broken.items():
        assert expected[kind] in by_file[str(path)]["reason"], (kind, by_file[str(path)]["reason"])
    summary = json.loads((out / "predictions.summary.json").read_text())
    assert (summary["files"], summary["predicted"], summary["errors"]) == (200, GOOD, 20)
    assert sorted(r["file"] for r in summary["rejected"]) == sorted(map(str, broken))


def test_training_leaves_out_bad_rows_and_files(tmp_path, tmp_path_factory):
    """The training side: labels outside the allowed values, a listed image that does not exist, a truncated
    JPEG and a zero-byte file in a CheXpert folder are each reported by file and row with the reason in the
    run's ``splits/problems.json``; the model is trained on the rest."""
    import csv
    import shutil

    from test_bundles import dataset_dir, run_stage, tiny_bundle

    root = tmp_path / "chexpert"
    shutil.copytree(dataset_dir(tmp_path_factory, "chexpert").parent, root)
    folder = root / "CheXpert-v1.0-small"
    table = folder / "train.csv"
    rows = list(csv.DictReader(table.open()))
    columns = list(rows[0])
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
    bad = {"label 2.0": frontal[0], "label yes": frontal[1], "missing": frontal[2], "truncated": frontal[3],
           "empty": frontal[4]}
    bad["label 2.0"]["Pleural Effusion"] = "2.0"
    bad["label yes"]["Pleural Effusion"] = "yes"
    bad["missing"]["Path"] = bad["missing"]["Path"].replace("view1_frontal", "view9_frontal")
    image = lambda row: root / row["Path"]  # noqa: E731 - the CSV's paths start at the dataset folder
    jpeg = image(bad["truncated"])
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    image(bad["empty"]).write_bytes(b"")
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)

    bundle = tiny_bundle("chexpert", tmp_path)
    out = tmp_path / "out"
    run_stage(bundle, "train", dataset_dir=str(folder), output_dir=str(out), bundle_root=str(bundle),
              **{"train#trainer#max_epochs": 1, "train#dataloader#drop_last": True})  # tiny net: no batch of 1
    assert (out / "models" / "model_erm.pt").is_file()
    report = json.loads((out / "splits" / "problems.json").read_text())
    assert report["left_out"] == len(report["problems"]) == 5
    by_image = {Path(p["image"]).name if p["image"] else None: p for p in report["problems"]}
    reasons = " | ".join(p["reason"] for p in report["problems"])
    assert "'2.0' is not one of" in reasons and "'yes' is not one of" in reasons and "not found" in reasons
    for kind in ("label 2.0", "label yes", "missing"):
        problem = next(p for p in report["problems"] if p["image"] and p["image"].endswith(bad[kind]["Path"]))
        assert problem["file"].endswith("train.csv") and isinstance(problem["row"], int)
    assert {jpeg.name, image(bad["empty"]).name} <= set(by_image)
    datalists = [f for f in (out / "splits").glob("*.json") if f.name not in ("splits.json", "problems.json")]
    split_images = {it["image"] for f in datalists for it in json.loads(f.read_text()) if isinstance(it, dict)}
    assert split_images and not {str(image(r)) for r in bad.values()} & split_images
