"""``shortcut-kd demo`` as a user types it, shrunk with ``--set``: every method on a localized and a
diffuse shortcut, results.json + report.md + figures, the printed table, and reuse on a rerun."""

import json

from shortcut_kd.cli import main
from shortcut_kd.evaluation.schema import METHOD_ORDER as METHODS

TINY = ["--n", "120", "--set", "image_size=16", "--set", "architecture=resnet10",
        "--set", 'arch_kwargs={"widen_factor": 0.25}', "--set", "epochs=1", "--set", "batch_size=16",
        "--set", "teacher_epochs=1", "--set", "specialist_size=16", "--set", "n_bootstrap=20",
        "--set", "distill.probe_epochs=1", "--set", "baselines.jtt_epochs=1", "--set", "num_workers=0"]


def test_demo_runs_every_method_on_two_shortcuts_and_reuses_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "shortcut-kd/results-set/v1"
    kinds = {e["shortcut"]["name"]: e["shortcut"]["kind"] for e in results["experiments"]}
    assert kinds == {"patch": "localized", "noise": "diffuse"}
    for experiment in results["experiments"]:
        assert list(experiment["methods"]) == list(METHODS)
        assert experiment["architecture"] == "resnet10"
    for method in METHODS:
        assert f"`{method}`" in printed
    report = (out / "report.md").read_text()
    assert "patch" in report and "noise" in report and ".png" in report
    assert list((out / "patch" / "figures").glob("*.png"))
    for experiment in results["experiments"]:  # figure paths relative to results.json
        assert all((out / p).is_file() and not p.startswith("/") for p in experiment["figures"].values())
    # JTT's second stage takes as many steps as ERM (BaselineSettings.jtt_budget = "erm")
    import torch

    steps = {m: torch.load(out / "patch" / "models" / f"{m}_last.pt", weights_only=False)
             ["trainer"]["iteration"] for m in ("erm", "jtt")}
    assert steps["jtt"] == steps["erm"]

    model = out / "noise" / "models" / "model.pt"  # the distilled student: the deployable model
    mtime = model.stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--shortcut", "noise", "--methods", "erm,kd", *TINY]) == 0
    assert model.stat().st_mtime_ns == mtime  # reused, not retrained
    assert main(["demo", "--out", str(out), "--shortcut", "noise", "--methods", "kd", "--fresh", *TINY]) == 0
    assert model.stat().st_mtime_ns != mtime
