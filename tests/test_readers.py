"""Readers of the native dataset layouts, on small trees written here in the exact layout."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from shortcut_kd.data.chexpert import OBSERVATIONS, read_chexpert, relative_image_path
from shortcut_kd.data.generic import read_generic
from shortcut_kd.data.image_check import check_images
from shortcut_kd.data.isic2017 import read_isic2017
from shortcut_kd.data.readers import READERS, read_dataset
from shortcut_kd.data.simba import read_simba
from shortcut_kd.errors import ConfigError, DataError


def _jpeg(path: Path, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if rgb else (8, 8)
    Image.fromarray((np.arange(np.prod(shape)).reshape(shape) % 251).astype(np.uint8)).save(path)


def _nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), str(path))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ----------------------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
# (patient, study, view file, Frontal/Lateral, AP/PA, Pleural Effusion value as written in the CSV)
CHEXPERT_TRAIN = [
    ("patient00001", "study1", "view1_frontal.jpg", "Frontal", "AP", "1.0"),
    ("patient00001", "study1", "view2_lateral.jpg", "Lateral", "", "1.0"),
    ("patient00002", "study1", "view1_frontal.jpg", "Frontal", "PA", "-1.0"),
    ("patient00003", "study1", "view1_frontal.jpg", "Frontal", "AP", ""),
    ("patient00003", "study2", "view1_frontal.jpg", "Frontal", "AP", "0.0"),
    ("patient00004", "study1", "view1_frontal.jpg", "Frontal", "PA", "1.0"),
]


def make_chexpert(parent: Path, prefix: str = "CheXpert-v1.0-small/", rows=CHEXPERT_TRAIN, label_values=None) -> Path:
    """A CheXpert-v1.0-small tree under ``parent``; returns the dataset folder."""
    root = parent / "CheXpert-v1.0-small"
    valid = [("patient64541", "study1", "view1_frontal.jpg", "Frontal", "AP", "1.0")]
    for split, split_rows in (("train", rows), ("valid", valid)):
        out = []
        for patient, study, view, fl, appa, pe in split_rows:
            rel = f"{split}/{patient}/{study}/{view}"
            _jpeg(root / rel)
            obs = {o: "" for o in OBSERVATIONS}
            obs["Pleural Effusion"] = pe
            obs["Cardiomegaly"] = "1.0" if patient == "patient00003" else "0.0"
            out.append([prefix + rel, "Female", "68", fl, appa, *obs.values()])
        _write_csv(root / f"{split}.csv", CHEXPERT_HEADER, out)
    return root


def test_chexpert_paths_patients_and_prefix(tmp_path):
    root = make_chexpert(tmp_path)
    from_parent = read_chexpert(tmp_path, "train")
    assert from_parent == read_chexpert(root, "train")
    by_id = {it["id"]: it for it in from_parent}
    item = by_id["train/patient00001/study1/view1_frontal.jpg"]
    assert item["image"] == os.path.abspath(root / "train/patient00001/study1/view1_frontal.jpg")
    assert Path(item["image"]).is_file()
    assert item["patient"] == "patient00001" and item["sex"] == "Female" and item["age"] == 68
    assert item["view"] == "Frontal" and item["projection"] == "AP" and item["label"] == 1
    assert {it["patient"] for it in from_parent} == {"patient00001", "patient00002", "patient00003", "patient00004"}
    valid = read_chexpert(tmp_path, "valid")
    assert [it["id"] for it in valid] == ["valid/patient64541/study1/view1_frontal.jpg"]


def test_chexpert_foreign_absolute_prefix(tmp_path):
    root = make_chexpert(tmp_path, prefix="/mnt/elsewhere/data/CheXpert-v1.0/")
    items = read_chexpert(root, "train")
    assert all(Path(it["image"]).is_file() for it in items)
    assert all(it["id"].startswith("train/patient0000") for it in items)
    # a machine path that itself contains a folder named like a split is still cut at the right place
    assert str(relative_image_path("/data/train/CheXpert-v1.0/train/patient00009/study1/view1_frontal.jpg")) == \
        "train/patient00009/study1/view1_frontal.jpg"


@pytest.mark.parametrize("policy, expected", [("zeros", 0), ("ones", 1), ("ignore", None)])
def test_chexpert_uncertainty_policies_and_blank(tmp_path, caplog, policy, expected):
    make_chexpert(tmp_path)
    with caplog.at_level(logging.INFO, logger="shortcut_kd.data.chexpert"):
        items = read_chexpert(tmp_path, "train", uncertainty=policy)
    labels = {it["id"]: it["label"] for it in items}
    uncertain = "train/patient00002/study1/view1_frontal.jpg"
    if expected is None:
        assert uncertain not in labels and len(items) == 4
    else:
        assert labels[uncertain] == expected and len(items) == 5
    assert "1 row(s) with an uncertain" in caplog.text
    # blank = not mentioned = negative, under every policy
    assert labels["train/patient00003/study1/view1_frontal.jpg"] == 0
    assert labels["train/patient00003/study2/view1_frontal.jpg"] == 0
    assert labels["train/patient00004/study1/view1_frontal.jpg"] == 1


def test_chexpert_lateral_views_and_label_choice(tmp_path):
    make_chexpert(tmp_path)
    frontal = read_chexpert(tmp_path, "train")
    every = read_chexpert(tmp_path, "train", frontal_only=False)
    lateral = "train/patient00001/study1/view2_lateral.jpg"
    assert lateral not in {it["id"] for it in frontal}
    assert {it["id"]: it["view"] for it in every}[lateral] == "Lateral"
    assert len(every) == len(frontal) + 1
    cardio = read_chexpert(tmp_path, "train", label="Cardiomegaly")
    assert {it["patient"] for it in cardio if it["label"] == 1} == {"patient00003"}


def test_chexpert_bad_label_value_names_file_row_column(tmp_path):
    rows = list(CHEXPERT_TRAIN)
    rows[2] = rows[2][:5] + ("maybe",)
    root = make_chexpert(tmp_path, rows=rows)
    with pytest.raises(DataError) as e:
        read_chexpert(tmp_path, "train")
    assert e.value.file == str(root / "train.csv") and e.value.row == 3 and e.value.column == "Pleural Effusion"
    assert "'maybe'" in str(e.value) and "train.csv" in str(e.value) and "Fix:" in str(e.value)


def test_chexpert_missing_column_and_files(tmp_path):
    root = make_chexpert(tmp_path)
    with pytest.raises(DataError) as e:
        read_chexpert(tmp_path, "train", label="Not An Observation")
    assert e.value.column == "Not An Observation" and e.value.file == str(root / "train.csv")
    assert e.value.row == "header" and "train.csv" in str(e.value)
    (root / "train/patient00003/study1/view1_frontal.jpg").unlink()
    (root / "train/patient00004/study1/view1_frontal.jpg").unlink()
    with pytest.raises(DataError) as e:
        read_chexpert(tmp_path, "train")
    text = str(e.value)
    assert "2 of 5" in text and "patient00003" in text and "patient00004" in text
    assert e.value.row == 4 and e.value.column == "Path"
    with pytest.raises(ConfigError):
        read_chexpert(tmp_path, "train", uncertainty="maybe")
    with pytest.raises(DataError, match="train.csv"):
        read_chexpert(tmp_path / "nowhere", "train")


# ----------------------------------------------------------------------------------------- ISIC 2017

def make_isic(root: Path, split_name: str = "Training", labels=(1, 0, 0, 1, 0), csv_inside: bool = False,
              metadata: bool = True, first: int = 0) -> Path:
    data = root / f"ISIC-2017_{split_name}_Data"
    rows = []
    for i, mel in enumerate(labels):
        image_id = f"ISIC_{first + i:07d}"
        _jpeg(data / f"{image_id}.jpg", rgb=True)
        _jpeg(data / f"{image_id}_superpixels.png", rgb=True)
        rows.append([image_id, f"{float(mel):.1f}", "1.0" if (not mel and i % 2) else "0.0"])
    if metadata:
        _write_csv(data / f"ISIC-2017_{split_name}_Data_metadata.csv", ["image_id", "age_approximate", "sex"],
                   [[r[0], "55" if i else "unknown", "female" if i % 2 else "male"] for i, r in enumerate(rows)])
    csv_dir = data if csv_inside else root
    _write_csv(csv_dir / f"ISIC-2017_{split_name}_Part3_GroundTruth.csv",
               ["image_id", "melanoma", "seborrheic_keratosis"], rows)
    return data


def test_isic_layout_labels_superpixels_ignored(tmp_path):
    data = make_isic(tmp_path)
    make_isic(tmp_path, "Validation", labels=(0, 1), csv_inside=True, metadata=False, first=100)
    train = read_isic2017(tmp_path, "train")
    assert [it["id"] for it in train] == [f"ISIC_{i:07d}" for i in range(5)]
    assert [it["label"] for it in train] == [1, 0, 0, 1, 0]
    assert all(it["image"].endswith(".jpg") and "superpixels" not in it["image"] for it in train)
    assert train[0]["image"] == os.path.abspath(data / "ISIC_0000000.jpg")
    assert train[1]["sex"] == "female" and train[1]["age"] == 55 and train[0]["age"] == -1
    assert [it["seborrheic_keratosis"] for it in train] == [0, 1, 0, 0, 0]
    val = read_isic2017(tmp_path, "val")
    assert [it["label"] for it in val] == [0, 1] and "sex" not in val[0]
    assert read_isic2017(data, "train") == train  # the data folder itself is accepted as root
    both = read_dataset("isic2017", tmp_path, "all")  # the test set is absent: the others are read
    assert [it["id"] for it in both] == [it["id"] for it in train + val]
    with pytest.raises(ConfigError):
        read_isic2017(tmp_path, "training-set")


def test_isic_errors(tmp_path):
    data = make_isic(tmp_path, labels=(1, 0, 0))
    (data / "ISIC_0000001.jpg").unlink()
    with pytest.raises(DataError) as e:
        read_isic2017(tmp_path, "train")
    assert "1 of 3" in str(e.value) and "ISIC_0000001" in str(e.value) and e.value.row == 2
    _jpeg(data / "ISIC_0000001.jpg", rgb=True)
    csv_path = tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv"
    _write_csv(csv_path, ["image_id", "melanoma"], [["ISIC_0000000", "1.0"], ["ISIC_0000001", "maybe"]])
    with pytest.raises(DataError) as e:
        read_isic2017(tmp_path, "train")
    assert e.value.file == str(csv_path) and e.value.row == 2 and e.value.column == "melanoma"
    _write_csv(csv_path, ["image_id", "nevus"], [["ISIC_0000000", "1.0"]])
    with pytest.raises(DataError) as e:
        read_isic2017(tmp_path, "train")
    assert e.value.column == "melanoma" and e.value.file == str(csv_path) and e.value.row == "header"
    with pytest.raises(DataError, match="Test_v2"):
        read_isic2017(tmp_path, "test")


# ----------------------------------------------------------------------------------------- SimBA

SIMBA_HEADER = ["", "effect_dst", "isv_dst", "class_label", "bias_label", "filepath", "filename"]


def make_simba(root: Path, split: str = "train", rows=((1, 1), (0, 0), (1, 0), (0, 1)), foreign: bool = True,
               bias_column: bool = True) -> list[str]:
    names, out = [], []
    for n, (label, bias) in enumerate(rows):
        name = f"{n:05d}_0.12_S_{1.5 if label else -1.5}_D" + ("_2.1_B" if bias else "") + ".nii.gz"
        _nifti(root / split / name)
        filepath = f"/nonexistent/generator/datasets/exp1/{split}/{name}" if foreign else f"{split}/{name}"
        out.append([n, 0.5, 0.12, label, bias, filepath, name])
        names.append(name)
    header = SIMBA_HEADER if bias_column else [h for h in SIMBA_HEADER if h != "bias_label"]
    out = out if bias_column else [[v for h, v in zip(SIMBA_HEADER, r) if h != "bias_label"] for r in out]
    _write_csv(root / f"{split}.csv", header, out)
    return names


def test_simba_foreign_paths_and_bias(tmp_path):
    names = make_simba(tmp_path)
    make_simba(tmp_path, "test", rows=((0, 0), (1, 1)), foreign=False)
    items = read_simba(tmp_path, "train")
    assert [it["label"] for it in items] == [1, 0, 1, 0]
    assert [it["bias"] for it in items] == [1, 0, 0, 1]
    assert items[0]["image"] == os.path.abspath(tmp_path / "train" / names[0])
    assert items[0]["id"] == "train/" + names[0][: -len(".nii.gz")]
    test = read_simba(tmp_path, "test")  # relative filepath values are taken relative to the root
    assert all(Path(it["image"]).is_file() for it in test)
    every = read_dataset("simba", tmp_path, "all")
    assert len(every) == 6 and len({it["id"] for it in every}) == 6  # names restart per split; ids do not clash


def test_simba_existing_absolute_filepath_is_used(tmp_path):
    names = make_simba(tmp_path, rows=((1, 1), (0, 0)))
    elsewhere = tmp_path / "elsewhere" / "moved.nii.gz"
    _nifti(elsewhere)
    csv_path = tmp_path / "train.csv"
    rows = list(csv.reader(open(csv_path)))
    rows[1][5] = str(elsewhere)
    _write_csv(csv_path, rows[0], rows[1:])
    items = read_simba(tmp_path, "train")
    assert items[0]["image"] == str(elsewhere) and items[1]["image"].endswith(names[1])


def test_simba_bias_from_name_and_errors(tmp_path):
    make_simba(tmp_path, bias_column=False)
    assert [it["bias"] for it in read_simba(tmp_path, "train")] == [1, 0, 0, 1]
    names = make_simba(tmp_path)
    for name in names[1:3]:
        (tmp_path / "train" / name).unlink()
    with pytest.raises(DataError) as e:
        read_simba(tmp_path, "train")
    assert "2 of 4" in str(e.value) and names[1] in str(e.value) and e.value.row == 2
    make_simba(tmp_path, "val")
    csv_path = tmp_path / "val.csv"
    rows = list(csv.reader(open(csv_path)))
    rows[3][3] = "maybe"
    _write_csv(csv_path, rows[0], rows[1:])
    with pytest.raises(DataError) as e:
        read_simba(tmp_path, "val")
    assert e.value.file == str(csv_path) and e.value.row == 3 and e.value.column == "class_label"
    _write_csv(csv_path, ["filename", "filepath"], [["a.nii.gz", ""]])
    with pytest.raises(DataError) as e:
        read_simba(tmp_path, "val")
    assert e.value.column == "class_label" and e.value.file == str(csv_path) and e.value.row == "header"


# ----------------------------------------------------------------------------------------- generic

def _real_files(folder: Path) -> dict[str, Path]:
    """Real DICOM and NIfTI files shipped with pydicom and nibabel, plus a PNG and a JPEG."""
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    dicom = Path(get_testdata_file("CT_small.dcm"))
    files = {
        "dcm": folder / "ct.dcm",
        "noext": folder / "dicom" / "IM0001",
        "nii": folder / "standard.nii.gz",
        "png": folder / "a.png",
        "jpg": folder / "b.jpg",
    }
    shutil.copy(dicom, files["dcm"])
    files["noext"].parent.mkdir()
    shutil.copy(dicom, files["noext"])
    shutil.copy(Path(nib.__file__).parent / "tests" / "data" / "standard.nii.gz", files["nii"])
    _jpeg(files["png"])
    _jpeg(files["jpg"], rgb=True)
    return files


def test_generic_csv_and_json_with_real_dicom_and_nifti(tmp_path):
    files = _real_files(tmp_path / "imgs")
    rel = {k: str(p.relative_to(tmp_path)) for k, p in files.items()}
    _write_csv(tmp_path / "list.csv", ["image", "label", "patient", "site"],
               [[rel["dcm"], 1, "p1", "A"], [rel["noext"], "0", "p1", "A"], [rel["nii"], "1.0", "p2", ""],
                [str(files["png"]), 0, "p3", "B"], [rel["jpg"], 1, "p4", "B"]])
    items = read_generic(tmp_path / "list.csv")
    assert [it["label"] for it in items] == [1, 0, 1, 0, 1]
    assert [it["image"] for it in items] == [os.path.abspath(p) for p in files.values()]
    assert items[0]["id"] == rel["dcm"] and items[0]["patient"] == "p1" and items[2]["site"] == ""
    kept, problems = check_images(items)
    assert len(kept) == 5 and problems == []

    entries = [{"image": rel["nii"], "label": 1, "id": "n1", "bias": 1},
               {"image": rel["noext"], "label": 0, "id": "d1", "bias": 0}]
    (tmp_path / "list.json").write_text(json.dumps(entries))
    (tmp_path / "wrapped.json").write_text(json.dumps({"training": entries}))
    a = read_generic(tmp_path / "list.json")
    assert a == read_generic(tmp_path / "wrapped.json")
    assert [(it["id"], it["label"], it["bias"]) for it in a] == [("n1", 1, 1), ("d1", 0, 0)]
    # relative paths against an explicit root
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.json").write_text(json.dumps(entries))
    assert read_generic(tmp_path / "lists" / "l.json", root=tmp_path) == a
    # read_dataset: a list file, or a folder holding <split>.csv / <split>.json
    assert read_dataset("generic", tmp_path / "list.csv") == items
    absolute = [dict(e, image=str(tmp_path / e["image"])) for e in entries]
    (tmp_path / "lists" / "train.json").write_text(json.dumps(absolute))
    assert read_dataset("generic", tmp_path / "lists", "train") == a
    with pytest.raises(DataError, match="no list file"):
        read_dataset("generic", tmp_path / "lists", "test")


def test_generic_bad_input(tmp_path):
    _jpeg(tmp_path / "a.png")
    _write_csv(tmp_path / "l.csv", ["image", "label"], [["a.png", 1], ["a.png", "maybe"]])
    with pytest.raises(DataError) as e:
        read_generic(tmp_path / "l.csv")
    assert e.value.file == str(tmp_path / "l.csv") and e.value.row == 2 and e.value.column == "label"
    assert "'maybe'" in str(e.value)
    _write_csv(tmp_path / "l.csv", ["path", "label"], [["a.png", 1]])
    with pytest.raises(DataError) as e:
        read_generic(tmp_path / "l.csv")
    assert e.value.column == "image" and e.value.row == "header" and "'path'" in str(e.value)
    assert e.value.file == str(tmp_path / "l.csv")
    _write_csv(tmp_path / "l.csv", ["image", "label"], [["a.png", 1], ["gone1.png", 0], ["gone2.dcm", 1]])
    with pytest.raises(DataError) as e:
        read_generic(tmp_path / "l.csv")
    assert "2 of 3" in str(e.value) and "gone1.png" in str(e.value) and "gone2.dcm" in str(e.value)
    assert e.value.row == 2 and e.value.column == "image"
    _write_csv(tmp_path / "l.csv", ["image", "label", "id"], [["a.png", 1, "x"], ["a.png", 0, "x"]])
    with pytest.raises(DataError, match="already used in row 1"):
        read_generic(tmp_path / "l.csv")
    (tmp_path / "l.json").write_text(json.dumps([{"image": "a.png", "label": 1}, {"image": "a.png"}]))
    with pytest.raises(DataError) as e:
        read_generic(tmp_path / "l.json")
    assert e.value.row == 2 and e.value.column == "label"
    with pytest.raises(ConfigError):
        read_dataset("mnist", tmp_path)
    assert set(READERS) == {"chexpert", "isic2017", "simba", "generic"}


def test_bad_rows_are_left_out_with_their_reason_when_asked(tmp_path):
    """With ``problems``, a reader leaves out a bad label, a blank path, a duplicate id and a missing image,
    recording file, row, column and reason for each; without it, the first bad row raises."""
    from shortcut_kd.data.generic import read_generic

    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    table = tmp_path / "list.csv"
    table.write_text("image,label,id\na.png,1,a\nb.png,2,b\n,0,c\nc.png,0,a\ngone.png,1,d\nc.png,0,e\n")
    problems: list = []
    items = read_generic(table, problems=problems)
    assert [it["id"] for it in items] == ["a", "e"]
    assert [(p["row"], p["column"]) for p in problems] == [(2, "label"), (3, "image"), (4, "id"), (5, "image")]
    assert "'2' is not one of 0, 1" in problems[0]["reason"] and "already used" in problems[2]["reason"]
    assert problems[3]["image"].endswith("gone.png") and "not found" in problems[3]["reason"]
    assert all(p["file"] == str(table) for p in problems)
    with pytest.raises(DataError, match="row 2"):
        read_generic(table)
