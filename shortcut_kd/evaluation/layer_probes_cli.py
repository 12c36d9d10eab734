"""``shortcut-kd probe-layers``: where does a trained model encode the shortcut?

Example (compare ERM and KD of one experiment)::

    shortcut-kd probe-layers --checkpoint erm=runs/isic2017/stages/erm/model.pt \\
        --checkpoint kd=runs/isic2017/stages/kd/model.pt --split-dir runs/isic2017/splits

The probe data is the ``test_unbiased`` role (shortcut independent of the label), split 50/50 by
sample id into a probe-training and a probe-test half. The dataset, shortcut, architecture, image
size and seed default to the experiment's ``settings.json`` beside the split folder, so the images
are preprocessed exactly as in training. Writes ``layer_probes.{csv,md,png,json}`` to ``--out`` and
prints the table and the taps ``layers: auto`` would pick.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shortcut_kd.errors import ConfigError, DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]PATH",
                        help="model weights (a state dict or a checkpoint holding one); repeat to compare models")
    parser.add_argument("--split-dir", required=True, help="folder of the split datalists (<output_dir>/splits)")
    parser.add_argument("--arch", help="architecture (default: the experiment's, else the dataset's default)")
    parser.add_argument("--dataset", help="isic2017, chexpert or simba (default: the experiment's)")
    parser.add_argument("--shortcut", help="shortcut preset injected where bias==1, 'none' for none or native "
                        "bias (default: the experiment's)")
    parser.add_argument("--image-size", type=int, help="input side length (default: the experiment's)")
    parser.add_argument("--taps", default="all", help="'all' or comma-separated layer names")
    parser.add_argument("--role", default="test_unbiased", help="split role to probe on (default: test_unbiased)")
    parser.add_argument("--out", help="output folder (default: <split-dir>/../layer_probes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-samples", type=int, default=2000, help="images per probe half (default: 2000)")
    parser.add_argument("--seed", type=int, help="seed of the id split and the shortcut (default: the experiment's)")
    parser.add_argument("--threshold", type=float, help="bias-probe AUC that counts as encoded, for layers: auto")


def _experiment_settings(split_dir: Path) -> dict:
    from shortcut_kd.io import read_json

    path = split_dir.parent / "settings.json"
    return read_json(path) if path.is_file() else {}


def _load_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise DataError("checkpoint not found.", file=str(path), fix="give the path of a model.pt or checkpoint file.")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("model", "network", "net", "state_dict", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise DataError(f"no model weights found (top-level keys: {keys}).", file=str(path),
                    fix="save model.state_dict(), or a dict holding it under 'model' or 'network'.")


def _parse_checkpoints(values: list[str]) -> list[tuple[str, Path]]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).parent.name or Path(value).stem, value
        out.append((name, Path(path)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError("--checkpoint", values,
                          "name each checkpoint uniquely: --checkpoint erm=PATH --checkpoint kd=PATH.")
    return out


def run(args: argparse.Namespace) -> int:
    from monai.data import DataLoader, Dataset

    from shortcut_kd.data.splits import load_split
    from shortcut_kd.data.transforms import build_transforms
    from shortcut_kd.evaluation.layer_probes import (AUTO_THRESHOLD, choose_taps, format_probe_table,
                                                     plot_layer_probes, probe_layers, split_by_id, write_probe_table)
    from shortcut_kd.io import write_json
    from shortcut_kd.nets import build_network, get_taps
    from shortcut_kd.workflows.datasets import get_dataset_spec
    from shortcut_kd.workflows.experiment import small_image_kwargs

    split_dir = Path(args.split_dir)
    if not split_dir.is_dir():
        raise ConfigError("--split-dir", str(split_dir),
                          "give the folder written by the split builder (<output_dir>/splits).")
    exp: dict[str, Any] = _experiment_settings(split_dir)
    spec = get_dataset_spec(args.dataset or exp.get("dataset") or "isic2017")
    arch = args.arch or exp.get("architecture") or spec.architecture
    image_size = args.image_size or exp.get("image_size") or spec.image_size
    if args.seed is not None:
        seed = args.seed
    else:
        from shortcut_kd.data.splits import read_manifest

        seed = int(exp.get("seed", read_manifest(split_dir).get("seed", 0)))
    shortcut_name = args.shortcut or exp.get("shortcut")
    if shortcut_name is None and not spec.native_bias:
        raise ConfigError("--shortcut", None, "name the shortcut preset the model was trained with (e.g. patch), "
                          "so that it is injected where bias==1; 'none' probes the images as they are.")
    shortcut = None
    if shortcut_name not in (None, "none", "native"):
        from shortcut_kd.shortcuts import make_shortcut

        overrides = exp.get("shortcut_overrides", {}) if shortcut_name == exp.get("shortcut") else {}
        shortcut = make_shortcut(shortcut_name, spec.spatial_dims, **overrides)

    items = load_split(split_dir, args.role)
    train_items, test_items = split_by_id(items, 0.5, seed=seed)
    if not train_items or not test_items:
        raise DataError(f"role '{args.role}' has {len(items)} items, too few to split for probing.",
                        file=str(split_dir), fix="build the splits with a larger test fraction or dataset.")
    transform = build_transforms(spec.spatial_dims, spec.in_channels, image_size, shortcut=shortcut, seed=seed,
                                 train=False, intensity=spec.intensity)
    loaders = [DataLoader(Dataset(part, transform=transform), batch_size=args.batch_size, shuffle=False)
               for part in (train_items, test_items)]
    # as the experiment builds its networks: the dataset's kwargs, then the experiment's for its own architecture
    arch_kwargs = dict(spec.arch_kwargs)
    if arch == (exp.get("architecture") or spec.architecture):
        arch_kwargs.update(exp.get("arch_kwargs") or {})

    rows = []
    for name, path in _parse_checkpoints(args.checkpoint):
        model = build_network(arch, spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, num_classes=2,
                              **small_image_kwargs(arch, image_size, arch_kwargs))
        model.load_state_dict(_load_state_dict(path))
        model.to(args.device)
        taps = get_taps(model) if args.taps == "all" else [t.strip() for t in args.taps.split(",") if t.strip()]
        rows += probe_layers(model, taps, *loaders, targets=("bias", "label"), device=args.device,
                             max_samples=args.max_samples, model_name=name, seed=seed)

    out = Path(args.out) if args.out else split_dir.parent / "layer_probes"
    write_json(out / "layer_probes.json", rows)
    write_probe_table(rows, out / "layer_probes.csv")
    write_probe_table(rows, out / "layer_probes.md")
    plot_layer_probes(rows, out / "layer_probes.png", title=f"{spec.name} · {arch} · shortcut {shortcut_name}: "
                      "linear-probe decodability per layer")
    print(format_probe_table(rows))
    threshold = args.threshold if args.threshold is not None else AUTO_THRESHOLD
    for name in dict.fromkeys(r["model"] for r in rows):
        taps = choose_taps(rows, threshold, model=name)
        print(f"layers: auto for {name} (bias AUC >= {threshold}): {', '.join(taps)}")
    print(f"\nwritten: {out}/layer_probes.{{csv,md,png,json}}")
    return 0
