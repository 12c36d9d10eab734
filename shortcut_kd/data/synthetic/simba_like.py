"""SimBA-like 3D brain phantoms (T1-weighted look) in SimBA's split-CSV layout.

Following SimBA's recipe (a template augmented with subject, disease and bias effects):

- template: head (scalp, skull), cerebrospinal fluid, a folded cortical grey-matter ribbon,
  white matter, deep grey nuclei and two lateral ventricles, as smooth implicit shapes;
- subject effect: head size and position, ventricle size, cortical folding and a random
  low-frequency deformation of the whole brain, all varying smoothly between subjects;
- disease effect (``class_label`` 1): regional atrophy in a fixed region of the left
  fronto-temporal cortex: brain tissue retracts towards the region's centre inside the
  unchanged skull, widening the CSF space and thinning the cortex there; its magnitude varies
  between subjects, is comparable to the subject deformations and is a third to a half of the bias
  effect's, so that ERM on the biased set takes the bias, as SimBA's biased models do
  (``benchmarks/study/simba_demo``);
- bias effect (``bias_label`` 1, file names ending ``_B``): either the same kind of atrophy,
  stronger and more consistent, in a fixed right parietal region (``bias_effect="morphology"``,
  default; easier for a small CNN to pick up than the disease), or a local intensity increase
  there (``bias_effect="intensity"``);
- acquisition: smooth multiplicative bias field, Rician noise, stored as int16.

Bias rates: in ``train`` the bias is present on ``train_bias[0]`` of the diseased and
``train_bias[1]`` of the healthy subjects (0.9 / 0.1 by default: strongly correlated with the
disease); in ``val`` and ``test`` on ``eval_bias`` (0.5 / 0.5: uncorrelated). An ``ood`` tree
has no bias effect (0 / 0 everywhere) and another scanner (contrast, noise, intensity scale and
a larger field of view).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shortcut_kd.data.synthetic import phantoms as ph
from shortcut_kd.data.synthetic import writers as wr
from shortcut_kd.errors import ConfigError

SPLITS = ("train", "val", "test")
HEADER = ("filename", "filepath", "class_label", "bias_label", "subject_id")
#: Centres (template coordinates, RAS, in [-1, 1]) of the disease and the bias regions.
DISEASE_CENTRE = (-0.5, 0.25, 0.05)
BIAS_CENTRE = (0.4, -0.35, 0.2)
REGION_SIGMA = 0.2
#: Field of view (mm) of an ``iid`` volume; an ``ood`` volume covers ``fov`` times more.
FOV_MM = 192.0
OOD_SUBJECT_OFFSET = 50000
BIAS_EFFECTS = ("morphology", "intensity")


def sample_brain_params(rng: np.random.Generator, disease: np.ndarray, bias: np.ndarray, variant: str = "iid",
                        bias_effect: str = "morphology") -> dict[str, np.ndarray]:
    """Draw per-subject anatomy, effect and acquisition parameters.

    Args:
        rng: the random generator.
        disease: ``(B,)`` 0/1 class labels.
        bias: ``(B,)`` 0/1 bias labels.
        variant: ``"iid"`` or ``"ood"`` (another scanner: lower grey/white contrast, more noise,
            other intensity scale, stronger bias field, 15 % larger field of view).
        bias_effect: ``"morphology"`` or ``"intensity"``.

    Returns:
        dict of float32 arrays ``(B,)`` or ``(B, 3)``.
    """
    ph.check_variant(variant)
    if bias_effect not in BIAS_EFFECTS:
        raise ConfigError("bias_effect", bias_effect, f"use one of {', '.join(BIAS_EFFECTS)}.")
    b = len(disease)
    u = lambda lo, hi, shape=None: rng.uniform(lo, hi, b if shape is None else shape).astype(np.float32)  # noqa: E731
    bias = np.asarray(bias, dtype=np.float32)
    morph = bias_effect == "morphology"
    p = {
        "scale": u(0.92, 1.06)[:, None] * u(0.97, 1.03, (b, 3)), "shift": rng.normal(0, 0.03, (b, 3)),
        "warp": u(0.03, 0.06), "ventricles": u(0.8, 1.35), "folding": u(0.03, 0.07),
        "wm": u(0.75, 0.85), "gm": u(0.45, 0.55), "csf": u(0.12, 0.2), "scalp": u(0.5, 0.65),
        "disease": np.asarray(disease, np.float32) * u(0.15, 0.45),
        "bias_morph": bias * u(0.8, 0.95) * morph, "bias_int": bias * u(0.3, 0.35) * (not morph),
        "field": u(0.03, 0.08), "noise": u(0.015, 0.03), "gamma": np.ones(b), "contrast": np.ones(b),
        "intensity": np.full(b, 1000.0), "fov": np.ones(b),
    }
    if variant == "ood":
        p["gamma"] = u(1.3, 1.5)
        p["contrast"] = u(0.6, 0.75)
        p["noise"] = u(0.04, 0.06)
        p["field"] = u(0.1, 0.15)
        p["intensity"] = np.full(b, 400.0)
        p["fov"] = np.full(b, 1.15)
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


def _retract(q: list[np.ndarray], centre: tuple[float, float, float], amount: np.ndarray) -> list[np.ndarray]:
    """Sample the template further from ``centre``: tissue there appears pulled towards it (atrophy)."""
    d = [qi - ci for qi, ci in zip(q, centre)]
    weight = np.exp(-(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) / (2 * REGION_SIGMA ** 2)) * ph.col(amount, 3)
    return [qi + weight * di for qi, di in zip(q, d)]


def render_brain(rng: np.random.Generator, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Render brain phantoms.

    Args:
        rng: generator for deformations, folding, bias field and noise.
        p: parameters from :func:`sample_brain_params`.
        size: volume side in voxels.

    Returns:
        float32 ``(B, size, size, size)`` (x, y, z in RAS order), intensities in scanner units
        (about 0-1000 for ``iid``).
    """
    b = len(p["warp"])
    grid = ph.grid(size, 3)
    w = ph.edge_width(size, 0.02)
    c = ph.columns(p, 3)
    # subject frame and smooth deformation of the whole head
    q = [(g * c("fov") - ph.col(p["shift"][:, i], 3)) / ph.col(p["scale"][:, i], 3) for i, g in enumerate(grid)]
    q = [qi + c("warp") * ph.smooth_field(rng, b, grid, 4, 1.0) for qi in q]
    # brain coordinates: disease and (morphological) bias act on brain tissue inside a fixed skull
    qb = _retract(q, DISEASE_CENTRE, p["disease"])
    qb = _retract(qb, BIAS_CENTRE, p["bias_morph"])
    head_r = (0.8, 0.94, 0.84)
    centre = (0.0, 0.0, -0.05)

    def shell(ctr, radii, coords=qb, extra=0.0):
        # soft inside of an ellipsoid; the edge width is scaled by its smallest nominal radius
        rho = ph.ellipsoid_rho(coords, ctr, radii) + extra
        return ph.sigmoid((1 - rho) * float(np.min([np.min(r) for r in radii])) / w)

    head = shell(centre, head_r, q)
    inner_skull = shell(centre, tuple(r * 0.92 for r in head_r), q)
    fold = c("folding") * ph.smooth_field(rng, b, grid, 8, 4.0)
    brain = shell(centre, tuple(r * 0.84 for r in head_r), extra=np.abs(fold) * 0.6)
    wm = shell((0.0, 0.02, 0.0), (0.47, 0.6, 0.5), extra=fold)
    vr = c("ventricles")
    ventricles = np.maximum(shell((-0.09, 0.05, 0.12), (0.07 * vr, 0.28, 0.11 * vr)),
                            shell((0.09, 0.05, 0.12), (0.07 * vr, 0.28, 0.11 * vr)))
    nuclei = np.maximum(shell((-0.24, 0.12, 0.05), (0.07, 0.14, 0.09)), shell((0.24, 0.12, 0.05), (0.07, 0.14, 0.09)))
    fissure = ph.sigmoid((np.abs(qb[0]) - 0.02) / w) + ph.sigmoid((-0.05 - qb[2]) / w)
    brain = brain * np.clip(fissure, 0, 1)

    # tissue intensities, painted from the outside in
    gm_wm = c("gm") + (c("wm") - c("gm")) * c("contrast")
    img = head * c("scalp")
    img = img * (1 - inner_skull) + inner_skull * c("csf")
    img = img * (1 - brain) + brain * c("gm")
    img = img * (1 - wm * brain) + wm * brain * gm_wm
    img = img * (1 - nuclei) + nuclei * (c("gm") + 0.05)
    img = img * (1 - ventricles) + ventricles * c("csf")
    # intensity bias: a smooth local hyperintensity of brain tissue
    d2 = sum((qi - ci) ** 2 for qi, ci in zip(q, BIAS_CENTRE))
    img = img * (1 + c("bias_int") * np.exp(-d2 / (2 * REGION_SIGMA ** 2)) * brain)

    # acquisition: contrast curve, bias field, Rician noise, scanner units
    img = np.clip(img, 0, None) ** c("gamma")
    img = img * (1 + c("field") * ph.smooth_field(rng, b, grid, 3, 0.6))
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * c("noise")
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * c("noise")
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    return (img * c("intensity")).astype(np.float32)


def brain_affine(size: int, fov: float = 1.0) -> np.ndarray:
    """RAS affine of an isotropic volume of ``size`` voxels covering ``FOV_MM * fov`` mm, centred on 0."""
    spacing = FOV_MM * fov / size
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (size - 1) / 2.0
    return affine


def brain_phantoms(n: int, seed: int = 0, size: int = 32, labels: np.ndarray | None = None,
                   bias: np.ndarray | None = None, variant: str = "iid", bias_effect: str = "morphology",
                   prevalence: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Brain phantoms in memory (no files), for experiments and tests.

    Args:
        n: number of volumes.
        seed: random seed; the same seed gives the same arrays.
        size: volume side in voxels.
        labels: ``(n,)`` 0/1 disease labels; drawn with ``prevalence`` when omitted.
        bias: ``(n,)`` 0/1 bias labels; none when omitted.
        variant: ``"iid"`` or ``"ood"``.
        bias_effect: ``"morphology"`` or ``"intensity"``.
        prevalence: fraction of diseased subjects when ``labels`` is omitted.

    Returns:
        ``(volumes, labels)``: float32 ``(n, size, size, size)`` and int64 ``(n,)``.
    """
    ph.check_variant(variant)
    size = ph.check_size(size)
    labels = ph.phantom_labels(labels, n, prevalence, seed, "simba", variant)
    bias = np.zeros(n, np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    out = np.empty((n, size, size, size), np.float32)
    for sl, rng in ph.chunks(n, ph.CHUNK_3D, seed, "simba", variant, "volumes"):
        out[sl] = render_brain(rng, sample_brain_params(rng, labels[sl], bias[sl], variant, bias_effect), size)
    return out, labels


def _biased(rng: np.random.Generator, labels: np.ndarray, rates: Sequence[float], key: str) -> np.ndarray:
    """Bias flags: exactly ``round(rates[0] * positives)`` positives and ``round(rates[1] * negatives)`` negatives."""
    if len(rates) != 2 or not all(0.0 <= r <= 1.0 for r in rates):
        raise ConfigError(key, rates, "give two fractions (among positives, among negatives), e.g. (0.9, 0.1).")
    flags = np.zeros(len(labels), np.int64)
    for cls, rate in ((1, rates[0]), (0, rates[1])):
        idx = np.flatnonzero(labels == cls)
        flags[rng.permutation(idx)[: int(round(rate * len(idx)))]] = 1
    return flags


def synthesize_simba(out_dir: str | os.PathLike, n: int = 1000, seed: int = 0, variant: str = "iid",
                     image_size: int | None = None, prevalence: float = 0.5,
                     fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                     train_bias: tuple[float, float] | None = None, eval_bias: tuple[float, float] | None = None,
                     bias_effect: str = "morphology", filepath_prefix: str = "/data/simba",
                     progress: bool = False) -> Path:
    """Write a SimBA-like tree under ``out_dir``.

    Layout::

        <out_dir>/{train,val,test}.csv   filename,filepath,class_label,bias_label,subject_id
        <out_dir>/{train,val,test}/<filename>

    ``filename`` is ``sub-<5 digits>.nii.gz``, ``sub-<5 digits>_B.nii.gz`` for biased subjects;
    ``filepath`` is an absolute path on the machine that made the data
    (``<filepath_prefix>/<split>/<filename>``), as in SimBA's own CSVs, so a reader must fall
    back to ``<root>/<split>/<filename>``. Volumes are int16, ``image_size`` cubed,
    with an isotropic RAS affine centred on the origin.

    Args:
        out_dir: folder to write into (created).
        n: number of volumes over the three splits.
        seed: random seed; the same seed gives the same files.
        variant: ``"iid"``, or ``"ood"`` (another scanner, no bias effect; subjects from 50001).
        image_size: side of the cubic volumes in voxels (default 32).
        prevalence: fraction of diseased subjects in each split.
        fractions: train / val / test shares of ``n``.
        train_bias: bias rate among (diseased, healthy) training subjects; default (0.9, 0.1),
            (0, 0) for ``ood``.
        eval_bias: the same for val and test; default (0.5, 0.5), (0, 0) for ``ood``.
        bias_effect: ``"morphology"`` or ``"intensity"``.
        filepath_prefix: the foreign root written into ``filepath``.
        progress: show a progress bar.

    Returns:
        ``out_dir`` (the dataset root holding the CSVs).
    """
    from tqdm import tqdm

    ph.check_variant(variant)
    size = ph.check_size(32 if image_size is None else image_size)
    n = ph.check_size(n, minimum=3, key="n")
    if bias_effect not in BIAS_EFFECTS:
        raise ConfigError("bias_effect", bias_effect, f"use one of {', '.join(BIAS_EFFECTS)}.")
    none = (0.0, 0.0)
    train_rates = (none if variant == "ood" else (0.9, 0.1)) if train_bias is None else tuple(train_bias)
    eval_rates = (none if variant == "ood" else (0.5, 0.5)) if eval_bias is None else tuple(eval_bias)
    root = Path(out_dir)
    meta = ph.make_rng(seed, "simba", variant, "meta")
    label_parts: list[np.ndarray] = []
    bias_parts: list[np.ndarray] = []
    split_of: list[str] = []
    for split, count in zip(SPLITS, ph.split_counts(n, fractions)):
        y = ph.exact_labels(meta, count, prevalence)
        label_parts.append(y)
        bias_parts.append(_biased(meta, y, train_rates if split == "train" else eval_rates,
                                  "train_bias" if split == "train" else "eval_bias"))
        split_of += [split] * count
    labels, bias = np.concatenate(label_parts), np.concatenate(bias_parts)
    first = OOD_SUBJECT_OFFSET if variant == "ood" else 0
    subjects = [f"sub-{first + i + 1:05d}" for i in range(n)]
    names = [s + ("_B" if f else "") + ".nii.gz" for s, f in zip(subjects, bias)]

    fov = 1.15 if variant == "ood" else 1.0
    affine = brain_affine(size, fov)
    bar = tqdm(total=n, desc="simba volumes", unit="vol", disable=not progress)
    for sl, rng in ph.chunks(n, ph.CHUNK_3D, seed, "simba", variant, "volumes"):
        params = sample_brain_params(rng, labels[sl], bias[sl], variant, bias_effect)
        vols = np.clip(np.round(render_brain(rng, params, size)), -32768, 32767).astype(np.int16)
        for j, i in enumerate(range(sl.start, sl.stop)):
            path = root / split_of[i] / names[i]
            wr.write_bytes(path, wr.encode_nifti_gz(vols[j], affine))
            bar.update(1)
    bar.close()
    prefix = filepath_prefix.rstrip("/")
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = [[names[i], f"{prefix}/{split}/{names[i]}", int(labels[i]), int(bias[i]), subjects[i]]
                for i in range(n) if split_of[i] == split]
        wr.write_csv(root / f"{split}.csv", HEADER, rows)
    return root
