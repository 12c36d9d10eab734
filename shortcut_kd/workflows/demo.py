"""``shortcut-kd demo``: synthetic data in a native layout -> every method -> report, in one command."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from shortcut_kd.evaluation.schema import METHOD_ORDER
from shortcut_kd.io import write_json
from shortcut_kd.workflows.cli import parse_overrides
from shortcut_kd.workflows.presets import load_protocol_preset
from shortcut_kd.workflows.protocol import QUICK_METHODS, run_protocol
from shortcut_kd.workflows.settings import from_dict

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from shortcut_kd.data.registry import DATASETS

    parser.add_argument("--dataset", default="isic2017", choices=sorted(DATASETS))
    parser.add_argument("--shortcut", action="append", help="shortcut preset (repeatable); default: one "
                        "localized and one diffuse, or the data's own bias for simba")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHOD_ORDER)}")
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA only)")
    parser.add_argument("--quick", action="store_true", help="erm, teacher, kd, oracle on one shortcut")
    parser.add_argument("--fresh", action="store_true", help="ignore finished stages and start over")
    parser.add_argument("--n", type=int, help="number of synthetic images to generate")
    parser.add_argument("--epochs", type=int, help="training epochs of every biased-set stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-figures", action="store_true", help="skip Grad-CAM and layer-probe figures")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a setting of the preset, e.g. --set image_size=48 --set distill.weight=30")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run_demo(dataset=args.dataset, shortcuts=args.shortcut, out=args.out, device=args.device,
                       amp=args.amp, quick=args.quick, fresh=args.fresh, n=args.n, epochs=args.epochs,
                       seed=args.seed, methods=args.methods.split(",") if args.methods else None,
                       figures=not args.no_figures, overrides=parse_overrides(args.set))
    from shortcut_kd.evaluation.report import format_table

    print(format_table(results))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def ood_size(n: int) -> int:
    """The size of the shifted (OOD) source generated beside ``n`` synthetic images: a fifth, at least 50."""
    return max(n // 5, 50)


def ensure_synthetic(dataset: str, out: Path, n: int, seed: int, variant: str) -> Path:
    """Generate the synthetic dataset once; a finished tree (marker file) is reused."""
    from shortcut_kd.data.synthetic import synthesize

    target = out / "data" / (dataset if variant == "iid" else f"{dataset}_{variant}")
    marker = target / ".complete"
    if not marker.is_file():
        logger.info("generating synthetic %s (%s, n=%d) in %s", dataset, variant, n, target)
        synthesize(dataset, target, n=n, seed=seed if variant == "iid" else seed + 1, variant=variant)
        marker.write_text(f"n={n} seed={seed}\n")
    return target


def run_demo(dataset: str = "isic2017", shortcuts=None, out: str | Path = "demo_out", device: str = "cpu",
             amp: bool = False, quick: bool = False, fresh: bool = False, n: int | None = None,
             epochs: int | None = None, seed: int = 0, methods=None, figures: bool = True,
             overrides: dict | None = None) -> dict:
    """Run the demo and return the combined results (also written to ``out/results.json``).

    ``overrides``: settings that replace the preset's (nested dicts for ``distill`` / ``baselines``).
    """
    out = Path(out)
    preset = load_protocol_preset(f"demo_{dataset}")
    n = n or preset.pop("synthetic_n", 2000)
    preset.pop("synthetic_n", None)
    from shortcut_kd.data.registry import get_dataset

    shortcuts = list(shortcuts or get_dataset(dataset).default_shortcuts)
    if quick and not methods:
        shortcuts = shortcuts[:1]
    methods = list(methods or (QUICK_METHODS if quick else METHOD_ORDER))
    data_dir = ensure_synthetic(dataset, out, n, seed, "iid")
    ood_dir = ensure_synthetic(dataset, out, ood_size(n), seed, "ood")
    experiments = []
    for shortcut in shortcuts:
        settings = from_dict({**preset, "shortcut": preset.get("shortcut", shortcut) if shortcut == "native"
                              else shortcut, "dataset_dir": str(data_dir), "ood_dir": str(ood_dir),
                              "output_dir": str(out / shortcut), "device": device, "amp": amp, "seed": seed,
                              **({"epochs": epochs} if epochs else {})})
        if overrides:
            settings = settings.replace(**overrides)
        logger.info("== %s: shortcut %s, methods %s", dataset, shortcut, ",".join(methods))
        result = run_protocol(settings, methods, fresh=fresh)
        result["data"] = {"synthetic": True, "generator": f"shortcut-kd synth {dataset}", "n": n,
                          "ood_n": ood_size(n), "seed": seed}
        experiments.append(result)
        if figures:
            from shortcut_kd.workflows.figures import make_figures

            made = make_figures(settings, methods)
            # relative to results.json, so the output folder can be moved or shared
            made["figures"] = {c: os.path.relpath(path, out) for c, path in made["figures"].items()}
            result.update(made)
    from shortcut_kd.provenance import portable_paths

    # the folders the demo made are written relative to out/, so results.json names no machine path
    combined = portable_paths({"schema": "shortcut-kd/results-set/v1", "experiments": experiments}, out)
    write_json(out / "results.json", combined)
    from shortcut_kd.evaluation.report import write_report

    write_report(combined, out, settings={"dataset": dataset, "n": n, "seed": seed, "methods": methods,
                                          "shortcuts": shortcuts, "preset": f"configs/protocols/demo_{dataset}.yaml"})
    return combined
