"""``shortcut-kd synth DATASET OUT_DIR``: write a synthetic dataset in a real dataset's native layout.

Examples::

    shortcut-kd synth chexpert data/chexpert --n 2000
    shortcut-kd synth isic2017 data/isic --n 2000 --variant ood --seed 1
    shortcut-kd synth simba data/simba --n 1000 --size 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: show a progress bar from this many samples on
PROGRESS_FROM = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` arguments to ``parser``."""
    from shortcut_kd.data.synthetic.generate import DATASETS

    parser.add_argument("dataset", choices=DATASETS, metavar="DATASET",
                        help=f"layout to write: {', '.join(DATASETS)}")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (created)")
    parser.add_argument("--n", type=int, default=None,
                        help="number of samples: CheXpert studies (frontal images), ISIC images or SimBA "
                             "volumes over all splits (default 2000, SimBA 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")
    parser.add_argument("--variant", choices=("iid", "ood"), default="iid",
                        help="iid, or ood: a shifted acquisition (contrast, noise, scale, field of view) "
                             "without shortcut")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels (2D, default 64) or voxels (SimBA, default 32)")
    parser.add_argument("--prevalence", type=float, default=0.5, help="fraction of positives (default 0.5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print what was written; returns the exit status."""
    from shortcut_kd.data.synthetic.generate import default_n, synthesize

    n = default_n(args.dataset) if args.n is None else args.n
    root = synthesize(args.dataset, args.out_dir, n=n, seed=args.seed, variant=args.variant,
                      image_size=args.size, prevalence=args.prevalence,
                      progress=not args.quiet and n >= PROGRESS_FROM)
    if not args.quiet:
        print(summarize(root))
    return 0


def summarize(root: str | Path) -> str:
    """A short account of a written tree: its root, and per table file the rows and label counts."""
    import csv

    root = Path(root)
    lines = [f"wrote {root}"]
    label_column = {"Pleural Effusion", "melanoma", "class_label"}
    for path in sorted(root.glob("*.csv")):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        column = next((c for c in (rows[0] if rows else {}) if c in label_column), None)
        counts: dict[str, int] = {}
        if column:
            for row in rows:
                counts[row[column] or "blank"] = counts.get(row[column] or "blank", 0) + 1
        extra = ""
        if rows and "bias_label" in rows[0]:
            extra = f", bias_label=1: {sum(r['bias_label'] == '1' for r in rows)}"
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        lines.append(f"  {path.name}: {len(rows)} rows" + (f" ({column} {shown}{extra})" if column else ""))
    n_files = sum(1 for p in root.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png", ".gz"))
    lines.append(f"  {n_files} image files")
    return "\n".join(lines)
