"""CheXpert-like chest radiograph phantoms in the ``CheXpert-v1.0-small`` layout.

Anatomy (frontal view, patient's right on the image's left, as a PA film is read): a torso
outline, two lung fields that are darker than soft tissue and end below in diaphragm domes
(the right one higher), the lateral costophrenic angles where dome and chest wall meet, a
mediastinum and a heart bulging to the patient's left, a spine and a hint of posterior ribs.
Subjects vary in size, position, lung and heart shape, tissue density, exposure and noise.

The finding (``Pleural Effusion``) is a meniscus-shaped basal opacity: fluid fills a
costophrenic angle (blunting it) and climbs the lateral chest wall, with a soft upper edge.
Its side (right, left or both), height and density vary, so small, faint effusions overlap
with normal anatomy and the finding is learnable but not trivial. It adds a few per cent to
the mean image intensity, far less than the exposure variation between subjects.

Lateral views (``view2_lateral.jpg``) show one lung field in profile with the heart in front;
an effusion there fills the posterior costophrenic sulcus.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shortcut_kd.data.synthetic import phantoms as ph
from shortcut_kd.data.synthetic import writers as wr
from shortcut_kd.errors import ConfigError

FOLDER = "CheXpert-v1.0-small"
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                "Pleural Other", "Fracture", "Support Devices")
HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + OBSERVATIONS
TASK = "Pleural Effusion"
#: First patient number of an ``ood`` tree, so its ids never collide with an ``iid`` tree's.
OOD_PATIENT_OFFSET = 50000


def sample_chest_params(rng: np.random.Generator, effusion: np.ndarray, variant: str = "iid",
                        ap: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Draw per-subject anatomy, acquisition and finding parameters.

    Args:
        rng: the random generator.
        effusion: ``(B,)`` 0/1, whether the subject has a pleural effusion.
        variant: ``"iid"`` or ``"ood"`` (a shifted acquisition: other exposure curve, more noise,
            wider field of view, softer detector).
        ap: ``(B,)`` 0/1, anteroposterior projection (magnifies the heart); default PA for all.

    Returns:
        dict of ``(B,)`` float32 arrays.
    """
    ph.check_variant(variant)
    b = len(effusion)
    u = lambda lo, hi: rng.uniform(lo, hi, b).astype(np.float32)  # noqa: E731
    ap = np.zeros(b) if ap is None else np.asarray(ap)
    eff = np.asarray(effusion).astype(bool)
    side = rng.choice(3, size=b, p=[0.45, 0.35, 0.20])  # 0: right, 1: left, 2: both
    p = {
        "cx": rng.normal(0, 0.04, b), "cy": rng.normal(0.02, 0.04, b),
        "scale": u(0.88, 1.06), "aspect": u(0.93, 1.07), "tilt": rng.normal(0, 0.04, b),
        "lung_w": u(0.9, 1.08), "lung_h": u(0.9, 1.08),
        "dome_r": u(0.26, 0.34), "dome_l": u(0.31, 0.4), "dome_k": u(0.16, 0.28),
        "heart_w": u(0.9, 1.15) * np.where(ap > 0, 1.12, 1.0), "heart_y": u(0.2, 0.3),
        "tissue": u(0.45, 0.62), "lung_contrast": u(0.45, 0.65),
        "rib_strength": u(0.03, 0.09), "rib_spacing": u(0.15, 0.19), "rib_phase": u(0, 2 * np.pi),
        "texture": u(0.02, 0.05), "shading": u(0.03, 0.08),
        "gain": u(0.85, 1.12), "offset": u(-0.04, 0.04), "gamma": u(0.85, 1.15), "noise": u(0.01, 0.03),
        "eff_right": (eff & (side != 1)).astype(np.float32), "eff_left": (eff & (side != 0)).astype(np.float32),
        "eff_h_r": u(0.1, 0.3), "eff_h_l": u(0.1, 0.3), "eff_alpha": u(0.55, 0.9), "eff_edge": u(0.025, 0.05),
        "fov": np.ones(b, np.float32), "blur": np.zeros(b, np.float32),
    }
    if variant == "ood":
        p["gamma"] = u(0.6, 0.75)
        p["gain"] = u(0.8, 0.92)
        p["offset"] = u(0.04, 0.08)
        p["noise"] = u(0.035, 0.05)
        p["fov"] = u(0.82, 0.9)
        p["blur"] = u(0.5, 0.8)
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


def _acquire(rng: np.random.Generator, img: np.ndarray, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Detector response: optional blur, exposure curve (gain, offset, gamma) and noise."""
    img = ph.blur_each(img, p["blur"] * size / 64.0)
    c = ph.columns(p, 2)
    img = np.clip(img, 0, 1) ** c("gamma") * c("gain") + c("offset")
    return np.clip(ph.add_noise(rng, img, p["noise"]), 0, 1)


def _frame(p: dict[str, np.ndarray], size: int) -> tuple[int, np.ndarray, np.ndarray, ph.Columns, float]:
    """What both chest renderers start from: batch size, ``(y, x)`` grid, parameter columns, edge width."""
    y, x = ph.grid(size, 2)
    return len(p["cx"]), y, x, ph.columns(p, 2), ph.edge_width(size)


def render_chest_frontal(rng: np.random.Generator, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Render frontal chest phantoms.

    Args:
        rng: generator for the per-pixel texture and noise.
        p: parameters from :func:`sample_chest_params`.
        size: image side in pixels.

    Returns:
        float32 ``(B, size, size)`` in ``[0, 1]``.
    """
    b, y, x, c, w = _frame(p, size)
    # subject frame: shift, scale, small rotation, field of view
    xs = (x - c("cx")) / c("fov")
    ys = (y - c("cy")) / c("fov")
    ct, st = np.cos(c("tilt")), np.sin(c("tilt"))
    u = (ct * xs + st * ys) / (c("scale") * c("aspect"))
    v = (-st * xs + ct * ys) / c("scale")

    # torso: a super-ellipse open towards the abdomen
    pw = 2.6
    torso = ((np.abs(u) / 0.9) ** pw + (np.abs(v - 0.25) / 1.2) ** pw) ** (1 / pw)
    body = ph.sigmoid((1 - torso) * 0.9 / w)

    lungs = np.zeros((b, size, size), np.float32)
    effusion = np.zeros_like(lungs)
    for s, dome, eff_on, eff_h in ((-1, "dome_r", "eff_right", "eff_h_r"), (1, "dome_l", "eff_left", "eff_h_l")):
        # a lung field: a super-ellipse that widens towards its base
        ay, vc = 0.8 * c("lung_h"), -0.03
        taper = 0.76 + 0.24 * np.clip((v - vc) / ay + 1, 0, 2) / 2
        ax = 0.28 * c("lung_w") * taper
        uc = s * 0.37 * c("lung_w")
        lat = s * (u - uc) / ax  # > 0 towards the chest wall
        rho = (np.abs(lat) ** 2.4 + np.abs((v - vc) / ay) ** 2.4) ** (1 / 2.4)
        v_dome = c(dome) + c("dome_k") * (lat + 0.15) ** 2
        lung = ph.sigmoid((1 - rho) * 0.28 / w) * ph.sigmoid((v_dome - v) / w)
        # the fluid: a layer on the dome, deepest in the costophrenic angle and climbing the
        # lateral chest wall, so its upper surface is a meniscus (concave upwards)
        depth = c(eff_h) * (0.25 + np.clip(lat + 0.2, 0, 1.4) ** 2)
        fluid = ph.sigmoid((v - (v_dome - depth)) / c("eff_edge")) * c(eff_on)
        lungs += lung
        effusion += lung * fluid
    heart = ph.soft_inside(ph.ellipsoid_rho((u, v), (0.1, c("heart_y")), (0.27 * c("heart_w"), 0.22)), 0.22, w)
    mediastinum = ph.sigmoid((0.11 - np.abs(u + 0.01)) / w) * ph.sigmoid((0.3 - v) / w)
    aerated = np.clip(lungs * (1 - heart) * (1 - mediastinum), 0, 1)
    fluid = np.clip(effusion * (1 - heart), 0, 1)

    texture = ph.smooth_field(rng, b, (u, v), n_waves=8, max_freq=6.0)
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (v + 0.35 * u ** 2) / c("rib_spacing") + c("rib_phase"))) ** 3
    spine = ph.sigmoid((0.07 - np.abs(u)) / w) * body

    density = c("tissue") * (1 - c("lung_contrast") * aerated * (1 + c("texture") * texture)
                             * (1 - c("eff_alpha") * fluid))
    density = density + c("tissue") * (c("rib_strength") * ribs * lungs + 0.12 * spine + 0.06 * heart)
    shading = 1 + c("shading") * ph.smooth_field(rng, b, (x, y), n_waves=4, max_freq=0.8)
    img = (body * density + (1 - body) * 0.03) * shading
    return _acquire(rng, img, p, size).astype(np.float32)


def render_chest_lateral(rng: np.random.Generator, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Render lateral chest phantoms (anterior to the image's left); effusion fills the posterior sulcus.

    Arguments and result as for :func:`render_chest_frontal`.
    """
    b, y, x, c, w = _frame(p, size)
    u = (x - c("cx")) / (c("fov") * c("scale"))
    v = (y - c("cy")) / (c("fov") * c("scale"))
    torso = ((np.abs(u) / 0.75) ** 2.4 + (np.abs(v - 0.25) / 1.2) ** 2.4) ** (1 / 2.4)
    body = ph.sigmoid((1 - torso) * 0.75 / w)
    ax, ay = 0.55 * c("lung_w"), 0.78 * c("lung_h")
    lat = (u - 0.02) / ax  # > 0 posterior
    v_dome = c("dome_r") + 0.05 + c("dome_k") * 0.6 * (lat - 0.1) ** 2
    lung = ph.soft_inside(ph.ellipsoid_rho((u, v), (0.02, -0.05), (ax, ay)), ax, w) * ph.sigmoid((v_dome - v) / w)
    heart = ph.soft_inside(ph.ellipsoid_rho((u, v), (-0.25, c("heart_y") + 0.05), (0.3 * c("heart_w"), 0.25)), 0.25, w)
    spine = ph.sigmoid((0.09 - np.abs(u - 0.6)) / w) * body
    eff_on = np.maximum(c("eff_right"), c("eff_left"))
    eff_h = np.maximum(c("eff_h_r") * c("eff_right"), c("eff_h_l") * c("eff_left"))
    v_cp = c("dome_r") + 0.05 + c("dome_k") * 0.6 * 0.64
    v_fluid = v_cp + 0.04 - eff_h * np.clip(lat + 0.25, 0, 1.3) ** 1.5
    fluid = lung * ph.sigmoid((v - v_fluid) / c("eff_edge")) * eff_on * (1 - heart)
    aerated = lung * (1 - heart)
    texture = ph.smooth_field(rng, b, (u, v), n_waves=8, max_freq=6.0)
    density = c("tissue") * (1.1 - 0.8 * c("lung_contrast") * aerated * (1 + c("texture") * texture)
                             * (1 - c("eff_alpha") * fluid)) + c("tissue") * 0.15 * spine
    img = body * density + (1 - body) * 0.03
    return _acquire(rng, img, p, size).astype(np.float32)


def chest_phantoms(n: int, seed: int = 0, size: int = 64, labels: np.ndarray | None = None,
                   variant: str = "iid", prevalence: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Frontal chest phantoms in memory (no files), for experiments and tests.

    Args:
        n: number of images.
        seed: random seed; the same seed gives the same arrays.
        size: image side in pixels.
        labels: ``(n,)`` 0/1 effusion labels; drawn with ``prevalence`` when omitted.
        variant: ``"iid"`` or ``"ood"``.
        prevalence: fraction of positives when ``labels`` is omitted.

    Returns:
        ``(images, labels)``: float32 ``(n, size, size)`` in ``[0, 1]`` and int64 ``(n,)``.
    """
    ph.check_variant(variant)
    size = ph.check_size(size)
    labels = ph.phantom_labels(labels, n, prevalence, seed, "chexpert", variant)
    out = np.empty((n, size, size), np.float32)
    for sl, rng in ph.chunks(n, ph.CHUNK_2D, seed, "chexpert", variant, "frontal"):
        out[sl] = render_chest_frontal(rng, sample_chest_params(rng, labels[sl], variant), size)
    return out, labels


def _observation_row(rng: np.random.Generator, effusion_label: float | None, valid: bool) -> list[str]:
    """The 14 observation cells of one study; only ``Pleural Effusion`` is reflected in the image."""
    cells: dict[str, float | None] = {}
    for name in OBSERVATIONS[1:]:
        if name == TASK:
            cells[name] = effusion_label
        elif valid:
            cells[name] = float(rng.random() < 0.12)
        else:
            r = rng.random()
            cells[name] = 1.0 if r < 0.12 else 0.0 if r < 0.2 else -1.0 if r < 0.25 else None
    # "No Finding" is set only when no observation is positive or uncertain
    positive = any(v in (1.0, -1.0) for v in cells.values())
    cells["No Finding"] = (0.0 if positive else 1.0) if valid else (None if positive else 1.0)
    return [wr.label_text(cells[name]) for name in OBSERVATIONS]


def synthesize_chexpert(out_dir: str | os.PathLike, n: int = 2000, seed: int = 0, variant: str = "iid",
                        image_size: int | None = None, prevalence: float = 0.5, valid_fraction: float = 0.1,
                        p_uncertain: float = 0.05, p_blank: float = 0.1, p_lateral: float = 0.15,
                        progress: bool = False) -> Path:
    """Write a CheXpert-v1.0-small-like tree under ``out_dir``.

    Layout (as the real download)::

        <out_dir>/CheXpert-v1.0-small/train.csv
        <out_dir>/CheXpert-v1.0-small/valid.csv
        <out_dir>/CheXpert-v1.0-small/{train,valid}/patient<5 digits>/study<k>/view1_frontal.jpg
                                                                           /view2_lateral.jpg

    ``Path`` cells start with ``CheXpert-v1.0-small/``. Each patient has 1-4 studies; every
    study has a frontal view (``AP`` or ``PA``) and, with probability ``p_lateral``, a lateral
    one (blank ``AP/PA``). Patients are assigned wholly to ``train`` or ``valid``.

    Labels of the task column ``Pleural Effusion``: a study has a true effusion with
    probability ``prevalence`` (exactly ``round(prevalence * n)`` studies). In ``train.csv`` a
    positive is written ``1.0`` and a negative ``0.0``, except that a fraction ``p_uncertain`` of
    either is written ``-1.0`` (uncertain) and a fraction ``p_blank`` of negatives is left blank
    (not mentioned), as in the real labeller's output. ``valid.csv`` holds only ``0.0``/``1.0``
    (the real validation set is labelled by radiologists). The other observations are filled at
    random and are not drawn in the image.

    Args:
        out_dir: folder to write into (created).
        n: number of studies, i.e. of frontal images.
        seed: random seed; the same seed gives the same files.
        variant: ``"iid"``, or ``"ood"`` for a shifted acquisition (see :func:`sample_chest_params`)
            with patients numbered from 50001.
        image_size: side of the square images in pixels (default 64).
        prevalence: fraction of studies with an effusion.
        valid_fraction: fraction of patients written to ``valid``.
        p_uncertain: fraction of ``train`` labels written as ``-1.0``.
        p_blank: fraction of ``train`` negatives left blank.
        p_lateral: fraction of studies that also have a lateral view.
        progress: show a progress bar.

    Returns:
        The dataset root ``<out_dir>/CheXpert-v1.0-small`` (the folder holding ``train.csv``).
    """
    from tqdm import tqdm

    ph.check_variant(variant)
    size = ph.check_size(64 if image_size is None else image_size)
    n = ph.check_size(n, minimum=2, key="n")
    for key, val in (("valid_fraction", valid_fraction), ("p_uncertain", p_uncertain), ("p_blank", p_blank),
                     ("p_lateral", p_lateral)):
        if not 0.0 <= val < 1.0:
            raise ConfigError(key, val, "use a fraction in [0, 1).")
    if p_uncertain + p_blank >= 1.0:
        raise ConfigError("p_blank", p_blank, "p_uncertain + p_blank must stay below 1.")
    root = Path(out_dir) / FOLDER
    meta = ph.make_rng(seed, "chexpert", variant, "meta")
    truth = ph.exact_labels(meta, n, prevalence)

    # patients, studies and views
    studies: list[dict] = []
    patient = OOD_PATIENT_OFFSET if variant == "ood" else 0
    while len(studies) < n:
        patient += 1
        sex = "Female" if meta.random() < 0.45 else "Male"
        age = int(np.clip(meta.normal(60, 17), 18, 90))
        for k in range(1, int(meta.integers(1, 5)) + 1):
            if len(studies) == n:
                break
            studies.append({"patient": patient, "study": k, "sex": sex, "age": min(90, age + k - 1),
                            "ap": int(meta.random() < 0.6), "lateral": bool(meta.random() < p_lateral)})
    patients = sorted({s["patient"] for s in studies})
    n_valid = int(round(valid_fraction * len(patients)))
    if valid_fraction > 0 and len(patients) > 1:
        n_valid = min(max(n_valid, 1), len(patients) - 1)
    valid_patients = set(meta.choice(patients, size=n_valid, replace=False).tolist()) if n_valid else set()

    # written labels
    rows: dict[str, list[list[str]]] = {"train": [], "valid": []}
    jobs: list[tuple[int, str, str]] = []  # (study index, view, relative path)
    for i, s in enumerate(studies):
        split = "valid" if s["patient"] in valid_patients else "train"
        t = int(truth[i])
        if split == "valid":
            written: float | None = float(t)
        else:
            r = meta.random()
            written = -1.0 if r < p_uncertain else (float(t) if t or r >= p_uncertain + p_blank else None)
        obs = _observation_row(meta, written, split == "valid")
        base = f"{FOLDER}/{split}/patient{s['patient']:05d}/study{s['study']}"
        front = f"{base}/view1_frontal.jpg"
        rows[split].append([front, s["sex"], s["age"], "Frontal", "AP" if s["ap"] else "PA", *obs])
        jobs.append((i, "frontal", front))
        if s["lateral"]:
            lat = f"{base}/view2_lateral.jpg"
            rows[split].append([lat, s["sex"], s["age"], "Lateral", "", *obs])
            jobs.append((i, "lateral", lat))

    # images, rendered in fixed chunks of studies
    ap = np.array([s["ap"] for s in studies])
    by_study: dict[int, list[tuple[str, str]]] = {}
    for i, view, rel in jobs:
        by_study.setdefault(i, []).append((view, rel))
    quality = 95 if variant == "iid" else 80
    bar = tqdm(total=len(jobs), desc="chexpert images", unit="img", disable=not progress)
    for k, (sl, rng) in enumerate(ph.chunks(n, ph.CHUNK_2D, seed, "chexpert", variant, "frontal")):
        params = sample_chest_params(rng, truth[sl], variant, ap[sl])
        frontal = ph.to_uint8(render_chest_frontal(rng, params, size))
        # lateral views only for the studies that have one, with the same subject parameters
        with_lateral = [j for j, i in enumerate(range(sl.start, sl.stop)) if len(by_study[i]) > 1]
        lateral = {}
        if with_lateral:
            sub = {key: val[with_lateral] for key, val in params.items()}
            rendered = render_chest_lateral(ph.make_rng(seed, "chexpert", variant, "lateral", k), sub, size)
            lateral = dict(zip(with_lateral, ph.to_uint8(rendered)))
        for j, i in enumerate(range(sl.start, sl.stop)):
            for view, rel in by_study[i]:
                pixels = frontal[j] if view == "frontal" else lateral[j]
                wr.write_bytes(Path(out_dir) / rel, wr.encode_jpeg(pixels, quality))
                bar.update(1)
    bar.close()
    for split in ("train", "valid"):
        wr.write_csv(root / f"{split}.csv", HEADER, rows[split])
    return root
