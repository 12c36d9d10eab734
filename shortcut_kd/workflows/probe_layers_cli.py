"""``shortcut-kd probe-layers``: where does a trained model encode the shortcut?

Example (compare ERM, KD and the oracle of one experiment)::

    shortcut-kd probe-layers --run-dir runs/isic2017
    shortcut-kd probe-layers --run-dir runs/isic2017 --checkpoint erm --checkpoint mine=path/to/model.pt

The probe data is the ``test_unbiased`` role (shortcut independent of the label), split 50/50 by sample id
into a probe-training and a probe-test half. The images are preprocessed by the run's own bundle config
(its ``settings.json``), exactly as in training. Writes ``layer_probes.{csv,md,png,json}`` to ``--out``
and prints the table and the taps ``layers: auto`` would pick.

Beside decodability it measures *use* (:mod:`~shortcut_kd.evaluation.shortcut_use`): label probes fitted on the
probe-training half of ``test_unbiased``, scored on ``test_aligned`` and ``test_conflicting`` (less any image of
that half); ``layer_use.{json,md,png}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shortcut_kd.errors import ConfigError, DataError

DEFAULT_MODELS = ("erm", "kd", "oracle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="an experiment's output folder (with settings.json)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="METHOD|NAME=PATH",
                        help="a method of the run (erm, kd, teacher, ...) or NAME=PATH of other weights of the "
                             "run's architecture; repeat to compare (default: erm, kd, oracle where trained)")
    parser.add_argument("--taps", default="all", help="'all' or comma-separated layer names")
    parser.add_argument("--role", default="test_unbiased", help="split role to probe on (default: test_unbiased)")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/layer_probes)")
    parser.add_argument("--max-samples", type=int, default=2000, help="images per probe half (default: 2000)")
    parser.add_argument("--threshold", type=float, help="bias-probe AUC that counts as encoded, for layers: auto")


def parse_checkpoints(values: list[str]) -> list[tuple[str, Path | None]]:
    """``METHOD`` or ``NAME=PATH`` items as (name, path or None for the run's own model)."""
    out: list[tuple[str, Path | None]] = []
    for value in values:
        name, sep, path = value.partition("=")
        out.append((name, Path(path)) if sep else (value, None))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError("--checkpoint", values,
                          "name each checkpoint uniquely: --checkpoint erm --checkpoint mine=PATH.")
    return out


def experiment_layer_use(exp, methods: list[str], max_samples: int | None = 2000) -> list[dict]:
    """Per-layer shortcut use (see :mod:`~shortcut_kd.evaluation.shortcut_use`) of ``methods`` trained in
    ``exp``: probes fitted on the probe-training half of ``test_unbiased``, scored on ``test_aligned`` and
    ``test_conflicting`` without the images of that half. Methods not trained in ``exp`` are left out."""
    from shortcut_kd.evaluation.layer_probes import split_by_id
    from shortcut_kd.evaluation.shortcut_use import shortcut_use
    from shortcut_kd.nets import get_taps

    fit, _ = split_by_id(exp.datalist("test_unbiased"), 0.5, seed=exp.settings.seed)
    fitted = {str(it["id"]) for it in fit}
    aligned, conflicting = ([it for it in exp.datalist(role) if str(it["id"]) not in fitted]
                            for role in ("test_aligned", "test_conflicting"))
    if not fit or not aligned or not conflicting:
        raise DataError("too few test images to measure shortcut use (test_unbiased, test_aligned, "
                        "test_conflicting).", file=str(exp.split_dir), fix="use a larger test fraction or dataset.")
    fit_loader, aligned_loader, conflicting_loader = (exp.loader(part)
                                                      for part in (fit, aligned, conflicting))
    rows: list[dict] = []
    for method in methods:
        if not exp.is_done(method):
            continue
        model = exp.load_model(method)
        rows += shortcut_use(model, get_taps(model), fit_loader, aligned_loader, conflicting_loader,
                             device=exp.device, max_samples=max_samples, model_name=method, seed=exp.settings.seed)
    return rows


def run(args: argparse.Namespace) -> int:
    from shortcut_kd.evaluation.layer_probes import (
        AUTO_THRESHOLD, choose_taps, format_probe_table, plot_layer_probes, probe_layers, split_by_id,
        write_probe_table,
    )
    from shortcut_kd.io import read_json, write_json
    from shortcut_kd.nets import get_taps
    from shortcut_kd.nets.checkpoint import load_weights
    from shortcut_kd.workflows.experiment import Experiment
    from shortcut_kd.workflows.settings import from_dict

    run_dir = Path(args.run_dir)
    settings_file = run_dir / "settings.json"
    if not settings_file.is_file():
        raise ConfigError("--run-dir", str(run_dir), "give an experiment's output folder (shortcut-kd protocol or "
                                                     "demo writes settings.json there).")
    exp = Experiment(from_dict({**read_json(settings_file), "output_dir": str(run_dir)}))
    wanted = parse_checkpoints(args.checkpoint) or [(m, None) for m in DEFAULT_MODELS if exp.is_done(m)]
    if not wanted:
        raise DataError("no trained model to probe.", file=str(run_dir),
                        fix="run erm / kd first, or give --checkpoint.")
    items = exp.datalist(args.role)
    train_items, test_items = split_by_id(items, 0.5, seed=exp.settings.seed)
    if not train_items or not test_items:
        raise DataError(f"role '{args.role}' has {len(items)} items, too few to split for probing.",
                        file=str(exp.split_dir), fix="build the splits with a larger test fraction or dataset.")
    train_loader, test_loader = (exp.loader(part) for part in (train_items, test_items))
    rows = []
    for name, path in wanted:
        if path is None:
            exp.check_method(name)
            model = exp.load_model(name)
        else:
            model = load_weights(exp.network(), path, device=exp.device, frozen=True).eval()
        taps = get_taps(model) if args.taps == "all" else [t.strip() for t in args.taps.split(",") if t.strip()]
        rows += probe_layers(model, taps, train_loader, test_loader, targets=("bias", "label"), device=exp.device,
                             max_samples=args.max_samples, model_name=name, seed=exp.settings.seed)
    out = Path(args.out) if args.out else run_dir / "layer_probes"
    write_json(out / "layer_probes.json", rows)
    write_probe_table(rows, out / "layer_probes.csv")
    write_probe_table(rows, out / "layer_probes.md")
    plot_layer_probes(rows, out / "layer_probes.png", title=f"{exp.settings.dataset} · {exp.architecture} · "
                      f"shortcut {exp.shortcut_name}: linear-probe decodability per layer")
    print(format_probe_table(rows))
    threshold = args.threshold if args.threshold is not None else AUTO_THRESHOLD
    for name in dict.fromkeys(r["model"] for r in rows):
        taps = choose_taps(rows, threshold, model=name)
        print(f"layers: auto for {name} (bias AUC >= {threshold}): {', '.join(taps)}")
    from shortcut_kd.evaluation.shortcut_use import format_use_table, plot_shortcut_use
    from shortcut_kd.io import write_text

    use = experiment_layer_use(exp, [name for name, path in wanted if path is None], args.max_samples)
    if use:
        write_json(out / "layer_use.json", use)
        write_text(out / "layer_use.md", format_use_table(use) + "\n")
        plot_shortcut_use(use, out / "layer_use.png", title=f"{exp.settings.dataset} · shortcut "
                          f"{exp.shortcut_name}: label-probe AUC aligned − conflicting per layer")
        print("\nshortcut use per layer (label probe AUC aligned / conflicting / difference):")
        print(format_use_table(use))
    print(f"\nwritten: {out}/layer_probes.{{csv,md,png,json}}" + (f", {out}/layer_use.{{json,md,png}}" if use else ""))
    return 0
