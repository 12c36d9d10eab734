"""The protocol end to end on a tiny synthetic ISIC-like tree: stages, resume, results.json, CLI."""

import json

import pytest

from shortcut_kd.errors import ConfigError
from shortcut_kd.workflows import Experiment, ExperimentSettings, from_dict, run_protocol, run_stage

TINY = dict(image_size=16, architecture="resnet10", arch_kwargs={"widen_factor": 0.25}, epochs=1, batch_size=16,
            teacher_epochs=1, specialist_size=16, n_bootstrap=20, distill={"probe_epochs": 1, "lr": 5e-4})


@pytest.fixture(scope="module")
def isic_tree(tmp_path_factory):
    from shortcut_kd.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("isic")
    synthesize("isic2017", root / "iid", n=120, seed=0, image_size=16)
    synthesize("isic2017", root / "ood", n=30, seed=1, variant="ood", image_size=16)
    return root


def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="settings.epoch"):
        from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="distill.wieght"):
        from_dict({"distill": {"wieght": 3}})
    with pytest.raises(ConfigError, match="teacher_init"):
        ExperimentSettings(teacher_init="no/such/file.pt")
    s = ExperimentSettings().replace(distill={"weight": 30.0}, epochs=2)
    assert s.distill.weight == 30.0 and s.distill.temperature == 2.0 and s.epochs == 2


def test_protocol_runs_resumes_and_writes_results(isic_tree, tmp_path):
    settings = from_dict({**TINY, "dataset": "isic2017", "dataset_dir": str(isic_tree / "iid"),
                          "ood_dir": str(isic_tree / "ood"), "output_dir": str(tmp_path / "run"), "shortcut": "patch"})
    results = run_protocol(settings, ["erm", "teacher", "kd", "oracle"], progress=False)
    assert results["schema"] == "shortcut-kd/results/v1"
    assert results["shortcut"] == {"name": "patch", "kind": "localized", "p_bias_pos": 0.95, "p_bias_neg": 0.05}
    assert set(results["methods"]) == {"erm", "teacher", "kd", "oracle"}
    for entry in results["methods"].values():
        assert set(entry["test"]) == {"unbiased", "aligned", "conflicting", "clean", "ood"}
        assert {"auc", "auc_ci", "delta_tpr", "worst_group_accuracy", "n"} <= set(entry["test"]["conflicting"])
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["methods"]["kd"] == results["methods"]["kd"]
    exp = Experiment(settings)
    assert (exp.stage_dir("teacher") / "probes.pt").is_file()
    import torch

    def trained_lr(stage):
        state = torch.load(exp.stage_dir(stage) / "checkpoint_last.pt", weights_only=False)
        return state["optimizer"]["param_groups"][0]["lr"]

    assert trained_lr("kd") == settings.distill.lr == 5e-4 and trained_lr("erm") == settings.lr
    # a finished stage is reused, not retrained
    mtime = exp.model_path("erm").stat().st_mtime_ns
    run_stage(exp, "erm", progress=False)
    assert exp.model_path("erm").stat().st_mtime_ns == mtime


def test_interrupted_stage_resumes_from_last_checkpoint(isic_tree, tmp_path):
    settings = from_dict({**TINY, "epochs": 2, "dataset_dir": str(isic_tree / "iid"), "output_dir": str(tmp_path)})
    exp = Experiment(settings)
    one_epoch = Experiment(settings.replace(epochs=1))
    run_stage(one_epoch, "erm", progress=False)
    exp.model_path("erm").unlink()  # as if the run had died after epoch 1
    (exp.stage_dir("erm") / "metrics.json").unlink()
    import torch

    state = torch.load(exp.stage_dir("erm") / "checkpoint_last.pt", weights_only=False)
    steps_per_epoch = state["trainer"]["iteration"]
    run_stage(exp, "erm", progress=False)
    state = torch.load(exp.stage_dir("erm") / "checkpoint_last.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2 * steps_per_epoch  # one more epoch, not two
    # and the resumed run ends where an uninterrupted one does (epoch 2 draws epoch 2's order)
    straight = Experiment(settings.replace(output_dir=str(tmp_path / "straight")))
    run_stage(straight, "erm", progress=False)
    resumed = torch.load(exp.model_path("erm"), weights_only=True)
    uninterrupted = torch.load(straight.model_path("erm"), weights_only=True)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6, msg=key)


def test_cli_stage_and_help(isic_tree, tmp_path, capsys):
    from shortcut_kd.cli import main

    assert main(["stage", "erm", "--dataset-dir", str(isic_tree / "iid"), "--output-dir", str(tmp_path),
                 "--set", "image_size=16", "--set", "architecture=\"resnet10\"", "--set", "epochs=1",
                 "--set", "arch_kwargs={\"widen_factor\": 0.25}", "--set", "n_bootstrap=10"]) == 0
    out = capsys.readouterr().out
    assert "erm" in out and "conflicting" in out
    with pytest.raises(SystemExit):
        main(["stage", "not-a-method"])


def test_stages_share_one_preprocessing_per_experiment(isic_tree, tmp_path, monkeypatch):
    settings = from_dict({**TINY, "dataset": "isic2017", "dataset_dir": str(isic_tree / "iid"),
                          "output_dir": str(tmp_path), "shortcut": "patch"})
    exp = Experiment(settings)
    exp.prepare_splits()
    calls = []
    build = exp.transforms

    def counting_transforms(train=False):
        transform = build(train=train)
        return lambda item: calls.append(item["id"]) or transform(item)

    monkeypatch.setattr(exp, "transforms", counting_transforms)
    unbiased, conflicting = exp.datalist("test_unbiased"), exp.datalist("test_conflicting")
    first = [b["image"] for b in exp.loader("test_unbiased")]
    assert len(calls) == len(unbiased)
    again = [b["image"] for b in exp.loader("test_unbiased")]  # a later stage: nothing recomputed
    assert len(calls) == len(unbiased)
    assert all(a.equal(b) for a, b in zip(first, again))
    # the same images with other shortcut flags are other entries: only those are computed
    flipped = sum(u["bias"] != c["bias"] for u, c in zip(unbiased, conflicting))
    assert [u["id"] for u in unbiased] == [c["id"] for c in conflicting] and flipped
    exp.loader("test_conflicting")
    assert len(calls) == len(unbiased) + flipped
    assert {r for b in exp.loader("test_conflicting") for r in b["role"]} == {"test_conflicting"}
    assert len(calls) == len(unbiased) + flipped
