"""Data loading at the real datasets' sizes: images/s of the bundles' preprocessing, with 0, 1 and 2 DataLoader
workers, without a cache, with the on-disk preprocessing cache cold (first epoch, writing it) and warm (later
epochs, reading it), and held in memory; beside the model's training images/s at the same size.

Files are generated at full size in the real formats: 320 x 390 grey JPEG (CheXpert), 1024 x 768 RGB JPEG (ISIC
2017) and 173 x 211 x 155 int16 NIfTI (SimBA). The preprocessing is the bundles' (``build_transforms``: load,
channels, the shortcut on half of the images, intensity, resize to the bundle's ``image_size``); the cache is
the stages' (``cached_dataset``: MONAI ``PersistentDataset`` keyed by the preprocessing, then ``CacheDataset``).
The model's images/s is an ERM step of the bundle's network (``benchmarks/gpu.py``'s measurement) on this device.

    python benchmarks/loader.py                    # writes benchmarks/results/loader.json
    python benchmarks/loader.py --n 16 --quick     # fewer files, no model step

Wall-clock times: on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import DataLoader, Dataset
from PIL import Image

from shortcut_kd.data.cache import cached_dataset
from shortcut_kd.data.transforms import build_transforms
from shortcut_kd.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import measure_pipeline  # noqa: E402

#: name: (bundle, file shape, spatial dims, channels, training size, shortcut, files, batch)
FORMATS = {
    "chexpert_jpeg_320x390": ("chexpert_shortcut_kd", (390, 320), 2, 1, 224, "tag", 64, 16),
    "isic2017_jpeg_1024x768": ("isic2017_shortcut_kd", (768, 1024, 3), 2, 3, 224, "patch", 64, 16),
    "simba_nifti_173x211x155": ("simba_shortcut_kd", (173, 211, 155), 3, 1, 96, "noise", 8, 2),
}


def write_files(kind: str, shape: tuple[int, ...], n: int, folder: Path) -> list[dict]:
    """``n`` random files of ``shape`` in the format of ``kind``; a datalist with labels, ids and bias flags."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        if kind.startswith("simba"):
            path = folder / f"sub-{i:05d}.nii.gz"
            vol = rng.integers(0, 1000, shape, dtype=np.int16)
            nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
        else:
            path = folder / f"img{i:05d}.jpg"
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path, quality=90)
        items.append({"image": str(path), "label": i % 2, "id": f"{kind}-{i}", "bias": (i // 2) % 2})
    return items


def images_per_s(dataset, batch: int, workers: int) -> float:
    """One pass over ``dataset`` through a MONAI DataLoader; items per second of wall time."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, persistent_workers=False)
    start = time.perf_counter()
    count = sum(len(b["label"]) for b in loader)
    return count / (time.perf_counter() - start)


def measure_format(name: str, workers: list[int], n: int | None, model: bool) -> dict:
    bundle, shape, dims, channels, size, shortcut, default_n, batch = FORMATS[name]
    n = n or default_n
    transform = build_transforms(dims, channels, size, shortcut=shortcut, seed=0, train=True)
    out: dict = {"bundle": bundle, "file_shape": list(shape), "files": n, "training_size": size,
                 "shortcut": shortcut, "batch": batch, "loader_images_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "files"
        folder.mkdir()
        items = write_files(name, shape, n, folder)
        out["bytes_per_file"] = sum(Path(it["image"]).stat().st_size for it in items) / n
        rates = out["loader_images_per_s"]
        for w in workers:
            rates[f"no_cache_workers{w}"] = images_per_s(Dataset(items, transform), batch, w)
            disk = cached_dataset(items, transform, cache_dir=Path(tmp) / f"cache{w}", cache_rate=0)
            rates[f"disk_cache_cold_workers{w}"] = images_per_s(disk, batch, w)
            rates[f"disk_cache_warm_workers{w}"] = images_per_s(disk, batch, w)
        start = time.perf_counter()
        memory = cached_dataset(items, transform, cache_dir=Path(tmp) / "cache0", cache_rate=1.0)
        out["memory_cache_fill_s"] = time.perf_counter() - start
        rates["memory_cache_workers0"] = images_per_s(memory, batch, 0)
    if model:
        step = measure_pipeline(bundle, (size,) * dims, batch, 3, torch.device("cpu"), amp=False,
                                compile_student=False)
        out["model"] = {"architecture": step["architecture"], "input": step["input"],
                        "erm_images_per_s": step["erm"]["images_per_s"], "kd_images_per_s": step["kd"]["images_per_s"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--n", type=int, default=None, help="files per format (default 64 2D, 8 3D)")
    p.add_argument("--quick", action="store_true", help="no model step")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model step")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {"benchmark": "loader", "command": " ".join(["python benchmarks/loader.py",
                                                               *(sys.argv[1:] if argv is None else argv)]),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s) for the model",
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "formats": {}}
    for name in args.formats.split(","):
        print(f"{name} ...", flush=True)
        r = measure_format(name, [int(w) for w in args.workers.split(",")], args.n, not args.quick)
        result["formats"][name] = r
        print("  " + ", ".join(f"{k} {v:.1f}" for k, v in r["loader_images_per_s"].items()), flush=True)
        if "model" in r:
            print(f"  model ERM {r['model']['erm_images_per_s']:.1f} img/s, KD {r['model']['kd_images_per_s']:.1f}")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
