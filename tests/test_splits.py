"""The split builder, its files and the ``shortcut-kd splits`` command."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shortcut_kd.cli import main
from shortcut_kd.data.splits import (
    MANIFEST, ROLES, SCHEMA, SplitSettings, build_splits, load_settings, load_split, write_splits,
)
from shortcut_kd.errors import ConfigError, DataError

POOLS = ("train_biased", "specialist", "val", "val_aligned", "test_unbiased")  # one role per disjoint pool
TEST_FAMILY = ("test_unbiased", "test_aligned", "test_conflicting", "test_clean")


def make_datalist(n: int = 2000, seed: int = 1, patients: bool = True, native: bool = False) -> list[dict]:
    """Items with ~30 % positives; with ``patients`` 1-3 images per patient (same label per patient)."""
    rng = random.Random(seed)
    items, p = [], 0
    while len(items) < n:
        label = int(rng.random() < 0.3)
        for _ in range(rng.randint(1, 3) if patients else 1):
            i = len(items)
            item = {"image": f"/data/img{i:05d}.png", "label": label, "id": f"img{i:05d}"}
            if patients:
                item["patient"] = f"patient{p:05d}"
            if native:
                item["bias"] = int(rng.random() < (0.9 if label else 0.1))
            items.append(item)
        p += 1
    return items[:n]


def _ids(items):
    return {it["id"] for it in items}


def _rate(items, label):
    members = [it for it in items if it["label"] == label]
    return sum(it["bias"] for it in members) / len(members)


def test_patient_disjoint_pools_cover_everything():
    data = make_datalist()
    splits = build_splits(data, SplitSettings(seed=3))
    patients = [{it["patient"] for it in splits[r]} for r in POOLS]
    for i in range(len(POOLS)):
        for j in range(i + 1, len(POOLS)):
            assert not patients[i] & patients[j], (POOLS[i], POOLS[j])
    assert set().union(*(_ids(splits[r]) for r in POOLS)) == _ids(data)
    assert sum(len(splits[r]) for r in POOLS) == len(data)
    # sizes close to the fractions even though whole patients move together
    assert abs(len(splits["test_unbiased"]) - 400) <= 3 and abs(len(splits["val"]) - 200) <= 3
    assert abs(len(splits["specialist"]) - 200) <= 3 and abs(len(splits["val_aligned"]) - 100) <= 3
    # every pool keeps the class balance (stratified deal)
    for role in POOLS:
        assert abs(np.mean([it["label"] for it in splits[role]]) - np.mean([it["label"] for it in data])) < 0.03


def test_exact_sizes_without_groups_and_missing_group_key():
    data = make_datalist(1000, patients=False)
    splits = build_splits(data, SplitSettings(group_key="patient"))  # key absent: falls back to the id
    assert [len(splits[r]) for r in ("train_biased", "specialist", "oracle", "val")] == [550, 100, 650, 100]
    assert all(len(splits[r]) == 200 for r in TEST_FAMILY)
    assert len(splits["val_aligned"]) == len(splits["val_conflicting"]) == 50
    settings = SplitSettings(group_key=None, specialist_size=37, val_fraction=0.15, test_fraction=0.25,
                             val_annotated_size=20)
    splits = build_splits(data, settings)
    assert [len(splits[r]) for r in ("specialist", "val", "test_clean", "val_aligned", "train_biased")] == [
        37, 150, 250, 20, 543]


def test_bias_rates_and_bias_free_sets():
    data = make_datalist(4000, patients=False)
    s = SplitSettings(seed=5, p_bias_pos=0.9, p_bias_neg=0.1)
    splits = build_splits(data, s)
    train, val = splits["train_biased"], splits["val"]
    assert abs(_rate(train, 1) - 0.9) < 0.04 and abs(_rate(train, 0) - 0.1) < 0.03
    assert abs(_rate(val, 1) - 0.9) < 0.08 and abs(_rate(val, 0) - 0.1) < 0.06
    for role in ("specialist", "oracle", "test_unbiased"):  # decorrelated: half of each class, to one item
        for label in (0, 1):
            members = [it for it in splits[role] if it["label"] == label]
            assert abs(sum(it["bias"] for it in members) - len(members) / 2) <= 0.5, role
    oracle_pool = _ids(train) | _ids(splits["specialist"])  # the same data budget as KD: both sets
    assert _ids(splits["oracle"]) == oracle_pool and len(splits["oracle"]) == len(oracle_pool)
    assert {it["id"]: it["bias"] for it in splits["oracle"]} != {it["id"]: it["bias"] for it in train}

    absent = build_splits(data, SplitSettings(seed=5, bias_free="absent"))
    assert all(it["bias"] == 0 for r in ("specialist", "oracle") for it in absent[r])
    assert _ids(absent["specialist"]) == _ids(splits["specialist"])  # the same partition
    assert absent["train_biased"] == build_splits(data, SplitSettings(seed=5))["train_biased"]


def test_test_family_flags_groups_and_roles():
    data = make_datalist(600)
    splits = build_splits(data, SplitSettings(), ood_datalist=make_datalist(30, seed=9))
    ids = _ids(splits["test_unbiased"])
    assert all(_ids(splits[r]) == ids for r in TEST_FAMILY)
    assert all(it["bias"] == it["label"] for it in splits["test_aligned"])
    assert all(it["bias"] == 1 - it["label"] for it in splits["test_conflicting"])
    assert all(it["bias"] == 0 for it in splits["test_clean"])
    assert len(splits["test_ood"]) == 30 and all(it["bias"] == 0 for it in splits["test_ood"])
    assert list(splits) == list(ROLES)
    for role, items in splits.items():
        for it in items:
            assert it["role"] == role and it["group"] == 2 * it["label"] + it["bias"]
    assert "test_ood" not in build_splits(data, SplitSettings())
    assert "bias" not in data[0]  # the input is left alone


def test_same_seed_same_splits_other_seed_other_splits():
    data = make_datalist(800)
    shuffled = list(data)
    random.Random(0).shuffle(shuffled)
    a = build_splits(data, SplitSettings(seed=11))
    assert a == build_splits(data, SplitSettings(seed=11))
    assert a == build_splits(shuffled, SplitSettings(seed=11))  # independent of the input order
    b = build_splits(data, SplitSettings(seed=12))
    assert _ids(a["test_clean"]) != _ids(b["test_clean"])
    assert [it["bias"] for it in a["train_biased"]] != [it["bias"] for it in b["train_biased"]]


def test_native_bias_mode():
    data = make_datalist(2000, patients=False, native=True)
    own = {it["id"]: it["bias"] for it in data}
    ood = make_datalist(40, seed=4, native=True)
    splits = build_splits(data, SplitSettings(native_bias=True, group_key=None), ood_datalist=ood)
    for role, items in splits.items():
        if role != "test_ood":
            assert all(it["bias"] == own[it["id"]] for it in items), role
    test = splits["test_clean"] + splits["test_aligned"]
    pool = _ids(splits["test_aligned"]) | _ids(splits["test_conflicting"])
    assert _ids(splits["test_clean"]) <= pool and _ids(splits["test_unbiased"]) <= pool
    assert all(it["bias"] == it["label"] for it in splits["test_aligned"])
    assert all(it["bias"] != it["label"] for it in splits["test_conflicting"])
    assert all(it["bias"] == 0 for it in test if it["role"] == "test_clean")
    for role in ("test_unbiased", "oracle", "specialist"):
        groups = np.bincount([it["group"] for it in splits[role]], minlength=4)
        assert groups.min() == groups.max() > 0, (role, groups)
    assert _ids(splits["oracle"]) <= _ids(splits["train_biased"]) | _ids(splits["specialist"])
    assert _ids(splits["specialist"]) <= _ids(splits["oracle"])
    assert not _ids(splits["specialist"]) & _ids(splits["train_biased"])
    # the specialist and the validation split hold out some of the rare (bias-conflicting) items
    assert 0.85 < _rate(splits["train_biased"], 1) < 1.0
    assert all(it["bias"] == 0 for it in splits["test_ood"]) and len(splits["test_ood"]) < 40
    absent = build_splits(data, SplitSettings(native_bias=True, group_key=None, bias_free="absent"))
    assert all(it["bias"] == 0 for r in ("specialist", "oracle") for it in absent[r])
    assert {it["label"] for it in absent["specialist"]} == {0, 1}
    with pytest.raises(DataError) as e:
        build_splits(make_datalist(100), SplitSettings(native_bias=True))
    assert e.value.column == "bias"


def test_settings_and_input_validation():
    data = make_datalist(200, patients=False)
    for bad in (dict(p_bias_pos=1.2), dict(p_bias_neg=-0.1), dict(val_fraction=0.0),
                dict(test_fraction=0.7, val_fraction=0.3), dict(specialist_size=True), dict(specialist_size=0),
                dict(specialist_size=1.5), dict(bias_free="none"), dict(seed=1.5)):
        with pytest.raises(ConfigError):
            build_splits(data, SplitSettings(**bad))
    with pytest.raises(ConfigError, match="specialist_size"):
        build_splits(data, SplitSettings(specialist_size=150))
    with pytest.raises(ConfigError, match="val pool empty"):
        build_splits(data[:4], SplitSettings())
    with pytest.raises(DataError, match="label"):
        build_splits([dict(it, label=0) for it in data])
    with pytest.raises(DataError) as e:
        build_splits(data[:-1] + [dict(data[-1], label=2)])
    assert e.value.column == "label" and e.value.row == data[-1]["id"]
    with pytest.raises(DataError, match="twice"):
        build_splits(data + data[:1])
    with pytest.raises(ConfigError):
        SplitSettings.from_dict({"seed": 0, "p_bias": 0.9})


def test_write_load_round_trip(tmp_path):
    data = make_datalist(300)
    settings = SplitSettings(seed=7, specialist_size=25)
    splits = build_splits(data, settings, ood_datalist=make_datalist(10, seed=2))
    manifest = write_splits(splits, tmp_path / "s", settings, source={"dataset": "test"})
    for role in ROLES:
        assert load_split(tmp_path / "s", role) == splits[role]
    assert load_settings(tmp_path / "s") == settings
    m = json.loads(manifest.read_text())
    assert m["schema"] == SCHEMA and m["seed"] == 7 and m["source"] == {"dataset": "test"}
    assert m["counts"]["specialist"]["n"] == len(splits["specialist"]) and abs(len(splits["specialist"]) - 25) <= 4
    assert sum(m["counts"]["test_clean"]["groups"].values()) == len(splits["test_clean"])
    assert m["counts"]["test_clean"]["groups"]["1"] == m["counts"]["test_clean"]["groups"]["3"] == 0
    # rewritten without an OOD source: no stale test_ood.json is left behind
    write_splits(build_splits(data, settings), tmp_path / "s", settings)
    assert not (tmp_path / "s" / "test_ood.json").exists()
    with pytest.raises(DataError, match="--ood-dir"):
        load_split(tmp_path / "s", "test_ood")
    with pytest.raises(ConfigError):
        load_split(tmp_path / "s", "train")
    with pytest.raises(DataError, match="splits.json"):
        load_split(tmp_path / "elsewhere", "val")
    (tmp_path / "s" / MANIFEST).write_text(json.dumps({"schema": "other/v0"}))
    with pytest.raises(DataError, match="schema"):
        load_settings(tmp_path / "s")


def _isic_tree(root: Path, n: int = 60) -> None:
    data = root / "ISIC-2017_Training_Data"
    data.mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 4, np.uint8)).save(data / f"ISIC_{i:07d}.jpg")
        rows.append([f"ISIC_{i:07d}", "1.0" if i % 3 == 0 else "0.0", "0.0"])
    raw = (data / "ISIC_0000005.jpg").read_bytes()
    (data / "ISIC_0000005.jpg").write_bytes(raw[: len(raw) // 2])  # truncated: left out by the check
    with open(root / "ISIC-2017_Training_Part3_GroundTruth.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image_id", "melanoma", "seborrheic_keratosis"], *rows])


def test_cli_builds_and_prints_counts(tmp_path, capsys):
    _isic_tree(tmp_path / "isic")
    out = tmp_path / "splits"
    assert main(["splits", "isic2017", str(tmp_path / "isic"), str(out), "--seed", "4", "--specialist-size", "6",
                 "--p-bias-pos", "0.8"]) == 0
    text = capsys.readouterr().out
    assert "train_biased" in text and "test_conflicting" in text and "left out 1 image" in text
    settings = load_settings(out)
    assert settings.seed == 4 and settings.specialist_size == 6 and settings.p_bias_pos == 0.8
    assert not settings.native_bias
    items = [it for role in ("train_biased", "specialist", "val", "val_aligned", "test_clean")
             for it in load_split(out, role)]
    assert len(items) == 59 and "ISIC_0000005" not in _ids(items)
    assert len(load_split(out, "specialist")) == 6
    assert main(["splits", "isic2017", str(tmp_path / "isic"), str(tmp_path / "s2"), "--check-images", "raise"]) == 2
    assert "ISIC_0000005.jpg" in capsys.readouterr().err


def test_specialist_from_the_shifted_source_changes_only_the_teachers_data():
    data = make_datalist(1000)
    ood = [{**it, "id": f"ood{i}", "patient": f"ood-{it['patient']}"}
           for i, it in enumerate(make_datalist(300, seed=5))]
    same = build_splits(data, SplitSettings(seed=2, specialist_size=60), ood_datalist=ood)
    other = build_splits(data, SplitSettings(seed=2, specialist_size=60, specialist_source="ood"), ood_datalist=ood)
    for role in ("train_biased", "oracle", "val", "val_aligned", "val_conflicting", *TEST_FAMILY):
        assert _ids(same[role]) == _ids(other[role]), role
    specialist, test_ood = _ids(other["specialist"]), _ids(other["test_ood"])
    assert specialist <= _ids(ood) and not specialist & test_ood and specialist | test_ood == _ids(ood)
    assert abs(len(specialist) - 60) <= 3 and {it["label"] for it in other["specialist"]} == {0, 1}
    patients = {it["patient"] for it in other["specialist"]}
    assert not patients & {it["patient"] for it in other["test_ood"]}  # by patient
    assert other == build_splits(data, SplitSettings(seed=2, specialist_size=60, specialist_source="ood"),
                                 ood_datalist=ood)  # same seed, same draw
    with pytest.raises(ConfigError, match="specialist_source.*ood_dir"):
        build_splits(data, SplitSettings(specialist_source="ood"))
    with pytest.raises(ConfigError, match="specialist_source"):
        build_splits(data, SplitSettings(specialist_source="elsewhere"))
