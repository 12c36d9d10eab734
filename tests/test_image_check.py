"""check_images on real files shipped with pydicom and nibabel, whole and truncated."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from shortcut_kd.data.image_check import check_images
from shortcut_kd.errors import ConfigError, DataError

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _cut(src: Path, dst: Path) -> Path:
    """A copy of ``src`` holding its first half only, as an interrupted download leaves it."""
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    # One folder per file: ITK resolves an extension-less name against siblings such as
    # name.nii, which would hide a damaged extension-less DICOM behind a neighbour.
    dicom = Path(get_testdata_file("CT_small.dcm"))
    out = {}
    for name, src, file_name in (("dcm", dicom, "ct.dcm"), ("noext", dicom, "IM0001"),
                                 ("nii_gz", NIBABEL_DATA / "standard.nii.gz", "v.nii.gz"),
                                 ("nii", NIBABEL_DATA / "anatomical.nii", "v.nii")):
        dst = tmp_path / f"good_{name}" / file_name
        dst.parent.mkdir()
        shutil.copy(src, dst)
        out[f"good_{name}"] = dst
        out[f"cut_{name}"] = _cut(src, tmp_path / f"cut_{name}" / dst.name)
    rng = np.random.RandomState(0)
    for ext in ("png", "jpg"):
        path = tmp_path / f"good_{ext}" / f"img.{ext}"
        path.parent.mkdir()
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(path)
        out[f"good_{ext}"] = path
        out[f"cut_{ext}"] = _cut(path, tmp_path / f"cut_{ext}" / path.name)
    out["garbage_png"] = tmp_path / "garbage" / "x.png"
    out["garbage_png"].parent.mkdir()
    out["garbage_png"].write_bytes(b"not an image at all")
    return out


def _datalist(files):
    return [{"image": str(p), "label": i % 2, "id": name} for i, (name, p) in enumerate(files.items())]


def test_skip_keeps_good_reports_bad(files, caplog):
    datalist = _datalist(files)
    with caplog.at_level(logging.WARNING, logger="shortcut_kd.data.image_check"):
        kept, problems = check_images(datalist, on_error="skip")
    assert [it["id"] for it in kept] == [k for k in files if k.startswith("good_")]
    bad = [k for k in files if not k.startswith("good_")]
    assert [p["id"] for p in problems] == bad
    assert all(p["image"] == str(files[p["id"]]) and p["error"] for p in problems)
    assert kept[0] is datalist[0]  # the items themselves, unchanged
    for p in problems:
        assert p["image"] in caplog.text
    assert f"left out {len(bad)} of {len(datalist)}" in caplog.text


def test_threads_give_the_same_result(files):
    datalist = _datalist(files)
    assert check_images(datalist, num_workers=2) == check_images(datalist)


def test_raise_names_the_file(files):
    datalist = [{"image": str(files["good_dcm"]), "label": 0, "id": "a"},
                {"image": str(files["cut_dcm"]), "label": 1, "id": "b"}]
    with pytest.raises(DataError) as e:
        check_images(datalist, on_error="raise")
    assert e.value.file == str(files["cut_dcm"]) and e.value.row == "b" and e.value.column == "image"
    assert str(files["cut_dcm"]) in str(e.value)
    kept, problems = check_images(datalist[:1], on_error="raise")
    assert kept == datalist[:1] and problems == []


def test_custom_key_and_bad_option(files):
    datalist = [{"img": str(files["cut_nii_gz"]), "id": "v"}]
    kept, problems = check_images(datalist, key="img")
    assert kept == [] and problems[0]["image"] == str(files["cut_nii_gz"])
    with pytest.raises(ConfigError):
        check_images(datalist, on_error="ignore")
