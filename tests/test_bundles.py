"""The three MONAI bundles, model-zoo style: every stage through ``ConfigWorkflow`` on tiny synthetic data
in each dataset's native layout (initialize, check_properties, run, finalize), resuming, the
``shortcut-kd run`` command, TorchScript export, ``verify_net_in_out`` and the model zoo export.

The helpers at the top are shared with ``test_bundle_inference.py`` and ``test_bundle_ddp.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "isic2017": {"folder": "isic2017_shortcut_kd", "image_size": 32,
                 "network": {"widen_factor": 0.125, "conv1_t_stride": 2, "no_max_pool": True}},
    "chexpert": {"folder": "chexpert_shortcut_kd", "image_size": 32,
                 "network": {"init_features": 8, "growth_rate": 4, "block_config": [1, 1, 1, 1]}},
    "simba": {"folder": "simba_shortcut_kd", "image_size": 24, "network": {"channels": [4, 8, 8, 16, 16]}},
}
"""Per bundle: its folder and the tiny image size and network widths the tests train with (SimBA at 24³:
the fifth block still sees 2³ voxels, so batch norm copes with a last batch of one volume)."""


def dataset_dir(tmp_path_factory: pytest.TempPathFactory, name: str, n: int = 48) -> Path:
    """A synthetic dataset in ``name``'s native layout, written once per test session."""
    from shortcut_kd.data.synthetic import synthesize

    out = tmp_path_factory.getbasetemp() / "bundle_data" / f"{name}_{n}"
    marker = out / ".complete"
    if not marker.is_file():
        root = synthesize(name, out, n=n, seed=0, image_size=TINY[name]["image_size"])
        marker.write_text(str(root))
    return Path(marker.read_text())


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=4))


def tiny_bundle(name: str, dest: Path) -> Path:
    """A copy of bundle ``name`` in ``dest`` with tiny images, widths, batches and epochs written into its
    configs (as a user would edit them), so every documented command runs on it unchanged."""
    spec = TINY[name]
    bundle = dest / spec["folder"]
    shutil.copytree(REPO / "bundles" / spec["folder"], bundle, ignore=shutil.ignore_patterns("models", "eval"))
    configs = bundle / "configs"

    def common(c: dict) -> None:
        c["image_size"] = spec["image_size"]
        c["network_def"].update(spec["network"])
        c["num_workers"] = 0
        c["batch_size"] = 8

    def train(c: dict) -> None:
        common(c)
        c["train"]["trainer"]["max_epochs"] = 2
        c["cache_rate"] = 1.0
        c["splits"]["specialist_size"] = 0.25

    def meta(c: dict) -> None:
        fmt = c["network_data_format"]["inputs"]["image"]
        fmt["spatial_shape"] = [spec["image_size"]] * len(fmt["spatial_shape"])

    _edit(configs / "train.json", train)
    _edit(configs / "inference.json", common)

    def teacher(c: dict) -> None:
        c["train#trainer#max_epochs"] = 1
        c["teacher"]["probe_epochs"] = 2

    _edit(configs / "teacher.json", teacher)
    _edit(configs / "evaluate.json", lambda c: c["evaluate"].update({"n_bootstrap": 20}))
    _edit(configs / "metadata.json", meta)
    return bundle


def run_stage(bundle: Path, stage: str, **overrides):
    """Run ``stage`` of ``bundle`` the model-zoo way: ConfigWorkflow initialize, check_properties, run, finalize."""
    from shortcut_kd.workflows.bundle_cli import make_workflow

    workflow = make_workflow(str(bundle), stage, overrides)
    workflow.initialize()
    assert workflow.check_properties() == [], f"{bundle.name} {stage}: missing properties"
    workflow.run()
    workflow.finalize()
    return workflow


def network_of(bundle: Path, config: str = "inference.json") -> torch.nn.Module:
    """The bundle's ``network_def`` as configured (for loading checkpoints in tests)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    return parser.get_parsed_content("network_def")


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", ["isic2017", "chexpert", "simba"])
def test_bundle_stages(name, tmp_path_factory, tmp_path, monkeypatch):
    """train -> teacher -> distill -> (oracle, ISIC only) -> evaluate -> export-bundle -> inference, each stage as
    a ConfigWorkflow, run from an unrelated working directory with only bundle_root / dataset_dir / output_dir
    given."""
    from shortcut_kd.distill import ProbeSet
    from shortcut_kd.evaluation import validate_results
    from shortcut_kd.nets import get_taps

    data = dataset_dir(tmp_path_factory, name)
    bundle = tiny_bundle(name, tmp_path)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out"
    models = out / "models"  # every run output under the run's output folder
    paths = {"dataset_dir": str(data), "output_dir": str(out), "bundle_root": str(bundle)}

    run_stage(bundle, "train", **paths)
    assert (models / "model_erm.pt").is_file() and (models / "erm_last.pt").is_file()
    assert not (bundle / "models").exists(), "the bundle's models/ holds shipped weights only"
    assert (out / "splits" / "splits.json").is_file()
    assert any((out / "tensorboard" / "erm").iterdir()), "TensorBoard logs missing"
    network_of(bundle, "train.json").load_state_dict(torch.load(models / "model_erm.pt", weights_only=True))

    run_stage(bundle, "teacher", **paths)
    assert (models / "model_teacher.pt").is_file()
    probes = ProbeSet.load(models / "teacher_probes.pt")
    assert probes.taps == get_taps(network_of(bundle, "train.json"))

    workflow = run_stage(bundle, "distill", **paths)
    metrics = workflow.parser.get_parsed_content("train#trainer").state.metrics
    assert metrics["kd_total"] > 0 and all(f"kd_{t}" in metrics for t in probes.taps)
    last = torch.load(models / "kd_last.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "distillation"} <= set(last) and last["distillation"]
    assert (models / "model.pt").is_file()  # the distilled student is the deployable model

    if name == "isic2017":  # the other two bundles share every line of the oracle stage
        run_stage(bundle, "oracle", **paths)
        assert (models / "model_oracle.pt").is_file()

    run_stage(bundle, "evaluate", **paths)
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    expected = {"erm", "teacher", "kd"} | ({"oracle"} if name == "isic2017" else set())
    assert set(results["methods"]) == expected
    assert results["dataset"] == name and results["architecture"] == network_of(bundle).arch_name
    assert {"unbiased", "conflicting"} <= set(results["methods"]["kd"]["test"])
    assert results["shortcut"]["name"] == ("native" if name == "simba" else "patch")
    check_zoo_export(bundle, out, data, tmp_path / "zoo" / bundle.name)

    test_items = json.loads((out / "splits" / "test_clean.json").read_text())
    listing = tmp_path / "to_predict.txt"
    listing.write_text("\n".join(it["image"] for it in test_items) + "\n")
    run_stage(bundle, "inference", dataset_dir=str(listing), output_dir=str(out), bundle_root=str(bundle),
              ckpt_path=str(models / "model.pt"))
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == ("file,probability,predicted_label,status,reason,StudyInstanceUID,SeriesInstanceUID,"
                       "SOPInstanceUID,model,model_version,checkpoint_sha256,preprocessing_hash")
    assert [r.split(",")[0] for r in rows[1:]] == [it["image"] for it in test_items]
    assert all(r.split(",")[3] == "ok" and 0 <= float(r.split(",")[1]) <= 1 for r in rows[1:])
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    sha = hashlib.sha256((models / "model.pt").read_bytes()).hexdigest()
    for r in rows[1:]:  # no DICOM here: empty UIDs; what made the prediction on every row
        fields = r.split(",")
        assert fields[5:8] == ["", "", ""] and fields[8:11] == [meta["name"], meta["version"], sha]
        assert fields[11] == rows[1].split(",")[11] != ""


def check_zoo_export(bundle: Path, out: Path, data: Path, zoo: Path) -> None:
    """``shortcut-kd export-bundle`` of the run in ``out``: the submission's layout, hashes, data licence and
    provenance, and every model zoo check passing."""
    import yaml

    from shortcut_kd.cli import main

    # the evaluate stage found the generator's record in the dataset folder
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["synthetic"] and results["data"]["generator"] == f"shortcut-kd synth {results['dataset']}"
    code = main(["export-bundle", str(bundle), str(zoo), "--weights", str(out), "--dataset-dir", str(data)])
    assert code == 0, "a model zoo check failed"
    run_models, models = out / "models", zoo / "models"
    assert (models / "model.pt").read_bytes() == (run_models / "model.pt").read_bytes()
    shipped = {p.name for p in models.iterdir()}
    assert shipped == {"model.ts"} | ({p.name for p in run_models.glob("*.pt")} - {p.name for p in
                                                                                   run_models.glob("*_last.pt")})
    assert {"model.pt", "model_erm.pt", "model_teacher.pt", "teacher_probes.pt"} <= shipped
    assert {"configs", "docs", "LICENSE", "models", "large_files.yml"} == set(os.listdir(zoo))
    assert not any(p.is_symlink() for p in zoo.rglob("*"))
    large = yaml.safe_load((zoo / "large_files.yml").read_text())["large_files"]
    assert sorted(e["path"] for e in large) == sorted(f"models/{n}" for n in shipped)
    for entry in large:
        assert entry["url"] == "" and entry["hash_type"] == "md5"
        assert entry["hash_val"] == hashlib.md5((zoo / entry["path"]).read_bytes()).hexdigest()
    assert "synthetic" in (zoo / "docs" / "data_license.txt").read_text()
    meta = json.loads((zoo / "configs" / "metadata.json").read_text())
    metrics = meta["eval_metrics"]
    assert metrics["source"] == "docs/results.json" and (zoo / "docs" / "results.json").is_file()
    assert metrics["source_sha256"] == hashlib.sha256((zoo / "docs" / "results.json").read_bytes()).hexdigest()
    assert any(k.endswith("_auc_kd") for k in metrics)
    assert not any(isinstance(v, str) and os.path.isabs(v) for v in metrics.values())
    assert set(meta["model_files"]) == {f"models/{n}" for n in shipped}
    for text in (zoo / "docs" / "README.md", zoo / "configs" / "metadata.json", zoo / "docs" / "data_license.txt"):
        assert str(zoo.parents[1]) not in text.read_text(), f"{text.name} names a folder of this machine"
    # a second export into the same folder needs --force
    assert main(["export-bundle", str(bundle), str(zoo), "--weights", str(out)]) == 2


def test_resume_continues_from_last_state(tmp_path_factory, tmp_path):
    """A rerun with more epochs resumes from models/erm_last.pt and trains only the missing epoch."""
    data = dataset_dir(tmp_path_factory, "isic2017")
    bundle = tiny_bundle("isic2017", tmp_path)
    recorder = [{"_target_": "shortcut_kd.workflows.bundle.SampleIdRecorder", "output_dir": str(tmp_path / "ids")}]
    paths = {"dataset_dir": str(data), "output_dir": str(tmp_path / "out"), "bundle_root": str(bundle),
             "train#extra_handlers": recorder}
    run_stage(bundle, "train", **paths, **{"train#trainer#max_epochs": 1})
    first = json.loads((tmp_path / "ids" / "seen_ids_rank0.json").read_text())
    assert list(first) == ["1"]
    workflow = run_stage(bundle, "train", **paths, **{"train#trainer#max_epochs": 2})
    second = json.loads((tmp_path / "ids" / "seen_ids_rank0.json").read_text())
    assert list(second) == ["2"], "the resumed run should only train epoch 2"
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2 * trainer.state.epoch_length
    assert sorted(second["2"]) == sorted(first["1"])


def test_teacher_probes_use_the_whole_subset_under_ddp(tmp_path, monkeypatch):
    """A DDP training loader holds one rank's shard; the probes are fitted on the whole specialist subset."""
    from monai.data import DataLoader
    from torch.utils.data import DistributedSampler

    import shortcut_kd.distill
    from shortcut_kd.nets import build_network
    from shortcut_kd.workflows.bundle import TeacherProbesHandler

    seen = []
    monkeypatch.setattr(shortcut_kd.distill, "fit_probes",
                        lambda model, taps, loader, **kw: seen.append(sum(len(b["label"]) for b in loader)) or
                        shortcut_kd.distill.ProbeSet({t: 1 for t in taps}, 2, 2))
    data = [{"image": torch.rand(1, 16, 16), "label": i % 2} for i in range(10)]
    shard = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=2, rank=0))
    net = build_network("resnet10", 2, 1, 2, widen_factor=0.125)
    TeacherProbesHandler(net, shard, tmp_path / "probes.pt", taps="late")(None)
    assert seen == [10] and (tmp_path / "probes.pt").is_file()


def test_mlflow_tracking(tmp_path_factory, tmp_path):
    """``--tracking mlflow`` (ConfigWorkflow's tracking) logs the run."""
    mlflow = pytest.importorskip("mlflow")
    from shortcut_kd.workflows.bundle_cli import make_workflow

    data = dataset_dir(tmp_path_factory, "isic2017")
    bundle = tiny_bundle("isic2017", tmp_path)
    out = tmp_path / "out"
    workflow = make_workflow(str(bundle), "train", {"dataset_dir": str(data), "output_dir": str(out),
                                                    "train#trainer#max_epochs": 1}, tracking="mlflow")
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    from monai.utils import path_to_sqlite_uri

    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(out / "mlruns.db")))
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and any("train_loss" in r.data.metrics for r in runs)


def test_shortcut_kd_run_command(tmp_path_factory, tmp_path, capsys):
    """``shortcut-kd run BUNDLE STAGE`` resolves short names, merges the stage config and runs it."""
    from shortcut_kd.cli import main
    from shortcut_kd.errors import ConfigError
    from shortcut_kd.workflows.bundle_cli import TASK_NAMES, resolve_bundle, stage_configs

    for short, folder in (("isic2017", "isic2017_shortcut_kd"), ("chexpert", "chexpert_shortcut_kd"),
                          ("simba", "simba_shortcut_kd")):
        assert resolve_bundle(short) == REPO / "bundles" / folder
        task = next(k for k, v in TASK_NAMES.items() if v == folder)  # the model zoo's naming habit
        assert resolve_bundle(task) == resolve_bundle(folder) == REPO / "bundles" / folder
        files, kind = stage_configs(resolve_bundle(short), "kd")
        assert [Path(f).name for f in files] == ["train.json", "distill.json"] and kind == "train"
    with pytest.raises(ConfigError, match="STAGE"):
        stage_configs(resolve_bundle("isic2017"), "finetuning")
    with pytest.raises(ConfigError, match="BUNDLE"):
        resolve_bundle(str(tmp_path / "no_such_bundle"))

    data = dataset_dir(tmp_path_factory, "isic2017")
    bundle = tiny_bundle("isic2017", tmp_path)
    out = tmp_path / "out"
    code = main(["run", str(bundle), "erm", "--dataset-dir", str(data), "--output-dir", str(out), "--epochs", "1",
                 "--set", "shortcut#name=\"stripes\"", "--set", "shortcut#p_bias_pos=0.8"])
    assert code == 0 and (out / "models" / "model_erm.pt").is_file()
    settings = json.loads((out / "splits" / "splits.json").read_text())["settings"]
    assert settings["p_bias_pos"] == 0.8
    capsys.readouterr()
    assert main(["run", str(bundle), "inference", "--dataset-dir", str(data), "--epochs", "1"]) == 2
    assert "--epochs" in capsys.readouterr().err
    # a wrong dataset_dir surfaces as the toolkit's message (key, value, fix), not MONAI's wrapper
    assert main(["run", str(bundle), "train", "--dataset-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "dataset_dir" in err and "native layout" in err


@pytest.mark.parametrize("name", ["isic2017", "chexpert", "simba"])
def test_export_matches_checkpoint(name, tmp_path):
    """``ckpt_export`` gives a TorchScript model with the checkpoint's outputs; ``verify_net_in_out`` passes."""
    from monai.bundle import ckpt_export, verify_net_in_out

    bundle = tiny_bundle(name, tmp_path)
    configs, models = bundle / "configs", bundle / "models"
    models.mkdir()
    torch.manual_seed(0)
    net = network_of(bundle).eval()
    torch.save(net.state_dict(), models / "model.pt")
    ckpt_export("network_def", filepath=str(models / "model.ts"), ckpt_file=str(models / "model.pt"),
                meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
                bundle_root=str(bundle))
    exported = torch.jit.load(str(models / "model.ts"))
    fresh = network_of(bundle).eval()
    fresh.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    meta = json.loads((configs / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    x = torch.rand(2, meta["num_channels"], *meta["spatial_shape"])
    with torch.no_grad():
        assert torch.allclose(exported(x), fresh(x), atol=1e-5)
    verify_net_in_out("network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), device="cpu")


def test_metadata_and_docs_are_complete():
    """Every key the MONAI bundle specification requires, a changelog entry for the version, the method and
    dataset references; the README has the model zoo's sections and says how to point dataset_dir at the
    real download."""
    required = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "network_data_format",
                "intended_use", "data_source", "references")
    for spec in TINY.values():
        bundle = REPO / "bundles" / spec["folder"]
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        assert all(k in meta for k in required), spec["folder"]
        assert meta["version"] in meta["changelog"] and meta["monai_version"] == "1.6.1"
        assert "shortcut-kd" in meta["required_packages_version"]
        assert any("2511.17421" in r for r in meta["references"]) and len(meta["references"]) >= 2
        assert {"inputs", "outputs"} <= set(meta["network_data_format"])
        assert (bundle / "LICENSE").read_text().strip().startswith("Apache License")
        readme = (bundle / "docs" / "README.md").read_text()
        for section in ("Model description", "Data", "Preprocessing", "Training", "Performance",
                        "System configuration", "Limitations", "## Authors", "## Tags", "Citation", "dataset_dir",
                        "shortcut-kd export-bundle", "shortcut-kd validate-bundle"):
            assert section in readme, (spec["folder"], section)
        for config in ("train", "teacher", "distill", "oracle", "evaluate", "inference", "multi_gpu_train"):
            json.loads((bundle / "configs" / f"{config}.json").read_text())
        assert (bundle / "configs" / "logging.conf").is_file()
        assert not (set(os.listdir(bundle)) - {"LICENSE", "configs", "docs", "models", "eval", "zoo"})
