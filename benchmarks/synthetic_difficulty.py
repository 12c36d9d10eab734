"""How hard is the synthetic finding, compared with a shortcut? A cheap, repeatable measurement.

For one dataset's phantoms (in memory, the same generator that writes the files) it reports:

- ``mean_intensity``: AUC of the per-image mean intensity as a score (folded to >= 0.5), after
  min-max scaling as the pipelines do; near 0.5 means the finding is not a global-brightness cue;
- ``logreg``: a logistic regression on block-averaged pixels (8 x 8 in 2D, 8^3 in 3D): a linear
  learner should be above chance but far from perfect on the finding, and near perfect on a shortcut;
- ``cnn``: test AUC of a tiny CNN after each epoch on clean data (finding task), and on the
  shortcut-detection tasks (the ``patch`` and ``noise`` presets on a random half of the images,
  the label being the shortcut's presence; for SimBA also its native ``_B`` effect);
- ``biased``: the tiny CNN trained on the finding with the ``patch`` shortcut on 95 % of the
  positives and 5 % of the negatives, tested on ``aligned`` (shortcut on every positive, no
  negative) and ``conflicting`` (the reverse) images: a large gap means the shortcut was taken.

    python benchmarks/synthetic_difficulty.py --dataset chexpert   # see --help

The numbers for the default settings are in ``benchmarks/synthetic_difficulty.md``. The tiny CNN is
defined here, not taken from :mod:`shortcut_kd.nets`, because it is a measuring instrument: the
smallest learner that shows which signal is easier, cheap enough for a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

#: block size of the downsampling before the logistic regression
LOGREG_GRID = 8


def load_phantoms(dataset: str, n: int, seed: int, size: int, labels: np.ndarray | None = None,
                  bias: np.ndarray | None = None, variant: str = "iid") -> np.ndarray:
    """Channel-first float32 phantoms ``(n, C, *spatial)`` min-max scaled per image to [0, 1]."""
    from shortcut_kd.data.synthetic import brain_phantoms, chest_phantoms, dermoscopy_phantoms

    if dataset == "chexpert":
        x, _ = chest_phantoms(n, seed, size, labels, variant)
        x = x[:, None]
    elif dataset == "isic2017":
        x, _ = dermoscopy_phantoms(n, seed, size, labels, variant)
        x = np.moveaxis(x, -1, 1)
    elif dataset == "simba":
        x, _ = brain_phantoms(n, seed, size, labels, bias, variant)
        x = x[:, None]
    else:
        from shortcut_kd.errors import ConfigError

        raise ConfigError("dataset", dataset, "use chexpert, isic2017 or simba.")
    return _minmax(x)


def _minmax(x: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, x.ndim))
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    return ((x - lo) / np.maximum(hi - lo, 1e-6)).astype(np.float32)


def inject(x: np.ndarray, flags: np.ndarray, name: str, seed: int) -> np.ndarray:
    """Apply shortcut preset ``name`` to the images where ``flags`` is 1 (seeded per image), then rescale."""
    from shortcut_kd.shortcuts import make_shortcut

    transform = make_shortcut(name, x.ndim - 2)
    out = x.copy()
    for i in np.flatnonzero(flags):
        transform.set_random_state(seed=(seed * 100003 + int(i)) % 2**32)
        out[i] = np.asarray(transform(x[i]))
    return _minmax(out)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def mean_intensity_auc(x: np.ndarray, y: np.ndarray) -> float:
    """AUC of the mean intensity as a score, folded to >= 0.5."""
    a = auc(y, x.reshape(len(x), -1).mean(axis=1))
    return max(a, 1 - a)


def _blocks(x: np.ndarray) -> np.ndarray:
    spatial = x.shape[2:]
    g = LOGREG_GRID
    shape = [x.shape[0], x.shape[1]]
    for s in spatial:
        shape += [g, s // g]
    x = x[(slice(None), slice(None)) + tuple(slice(0, (s // g) * g) for s in spatial)]
    return x.reshape(shape).mean(axis=tuple(range(3, len(shape), 2))).reshape(len(x), -1)


def logreg_auc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test AUC of an L2 logistic regression on block-averaged, standardised pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(_blocks(x_train), y_train)
    return auc(y_test, model.predict_proba(_blocks(x_test))[:, 1])


def tiny_cnn(spatial_dims: int, in_channels: int, width: int = 16) -> Any:
    """Four conv-BN-ReLU stages (stride 2 after the first), global average pooling, two logits."""
    import torch.nn as nn

    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    bn = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
    layers, c_in = [], in_channels
    for i, c_out in enumerate((width, width * 2, width * 4, width * 4)):
        layers += [conv(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1), bn(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers, pool, nn.Flatten(), nn.Linear(c_in, 2))


def train_cnn(x_train: np.ndarray, y_train: np.ndarray, tests: dict[str, tuple[np.ndarray, np.ndarray]],
              epochs: int, seed: int, batch_size: int = 32, lr: float = 3e-3,
              log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Train :func:`tiny_cnn` with Adam and a one-cycle learning rate; return each test set's AUC after every epoch."""
    import torch

    torch.manual_seed(seed)
    model = tiny_cnn(x_train.ndim - 2, x_train.shape[1], width=16 if x_train.ndim == 4 else 8)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {k: [] for k in tests}
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            for name, (xs, ys) in tests.items():
                scores = torch.cat([model(torch.from_numpy(xs[i:i + 128])).softmax(1)[:, 1]
                                    for i in range(0, len(xs), 128)]).numpy()
                history[name].append(round(auc(ys, scores), 3))
        if log:
            log(f"  epoch {epoch + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in history.items()))
    return history


def measure(dataset: str, n: int = 2000, size: int | None = None, epochs: int = 5, seed: int = 0,
            test_fraction: float = 0.25, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run every measurement for ``dataset``; returns a JSON-ready dict (see the module docstring)."""
    import torch

    from shortcut_kd.data.synthetic.generate import default_size
    from shortcut_kd.data.synthetic.phantoms import exact_labels, make_rng

    size = default_size(dataset) if size is None else size
    rng = make_rng(seed, "difficulty", dataset)
    y = exact_labels(rng, n, 0.5)
    t0 = time.time()
    x = load_phantoms(dataset, n, seed, size, y)
    n_test = int(round(test_fraction * n))
    tr, te = slice(n_test, None), slice(0, n_test)
    out: dict[str, Any] = {"dataset": dataset, "n_train": n - n_test, "n_test": n_test, "size": size,
                           "epochs": epochs, "seed": seed, "generate_s": round(time.time() - t0, 1)}
    say = log or (lambda s: None)
    say(f"{dataset}: {n} phantoms of side {size} in {out['generate_s']} s")
    out["mean_intensity_auc"] = round(mean_intensity_auc(x, y), 3)
    out["logreg"] = {"finding": round(logreg_auc(x[tr], y[tr], x[te], y[te]), 3)}

    # shortcut-detection tasks: the shortcut on a random half, independent of the finding
    flags = exact_labels(rng, n, 0.5)
    tasks = {"finding": (x, y)}
    for name in ("patch", "noise"):
        tasks[name] = (inject(x, flags, name, seed), flags)
    if dataset == "simba":
        tasks["native_bias"] = (load_phantoms(dataset, n, seed, size, y, bias=flags), flags)
    for name, (xs, ys) in tasks.items():
        if name != "finding":
            out["logreg"][name] = round(logreg_auc(xs[tr], ys[tr], xs[te], ys[te]), 3)
    say(f"  mean-intensity AUC {out['mean_intensity_auc']}, logistic regression {out['logreg']}")

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out["cnn"] = {}
    for name, (xs, ys) in tasks.items():
        say(f"tiny CNN, task '{name}'")
        out["cnn"][name] = train_cnn(xs[tr], ys[tr], {"test": (xs[te], ys[te])}, epochs, seed, log=log)["test"]

    # biased training: the patch on 95 % of positives and 5 % of negatives
    biased = np.zeros(n, np.int64)
    for cls, rate in ((1, 0.95), (0, 0.05)):
        idx = np.flatnonzero(y[tr] == cls) + n_test
        biased[rng.permutation(idx)[: int(round(rate * len(idx)))]] = 1
    x_biased = inject(x, biased, "patch", seed)
    aligned = inject(x[te], y[te], "patch", seed + 1)
    conflicting = inject(x[te], 1 - y[te], "patch", seed + 1)
    say("tiny CNN, finding with the patch on 95 % / 5 % of positives / negatives")
    out["biased"] = train_cnn(x_biased[tr], y[tr], {"clean": (x[te], y[te]), "aligned": (aligned, y[te]),
                                                    "conflicting": (conflicting, y[te])}, epochs, seed, log=log)
    out["total_s"] = round(time.time() - t0, 1)
    return out


def to_markdown(result: dict[str, Any]) -> str:
    """One result as a markdown section."""
    r = result
    lines = [f"### {r['dataset']} ({r['n_train']} train / {r['n_test']} test, side {r['size']}, "
             f"{r['epochs']} epochs, seed {r['seed']})", "",
             f"- mean-intensity AUC (folded): {r['mean_intensity_auc']}",
             "- logistic regression on 8-block means: "
             + ", ".join(f"{k} {v}" for k, v in r["logreg"].items()), "",
             "| tiny CNN task | test AUC after each epoch |", "| --- | --- |"]
    for name, aucs in r["cnn"].items():
        lines.append(f"| {name} | {' / '.join(f'{a:.3f}' for a in aucs)} |")
    lines += ["", "| biased training (patch 95 % / 5 %), test set | AUC after each epoch |", "| --- | --- |"]
    for name, aucs in r["biased"].items():
        lines.append(f"| {name} | {' / '.join(f'{a:.3f}' for a in aucs)} |")
    lines.append(f"\n(generation {r['generate_s']} s, total {r['total_s']} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/synthetic_difficulty.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("chexpert", "isic2017", "simba"), action="append",
                        help="dataset(s) to measure (repeatable; default all three)")
    parser.add_argument("--n", type=int, default=None, help="phantoms per dataset (default 2000, SimBA 1000)")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the generator's)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results = []
    for dataset in args.dataset or ["chexpert", "isic2017", "simba"]:
        n = args.n or (1000 if dataset == "simba" else 2000)
        results.append(measure(dataset, n, args.size, args.epochs, args.seed))
        print(to_markdown(results[-1]), flush=True)
    if args.json:
        from shortcut_kd.io import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
