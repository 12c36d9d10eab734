"""The wheel carries the bundles and the presets: installed outside a checkout, ``shortcut-kd run NAME``
finds the bundle inside the package, trains a stage, and predicts real DICOM, NIfTI, PNG and JPEG files
with each bundle from a fresh virtual environment."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_bundle_inference import DICOM_DATA, NIFTI_DATA
from test_bundles import REPO, TINY, dataset_dir, network_of, tiny_bundle

BUNDLES = ("isic2017_shortcut_kd", "chexpert_shortcut_kd", "simba_shortcut_kd")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The package's wheel, built once for this module."""
    wheels = tmp_path_factory.mktemp("wheels")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    return next(wheels.glob("shortcut_kd-*.whl"))


def tiny_sets(name: str) -> list[str]:
    """``--set`` arguments giving the tiny image size and network widths of ``TINY[name]``."""
    spec = TINY[name]
    return [f"image_size={spec['image_size']}", "batch_size=8", "num_workers=0",
            *[f"network_def#{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec["network"].items()]]


def child_env() -> dict[str, str]:
    """The environment of the commands run here: one thread, nothing of this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "OMP_NUM_THREADS": "1"}


def test_bundles_run_from_the_installed_wheel(wheel, tmp_path, tmp_path_factory):
    names = zipfile.ZipFile(wheel).namelist()
    for bundle in BUNDLES:
        for stage in ("train.json", "distill.json", "finetune.json", "inference.json", "metadata.json"):
            assert f"shortcut_kd/bundles/{bundle}/configs/{stage}" in names, (bundle, stage)
    assert "shortcut_kd/configs/studies/isic2017_demo.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure wheel's files are its installed layout
    data = dataset_dir(tmp_path_factory, "isic2017")
    out = tmp_path / "run"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**child_env(), "PYTHONPATH": str(site)}
    sets = [*tiny_sets("isic2017"), "train#trainer#max_epochs=1"]
    where = subprocess.run([sys.executable, "-c", "import shortcut_kd; print(shortcut_kd.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(site)
    run = subprocess.run([sys.executable, "-m", "shortcut_kd.cli", "run", "isic2017", "train", "--dataset-dir",
                          str(data), "--output-dir", str(out), *[a for s in sets for a in ("--set", s)]],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "models" / "model_erm.pt").is_file()


def fresh_venv(root: Path, wheel: Path) -> Path:
    """A new virtual environment with ``wheel`` installed; this environment's third-party packages are visible
    through a ``.pth`` file listing its site-packages folders (a ``.pth`` line only extends ``sys.path``: the
    ``.pth`` files inside those folders, such as this checkout's editable install, are not processed)."""
    venv = root / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    assert site.is_dir(), f"the new environment has no {site}"
    ours = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "third_party.pth").write_text("".join(f"{p}\n" for p in ours))
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                              "--ignore-installed", str(wheel)], cwd=root, env=child_env(), capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    return python


def needed(path: Path) -> Path:
    assert path.exists(), f"{path} is missing: the test needs pydicom's and nibabel's test data files"
    return path


def test_installed_wheel_predicts_with_each_bundle_in_a_fresh_venv(wheel, tmp_path):
    """The wheel in a new virtual environment, outside the checkout: ``shortcut-kd run NAME inference`` of each
    bundle (untrained tiny networks) on real files: a CR study (a lateral and two AP views) and a CT slice for
    CheXpert (the lateral and the CT skipped with the reason), a NIfTI volume and a CT series folder for SimBA
    (the series read as one volume), a PNG and a JPEG for ISIC 2017."""
    python = fresh_venv(tmp_path, wheel)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(python.parents[1]),
                                                    "platbase": str(python.parents[1])}))
    assert (python.parent / ("shortcut-kd.exe" if os.name == "nt" else "shortcut-kd")).is_file(), "console script"

    inputs = {name: tmp_path / "in" / name for name in TINY}
    cr = inputs["chexpert"]
    for series in ("CR1/6154", "CR2/6247", "CR3/6278"):
        (cr / series).parent.mkdir(parents=True)
        shutil.copy(needed(DICOM_DATA / "dicomdirtests" / "77654033" / series), cr / series)
    shutil.copy(needed(DICOM_DATA / "CT_small.dcm"), cr / "CT_small.dcm")
    inputs["simba"].mkdir(parents=True)
    shutil.copy(needed(NIFTI_DATA / "anatomical.nii"), inputs["simba"] / "anatomical.nii")
    shutil.copytree(needed(DICOM_DATA / "dicomdirtests" / "98892001" / "CT5N"), inputs["simba"] / "CT5N")
    inputs["isic2017"].mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(inputs["isic2017"] / "lesion.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(inputs["isic2017"] / "lesion.jpg")

    commands = []
    for name in TINY:  # untrained weights of the tiny network, where --bundle-root says models/ is
        root = tmp_path / "roots" / name
        (root / "models").mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(network_of(tiny_bundle(name, tmp_path / "configs" / name)).state_dict(),
                   root / "models" / "model.pt")
        commands.append(["run", name, "inference", "--dataset-dir", str(inputs[name]), "--output-dir",
                         str(tmp_path / "out" / name), "--bundle-root", str(root),
                         *[a for s in tiny_sets(name) for a in ("--set", s)]])
    work = tmp_path / "elsewhere"
    work.mkdir()
    script = ("import json, sys\nimport shortcut_kd\nfrom shortcut_kd.cli import main\n"
              "print(json.dumps({'file': shortcut_kd.__file__, 'path': sys.path}))\n"
              "sys.exit(max(main(argv) for argv in json.loads(sys.argv[1])))\n")  # one process: imports once
    run = subprocess.run([str(python), "-c", script, json.dumps(commands)], cwd=work, env=child_env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    where = json.loads(run.stdout.splitlines()[0])
    assert Path(where["file"]).resolve().is_relative_to(site.resolve()), where["file"]
    assert not [p for p in where["path"] if p and Path(p).resolve() != site.resolve()
                and (Path(p) / "shortcut_kd" / "__init__.py").exists()], "the checkout is not on sys.path"

    def rows(name: str) -> dict[str, dict]:
        with open(tmp_path / "out" / name / "predictions.csv", newline="") as f:
            return {str(Path(r["file"]).relative_to(inputs[name])): r for r in csv.DictReader(f)}

    def predicted(row: dict) -> bool:
        p = float(row["probability"])
        ok = row["status"] == "ok" and row["reason"] == ""
        return ok and 0.0 <= p <= 1.0 and int(row["predicted_label"]) == int(p >= 0.5)

    chest = rows("chexpert")
    assert sorted(chest) == ["CR1/6154", "CR2/6247", "CR3/6278", "CT_small.dcm"]
    assert predicted(chest["CR2/6247"]) and predicted(chest["CR3/6278"]), chest
    assert chest["CR1/6154"]["status"] == "skipped" and "view position LL" in chest["CR1/6154"]["reason"]
    assert chest["CT_small.dcm"]["status"] == "skipped" and "modality CT" in chest["CT_small.dcm"]["reason"]
    order = [(r["StudyInstanceUID"], r["SeriesInstanceUID"]) for r in chest.values()]
    assert order == sorted(order) and all(all(k) for k in order), "grouped by study and series, UIDs filled in"
    brain = rows("simba")
    assert sorted(brain) == ["CT5N", "anatomical.nii"] and all(predicted(r) for r in brain.values()), brain
    skin = rows("isic2017")
    assert sorted(skin) == ["lesion.jpg", "lesion.png"] and all(predicted(r) for r in skin.values()), skin
    for name in TINY:
        assert all(len(r["checkpoint_sha256"]) == 64 for r in rows(name).values()), name


def test_build_makes_a_wheel_and_sdist_that_pass_twine_check(tmp_path):
    """``python -m build`` (sdist, then the wheel from it) gives distributions that ``twine check`` accepts,
    and the wheel built from the sdist still carries the bundles and the zoo schema."""
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "-o", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    files = sorted(dist.iterdir(), key=lambda f: f.suffix)  # the sdist (.gz), then the wheel
    assert [f.suffix for f in files] == [".gz", ".whl"]
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    names = zipfile.ZipFile(files[1]).namelist()
    assert "shortcut_kd/bundles/simba_shortcut_kd/configs/inference.json" in names
    assert "shortcut_kd/workflows/zoo_metadata_schema.json" in names
