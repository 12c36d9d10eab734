"""The wheel carries the bundles and the presets: installed outside a checkout, ``shortcut-kd run NAME``
finds the bundle inside the package and trains a stage."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from test_bundles import REPO, TINY, dataset_dir


def test_bundles_run_from_the_installed_wheel(tmp_path, tmp_path_factory):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("shortcut_kd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for bundle in ("isic2017_shortcut_kd", "chexpert_shortcut_kd", "simba_shortcut_kd"):
        for stage in ("train.json", "distill.json", "finetune.json", "inference.json", "metadata.json"):
            assert f"shortcut_kd/bundles/{bundle}/configs/{stage}" in names, (bundle, stage)
    assert "shortcut_kd/configs/studies/isic2017_demo.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure wheel's files are its installed layout
    spec = TINY["isic2017"]
    data = dataset_dir(tmp_path_factory, "isic2017")
    out = tmp_path / "run"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    sets = [f"image_size={spec['image_size']}", "batch_size=8", "num_workers=0", "train#trainer#max_epochs=1",
            *[f"network_def#{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec["network"].items()]]
    where = subprocess.run([sys.executable, "-c", "import shortcut_kd; print(shortcut_kd.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(site)
    run = subprocess.run([sys.executable, "-m", "shortcut_kd.cli", "run", "isic2017", "train", "--dataset-dir",
                          str(data), "--output-dir", str(out), *[a for s in sets for a in ("--set", s)]],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "models" / "model_erm.pt").is_file()
