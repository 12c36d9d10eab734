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
