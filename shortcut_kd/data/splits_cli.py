"""``shortcut-kd splits DATASET DATASET_DIR OUT_DIR``: read a dataset in its native layout, check
its images, build the split roles and write them as JSON datalists with their settings."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shortcut_kd.data.splits import BIAS_FREE, ROLES, SplitSettings, build_splits, split_counts, write_splits
from shortcut_kd.errors import ShortcutKDError

CHECK_CHOICES = ("skip", "raise", "off")


def _size(text: str) -> float | int:
    """``"0.1"`` -> a fraction, ``"200"`` -> a number of items."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is neither a fraction (0.1) nor a count (200)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``splits`` sub-command's arguments to ``parser``."""
    from shortcut_kd.data.chexpert import UNCERTAINTY_POLICIES
    from shortcut_kd.data.readers import READERS

    defaults = SplitSettings()
    parser.add_argument("dataset", choices=sorted(READERS), help="the dataset's native layout")
    parser.add_argument("dataset_dir", help="the dataset folder (for 'generic': a CSV/JSON list file)")
    parser.add_argument("out_dir", help="where <role>.json and splits.json are written")
    parser.add_argument("--split", default="all",
                        help="native split(s) to read: 'all' (default: every split on disk, re-partitioned) "
                             "or one of them")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="fixes the partition and the bias flags")
    parser.add_argument("--p-bias-pos", type=float, default=defaults.p_bias_pos,
                        help="fraction of positives carrying the shortcut in the biased sets (default %(default)s)")
    parser.add_argument("--p-bias-neg", type=float, default=defaults.p_bias_neg,
                        help="fraction of negatives carrying it (default %(default)s)")
    parser.add_argument("--specialist-size", type=_size, default=defaults.specialist_size,
                        help="bias-free specialist subset: a fraction (0.1) or a count (200) (default %(default)s)")
    parser.add_argument("--specialist-source", choices=("train", "ood"), default=defaults.specialist_source,
                        help="draw the specialist subset from the dataset or from --ood-dir (default %(default)s)")
    parser.add_argument("--val-annotated-size", type=_size, default=defaults.val_annotated_size,
                        help="bias-annotated validation split (settings are chosen on it): a fraction or a count "
                             "(default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="(default %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction, help="(default %(default)s)")
    parser.add_argument("--bias-free", choices=BIAS_FREE, default=defaults.bias_free,
                        help="bias-free means the shortcut on a random half of each class (decorrelated) "
                             "or on none (absent)")
    parser.add_argument("--group-key", default=defaults.group_key,
                        help="item key kept whole across splits (default %(default)s; 'none': split by item)")
    parser.add_argument("--native-bias", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the data's own bias flags (default: yes when every item has one, e.g. SimBA)")
    parser.add_argument("--ood-dir", default=None, help="the same dataset type from a shifted source, for test_ood")
    parser.add_argument("--check-images", choices=CHECK_CHOICES, default="skip",
                        help="decode every image first; skip undecodable ones, stop at the first, or do not check")
    parser.add_argument("--check-workers", type=int, default=0, help="threads decoding images (default: none)")
    chexpert = parser.add_argument_group("CheXpert")
    chexpert.add_argument("--label", default="Pleural Effusion",
                          help="the observation to classify (default %(default)s)")
    chexpert.add_argument("--uncertainty", choices=UNCERTAINTY_POLICIES, default="zeros",
                          help="uncertain labels: U-Zeros, U-Ones or U-Ignore (default %(default)s)")
    chexpert.add_argument("--all-views", action="store_true", help="keep lateral views too (default: frontal only)")
    generic = parser.add_argument_group("generic")
    generic.add_argument("--image-column", default="image", help="(default %(default)s)")
    generic.add_argument("--label-column", default="label", help="(default %(default)s)")


def reader_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the dataset's reader taken from the command line."""
    if args.dataset == "chexpert":
        return {"label": args.label, "uncertainty": args.uncertainty, "frontal_only": not args.all_views}
    if args.dataset == "generic":
        return {"image_column": args.image_column, "label_column": args.label_column}
    return {}


def format_counts(splits: dict[str, list[dict]]) -> str:
    """A table of items per role and group (group = 2 * label + bias)."""
    header = ("role", "n", "y0 b0", "y0 b1", "y1 b0", "y1 b1", "bias|y0", "bias|y1")
    rows = [header]
    for role, c in split_counts(splits).items():
        g = c["groups"]
        neg, pos = g["0"] + g["1"], g["2"] + g["3"]
        rate = lambda k, n: f"{k / n:.2f}" if n else "-"  # noqa: E731
        rows.append((role, str(c["n"]), g["0"], g["1"], g["2"], g["3"], rate(g["1"], neg), rate(g["3"], pos)))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                               for i, (v, w) in enumerate(zip(r, widths))) for r in rows)


def _read(args: argparse.Namespace, root: str, what: str) -> list[dict]:
    from shortcut_kd.data.image_check import check_images
    from shortcut_kd.data.readers import read_dataset

    items = read_dataset(args.dataset, root, args.split, **reader_options(args))
    print(f"{what}: read {len(items)} item(s) from {root}")
    if args.check_images != "off":
        items, problems = check_images(items, on_error=args.check_images, progress=sys.stderr.isatty(),
                                       num_workers=args.check_workers)
        if problems:
            print(f"{what}: left out {len(problems)} image(s) that cannot be decoded (see the warnings above)")
    return items


def run(args: argparse.Namespace) -> int:
    """Run ``shortcut-kd splits``; returns the exit status (2 on bad input, with the error on stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        items = _read(args, args.dataset_dir, "dataset")
        ood = _read(args, args.ood_dir, "OOD source") if args.ood_dir else None
        native = args.native_bias if args.native_bias is not None else bool(items) and all("bias" in it for it in items)
        group_key = None if str(args.group_key).lower() in ("none", "") else args.group_key
        settings = SplitSettings(seed=args.seed, p_bias_pos=args.p_bias_pos, p_bias_neg=args.p_bias_neg,
                                 specialist_size=args.specialist_size, val_fraction=args.val_fraction,
                                 val_annotated_size=args.val_annotated_size,
                                 test_fraction=args.test_fraction, bias_free=args.bias_free, group_key=group_key,
                                 native_bias=native, specialist_source=args.specialist_source)
        splits = build_splits(items, settings, ood_datalist=ood)
        source = {"dataset": args.dataset, "dataset_dir": str(Path(args.dataset_dir).resolve()), "split": args.split,
                  "reader_options": reader_options(args), "check_images": args.check_images,
                  "ood_dir": str(Path(args.ood_dir).resolve()) if args.ood_dir else None, "n_items": len(items)}
        manifest = write_splits(splits, args.out_dir, settings, source=source)
    except ShortcutKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mode = "native bias" if native else f"injected bias p_pos={settings.p_bias_pos} p_neg={settings.p_bias_neg}"
    print(f"splits ({mode}, bias-free: {settings.bias_free}, seed {settings.seed}):")
    print(format_counts({r: splits[r] for r in ROLES if r in splits}))
    print(f"wrote {len(splits)} datalist(s) and {manifest}")
    return 0
