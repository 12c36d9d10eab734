"""One entry point for every synthetic dataset: :func:`synthesize`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from shortcut_kd.errors import ConfigError
from shortcut_kd.io import read_json, write_json

SYNTHETIC_MARKER = "shortcut_kd_synthetic.json"
"""Written by :func:`synthesize` in the dataset root: how the data were generated."""

#: dataset name -> (module, writer function, default n, default image size)
_WRITERS: dict[str, tuple[str, str, int, int]] = {
    "chexpert": ("shortcut_kd.data.synthetic.chexpert_like", "synthesize_chexpert", 2000, 64),
    "isic2017": ("shortcut_kd.data.synthetic.isic_like", "synthesize_isic2017", 2000, 64),
    "simba": ("shortcut_kd.data.synthetic.simba_like", "synthesize_simba", 1000, 32),
}

DATASETS = tuple(_WRITERS)


def default_n(dataset: str) -> int:
    """The number of samples :func:`synthesize` writes for ``dataset`` when ``n`` is not given."""
    return _WRITERS[_check(dataset)][2]


def default_size(dataset: str) -> int:
    """The image side (pixels, or voxels for 3D) used for ``dataset`` when ``image_size`` is not given."""
    return _WRITERS[_check(dataset)][3]


def _check(dataset: str) -> str:
    if dataset not in _WRITERS:
        raise ConfigError("dataset", dataset, f"use one of {', '.join(DATASETS)}.")
    return dataset


def _writer(dataset: str) -> Callable[..., Path]:
    import importlib

    module, func, _, _ = _WRITERS[_check(dataset)]
    return getattr(importlib.import_module(module), func)


def synthesize(dataset: str, out_dir: str | os.PathLike, n: int | None = None, seed: int = 0,
               variant: str = "iid", image_size: int | None = None, **kwargs: Any) -> Path:
    """Write a synthetic dataset in the native on-disk layout of a real one.

    Args:
        dataset: ``"chexpert"`` (CheXpert-v1.0-small), ``"isic2017"`` (ISIC 2017 challenge) or
            ``"simba"`` (SimBA split CSVs and NIfTI volumes).
        out_dir: folder to write into (created; existing files with the same names are replaced).
        n: number of samples (CheXpert: studies, i.e. frontal images; others: images or volumes
            over all splits); default 2000 for the 2D datasets, 1000 for SimBA.
        seed: random seed; the same seed gives the same files.
        variant: ``"iid"``, or ``"ood"`` for the same layout and labels from a shifted acquisition
            (other contrast, noise, intensity scale and field of view), without any shortcut.
        image_size: image side in pixels (2D, default 64) or voxels (SimBA, default 32).
        kwargs: passed to the dataset's writer (:func:`synthesize_chexpert`,
            :func:`synthesize_isic2017`, :func:`synthesize_simba`), e.g. ``prevalence``, ``progress``.

    Returns:
        The dataset root to give the reader: ``<out_dir>/CheXpert-v1.0-small`` for CheXpert,
        ``out_dir`` for the others.
    """
    writer = _writer(dataset)
    n = default_n(dataset) if n is None else n
    root = Path(writer(out_dir, n=n, seed=seed, variant=variant, image_size=image_size, **kwargs))
    write_json(root / SYNTHETIC_MARKER, {"synthetic": True, "generator": f"shortcut-kd synth {dataset}", "n": n,
                                         "seed": seed, "variant": variant, "image_size": image_size})
    return root


def synthetic_marker(dataset_dir: str | os.PathLike | None) -> dict | None:
    """What :func:`synthesize` recorded about the data in ``dataset_dir`` (None for other data), so that
    results say when they come from generated images."""
    if not dataset_dir:
        return None
    path = Path(dataset_dir) / SYNTHETIC_MARKER
    return read_json(path) if path.is_file() else None
