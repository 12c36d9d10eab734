"""Synthetic datasets: native layouts, determinism, OOD shift, label balance, phantoms, CLI, readers."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from shortcut_kd.data.synthetic import (
    brain_affine, brain_phantoms, chest_phantoms, chexpert_like, dermoscopy_phantoms, simba_like, synthesize,
)
from shortcut_kd.data.synthetic.phantoms import make_rng
from shortcut_kd.errors import ConfigError

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")
ISIC_PREFIXES = ("ISIC-2017_Training", "ISIC-2017_Validation", "ISIC-2017_Test_v2")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def chexpert_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chexpert")
    return synthesize("chexpert", out, n=60, seed=3, image_size=16, p_uncertain=0.15, p_blank=0.15,
                      p_lateral=0.3, valid_fraction=0.2)


@pytest.fixture(scope="module")
def isic_tree(tmp_path_factory) -> Path:
    return synthesize("isic2017", tmp_path_factory.mktemp("isic"), n=40, seed=3, image_size=16, n_superpixels=2)


@pytest.fixture(scope="module")
def simba_tree(tmp_path_factory) -> Path:
    return synthesize("simba", tmp_path_factory.mktemp("simba"), n=40, seed=3, image_size=16)


# --- layouts -------------------------------------------------------------------------------------------


def test_chexpert_layout(chexpert_tree: Path):
    root = chexpert_tree
    assert root.name == "CheXpert-v1.0-small"
    pattern = re.compile(r"^CheXpert-v1\.0-small/(train|valid)/patient(\d{5})/study(\d+)/"
                         r"view(1_frontal|2_lateral)\.jpg$")
    patients: dict[str, set[str]] = {"train": set(), "valid": set()}
    n_frontal = 0
    for split in ("train", "valid"):
        path = root / f"{split}.csv"
        assert path.read_text().splitlines()[0] == CHEXPERT_HEADER
        _, rows = read_csv(path)
        assert rows
        values = set()
        for row in rows:
            m = pattern.match(row["Path"])
            assert m and m.group(1) == split, row["Path"]
            patients[split].add(m.group(2))
            assert (root.parent / row["Path"]).is_file()
            assert row["Sex"] in ("Female", "Male") and 18 <= int(row["Age"]) <= 90
            if m.group(4) == "1_frontal":
                n_frontal += 1
                assert row["Frontal/Lateral"] == "Frontal" and row["AP/PA"] in ("AP", "PA")
            else:
                assert row["Frontal/Lateral"] == "Lateral" and row["AP/PA"] == ""
            for name in chexpert_like.OBSERVATIONS:
                values.add(row[name])
        pleural = {r["Pleural Effusion"] for r in rows}
        if split == "train":
            assert values <= {"1.0", "0.0", "-1.0", ""}
            assert {"1.0", "0.0", "-1.0", ""} <= pleural  # uncertain and blank labels occur
            assert any(r["Frontal/Lateral"] == "Lateral" for r in rows)
        else:
            assert pleural <= {"1.0", "0.0"}
    assert n_frontal == 60
    assert not patients["train"] & patients["valid"]  # a patient is in one split only
    _, train_rows = read_csv(root / "train.csv")
    studies = {}
    for row in train_rows:
        studies.setdefault(row["Path"].split("/")[2], set()).add(row["Path"].split("/")[3])
    assert max(len(s) for s in studies.values()) > 1  # several studies per patient
    img = Image.open(root.parent / train_rows[0]["Path"])
    assert img.format == "JPEG" and img.mode == "L" and img.size == (16, 16)


def test_isic_layout(isic_tree: Path):
    root = isic_tree
    ids: list[str] = []
    for prefix in ISIC_PREFIXES:
        path = root / f"{prefix}_Part3_GroundTruth.csv"
        assert path.read_text().splitlines()[0] == "image_id,melanoma,seborrheic_keratosis"
        _, rows = read_csv(path)
        assert rows
        for row in rows:
            assert re.fullmatch(r"ISIC_\d{7}", row["image_id"])
            assert row["melanoma"] in ("0.0", "1.0") and row["seborrheic_keratosis"] in ("0.0", "1.0")
            assert not (row["melanoma"] == "1.0" and row["seborrheic_keratosis"] == "1.0")
            assert (root / f"{prefix}_Data" / f"{row['image_id']}.jpg").is_file()
            ids.append(row["image_id"])
        folder = root / f"{prefix}_Data"
        superpixels = sorted(folder.glob("*_superpixels.png"))
        assert len(superpixels) == 2
        assert re.fullmatch(r"ISIC_\d{7}_superpixels\.png", superpixels[0].name)
        assert len(list(folder.glob("*.jpg"))) == len(rows)
    assert len(ids) == len(set(ids)) == 40
    img = Image.open(root / "ISIC-2017_Training_Data" / f"{ids[0]}.jpg")
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (16, 16)


def test_simba_layout(simba_tree: Path):
    root = simba_tree
    subjects = []
    for split in ("train", "val", "test"):
        path = root / f"{split}.csv"
        header, rows = read_csv(path)
        assert header[:4] == ["filename", "filepath", "class_label", "bias_label"]
        for row in rows:
            assert row["class_label"] in ("0", "1") and row["bias_label"] in ("0", "1")
            assert row["filename"].endswith(".nii.gz")
            assert ("_B" in row["filename"]) == (row["bias_label"] == "1")
            # a path on the machine that made the data, not on this one
            assert row["filepath"].startswith("/") and row["filepath"].endswith(f"/{split}/{row['filename']}")
            assert not Path(row["filepath"]).exists()
            img = nib.load(root / split / row["filename"])
            assert img.shape == (16, 16, 16)
            assert img.get_data_dtype() == np.int16
            np.testing.assert_allclose(img.affine, brain_affine(16))
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            subjects.append(row["subject_id"])
    assert len(subjects) == len(set(subjects)) == 40
    vol = np.asarray(nib.load(root / split / row["filename"]).dataobj)
    assert vol.max() > 300 and vol.min() >= 0  # a head in scanner-like units, not an empty volume


# --- determinism, variants, balance ------------------------------------------------------------------


@pytest.mark.parametrize("dataset,n", [("chexpert", 12), ("isic2017", 12), ("simba", 6)])
def test_same_seed_same_bytes(tmp_path: Path, dataset: str, n: int):
    digests = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthesize(dataset, tmp_path / name, n=n, seed=seed, image_size=12)
        digests[name] = tree_digest(tmp_path / name)
    a, b, c = digests["a"], digests["b"], digests["c"]
    assert a == b
    images = [k for k in a if k.endswith((".jpg", ".nii.gz"))]
    assert images and any(a[k] != c.get(k) for k in images)


def test_phantom_arrays_deterministic():
    a, ya = chest_phantoms(20, seed=1, size=16)
    b, yb = chest_phantoms(20, seed=1, size=16)
    c, _ = chest_phantoms(20, seed=2, size=16)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("make", [chest_phantoms, dermoscopy_phantoms, brain_phantoms])
def test_ood_shifts_intensity_statistics(make):
    size = 16
    iid, y = make(32, seed=0, size=size)
    ood, _ = make(32, seed=0, size=size, labels=y, variant="ood")
    assert iid.shape == ood.shape
    mean_iid, mean_ood = iid.mean(), ood.mean()
    std_iid, std_ood = iid.std(), ood.std()
    rel = max(abs(mean_ood - mean_iid) / mean_iid, abs(std_ood - std_iid) / std_iid)
    assert rel > 0.1, (mean_iid, mean_ood, std_iid, std_ood)


def test_ood_tree_ids_and_no_bias(tmp_path: Path):
    root = synthesize("simba", tmp_path / "s", n=20, image_size=8, variant="ood")
    for split in ("train", "val", "test"):
        _, rows = read_csv(root / f"{split}.csv")
        assert all(r["bias_label"] == "0" and int(r["subject_id"][4:]) > 50000 for r in rows)
    root = synthesize("chexpert", tmp_path / "c", n=4, image_size=8, variant="ood")
    _, rows = read_csv(root / "train.csv")
    assert all(int(r["Path"].split("/")[2][7:]) > 50000 for r in rows)


def test_label_and_bias_balance(tmp_path: Path):
    root = synthesize("isic2017", tmp_path / "isic", n=200, image_size=8, prevalence=0.3, n_superpixels=0)
    for prefix in ISIC_PREFIXES:
        _, rows = read_csv(root / f"{prefix}_Part3_GroundTruth.csv")
        frac = np.mean([r["melanoma"] == "1.0" for r in rows])
        assert abs(frac - 0.3) < 0.03
    root = synthesize("simba", tmp_path / "simba", n=200, image_size=8)
    for split, want in (("train", (0.9, 0.1)), ("val", (0.5, 0.5)), ("test", (0.5, 0.5))):
        _, rows = read_csv(root / f"{split}.csv")
        labels = np.array([int(r["class_label"]) for r in rows])
        bias = np.array([int(r["bias_label"]) for r in rows])
        assert abs(labels.mean() - 0.5) < 0.05
        assert abs(bias[labels == 1].mean() - want[0]) < 0.06
        assert abs(bias[labels == 0].mean() - want[1]) < 0.06


def test_bad_settings():
    with pytest.raises(ConfigError, match="dataset"):
        synthesize("mnist", "unused")
    with pytest.raises(ConfigError, match="variant"):
        synthesize("isic2017", "unused", n=4, variant="shifted")
    with pytest.raises(ConfigError, match="bias_effect"):
        synthesize("simba", "unused", n=4, bias_effect="colour")


# --- the findings --------------------------------------------------------------------------------------


def test_effusion_is_basal_and_lateral():
    size = 32
    effusion = np.ones(16, np.int64)
    params = chexpert_like.sample_chest_params(make_rng(0, "t"), effusion)
    clear = {k: (np.zeros_like(v) if k in ("eff_right", "eff_left") else v) for k, v in params.items()}
    with_fluid = chexpert_like.render_chest_frontal(make_rng(1, "t"), params, size)
    without = chexpert_like.render_chest_frontal(make_rng(1, "t"), clear, size)
    diff = with_fluid - without
    assert (diff >= -1e-6).all()  # fluid only makes the lung denser
    assert (diff.reshape(16, -1).max(axis=1) > 0.05).all()
    lower = diff[:, size // 2:].sum()
    assert lower > 0.9 * diff.sum()  # the opacity sits at the lung bases


def test_simba_effects_are_regional():
    size = 24
    ones = np.ones(4, np.int64)
    rng_params = make_rng(0, "t")
    p = simba_like.sample_brain_params(rng_params, ones, ones)
    base = {k: (np.zeros_like(v) if k in ("disease", "bias_morph", "bias_int") else v) for k, v in p.items()}
    disease_only = dict(base, disease=p["disease"])
    bias_only = dict(base, bias_morph=p["bias_morph"])
    render = lambda q: simba_like.render_brain(make_rng(1, "t"), q, size)  # noqa: E731
    ref = render(base)
    d_disease = np.abs(render(disease_only) - ref).sum(axis=0)
    d_bias = np.abs(render(bias_only) - ref).sum(axis=0)
    half = size // 2
    # disease: left hemisphere (x < 0 in RAS); bias: right posterior region
    assert d_disease[:half].sum() > 4 * d_disease[half:].sum()
    assert d_bias[half:, :half].sum() > 2 * (d_bias.sum() - d_bias[half:, :half].sum())
    q = simba_like.sample_brain_params(make_rng(0, "t"), ones, ones, bias_effect="intensity")
    brighter = render(dict(base, bias_int=q["bias_int"])) - ref
    assert brighter[:, half:, :half].sum() > 4 * np.abs(brighter).sum(axis=0)[:half].sum()
    assert brighter[:, half:, :half].mean() > 0


def _load_benchmark(name: str):
    """A script of ``benchmarks/`` imported from its file (the benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finding_is_learnable_but_not_a_brightness_cue():
    difficulty = _load_benchmark("synthetic_difficulty")
    x = difficulty.load_phantoms("chexpert", 400, 0, 32, np.array([0, 1] * 200))
    y = np.array([0, 1] * 200)
    assert difficulty.mean_intensity_auc(x, y) < 0.65
    finding = difficulty.logreg_auc(x[100:], y[100:], x[:100], y[:100])
    flags = np.array([1, 0, 0, 1] * 100)
    patched = difficulty.inject(x, flags, "patch", 0)
    shortcut = difficulty.logreg_auc(patched[100:], flags[100:], patched[:100], flags[:100])
    assert 0.6 < finding < 0.97
    assert shortcut > max(0.97, finding)


# --- the command and the readers -------------------------------------------------------------------------


def test_cli_writes_a_tree(tmp_path: Path, capsys):
    from shortcut_kd.cli import main

    assert main(["synth", "isic2017", str(tmp_path / "isic"), "--n", "9", "--size", "12", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "ISIC-2017_Training_Part3_GroundTruth.csv" in out
    assert len(list((tmp_path / "isic" / "ISIC-2017_Training_Data").glob("ISIC_???????.jpg"))) >= 1
    assert main(["synth", "simba", str(tmp_path / "simba"), "--n", "5", "--size", "8", "--variant", "ood",
                 "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "simba" / "train.csv").is_file()


def test_readers_round_trip(chexpert_tree: Path, isic_tree: Path, simba_tree: Path):
    from shortcut_kd.data.chexpert import read_chexpert
    from shortcut_kd.data.isic2017 import read_isic2017
    from shortcut_kd.data.simba import read_simba

    _, rows = read_csv(chexpert_tree / "train.csv")
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
    for root in (chexpert_tree, chexpert_tree.parent):
        items = read_chexpert(root, "train", uncertainty="zeros")
        assert len(items) == len(frontal)
    ignored = read_chexpert(chexpert_tree, "train", uncertainty="ignore")
    assert len(ignored) == sum(r["Pleural Effusion"] != "-1.0" for r in frontal)
    assert all(Path(i["image"]).is_file() for i in ignored)
    everything = read_chexpert(chexpert_tree, "train", frontal_only=False)
    assert len(everything) == len(rows)
    valid = read_chexpert(chexpert_tree, "valid")
    assert {i["patient"] for i in valid}.isdisjoint({i["patient"] for i in everything})

    for split in ("train", "val", "test"):
        items = read_isic2017(isic_tree, split)
        assert items and all(i["id"].startswith("ISIC_") and Path(i["image"]).suffix == ".jpg" for i in items)
        items = read_simba(simba_tree, split)
        assert items and all(Path(i["image"]).is_file() for i in items)
        assert all(i["bias"] == int("_B" in Path(i["image"]).name) for i in items)
