"""DICOM pixels as the models saw their training images, and the gate that keeps other images away from the chest
X-ray bundle; built on pydicom's real test files (an MR and a CT slice), re-labelled where a test needs it."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from test_bundle_inference import DICOM_DATA, bundle_with_weights, predict

from shortcut_kd.data.dicom import DicomDisplayReader, dicom_gate_reason, display_pixels


def radiograph(dest, pixels: np.ndarray | None = None, photometric: str = "MONOCHROME2", view: str = "PA",
               modality: str = "DX"):
    """pydicom's MR_small (64 x 64, 16-bit) re-labelled as a frontal radiograph, optionally with other pixels."""
    ds = pydicom.dcmread(DICOM_DATA / "MR_small.dcm")
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.Modality, ds.ViewPosition, ds.PhotometricInterpretation = modality, view, photometric
    if pixels is not None:
        ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(dest)
    return dest


def test_modality_lut_window_and_monochrome1_are_applied():
    ds = pydicom.dcmread(DICOM_DATA / "CT_small.dcm")
    stored = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -1024.0
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    shown = display_pixels(ds)
    hu = stored * 2.0 - 1024.0
    assert shown.shape == stored.shape and shown.min() == 0.0 and shown.max() == 255.0
    assert np.all(shown[hu <= 40 - 200] == 0.0) and np.all(shown[hu >= 40 + 200] == 255.0)  # windowed, clipped
    inside = (hu > -100) & (hu < 180)
    assert np.corrcoef(shown[inside], hu[inside])[0, 1] > 0.99
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(display_pixels(ds), 255.0 - shown, atol=1e-3)


def test_reader_indexes_like_pil_and_keeps_the_uids(tmp_path):
    path = radiograph(tmp_path / "a.dcm")
    reader = DicomDisplayReader()
    assert reader.verify_suffix(str(path)) and not reader.verify_suffix(str(tmp_path / "x.png"))
    ds = reader.read(str(path))
    pixels, meta = reader.get_data(ds)
    assert pixels.shape == (ds.Columns, ds.Rows) and meta["original_channel_dim"] == "no_channel"
    assert meta["SOPInstanceUID"] == str(ds.SOPInstanceUID) and meta["Modality"] == "DX"


def test_monochrome1_and_its_inverted_monochrome2_give_the_same_probability(tmp_path):
    stored = pydicom.dcmread(DICOM_DATA / "MR_small.dcm").pixel_array.astype(np.int64)
    folder = tmp_path / "in"
    folder.mkdir()
    radiograph(folder / "a_mono1.dcm", stored, "MONOCHROME1")
    radiograph(folder / "b_mono2_inverted.dcm", stored.max() + stored.min() - stored, "MONOCHROME2")
    radiograph(folder / "c_mono2_as_stored.dcm", stored, "MONOCHROME2")  # what a reader ignoring MONOCHROME1 sees
    bundle = bundle_with_weights("chexpert", tmp_path)
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in predict(bundle, folder, tmp_path / "out")}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    p = {name: float(r["probability"]) for name, r in rows.items()}
    assert p["a_mono1.dcm"] == pytest.approx(p["b_mono2_inverted.dcm"], abs=1e-7)
    assert p["a_mono1.dcm"] != p["c_mono2_as_stored.dcm"]
    # the network's input itself, through the bundle's inference preprocessing
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    preprocessing = parser.get_parsed_content("preprocessing")
    seen = {name: preprocessing({"image": str(folder / name)})["image"] for name in rows}
    assert torch.equal(seen["a_mono1.dcm"], seen["b_mono2_inverted.dcm"])
    assert (seen["a_mono1.dcm"] - seen["c_mono2_as_stored.dcm"]).abs().max() > 0.5, "the inversion must show"


def test_chest_bundle_skips_a_lateral_view_and_a_ct_slice(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    radiograph(folder / "frontal.dcm")
    radiograph(folder / "lateral.dcm", view="LL")
    (folder / "ct.dcm").write_bytes((DICOM_DATA / "CT_small.dcm").read_bytes())
    predicted = predict(bundle_with_weights("chexpert", tmp_path), folder, tmp_path / "out")
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in predicted}
    assert rows["frontal.dcm"]["status"] == "ok" and rows["frontal.dcm"]["probability"] != ""
    header = pydicom.dcmread(folder / "frontal.dcm", stop_before_pixels=True)
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert rows["frontal.dcm"][uid] == str(header[uid].value) != ""
    assert len(rows["frontal.dcm"]["checkpoint_sha256"]) == 64 and rows["frontal.dcm"]["model"].startswith("CheXpert")
    for name, words in (("lateral.dcm", "view position LL"), ("ct.dcm", "modality CT")):
        assert rows[name]["status"] == "skipped" and rows[name]["probability"] == "", rows[name]
        assert words in rows[name]["reason"]


def test_gate_reasons_from_the_header(tmp_path):
    rgb = DICOM_DATA / "SC_rgb_small_odd.dcm"
    assert "samples per pixel" in dicom_gate_reason(rgb, samples_per_pixel=1)
    assert dicom_gate_reason(radiograph(tmp_path / "f.dcm"), modalities=["CR", "DX"], reject_views=["LL"]) is None
    assert "frames" in dicom_gate_reason(DICOM_DATA / "SC_rgb_rle_2frame.dcm", max_frames=1)
