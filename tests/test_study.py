"""The study harness on a tiny grid: config checks, tuning on the validation split only, the aggregate, and
two workers sharing one study through Optuna's storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflows import make_isic_tree

from shortcut_kd.cli import main
from shortcut_kd.errors import ConfigError
from shortcut_kd.study.config import read_study
from shortcut_kd.study.jobs import job_keys
from shortcut_kd.study.tuning import draw_trials, selection_score

TINY = {"image_size": 16, "architecture": "resnet10", "arch_kwargs": {"widen_factor": 0.25}, "epochs": 1,
        "batch_size": 16, "teacher_epochs": 1, "specialist_size": 16, "val_annotated_size": 16, "n_bootstrap": 20,
        "num_workers": 0, "distill": {"probe_epochs": 1}}


@pytest.fixture(scope="module")
def isic_tree(tmp_path_factory):
    return make_isic_tree(tmp_path_factory.mktemp("study_isic"), n=160)


def _study_file(path: Path, tree: Path, **changes) -> Path:
    data = {"name": "tiny", "device": "cpu",
            "pipelines": [{"dataset": "isic2017", "dataset_dir": str(tree / "iid"), "ood_dir": str(tree / "ood"),
                           "shortcuts": ["patch"], "settings": TINY}],
            "methods": ["erm", "kd"], "seeds": [0, 1],
            "tuning": {"seeds": [7], "trials": 2, "sampler_seed": 0,
                       "search_space": {"erm": {"lr": {"float": [1e-4, 3e-3], "log": True}},
                                        "kd": {"distill.weight": {"choices": [1.0, 5.0]}}}}}
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def test_study_file_errors_name_the_key_and_the_fix(tmp_path, isic_tree):
    with pytest.raises(ConfigError, match=r"metods.*did you mean 'methods'"):
        read_study(_study_file(tmp_path / "a.yaml", isic_tree, metods=["erm"]))
    with pytest.raises(ConfigError, match=r"methods.*did you mean 'groupdro'"):
        read_study(_study_file(tmp_path / "b.yaml", isic_tree, methods=["erm", "groupdor"]))
    with pytest.raises(ConfigError, match="never reported"):
        read_study(_study_file(tmp_path / "c.yaml", isic_tree, tuning={"seeds": [0], "trials": 2}))
    with pytest.raises(ConfigError, match="search_space.erm.epoch"):
        read_study(_study_file(tmp_path / "d.yaml", isic_tree, tuning={
            "seeds": [7], "trials": 2, "search_space": {"erm": {"epoch": {"int": [1, 3]}}}}))
    with pytest.raises(ConfigError, match="every stage shares"):
        read_study(_study_file(tmp_path / "e.yaml", isic_tree, tuning={
            "seeds": [7], "trials": 2, "search_space": {"erm": {"image_size": {"choices": [16, 32]}}}}))


def test_trials_are_the_defaults_then_seeded_draws():
    space = {"lr": {"float": [1e-4, 1e-2], "log": True}, "distill.weight": {"choices": [1.0, 5.0]}}
    trials = draw_trials(space, 3, seed=0)
    assert trials[0] == {} and len(trials) == 3 and trials == draw_trials(space, 3, seed=0)
    assert all(1e-4 <= t["lr"] <= 1e-2 and t["distill.weight"] in (1.0, 5.0) for t in trials[1:])
    assert draw_trials({}, 5, seed=0) == [{}]
    assert selection_score({"aligned": {"auc": 0.9}, "conflicting": {"auc": 0.4}}) == 0.4
    assert selection_score({"aligned": {"auc": 0.9}}) is None


def test_tiny_study_tunes_on_validation_only_and_writes_a_complete_aggregate(tmp_path, isic_tree, monkeypatch):
    import shortcut_kd.data.splits as splits

    read_roles: list[tuple[str, str]] = []
    original = splits.load_split

    def spy(split_dir, role):
        read_roles.append((str(split_dir), role))
        return original(split_dir, role)

    monkeypatch.setattr(splits, "load_split", spy)
    config = _study_file(tmp_path / "tiny.yaml", isic_tree)
    out = tmp_path / "study"
    assert main(["study", str(config), "--out", str(out), "--n-bootstrap", "50"]) == 0
    # while settings were being chosen (the tuning folder), no test set was read
    tuning_reads = [role for d, role in read_roles if f"{os.sep}tune{os.sep}" in d]
    assert tuning_reads and not [r for r in tuning_reads if r.startswith("test_")]
    assert {"val_aligned", "val_conflicting"} <= set(tuning_reads)
    chosen = json.loads((out / "tune" / "isic2017" / "patch" / "chosen.json").read_text())
    trials = json.loads((out / "tune" / "isic2017" / "patch" / "trials.json").read_text())["trials"]
    assert [(t["method"], t["trial"]) for t in trials] == [("erm", 0), ("erm", 1), ("kd", 0), ("kd", 1)]
    assert set(chosen["chosen"]) == {"erm", "kd"}
    best_erm = max((t for t in trials if t["method"] == "erm"), key=lambda t: t["score"])
    assert chosen["chosen"]["erm"] == best_erm["params"]
    study = json.loads((out / "study.json").read_text())
    cell = study["cells"]["isic2017/patch"]
    assert set(cell["rows"]) == {"erm", "kd"} and cell["rows"]["kd"]["seeds"] == [0, 1]
    assert cell["rows"]["erm"]["summary"]["conflicting_auc"]["n"] == 2
    paired = cell["kd_vs"]["erm"]
    assert set(paired["per_seed"]) == {"0", "1"} and sum(paired["win_tie_loss"].values()) == 2
    assert paired["pooled"]["n_groups"] == 2
    # the reported seeds ran with the chosen settings
    record = json.loads((out / "cells" / "isic2017" / "patch" / "seed1" / "stages" / "erm.json").read_text())
    if chosen["chosen"]["erm"]:
        assert record["overrides"]["optimizer#lr"] == chosen["chosen"]["erm"]["lr"]
    text = (out / "study.md").read_text()
    assert "bias-annotated validation split" in text and "| **`kd`**" in text and "W/T/L" in text
    assert (out / "figures" / "conflicting_auc.png").is_file()
    # the README headline: written between the markers from study.json, then in sync
    from shortcut_kd.study.aggregate import README_END, update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- study headline: generated from old; do not edit by hand -->\nstale\n"
                      f"{README_END}\n\n## after\n")
    assert update_readme(readme, out / "study.json", source="study.json") is True
    written = readme.read_text()
    assert "stale" not in written and "| **`kd`** (n=2)" in written and written.endswith("## after\n")
    assert update_readme(readme, out / "study.json", source="study.json", check=True) is False
    # a bundle's Performance section and eval_metrics from the study
    import shutil

    from shortcut_kd.study.bundle_performance import update_bundle

    bundle = tmp_path / "isic2017_shortcut_kd"
    shutil.copytree(Path(__file__).resolve().parents[1] / "bundles" / bundle.name, bundle)
    assert update_bundle(bundle, out / "study.json") and not update_bundle(bundle, out / "study.json", check=True)
    section = (bundle / "docs" / "README.md").read_text()
    assert "From the study `tiny`" in section and "| **`kd`** (n=2)" in section
    metrics = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    mean = cell["rows"]["kd"]["summary"]["conflicting_auc"]["mean"]
    assert metrics["patch_conflicting_auc_kd"] == round(mean, 4) and metrics["seeds"] == [0, 1]
    # a rerun finds every job complete and reruns nothing
    before = (out / "jobs.log").read_text()
    assert main(["study", str(config), "--out", str(out), "--n-bootstrap", "50"]) == 0
    assert (out / "jobs.log").read_text() == before


def test_two_workers_run_every_job_exactly_once(tmp_path, isic_tree):
    config = _study_file(tmp_path / "two.yaml", isic_tree, methods=["erm"], seeds=[0, 1, 2],
                         tuning={"seeds": [7], "trials": 1})
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shortcut_kd.cli", "study", str(config), "--out", str(out), "--n-bootstrap", "20"]
    first = subprocess.run([*cmd, "--workers", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = (out / "jobs.log").read_text().splitlines()
    starts = [line.split()[-1] for line in lines if " start " in line]
    keys = job_keys(read_study(config))
    assert sorted(starts) == sorted(keys)  # every job once, none twice
    assert len({line.split()[1] for line in lines}) == 2  # both workers took jobs
    study = json.loads((out / "study.json").read_text())
    assert study["cells"]["isic2017/patch"]["rows"]["erm"]["seeds"] == [0, 1, 2]


def test_readme_headline_is_generated_from_the_committed_study(monkeypatch):
    """README.md's headline tables are exactly what the committed study.json gives."""
    from shortcut_kd.study.aggregate import update_readme

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    source = "benchmarks/study/isic2017_demo/study.json"
    assert update_readme(repo / "README.md", repo / source, source=source, check=True) is False, (
        "regenerate: shortcut-kd study configs/studies/isic2017_demo.yaml --out benchmarks/study/isic2017_demo "
        "--aggregate-only --readme README.md")


def test_a_trial_is_reused_only_on_top_of_the_same_upstream_choice(tmp_path, isic_tree, monkeypatch):
    """A KD trial trained on one ERM is not scored against a KD trial trained on another: when ERM's choice
    changes, every KD trial runs again (records are keyed by their own parameters and the upstream choices)."""
    import shortcut_kd.workflows.runner as runner
    from shortcut_kd.study.jobs import tune

    calls: list[tuple[str, float | None]] = []
    erm_scores = {"first": {0: 0.9, 1: 0.1}, "second": {0: 0.1, 1: 0.9}}  # which ERM trial wins
    phase = ["first"]
    erm_lr: dict[float | None, int] = {}

    def fake_stage(exp, method, progress=False, evaluation="test"):
        lr = exp.settings.for_method(method).lr  # None: the bundle default
        calls.append((method, lr))
        if method == "erm":
            score = erm_scores[phase[0]][erm_lr.setdefault(lr, len(erm_lr))]
        else:
            score = 0.5
        return {"aligned": {"auc": 1.0}, "conflicting": {"auc": score}}

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    cfg = read_study(_study_file(tmp_path / "t.yaml", isic_tree))
    out = tmp_path / "study"
    first = tune(cfg, out, "isic2017", "patch")
    assert [m for m, _ in calls] == ["erm", "erm", "kd", "kd"]
    calls.clear()
    assert tune(cfg, out, "isic2017", "patch") == first and calls == []  # a resume runs nothing again
    phase[0] = "second"  # ERM's records are dropped and rescored: the other ERM trial now wins
    trials_file = out / "tune" / "isic2017" / "patch" / "trials.json"
    records = json.loads(trials_file.read_text())
    records["trials"] = [t for t in records["trials"] if t["method"] != "erm"]
    trials_file.write_text(json.dumps(records))
    second = tune(cfg, out, "isic2017", "patch")
    assert second["chosen"]["erm"] != first["chosen"]["erm"]
    assert [m for m, _ in calls] == ["erm", "erm", "kd", "kd"]  # both KD trials again, on the new ERM
    kd_records = [t for t in json.loads(trials_file.read_text())["trials"] if t["method"] == "kd"]
    assert all(t["upstream"]["erm"] == second["chosen"]["erm"] for t in kd_records)


def test_a_method_added_upstream_of_nothing_leaves_the_other_trials_reusable(tmp_path, isic_tree, monkeypatch):
    """A study that gains GroupDRO tunes GroupDRO alone: KD reads ERM and the teacher only, so its trials,
    trained on the same ERM, are reused."""
    import shortcut_kd.workflows.runner as runner
    from shortcut_kd.study.jobs import tune

    calls: list[str] = []

    def fake_stage(exp, method, progress=False, evaluation="test"):
        calls.append(method)
        return {"aligned": {"auc": 1.0}, "conflicting": {"auc": 0.5}}

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    out = tmp_path / "study"
    first = tune(read_study(_study_file(tmp_path / "a.yaml", isic_tree)), out, "isic2017", "patch")
    calls.clear()
    space = {"erm": {"lr": {"float": [1e-4, 3e-3], "log": True}}, "kd": {"distill.weight": {"choices": [1.0, 5.0]}},
             "groupdro": {"baselines.groupdro_eta": {"float": [1e-3, 1e-1], "log": True}}}
    wider = _study_file(tmp_path / "b.yaml", isic_tree, methods=["erm", "groupdro", "kd"],
                        tuning={"seeds": [7], "trials": 2, "sampler_seed": 0, "search_space": space})
    second = tune(read_study(wider), out, "isic2017", "patch")
    assert calls == ["groupdro", "groupdro"]
    assert second["chosen"]["kd"] == first["chosen"]["kd"] and "groupdro" in second["chosen"]


def test_a_study_file_that_changes_requeues_only_the_jobs_it_changes(tmp_path, isic_tree):
    """A finished study whose file gains a variant queues its run jobs again (not its tuning); a study whose
    file gains a seed queues that seed alone; an unchanged file queues nothing."""
    from shortcut_kd.study.jobs import job_plans
    from shortcut_kd.study.schedule import enqueue, job_states, open_queue, work

    base = read_study(_study_file(tmp_path / "a.yaml", isic_tree))
    queue = open_queue("plans", tmp_path / "q")
    keys, plans = job_keys(base), job_plans(base)
    assert enqueue(queue, keys, plans) == keys
    assert work(queue, keys, plans, lambda key: {}, poll_s=0.01) == []
    assert all(states == ["COMPLETE"] for states in job_states(queue, plans).values())
    assert enqueue(queue, keys, plans) == []

    more_seeds = read_study(_study_file(tmp_path / "b.yaml", isic_tree, seeds=[0, 1, 2]))
    assert enqueue(queue, job_keys(more_seeds), job_plans(more_seeds)) == ["run/isic2017/patch/seed2"]

    final_only = {"kd_final": {"method": "kd", "settings": {"distill": {"layers": "none"}}}}
    variant = read_study(_study_file(tmp_path / "c.yaml", isic_tree, seeds=[0, 1, 2], variants=final_only))
    queued = enqueue(queue, job_keys(variant), job_plans(variant))
    assert queued == [f"run/isic2017/patch/seed{k}" for k in (0, 1, 2)]
    assert job_states(queue, job_plans(variant))["run/isic2017/patch/seed0"] == ["WAITING"]


def test_a_pipeline_that_changes_the_network_drops_the_presets_network_arguments(tmp_path, isic_tree):
    """The ISIC preset's ResNet ``widen_factor`` is not passed on to an AlexNet the study or a variant asks for."""
    from shortcut_kd.study.jobs import experiment_settings

    def settings_for(extra: dict):
        pipe = {"dataset": "isic2017", "preset": "demo_isic2017", "dataset_dir": str(isic_tree / "iid"),
                "ood_dir": str(isic_tree / "ood"), "shortcuts": ["patch"], "settings": extra}
        cfg = read_study(_study_file(tmp_path / "p.yaml", isic_tree, pipelines=[pipe]))
        return experiment_settings(cfg, "isic2017", "patch", 0, tmp_path / "cell", tmp_path)

    assert settings_for({}).arch_kwargs == {"widen_factor": 0.5}
    assert settings_for({"arch_kwargs": {"widen_factor": 0.25}}).arch_kwargs == {"widen_factor": 0.25}
    alexnet = settings_for({"architecture": "alexnet", "arch_kwargs": {"hidden": 64}})
    assert alexnet.architecture == "alexnet" and alexnet.arch_kwargs == {"hidden": 64}
    assert settings_for({"architecture": "alexnet"}).arch_kwargs == {}
    # a variant's network change goes through the same rule
    assert settings_for({}).replace(architecture="alexnet").arch_kwargs == {}
    assert settings_for({}).replace(teacher_architecture="alexnet").arch_kwargs == {"widen_factor": 0.5}
