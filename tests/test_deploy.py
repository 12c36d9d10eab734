"""The parts of the MONAI Deploy application that need no SDK: on real computed radiography files written by
others, the app's path (gate, display pixels, the bundle's preprocessing without its loader, the network,
the bundle's postprocessing on a batch of one) gives the bundle inference's probability, and refuses what
the bundle inference skips."""

from __future__ import annotations

import csv
import re
import shutil

import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from pydicom.data import get_testdata_file
from test_bundles import network_of, run_stage, tiny_bundle
from test_dicom_sr import evidence_uids, per_image

FRONTAL_CR = "dicomdirtests/77654033/CR3/6278"  # CR, MONOCHROME1, ViewPosition AP
LATERAL_CR = "dicomdirtests/77654033/CR1/6154"  # CR, MONOCHROME1, ViewPosition LL


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    assert path, f"pydicom's test file {name} is missing from this pydicom install"
    return path


def test_series_rules_select_the_bundles_modalities():
    from test_bundles import REPO

    from shortcut_kd.deploy import bundle_settings, series_selection_rules

    rules = series_selection_rules(bundle_settings(REPO / "bundles" / "chexpert_shortcut_kd"))
    pattern = rules["selections"][0]["conditions"]["Modality"]
    # the SDK's selector matches a string condition with re.search(..., re.IGNORECASE)
    selected = [m for m in ("CR", "DX", "dx", "CT", "MR", "CRX") if re.search(pattern, m, re.IGNORECASE)]
    assert selected == ["CR", "DX", "dx"]
    simba = series_selection_rules(bundle_settings(REPO / "bundles" / "simba_shortcut_kd"))
    assert simba["selections"][0]["conditions"] == {}


def test_app_path_gives_the_bundle_inference_probability(tmp_path):
    from shortcut_kd.deploy import NotForModel, bundle_settings, instance_image, positive_probability

    bundle = tiny_bundle("chexpert", tmp_path)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(network_of(bundle).state_dict(), ckpt)
    inputs = tmp_path / "dicom"
    inputs.mkdir()
    files = {"frontal": FRONTAL_CR, "lateral": LATERAL_CR, "ct": "CT_small.dcm"}
    for key, name in files.items():
        shutil.copy(_testdata(name), inputs / f"{key}.dcm")
    out = tmp_path / "out"
    run_stage(bundle, "inference", dataset_dir=str(inputs), output_dir=str(out), bundle_root=str(bundle),
              ckpt_path=str(ckpt))
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert rows["frontal.dcm"]["status"] == "ok"
    assert rows["lateral.dcm"]["status"] == "skipped" and "view position LL" in rows["lateral.dcm"]["reason"]
    assert rows["ct.dcm"]["status"] == "skipped" and "modality CT" in rows["ct.dcm"]["reason"]

    settings = bundle_settings(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    full = parser.get_parsed_content("preprocessing")
    preprocessing = Compose([t for t in full.transforms if "LoadImage" not in type(t).__name__])  # as the SDK does
    postprocessing = parser.get_parsed_content("postprocessing")
    network = network_of(bundle).eval()
    network.load_state_dict(torch.load(ckpt, weights_only=True))

    pixels, meta = instance_image(pydicom.dcmread(inputs / "frontal.dcm"), settings)
    image = preprocessing({"image": MetaTensor(torch.as_tensor(pixels), meta=meta)})["image"]
    with torch.no_grad():
        logits = network(image[None])  # the SDK's operator predicts on a batch of one, not decollated
    p = positive_probability(postprocessing({"pred": logits})["pred"])
    assert p == pytest.approx(float(rows["frontal.dcm"]["probability"]), abs=2e-6)
    assert meta["SOPInstanceUID"] == rows["frontal.dcm"]["SOPInstanceUID"]

    for key, reason in (("lateral", "view position LL"), ("ct", "modality CT")):
        with pytest.raises(NotForModel, match=reason):
            instance_image(pydicom.dcmread(inputs / f"{key}.dcm"), settings)


def test_positive_probability_reads_the_sdk_output():
    import numpy as np

    from shortcut_kd.deploy import positive_probability
    from shortcut_kd.errors import DataError

    assert positive_probability({"result": ["x"], "probabilities": np.array([[0.3, 0.7]])}) == pytest.approx(0.7)
    assert positive_probability(torch.tensor([0.9, 0.1])) == pytest.approx(0.1)
    with pytest.raises(DataError, match="two class probabilities"):
        positive_probability(np.zeros(3))


def test_app_report_references_the_predicted_instance(tmp_path):
    """The app's report step: one SR for the study, referencing the instance the image was made of, with the
    probability and the finding the bundle declares."""
    from test_bundles import REPO

    from shortcut_kd.deploy import bundle_settings, write_study_report

    settings = bundle_settings(REPO / "bundles" / "chexpert_shortcut_kd")
    ds = pydicom.dcmread(_testdata(FRONTAL_CR))
    path = write_study_report([ds], 0.8, settings, tmp_path)
    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.Modality == "SR"
    assert evidence_uids(sr) == {ds.SOPInstanceUID}
    (image,) = per_image(sr).items()
    assert image[0] == ds.SOPInstanceUID and image[1]["probability"] == pytest.approx(0.8)
