"""The bias-annotated validation split (roles ``val_aligned`` / ``val_conflicting``): disjoint from every other
role, its bias flags, its size, its determinism, and the evaluation on it that never reads a test split."""

from __future__ import annotations

import builtins
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_splits import make_datalist

from shortcut_kd.data.splits import (
    ROLES, TEST_ROLES, VALIDATION_ROLES, VALIDATION_SETS, SplitSettings, build_splits, load_settings, load_split,
    write_splits,
)
from shortcut_kd.errors import ConfigError, DataError

OTHER_ROLES = tuple(r for r in ROLES if r not in VALIDATION_ROLES)


def _ids(items):
    return {it["id"] for it in items}


def _ood(n: int = 20) -> list[dict]:
    return [dict(it, id=f"ood_{it['id']}", patient=f"ood_{it['patient']}") for it in make_datalist(n, seed=9)]


def _check_disjoint(splits: dict, group_key: str | None) -> None:
    val = [it for r in VALIDATION_ROLES for it in splits[r]]
    assert val, "the validation split is empty"
    for role in OTHER_ROLES:
        if role not in splits:
            continue
        assert not _ids(val) & _ids(splits[role]), role
        if group_key:
            assert not {it[group_key] for it in val} & {it[group_key] for it in splits[role]}, role


def _check_views(splits: dict) -> None:
    aligned, conflicting = splits["val_aligned"], splits["val_conflicting"]
    assert all(it["bias"] == it["label"] for it in aligned)
    assert all(it["bias"] != it["label"] for it in conflicting)
    for role in VALIDATION_ROLES:
        assert {it["label"] for it in splits[role]} == {0, 1}, role
        assert all(it["role"] == role and it["group"] == 2 * it["label"] + it["bias"] for it in splits[role])


def test_constants():
    assert VALIDATION_SETS == ("aligned", "conflicting")
    assert VALIDATION_ROLES == ("val_aligned", "val_conflicting") and set(VALIDATION_ROLES) <= set(ROLES)
    assert "val" in ROLES and not set(VALIDATION_ROLES) & set(TEST_ROLES)


def test_injected_bias_split_is_disjoint_with_the_test_family_flags():
    splits = build_splits(make_datalist(1200), SplitSettings(seed=2), ood_datalist=_ood())
    _check_disjoint(splits, "patient")
    _check_views(splits)
    # the same images twice, like test_aligned / test_conflicting from the test pool
    assert _ids(splits["val_aligned"]) == _ids(splits["val_conflicting"])
    assert abs(len(splits["val_aligned"]) - 60) <= 3
    # stratified like the other pools: the dataset's class balance
    rate = np.mean([it["label"] for it in make_datalist(1200)])
    assert abs(np.mean([it["label"] for it in splits["val_aligned"]]) - rate) < 0.05


def test_native_bias_split_is_disjoint_and_group_balanced():
    data = make_datalist(2000, patients=True, native=True)
    own = {it["id"]: it["bias"] for it in data}
    for group_key in ("patient", None):
        splits = build_splits(data, SplitSettings(native_bias=True, group_key=group_key))
        _check_disjoint(splits, group_key)
        _check_views(splits)
        val = splits["val_aligned"] + splits["val_conflicting"]
        assert all(it["bias"] == own[it["id"]] for it in val)  # the data's own flags
        assert not _ids(splits["val_aligned"]) & _ids(splits["val_conflicting"])
        groups = np.bincount([it["group"] for it in val], minlength=4)
        assert groups.min() > 0 and abs(groups[0] - groups[3]) <= 3  # the two common groups share alike
        # more bias-conflicting items than the data's ~10 %: as balanced as the rare (pure) groups allow
        share = len(splits["val_conflicting"]) / len(val)
        assert share > (0.25 if group_key is None else np.mean([it["bias"] != it["label"] for it in data]))
        assert abs(len(val) - 100) <= (3 if group_key is None else 12)  # whole patients (1-3 images) move


def test_size_fraction_count_and_validation():
    data = make_datalist(1000, patients=False)
    assert len(build_splits(data, SplitSettings(val_annotated_size=0.1))["val_aligned"]) == 100
    assert len(build_splits(data, SplitSettings(val_annotated_size=37))["val_conflicting"]) == 37
    native = make_datalist(2000, patients=False, native=True)
    splits = build_splits(native, SplitSettings(native_bias=True, group_key=None, val_annotated_size=40))
    assert len(splits["val_aligned"]) + len(splits["val_conflicting"]) == 40
    for bad in (0, -3, 1.5, 0.0, True, "0.05"):
        with pytest.raises(ConfigError, match="val_annotated_size"):
            SplitSettings(val_annotated_size=bad).validate()
    with pytest.raises(ConfigError, match="val_annotated_size") as e:
        SplitSettings(val_annotated_size=0.65).validate()  # 0.1 + 0.2 + 0.1 + 0.65 >= 1
    assert "sum is below 1" in str(e.value)
    with pytest.raises(ConfigError, match="val_annotated_size") as e:
        build_splits(data[:200], SplitSettings(val_annotated_size=150))
    assert "leave nothing to train on" in str(e.value)
    with pytest.raises(ConfigError, match="val_annotated pool empty"):
        build_splits(data[:40], SplitSettings(val_annotated_size=0.01))
    assert SplitSettings().pool_sizes(1000) == {"test": 200, "val": 100, "specialist": 100, "val_annotated": 50,
                                                "train": 550}


def test_deterministic_and_other_pools_unchanged():
    data = make_datalist(800)
    shuffled = list(data)
    random.Random(0).shuffle(shuffled)
    a = build_splits(data, SplitSettings(seed=11))
    assert _ids(a["val_aligned"]) == _ids(build_splits(shuffled, SplitSettings(seed=11))["val_aligned"])
    assert _ids(a["val_aligned"]) != _ids(build_splits(data, SplitSettings(seed=12))["val_aligned"])
    # the pool is dealt last, out of the training data: the test, val and specialist pools do not move
    b = build_splits(data, SplitSettings(seed=11, val_annotated_size=80))
    for role in ("test_unbiased", "val", "specialist"):
        assert a[role] == b[role], role
    assert _ids(b["train_biased"]) < _ids(a["train_biased"]) and _ids(a["val_aligned"]) < _ids(b["val_aligned"])
    native = make_datalist(1500, patients=False, native=True)
    s = SplitSettings(native_bias=True, group_key=None, seed=3)
    assert build_splits(native, s)["val_conflicting"] == build_splits(native[::-1], s)["val_conflicting"]


def test_native_rare_groups_and_nothing_to_draw():
    data = make_datalist(400, patients=False, native=True)
    splits = build_splits(data, SplitSettings(native_bias=True, group_key=None))
    assert splits["val_conflicting"] and splits["val_aligned"]
    # each group keeps half of what the specialist left of it: with one item per group nothing can be drawn
    from shortcut_kd.data.splits import _native_validation

    units = [[{"id": f"i{g}", "image": "x", "label": g // 2, "bias": g % 2}] for g in range(4)]
    with pytest.raises(DataError, match="val_annotated_size"):
        _native_validation(units, 10, seed=0)


def test_write_load_round_trip(tmp_path):
    data = make_datalist(300)
    settings = SplitSettings(seed=1, val_annotated_size=30)
    splits = build_splits(data, settings)
    manifest = json.loads(write_splits(splits, tmp_path, settings).read_text())
    assert manifest["roles"][4:6] == list(VALIDATION_ROLES) and manifest["counts"]["val_aligned"]["n"] > 0
    for role in VALIDATION_ROLES:
        assert load_split(tmp_path, role) == splits[role]
    assert load_settings(tmp_path).val_annotated_size == 30


# --------------------------------------------------------------------------------- evaluation on the split
class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _image(item: dict) -> dict:
    """A 1 x 4 x 4 image from the id, brighter with the label and the shortcut (a little signal each)."""
    rng = np.random.default_rng(int(item["id"][3:]))
    x = rng.normal(size=(1, 4, 4)) + 0.5 * item["label"] + 1.0 * item["bias"]
    return {**item, "image": torch.as_tensor(x, dtype=torch.float32)}


def _recorder(monkeypatch) -> tuple[list[str], list[str]]:
    """Record the roles passed to load_split and every file opened for reading."""
    import shortcut_kd.data.splits as splits_module

    roles: list[str] = []
    opened: list[str] = []
    load = splits_module.load_split

    def load_split(split_dir, role):
        roles.append(role)
        return load(split_dir, role)

    real_open = io.open

    def recording_open(file, mode="r", *args, **kwargs):
        if "r" in mode and isinstance(file, (str, Path)):
            opened.append(Path(file).name)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(splits_module, "load_split", load_split)
    monkeypatch.setattr(io, "open", recording_open)
    monkeypatch.setattr(builtins, "open", recording_open)
    return roles, opened


def test_evaluate_on_validation_reads_no_test_split(tmp_path, monkeypatch):
    from monai.transforms import Lambda

    from shortcut_kd.workflows.bundle import PREDICTIONS_SCHEMA, evaluate_checkpoints, split_loaders

    settings = SplitSettings(seed=4, val_annotated_size=40)
    splits = build_splits(make_datalist(300), settings)
    split_dir = tmp_path / "splits"
    write_splits(splits, split_dir, settings)
    ckpts = {}
    for i, method in enumerate(("erm", "kd")):
        torch.manual_seed(i)
        ckpts[method] = str(tmp_path / f"model_{method}.pt")
        torch.save(TinyNet().state_dict(), ckpts[method])
    ckpts["teacher"] = str(tmp_path / "missing.pt")
    transform = Lambda(_image)
    with pytest.raises(ConfigError, match="evaluate#sets"):
        split_loaders(split_dir, transform, sets="val")

    roles, opened = _recorder(monkeypatch)
    preds_file = tmp_path / "out" / "predictions.json"
    results = evaluate_checkpoints(ckpts, TinyNet(), split_dir, transform, tmp_path / "out" / "results.json",
                                   dataset="isic2017", shortcut="patch", batch_size=16, n_bootstrap=10,
                                   sets="validation", predictions_file=preds_file)
    assert sorted(set(roles)) == list(VALIDATION_ROLES)
    assert not [f for f in opened if f.startswith("test_")], opened
    assert "splits.json" in opened  # the recorder sees the files that are read

    assert results["sets"] == "validation" and set(results["methods"]) == {"erm", "kd"}
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == json.loads(json.dumps(results))
    preds = json.loads(preds_file.read_text())
    assert preds["schema"] == PREDICTIONS_SCHEMA and preds["sets"] == "validation"
    for method in ("erm", "kd"):
        entries = results["methods"][method]["test"]
        assert set(entries) == set(VALIDATION_SETS) == set(preds["methods"][method])
        for name in VALIDATION_SETS:
            p = preds["methods"][method][name]
            truth = {it["id"]: it for it in splits[f"val_{name}"]}
            assert p["id"] == sorted(truth) and len(p["score"]) == entries[name]["n"] == len(truth)
            assert p["label"] == [truth[i]["label"] for i in p["id"]]
            assert p["bias"] == [truth[i]["bias"] for i in p["id"]]
            assert roc_auc_score(p["label"], p["score"]) == pytest.approx(entries[name]["auc"], abs=1e-12)
    assert preds["methods"]["erm"]["aligned"]["score"] != preds["methods"]["kd"]["aligned"]["score"]

    # the recorder catches a test evaluation, which keeps its keys and writes no predictions unasked
    roles.clear()
    results = evaluate_checkpoints({"erm": ckpts["erm"]}, TinyNet(), split_dir, transform,
                                   tmp_path / "out" / "test_results.json", dataset="isic2017", n_bootstrap=0)
    assert results["sets"] == "test" and set(results["methods"]["erm"]["test"]) == {
        "unbiased", "aligned", "conflicting", "clean"}
    assert {r for r in roles if r.startswith("test_")} == {"test_unbiased", "test_aligned", "test_conflicting",
                                                           "test_clean"}


def test_bundle_evaluate_stage_on_validation(tmp_path_factory, tmp_path, monkeypatch):
    """The evaluate stage of a bundle with ``evaluate#sets=validation`` and a predictions file."""
    from test_bundles import dataset_dir, network_of, run_stage, tiny_bundle

    import shortcut_kd.data.splits as splits_module

    config = json.loads((Path(__file__).resolve().parents[1] / "bundles" / "common" / "configs"
                         / "evaluate.json").read_text())
    assert config["evaluate"]["sets"] == "test" and config["evaluate"]["predictions_file"] is None
    data = dataset_dir(tmp_path_factory, "isic2017")
    bundle = tiny_bundle("isic2017", tmp_path)
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(network_of(bundle, "train.json").state_dict(), out / "models" / "model_erm.pt")
    roles: list[str] = []
    load = splits_module.load_split
    monkeypatch.setattr(splits_module, "load_split", lambda d, r: roles.append(r) or load(d, r))
    run_stage(bundle, "evaluate", dataset_dir=str(data), output_dir=str(out), bundle_root=str(bundle),
              **{"evaluate#sets": "validation", "evaluate#predictions_file": str(out / "val_predictions.json"),
                 "splits#val_annotated_size": 0.2})
    assert roles and not [r for r in roles if r.startswith("test_")]
    results = json.loads((out / "results.json").read_text())
    assert results["sets"] == "validation" and set(results["methods"]) == {"erm"}
    assert set(results["methods"]["erm"]["test"]) == set(VALIDATION_SETS)
    assert json.loads((out / "splits" / "splits.json").read_text())["settings"]["val_annotated_size"] == 0.2
    preds = json.loads((out / "val_predictions.json").read_text())["methods"]["erm"]
    for name in VALIDATION_SETS:
        assert preds[name]["id"] == [it["id"] for it in json.loads((out / "splits" / f"val_{name}.json").read_text())]
