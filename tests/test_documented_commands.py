"""Every command in a ``bash`` block of README.md and of each bundle's docs/README.md, run as written with
tiny data substituted: the dataset paths point at small synthetic trees in the native layouts, the bundles
are tiny copies (``tests/test_bundles.tiny_bundle``), and the ``shortcut-kd`` training commands get
tiny-size ``--set`` flags. A command that errors fails the test.

Only the commands that *are* this check are not rerun: the set-up, the test suite and the lint commands
(CI runs them), and the full ``shortcut-kd demo`` (``tests/test_demo.py`` runs it on tiny data). The
``export-bundle`` and ``validate-bundle`` commands run in this process, through ``shortcut_kd.cli.main`` as the
``shortcut-kd`` script does, from the same folder: a new process would spend most of its time importing
torch and MONAI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_bundles import REPO, dataset_dir, run_stage, tiny_bundle

NOT_RERUN = ("bash scripts/setup.sh", ".venv/bin/python -m pytest", ".venv/bin/python -m flake8",
             ".venv/bin/python -m isort", ".venv/bin/python -m mypy")
TINY_SETTINGS = ["--set", "image_size=16", "--set", 'architecture="resnet10"',
                 "--set", 'arch_kwargs={"widen_factor": 0.25}', "--set", "batch_size=16",
                 "--set", "teacher_epochs=1", "--set", "specialist_size=16",
                 "--set", "n_bootstrap=20", "--set", "num_workers=0", "--set", "distill.probe_epochs=1",
                 "--set", "baselines.jtt_epochs=1", "--set", "epochs=1", "--device", "cpu"]
IN_PROCESS = ("export-bundle", "validate-bundle")


def documented_commands(doc: Path) -> list[str]:
    """The commands of ``doc``'s bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _run(argv: list[str], cwd: Path) -> None:
    if argv[1:3] == ["-m", "shortcut_kd.cli"] and argv[3] in IN_PROCESS:
        from shortcut_kd.cli import main

        with contextlib.chdir(cwd):
            assert main(argv[3:]) == 0, shlex.join(argv)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def _argv(command: str, paths: dict[str, str], bundles_dir: Path) -> list[str]:
    for placeholder, path in paths.items():
        command = command.replace(placeholder, path)
    argv = shlex.split(command)
    head = Path(argv[0]).name
    if head == "shortcut-kd":
        argv = [sys.executable, "-m", "shortcut_kd.cli", *argv[1:]]
        sub = argv[3]
        if sub in ("run", "export-bundle"):
            argv += ["--bundles-dir", str(bundles_dir)]
        elif sub in ("stage", "protocol"):
            argv += TINY_SETTINGS
        elif sub == "demo":
            argv += ["--n", "120", "--out", paths["demo_out"], *TINY_SETTINGS[:-2]]
        elif sub == "study":  # the documented study file, shrunk: same methods' machinery, tiny grid
            argv = [*argv[:4], paths["study_config"], "--out", paths["study_out"], "--n-bootstrap", "20",
                    *[a for a in argv[5:] if a != "--workers" and not a.isdigit()]]
        elif sub == "synth":
            argv = [a if a != "3000" else "120" for a in argv] + ["--size", "16", "--quiet"]
    elif head == "python":
        argv = [sys.executable, *argv[1:]]
    elif head == "torchrun":
        argv = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nnodes=1", "--nproc_per_node=2",
                *[a for a in argv[1:] if not a.startswith(("--nproc_per_node", "--nnodes", "--standalone"))]]
    return argv


def _tiny_study(tmp_path: Path, data: Path) -> Path:
    """The README's study file with a tiny grid: its first pipeline on tiny data, erm and kd, two seeds."""
    import yaml

    study = yaml.safe_load((REPO / "configs" / "studies" / "isic2017_demo.yaml").read_text())
    pipe = {**study["pipelines"][0], "dataset_dir": str(data), "shortcuts": study["pipelines"][0]["shortcuts"][:1],
            "settings": {"image_size": 16, "architecture": "resnet10", "arch_kwargs": {"widen_factor": 0.25},
                         "epochs": 1, "batch_size": 16, "teacher_epochs": 1, "specialist_size": 16,
                         "val_annotated_size": 16, "n_bootstrap": 20, "num_workers": 0, "distill": {"probe_epochs": 1}}}
    pipe.pop("synthetic_n", None)
    space = {m: study["tuning"]["search_space"][m] for m in ("erm", "kd")}
    tiny = {**study, "pipelines": [pipe], "methods": ["erm", "kd"], "variants": {}, "seeds": [0, 1], "device": "cpu",
            "tuning": {**study["tuning"], "trials": 2, "search_space": space}}
    path = tmp_path / "tiny_study.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return path


def test_readme_commands(tmp_path_factory, tmp_path):
    isic = dataset_dir(tmp_path_factory, "isic2017")
    bundles = tmp_path / "bundles"
    bundle = tiny_bundle("isic2017", bundles)
    cases = tmp_path / "new_cases.txt"
    cases.write_text("\n".join(str(p) for p in sorted(isic.rglob("*.jpg"))[:5]) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    paths = {"/data/ISIC2017": str(isic), "/path/to/new_cases": str(cases),
             "configs/protocols/": str(REPO / "configs" / "protocols") + "/", "demo_out": str(tmp_path / "demo"),
             "study_config": str(_tiny_study(tmp_path, dataset_dir(tmp_path_factory, "isic2017", n=160))),
             "study_out": str(tmp_path / "study")}
    cwd = work
    ran = 0
    for command in documented_commands(REPO / "README.md"):
        if command.startswith(NOT_RERUN) or command == ".venv/bin/shortcut-kd demo":
            continue
        if command.startswith("cd "):
            cwd = bundles / Path(command.split()[1]).name
            assert cwd == bundle
            continue
        _run(_argv(command, paths, bundles), cwd)
        ran += 1
    assert ran >= 15
    assert (bundle / "eval" / "models" / "model.ts").is_file() and (work / "runs" / "isic" / "report.md").is_file()
    assert (tmp_path / "study" / "study.md").is_file()
    use = json.loads((work / "runs" / "isic" / "layer_probes" / "layer_use.json").read_text())
    assert {r["model"] for r in use} >= {"erm", "kd"} and use[-1]["tap"] == "output"
    # the ISIC bundle's own README, from its folder, on the stages the README above has trained
    paths["/path/to/data"] = str(isic)
    for command in documented_commands(bundle / "docs" / "README.md"):
        _run(_argv(command, paths, bundles), bundle)
    _assert_zoo_submission(bundle)


def _assert_zoo_submission(bundle: Path) -> None:
    """What the README's model zoo commands leave: the submission and the predictions of its inference."""
    zoo = bundle / "zoo" / bundle.name
    assert (zoo / "models" / "model.ts").is_file() and (zoo / "large_files.yml").is_file()
    assert (zoo / "models" / "model.pt").read_bytes() == (bundle / "eval" / "models" / "model.pt").read_bytes()
    rows = (bundle / "zoo" / "predictions" / "predictions.csv").read_text().splitlines()
    assert len(rows) > 1 and all(r.split(",")[3] == "ok" for r in rows[1:])


@pytest.mark.parametrize("name", ["chexpert", "simba"])  # isic2017: in test_readme_commands
def test_bundle_doc_commands(name, tmp_path_factory, tmp_path):
    """The bundle README's commands, from the bundle folder, after its training-stage table (erm, teacher,
    distilled student) has been run as the README orders."""
    data = dataset_dir(tmp_path_factory, name)
    bundles = tmp_path / "bundles"
    bundle = tiny_bundle(name, bundles)
    for stage in ("train", "teacher", "distill"):
        run_stage(bundle, stage, dataset_dir=str(data), bundle_root=str(bundle))
    placeholders = {"chexpert": "/data/CheXpert-v1.0-small", "simba": "/data/SimBA"}
    cases = tmp_path / "new_cases.txt"
    suffix = ".nii.gz" if name == "simba" else ".jpg"
    cases.write_text("\n".join(str(p) for p in sorted(data.rglob(f"*{suffix}"))[:3]) + "\n")
    paths = {placeholders[name]: str(data), "/path/to/data": str(data), "/path/to/new_cases": str(cases)}
    commands = documented_commands(bundle / "docs" / "README.md")
    assert commands
    for command in commands:
        _run(_argv(command, paths, bundles), bundle)
    assert (bundle / "eval" / "models" / "model.ts").is_file()
    _assert_zoo_submission(bundle)
