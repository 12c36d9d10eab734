"""The paper's experiments as study variants on tiny data: a teacher-set size point, teacher data from the
shifted source, final-only distillation and a narrower teacher — each reusing the stages it does not change,
aggregated into a table and a figure per ablation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_study import TINY, _study_file
from test_workflows import make_isic_tree

from shortcut_kd.cli import main
from shortcut_kd.errors import ConfigError
from shortcut_kd.study.config import read_study

VARIANTS = {
    "n8": {"methods": ["teacher", "kd"], "experiment": {"specialist_size": 8}, "ablation": "teacher_size",
           "value": 8},
    "from_ood": {"methods": ["teacher", "kd"], "experiment": {"specialist_source": "ood"},
                 "ablation": "teacher_source", "value": "ood"},
    "final_only": {"method": "kd", "settings": {"distill": {"layers": "none"}}, "ablation": "layers",
                   "value": "final only"},
    "intermediate_only": {"method": "kd", "settings": {"distill": {"final_weight": 0.0}}, "ablation": "layers",
                          "value": "intermediate only"},
    "narrow": {"methods": ["teacher", "kd"], "ablation": "teacher_network", "value": "width 0.125",
               "experiment": {"teacher_init": "scratch", "teacher_arch_kwargs": {"widen_factor": 0.125}}},
}
ABLATIONS = {"teacher_size": {"title": "Teacher-set size", "axis": "specialist images", "main": 16, "numeric": True},
             "teacher_source": {"title": "Teacher data source", "axis": "source", "main": "train"},
             "layers": {"title": "Distilled layers", "axis": "layers", "main": "all"},
             "teacher_network": {"title": "Teacher network", "axis": "teacher", "main": "same as student"}}


@pytest.fixture(scope="module")
def isic_tree(tmp_path_factory):
    return make_isic_tree(tmp_path_factory.mktemp("ablation_isic"), n=160)


def _study(path: Path, tree: Path, **changes) -> Path:
    return _study_file(path, tree, **{"name": "tiny_ablations", "methods": ["erm", "teacher", "kd"], "seeds": [0],
                                      "variants": VARIANTS, "ablations": ABLATIONS,
                                      "tuning": {"seeds": [7], "trials": 1}, **changes})


def test_variant_errors_name_the_key_and_the_fix(tmp_path, isic_tree):
    def bad(**variant):
        return _study(tmp_path / "bad.yaml", isic_tree, variants={"v": variant})

    with pytest.raises(ConfigError, match="variants.v.method"):
        read_study(bad(methods=["teacher", "oracle"]))
    with pytest.raises(ConfigError, match="every stage shares this setting: put it under experiment"):
        read_study(bad(method="kd", settings={"specialist_size": 8}))
    with pytest.raises(ConfigError, match="not an experiment-wide setting: put it under settings"):
        read_study(bad(method="kd", experiment={"lr": 0.1}))
    with pytest.raises(ConfigError, match="declare it under ablations"):
        read_study(bad(method="kd", ablation="nowhere"))
    with pytest.raises(ConfigError, match="did you mean 'experiment'"):
        read_study(bad(method="kd", experimnt={}))
    with pytest.raises(ConfigError, match="tuning.reuse"):
        read_study(_study(tmp_path / "r.yaml", isic_tree,
                          tuning={"seeds": [7], "trials": 1, "reuse": str(tmp_path / "none")}))


def test_variants_reuse_what_they_do_not_change_and_report_each_ablation(tmp_path, isic_tree):
    out = tmp_path / "study"
    assert main(["study", str(_study(tmp_path / "s.yaml", isic_tree)), "--out", str(out), "--n-bootstrap", "20"]) == 0
    cell = out / "cells" / "isic2017" / "patch"

    def record(variant: str | None, method: str) -> Path:
        return cell / "seed0" / ("" if variant is None else f"variants/{variant}") / "stages" / f"{method}.json"

    def same_file(a: Path, b: Path) -> bool:
        return a.stat().st_ino == b.stat().st_ino

    # ERM reruns only where the splits change (another teacher set); a teacher or KD change reuses it
    assert [v for v in VARIANTS if same_file(record(None, "erm"), record(v, "erm"))] == [
        "final_only", "intermediate_only", "narrow"]
    for variant in ("final_only", "intermediate_only"):  # the teacher reused, only KD reran
        assert same_file(record(None, "teacher"), record(variant, "teacher"))
        assert not same_file(record(None, "kd"), record(variant, "kd"))
    for variant in ("n8", "from_ood", "narrow"):
        assert not same_file(record(None, "teacher"), record(variant, "teacher"))
    overrides = json.loads(record("final_only", "kd").read_text())["overrides"]
    assert overrides["distill#layers"] == "none"
    narrow = json.loads(record("narrow", "teacher").read_text())["overrides"]
    assert narrow["teacher_def"]["widen_factor"] == 0.125 and narrow["teacher#init_ckpt"] is None
    manifest = json.loads((cell / "seed0" / "variants" / "from_ood" / "splits" / "splits.json").read_text())
    assert manifest["settings"]["specialist_source"] == "ood"
    small = json.loads((cell / "seed0" / "variants" / "n8" / "splits" / "splits.json").read_text())
    assert small["counts"]["specialist"]["n"] <= 9
    study = json.loads((out / "study.json").read_text())
    ablations = study["cells"]["isic2017/patch"]["ablations"]
    sizes = ablations["teacher_size"]["points"]
    assert [p["value"] for p in sizes] == [8, 16] and [p["variant"] for p in sizes] == ["n8", None]
    assert all({"teacher", "kd"} <= set(p["methods"]) and "kd_vs_teacher" in p for p in sizes)
    layers = ablations["layers"]["points"]
    assert [p["value"] for p in layers] == ["all", "final only", "intermediate only"]
    # a point that changes KD alone is compared with the main cell's teacher
    assert layers[1]["methods"]["teacher"] == layers[0]["methods"]["teacher"]
    assert layers[1]["methods"]["kd"] != layers[0]["methods"]["kd"]
    assert set(study["cells"]["isic2017/patch"]["rows"]) == {"erm", "teacher", "kd"}  # ablations are not rows
    text = (out / "study.md").read_text()
    for spec in ABLATIONS.values():
        assert f"### isic2017/patch: {spec['title']}" in text
    assert "| specialist images |" in text
    for name in ABLATIONS:
        assert (out / "figures" / f"ablation_{name}.png").stat().st_size > 0
    # another study takes the settings this one chose instead of tuning
    again = tmp_path / "again"
    config = _study(tmp_path / "r.yaml", isic_tree, variants={}, ablations={}, methods=["erm"],
                    tuning={"seeds": [7], "trials": 3, "reuse": str(out),
                            "search_space": {"erm": {"lr": {"float": [1e-4, 1e-2]}}}})
    assert main(["study", str(config), "--out", str(again), "--n-bootstrap", "20"]) == 0
    chosen = json.loads((again / "tune" / "isic2017" / "patch" / "chosen.json").read_text())
    assert chosen["reused_from"]["sha256"] and not (again / "tune" / "isic2017" / "patch" / "trials.json").exists()


def test_a_teacher_unlike_the_student_needs_its_initialisation_said(tmp_path, isic_tree):
    from test_workflows import _settings

    from shortcut_kd.workflows.experiment import Experiment

    narrow = {"teacher_arch_kwargs": {"widen_factor": 0.125}}
    with pytest.raises(ConfigError, match="teacher_init.*set teacher_init: scratch"):
        Experiment(_settings(isic_tree, tmp_path / "a", **narrow)).overrides("teacher")
    with pytest.raises(ConfigError, match="distill.student_init"):
        Experiment(_settings(isic_tree, tmp_path / "b", teacher_init="scratch",
                             distill={"student_init": "teacher"}, **narrow)).overrides("distill")
    same = Experiment(_settings(isic_tree, tmp_path / "c", teacher_init="scratch",
                                teacher_arch_kwargs=dict(TINY["arch_kwargs"])))
    assert "teacher_def" not in same.overrides("teacher")  # the student's own network: nothing to build
    exp = Experiment(_settings(isic_tree, tmp_path / "d", teacher_init="scratch", **narrow))
    assert "teacher_def" in exp.overrides("teacher") and "teacher_def" not in exp.overrides("erm")
    widths = [m.out_channels for m in exp.network("teacher").modules() if hasattr(m, "out_channels")]
    student = [m.out_channels for m in exp.network("kd").modules() if hasattr(m, "out_channels")]
    assert max(widths) < max(student)


def test_layer_use_of_a_finished_study_compares_a_localized_and_a_diffuse_shortcut(tmp_path, isic_tree):
    config = _study(tmp_path / "u.yaml", isic_tree, methods=["erm"], variants={}, ablations={})
    data = yaml.safe_load(config.read_text())
    data["pipelines"][0]["shortcuts"] = ["patch", "noise"]
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "study"
    assert main(["study", str(config), "--out", str(out), "--n-bootstrap", "20"]) == 0
    assert not (out / "cells" / "isic2017" / "patch" / "seed0" / "layer_use.json").exists()
    assert main(["study", str(config), "--out", str(out), "--aggregate-only", "--layer-use"]) == 0
    rows = json.loads((out / "cells" / "isic2017" / "noise" / "seed0" / "layer_use.json").read_text())["rows"]
    assert rows[-1]["tap"] == "output" and all(r["model"] == "erm" for r in rows) and len(rows) >= 3
    assert all(r["use"] is None or -1 <= r["use"] <= 1 for r in rows)
    summary = json.loads((out / "study.json").read_text())["layer_use"]
    assert {c["kind"] for c in summary["cells"].values()} == {"localized", "diffuse"}
    (comparison,) = summary["localized_vs_diffuse"]
    assert comparison["localized"] == "patch" and comparison["diffuse"] == "noise"
    assert comparison["answer"] in ("localized earlier", "diffuse earlier", "not consistent",
                                    "no uptake measured in both")
    text = (out / "study.md").read_text()
    assert "## Where the shortcut is used, layer by layer" in text and "(localized) vs `noise` (diffuse)" in text
    assert (out / "figures" / "layer_use.png").stat().st_size > 0
    mtime = (out / "cells" / "isic2017" / "noise" / "seed0" / "layer_use.json").stat().st_mtime_ns
    assert main(["study", str(config), "--out", str(out), "--aggregate-only", "--layer-use"]) == 0
    assert (out / "cells" / "isic2017" / "noise" / "seed0" / "layer_use.json").stat().st_mtime_ns == mtime
