"""The protocol through the bundles on a tiny synthetic ISIC-like tree: stages, reuse by content, resume,
named errors, results.json, the CLI."""

import json

import pytest
import torch

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.workflows import Experiment, ExperimentSettings, from_dict, run_protocol, run_stage

TINY = dict(image_size=16, architecture="resnet10", arch_kwargs={"widen_factor": 0.25}, epochs=1, batch_size=16,
            teacher_epochs=1, specialist_size=16, n_bootstrap=20, num_workers=0, device="cpu",
            distill={"probe_epochs": 1, "lr": 5e-4})


def make_isic_tree(root, n: int = 120):
    """A tiny ISIC-like tree (``iid``) and its shifted source (``ood``) under ``root``."""
    from shortcut_kd.data.synthetic import synthesize

    synthesize("isic2017", root / "iid", n=n, seed=0, image_size=16)
    synthesize("isic2017", root / "ood", n=30, seed=1, variant="ood", image_size=16)
    return root


@pytest.fixture(scope="module")
def isic_tree(tmp_path_factory):
    return make_isic_tree(tmp_path_factory.mktemp("isic"))


def _settings(isic_tree, out, **changes):
    return from_dict({**TINY, "dataset": "isic2017", "dataset_dir": str(isic_tree / "iid"),
                      "ood_dir": str(isic_tree / "ood"), "output_dir": str(out), "shortcut": "patch", **changes})


def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="settings.epoch"):
        from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="distill.wieght"):
        from_dict({"distill": {"wieght": 3}})
    with pytest.raises(ConfigError, match="teacher_init"):
        ExperimentSettings(teacher_init="no/such/file.pt")
    s = ExperimentSettings().replace(distill={"weight": 30.0}, epochs=2)
    assert s.distill.weight == 30.0 and s.distill.temperature is None and s.epochs == 2


def test_protocol_runs_through_the_bundle_and_reuses_by_content(isic_tree, tmp_path):
    settings = _settings(isic_tree, tmp_path / "run")
    results = run_protocol(settings, ["erm", "teacher", "kd", "oracle"], progress=False)
    assert results["schema"] == "shortcut-kd/results/v1"
    assert results["shortcut"] == {"name": "patch", "kind": "localized", "p_bias_pos": 0.95, "p_bias_neg": 0.05}
    assert set(results["methods"]) == {"erm", "teacher", "kd", "oracle"}
    for entry in results["methods"].values():
        assert set(entry["test"]) == {"unbiased", "aligned", "conflicting", "clean", "ood"}
        assert {"auc", "auc_ci", "delta_tpr", "worst_group_accuracy", "n"} <= set(entry["test"]["conflicting"])
        assert entry["provenance"]["split_manifest_sha256"] and entry["provenance"]["environment"]["torch"]
    exp = Experiment(settings)
    models = tmp_path / "run" / "models"
    assert {p.name for p in models.glob("model*.pt")} == {"model.pt", "model_erm.pt", "model_teacher.pt",
                                                          "model_oracle.pt"}
    assert (models / "teacher_probes.pt").is_file()
    kd_record = json.loads((tmp_path / "run" / "stages" / "kd.json").read_text())
    assert kd_record["overrides"]["optimizer#lr"] == 5e-4 and "optimizer#lr" not in \
        json.loads((tmp_path / "run" / "stages" / "teacher.json").read_text())["overrides"]
    assert set(kd_record["upstream_sha256"]) == {"model_teacher.pt", "teacher_probes.pt"}

    def mtimes():
        return {m: exp.model_path(m).stat().st_mtime_ns for m in ("erm", "teacher", "kd")}

    before = mtimes()
    run_protocol(settings, ["erm", "teacher", "kd"], progress=False)  # nothing changed: everything reused
    assert mtimes() == before
    changed = settings.replace(distill={"weight": 10.0})
    run_protocol(changed, ["erm", "teacher", "kd"], progress=False)
    after = mtimes()
    assert after["erm"] == before["erm"] and after["teacher"] == before["teacher"] and after["kd"] != before["kd"]
    assert json.loads((tmp_path / "run" / "stages" / "kd.json").read_text())["overrides"]["distill#weight"] == 10.0


def test_missing_teacher_is_a_named_error_and_writes_no_model(isic_tree, tmp_path):
    from monai.bundle import ConfigWorkflow  # noqa: F401 - the path the error must come through

    settings = _settings(isic_tree, tmp_path)
    exp = Experiment(settings)
    run_stage(exp, "teacher", progress=False)
    exp.model_path("teacher").unlink()
    from shortcut_kd.workflows.runner import _run_workflow

    with pytest.raises(DataError, match="model_teacher.pt") as error:
        _run_workflow(exp, "kd", progress=False)
    assert "teacher stage" in str(error.value)
    assert not exp.model_path("kd").exists()
    # the same through `python -m monai.bundle run`: a non-zero exit naming the file, no model written
    import os
    import subprocess
    import sys

    overrides = {k: v for k, v in exp.overrides("kd").items()}
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    files = [*exp.config_files("kd"), str(tmp_path / "overrides.json")]
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "model_teacher.pt" in done.stdout + done.stderr
    assert not exp.model_path("kd").exists()


def test_interrupted_stage_resumes_to_the_uninterrupted_weights(isic_tree, tmp_path):
    from shortcut_kd.workflows.runner import fingerprint

    two = _settings(isic_tree, tmp_path / "resumed", epochs=2)
    exp = Experiment(two)
    exp.prepare_splits()
    one = Experiment(two.replace(epochs=1))
    # a run that died after its first epoch: its last state, and the running marker of the two-epoch run
    from shortcut_kd.workflows.runner import _run_workflow

    _run_workflow(one, "erm", progress=False)
    exp.model_path("erm").unlink()
    running = exp.record_path("erm").with_suffix(".running.json")
    running.parent.mkdir(parents=True, exist_ok=True)
    running.write_text(json.dumps({"fingerprint": fingerprint(exp, "erm")["sha256"]}))
    steps = torch.load(exp.last_state_path("erm"), weights_only=False)["trainer"]["iteration"]
    run_stage(exp, "erm", progress=False)
    assert torch.load(exp.last_state_path("erm"), weights_only=False)["trainer"]["iteration"] == 2 * steps
    straight = Experiment(two.replace(output_dir=str(tmp_path / "straight")))
    run_stage(straight, "erm", progress=False)
    resumed = torch.load(exp.model_path("erm"), weights_only=True)
    uninterrupted = torch.load(straight.model_path("erm"), weights_only=True)
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6, msg=key)


def test_cli_stage_and_help(isic_tree, tmp_path, capsys):
    from shortcut_kd.cli import main

    assert main(["stage", "erm", "--dataset-dir", str(isic_tree / "iid"), "--output-dir", str(tmp_path),
                 "--device", "cpu", "--set", "image_size=16", "--set", "architecture=\"resnet10\"",
                 "--set", "epochs=1", "--set", "num_workers=0",
                 "--set", "arch_kwargs={\"widen_factor\": 0.25}", "--set", "n_bootstrap=10"]) == 0
    out = capsys.readouterr().out
    assert "erm" in out and "conflicting" in out
    with pytest.raises(SystemExit):
        main(["stage", "not-a-method"])


def test_cli_stage_runs_exactly_what_monai_bundle_run_runs(isic_tree, tmp_path):
    """``shortcut-kd stage kd`` and ``python -m monai.bundle run`` with the overrides it recorded give the same
    weights and the same metrics: the CLI has no recipe of its own."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli_out, bundle_out = tmp_path / "cli", tmp_path / "bundle"
    flags = ["--dataset-dir", str(isic_tree / "iid"), "--output-dir", str(cli_out), "--device", "cpu",
             "--shortcut", "patch", "--epochs", "1"]
    for key in ("image_size", "batch_size", "teacher_epochs", "specialist_size", "n_bootstrap", "num_workers"):
        flags += ["--set", f"{key}={json.dumps(TINY[key])}"]
    flags += ["--set", 'architecture="resnet10"', "--set", 'arch_kwargs={"widen_factor": 0.25}',
              "--set", "distill.probe_epochs=1"]
    done = subprocess.run([sys.executable, "-m", "shortcut_kd.cli", "stage", "kd", *flags], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    bundle = Experiment(_settings(isic_tree, cli_out)).bundle_dir
    for method, stage_file in (("erm", None), ("teacher", "teacher.json"), ("kd", "distill.json"),
                               ("evaluate", "evaluate.json")):
        record = "kd" if method == "evaluate" else method
        overrides = json.loads((cli_out / "stages" / f"{record}.json").read_text())["overrides"]
        if method == "evaluate":
            overrides = {k: v for k, v in overrides.items() if not k.startswith(("train#", "optimizer#", "distill#"))}
            overrides["evaluate#n_bootstrap"] = TINY["n_bootstrap"]
        overrides["output_dir"] = str(bundle_out)
        (tmp_path / f"{method}_overrides.json").write_text(json.dumps(overrides))
        files = ["configs/train.json", *([f"configs/{stage_file}"] if stage_file else []),
                 str(tmp_path / f"{method}_overrides.json")]
        done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files)], cwd=bundle,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("model_erm.pt", "model_teacher.pt", "model.pt"):
        a = torch.load(cli_out / "models" / name, weights_only=True)
        b = torch.load(bundle_out / "models" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    results = json.loads((bundle_out / "results.json").read_text())["methods"]
    for method in ("erm", "kd"):
        recorded = json.loads((cli_out / "stages" / f"{method}.json").read_text())["test"]
        assert results[method]["test"] == recorded, method
