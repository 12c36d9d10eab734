"""ISIC-2017-like dermoscopy phantoms in the ISIC 2017 challenge layout.

Each RGB image shows skin (tone, redness and texture vary between subjects) with one
pigmented lesion, optionally crossed by hairs and darkened at the corners by the
dermatoscope's round field of view (both independent of the label).

- benign naevus: round or oval, a regular border, a uniform brown with a slightly darker centre;
- melanoma (the positive class): an irregular border (random radial harmonics), asymmetry
  (a lopsided outline and an off-centre pigment distribution) and colour variegation
  (dark-brown, black and blue-grey regions beside lighter tan ones);
- seborrheic keratosis (negative for the melanoma task): a sharply bordered, light-brown
  "stuck-on" lesion with small bright milia-like dots.

Border irregularity, asymmetry and variegation strengths of benign lesions and melanomas are
drawn from adjacent ranges, and what shows of them depends on random harmonics and random
patch patterns, so borderline cases look alike; lesion size and base darkness have the same
distribution in every class, so the classes overlap in global colour statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shortcut_kd.data.synthetic import phantoms as ph
from shortcut_kd.data.synthetic import writers as wr
from shortcut_kd.errors import ConfigError

SPLITS = {"train": "ISIC-2017_Training", "val": "ISIC-2017_Validation", "test": "ISIC-2017_Test_v2"}
HEADER = ("image_id", "melanoma", "seborrheic_keratosis")
#: First image number of an ``ood`` tree, so its ids never collide with an ``iid`` tree's.
OOD_ID_OFFSET = 5_000_000
N_HARMONICS = 9
N_HAIRS = 5

_LIGHT_SKIN = np.array([0.96, 0.80, 0.72], np.float32)
_DARK_SKIN = np.array([0.62, 0.43, 0.33], np.float32)
_TAN = np.array([0.74, 0.54, 0.40], np.float32)
_DARK_BROWN = np.array([0.36, 0.21, 0.13], np.float32)
_BLACK = np.array([0.12, 0.08, 0.08], np.float32)
_BLUE_GREY = np.array([0.42, 0.47, 0.56], np.float32)
_HAIR = np.array([0.18, 0.12, 0.09], np.float32)


def sample_skin_params(rng: np.random.Generator, melanoma: np.ndarray, keratosis: np.ndarray | None = None,
                       variant: str = "iid") -> dict[str, np.ndarray]:
    """Draw per-image skin, lesion, artefact and acquisition parameters.

    Args:
        rng: the random generator.
        melanoma: ``(B,)`` 0/1.
        keratosis: ``(B,)`` 0/1 seborrheic keratosis (only where ``melanoma`` is 0); default none.
        variant: ``"iid"`` or ``"ood"`` (another dermatoscope: colour cast, brighter, noisier,
            softer, wider field of view so lesions look smaller).

    Returns:
        dict of float32 arrays, ``(B,)`` or ``(B, K)``.
    """
    ph.check_variant(variant)
    b = len(melanoma)
    mel = np.asarray(melanoma).astype(bool)
    sk = np.zeros(b, bool) if keratosis is None else np.asarray(keratosis).astype(bool) & ~mel
    u = lambda lo, hi, shape=None: rng.uniform(lo, hi, b if shape is None else shape).astype(np.float32)  # noqa: E731
    pick = lambda a, m, s: np.where(mel, m, np.where(sk, s, a)).astype(np.float32)  # noqa: E731
    k = np.arange(1, N_HARMONICS + 1, dtype=np.float32)
    irregular = pick(u(0.0, 0.05), u(0.05, 0.12), u(0.0, 0.05))
    asym = pick(u(0.0, 0.12), u(0.15, 0.4), u(0.0, 0.15))
    harmonics = rng.standard_normal((b, N_HARMONICS)).astype(np.float32) / k ** 0.7 * irregular[:, None]
    harmonics[:, 0] = asym * 0.25 * np.sign(rng.standard_normal(b))  # the k = 1 term: a lopsided outline
    harmonics[:, 1] = harmonics[:, 1] * 0.5
    p = {
        "tone": rng.beta(2.0, 2.0, b), "redness": u(0.0, 0.06), "skin_texture": u(0.005, 0.02),
        "cx": np.clip(rng.normal(0, 0.08, b), -0.2, 0.2), "cy": np.clip(rng.normal(0, 0.08, b), -0.2, 0.2),
        "radius": u(0.3, 0.52), "ellipticity": u(1.0, 1.3), "angle": u(0, np.pi),
        "harmonics": harmonics, "phases": u(0, 2 * np.pi, (b, N_HARMONICS)),
        "edge": pick(u(0.015, 0.05), u(0.012, 0.04), u(0.01, 0.02)),
        "darkness": pick(u(0.3, 0.85), u(0.3, 0.85), u(0.1, 0.5)),
        "variegation": pick(u(0.0, 0.25), u(0.35, 0.95), u(0.0, 0.15)),
        "asym": asym, "asym_angle": u(0, 2 * np.pi), "milia": sk.astype(np.float32) * u(0.3, 0.7),
        "hair_on": (rng.random((b, N_HAIRS)) < np.where(rng.random(b) < 0.3, 0.6, 0.0)[:, None]).astype(np.float32),
        "hair_x": u(-1, 1, (b, N_HAIRS)), "hair_y": u(-1, 1, (b, N_HAIRS)), "hair_angle": u(0, np.pi, (b, N_HAIRS)),
        "hair_curve": rng.normal(0, 0.5, (b, N_HAIRS)), "hair_width": u(0.008, 0.016, (b, N_HAIRS)),
        "hair_dark": u(0.5, 0.85, (b, N_HAIRS)),
        "vignette": (rng.random(b) < 0.4) * u(0.3, 0.9), "vignette_radius": u(0.95, 1.25),
        "gain": u(0.92, 1.06), "balance": rng.normal(1.0, 0.025, (b, 3)), "gamma": u(0.9, 1.1),
        "noise": u(0.005, 0.02), "fov": np.ones(b), "blur": np.zeros(b),
    }
    if variant == "ood":
        p["balance"] = np.array([0.86, 1.0, 1.12]) * rng.normal(1.0, 0.02, (b, 3))
        p["gain"] = u(1.06, 1.16)
        p["gamma"] = u(0.72, 0.82)
        p["noise"] = u(0.025, 0.04)
        p["fov"] = u(1.25, 1.4)
        p["blur"] = u(0.5, 0.8)
    return {key: np.asarray(val, dtype=np.float32) for key, val in p.items()}


def render_dermoscopy(rng: np.random.Generator, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Render dermoscopy phantoms.

    Args:
        rng: generator for textures and noise.
        p: parameters from :func:`sample_skin_params`.
        size: image side in pixels.

    Returns:
        float32 ``(B, size, size, 3)`` in ``[0, 1]``.
    """
    b = len(p["cx"])
    y, x = ph.grid(size, 2)
    c = ph.columns(p, 2)
    rgb = lambda a: a.reshape(1, 1, 1, 3)  # noqa: E731
    w = ph.edge_width(size, 0.0)
    xs, ys = x * c("fov"), y * c("fov")

    # skin
    tone = c("tone")[..., None]
    skin = rgb(_LIGHT_SKIN) * (1 - tone) + rgb(_DARK_SKIN) * tone
    red = (c("redness") * (0.5 + 0.5 * ph.smooth_field(rng, b, (x, y), 4, 1.0)))[..., None]
    skin = skin + red * rgb(np.array([0.6, -0.5, -0.4], np.float32))
    skin = skin * (1 + (c("skin_texture") * ph.smooth_field(rng, b, (x, y), 16, 8.0))[..., None])

    # lesion outline: a rotated, stretched disc with a radially perturbed border
    dx, dy = xs - c("cx"), ys - c("cy")
    ca, sa = np.cos(c("angle")), np.sin(c("angle"))
    lu = (ca * dx + sa * dy) / c("ellipticity")
    lv = -sa * dx + ca * dy
    r = np.sqrt(lu ** 2 + lv ** 2)
    theta = np.arctan2(lv, lu)
    border = np.ones_like(r)
    for k in range(N_HARMONICS):
        border = border + ph.col(p["harmonics"][:, k], 2) * np.cos((k + 1) * theta + ph.col(p["phases"][:, k], 2))
    radius = c("radius") * np.maximum(border, 0.3)
    lesion = ph.sigmoid((radius - r) / np.maximum(c("edge"), w))

    # pigment: base brown, darker centre, off-centre (asymmetric) variegated regions
    dark = c("darkness")[..., None]
    pigment = rgb(_TAN) * (1 - dark) + rgb(_DARK_BROWN) * dark
    rel = np.clip(r / radius, 0, 1)
    pigment = pigment * (1 - 0.15 * (1 - rel))[..., None]
    pigment = pigment * (1 + 0.05 * ph.smooth_field(rng, b, (lu, lv), 4, 3.0))[..., None]
    axis = np.cos(c("asym_angle")) * dx + np.sin(c("asym_angle")) * dy
    lopsided = np.clip(0.5 + c("asym") * axis / c("radius") * 2.0, 0, 1)
    var = c("variegation") * lopsided
    f1 = ph.blob_field(rng, b, size, 2, cells=7)
    f2 = ph.blob_field(rng, b, size, 2, cells=7)
    m_black = (ph.sigmoid((f1 - 0.4) / 0.25) * var)[..., None]
    m_blue = (ph.sigmoid((f2 - 0.5) / 0.25) * var * 0.8)[..., None] * (1 - m_black)
    m_tan = (ph.sigmoid((-f1 - 0.3) / 0.25) * var)[..., None] * (1 - m_black) * (1 - m_blue)
    pigment = (pigment * (1 - m_black - m_blue - m_tan) + rgb(_BLACK) * m_black + rgb(_BLUE_GREY) * m_blue
               + rgb(_TAN * 1.08) * m_tan)
    milia = ph.sigmoid((ph.smooth_field(rng, b, (x, y), 16, 12.0) - 1.5) / 0.15) * c("milia")
    pigment = pigment * (1 - milia[..., None]) + rgb(np.array([0.93, 0.88, 0.78], np.float32)) * milia[..., None]
    img = skin * (1 - lesion[..., None]) + pigment * lesion[..., None]

    # hairs: thin dark curves crossing the image (drawn only where a hair is switched on)
    for h in range(N_HAIRS):
        idx = np.flatnonzero(p["hair_on"][:, h] > 0)
        if len(idx) == 0:
            continue
        hc = lambda k: ph.col(p[k][idx, h], 2)  # noqa: E731
        hx, hy = xs[idx] - hc("hair_x"), ys[idx] - hc("hair_y")
        along = np.cos(hc("hair_angle")) * hx + np.sin(hc("hair_angle")) * hy
        across = -np.sin(hc("hair_angle")) * hx + np.cos(hc("hair_angle")) * hy - hc("hair_curve") * along ** 2
        width = np.maximum(hc("hair_width"), 1.0 / size)
        strand = (np.exp(-((across / width) ** 2)) * hc("hair_dark"))[..., None]
        img[idx] = img[idx] * (1 - strand) + rgb(_HAIR) * strand

    # dermatoscope and camera
    rad = np.sqrt(x ** 2 + y ** 2)
    vignette = 1 - c("vignette") * ph.sigmoid((rad - c("vignette_radius")) / 0.08)
    img = img * vignette[..., None]
    img = ph.blur_each(img, p["blur"] * size / 64.0, channel_last=True)
    img = img * p["balance"][:, None, None, :] * c("gain")[..., None]
    img = np.clip(img, 0, 1) ** c("gamma")[..., None]
    noise = rng.standard_normal(img.shape, dtype=np.float32) * c("noise")[..., None]
    return np.clip(img + noise, 0, 1).astype(np.float32)


def dermoscopy_phantoms(n: int, seed: int = 0, size: int = 64, labels: np.ndarray | None = None,
                        variant: str = "iid", prevalence: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Dermoscopy phantoms in memory (no files), for experiments and tests.

    Args:
        n: number of images.
        seed: random seed; the same seed gives the same arrays.
        size: image side in pixels.
        labels: ``(n,)`` 0/1 melanoma labels; drawn with ``prevalence`` when omitted.
        variant: ``"iid"`` or ``"ood"``.
        prevalence: fraction of melanomas when ``labels`` is omitted.

    Returns:
        ``(images, labels)``: float32 ``(n, size, size, 3)`` in ``[0, 1]`` and int64 ``(n,)``.
    """
    ph.check_variant(variant)
    size = ph.check_size(size)
    labels = ph.phantom_labels(labels, n, prevalence, seed, "isic2017", variant)
    out = np.empty((n, size, size, 3), np.float32)
    for sl, rng in ph.chunks(n, ph.CHUNK_2D, seed, "isic2017", variant, "images"):
        out[sl] = render_dermoscopy(rng, sample_skin_params(rng, labels[sl], None, variant), size)
    return out, labels


def superpixel_map(size: int, block: int = 8) -> np.ndarray:
    """A superpixel index map encoded like the challenge's PNGs (index = R + 256 G + 65536 B).

    Returns:
        uint8 ``(size, size, 3)``.
    """
    rows, cols = np.indices((size, size)) // block
    index = rows * ((size + block - 1) // block) + cols
    return np.stack([index & 255, (index >> 8) & 255, (index >> 16) & 255], axis=-1).astype(np.uint8)


def synthesize_isic2017(out_dir: str | os.PathLike, n: int = 2000, seed: int = 0, variant: str = "iid",
                        image_size: int | None = None, prevalence: float = 0.5, keratosis_fraction: float = 0.25,
                        fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), n_superpixels: int = 3,
                        progress: bool = False) -> Path:
    """Write an ISIC-2017-like tree under ``out_dir``.

    Layout (as the challenge download)::

        <out_dir>/ISIC-2017_Training_Data/ISIC_<7 digits>.jpg (+ a few ISIC_<7 digits>_superpixels.png)
        <out_dir>/ISIC-2017_Validation_Data/...
        <out_dir>/ISIC-2017_Test_v2_Data/...
        <out_dir>/ISIC-2017_{Training,Validation,Test_v2}_Part3_GroundTruth.csv

    The ground-truth CSVs have the header ``image_id,melanoma,seborrheic_keratosis`` and values
    ``0.0``/``1.0``. Image numbers increase through train, validation and test with small random
    gaps (the real numbering is not contiguous either).

    Args:
        out_dir: folder to write into (created).
        n: number of images over the three splits.
        seed: random seed; the same seed gives the same files.
        variant: ``"iid"``, or ``"ood"`` for another dermatoscope (see :func:`sample_skin_params`),
            numbered from ``ISIC_5000000``.
        image_size: side of the square images in pixels (default 64).
        prevalence: fraction of melanomas in each split.
        keratosis_fraction: fraction of the non-melanoma images that are seborrheic keratoses.
        fractions: train / validation / test shares of ``n``.
        n_superpixels: images per split that also get a ``_superpixels.png`` (ignored by readers).
        progress: show a progress bar.

    Returns:
        ``out_dir`` (the dataset root holding the folders and CSVs).
    """
    from tqdm import tqdm

    ph.check_variant(variant)
    size = ph.check_size(64 if image_size is None else image_size)
    n = ph.check_size(n, minimum=3, key="n")
    if not 0.0 <= keratosis_fraction <= 1.0:
        raise ConfigError("keratosis_fraction", keratosis_fraction, "use a fraction between 0 and 1.")
    root = Path(out_dir)
    meta = ph.make_rng(seed, "isic2017", variant, "meta")
    counts = ph.split_counts(n, fractions)
    mel_parts, sk_parts, split_of = [], [], []
    for split, count in zip(SPLITS, counts):
        mel = ph.exact_labels(meta, count, prevalence)
        sk = np.zeros(count, np.int64)
        neg = np.flatnonzero(mel == 0)
        sk[meta.permutation(neg)[: int(round(keratosis_fraction * len(neg)))]] = 1
        mel_parts.append(mel)
        sk_parts.append(sk)
        split_of += [split] * count
    melanoma, keratosis = np.concatenate(mel_parts), np.concatenate(sk_parts)
    steps = 1 + (meta.random(n) < 0.2) * meta.integers(1, 5, n)
    numbers = (OOD_ID_OFFSET if variant == "ood" else 0) + np.cumsum(steps) - steps[0]
    ids = [f"ISIC_{int(v):07d}" for v in numbers]

    quality = 95 if variant == "iid" else 75
    bar = tqdm(total=n, desc="isic2017 images", unit="img", disable=not progress)
    seen = {s: 0 for s in SPLITS}
    for sl, rng in ph.chunks(n, ph.CHUNK_2D, seed, "isic2017", variant, "images"):
        params = sample_skin_params(rng, melanoma[sl], keratosis[sl], variant)
        pixels = ph.to_uint8(render_dermoscopy(rng, params, size))
        for j, i in enumerate(range(sl.start, sl.stop)):
            folder = root / f"{SPLITS[split_of[i]]}_Data"
            wr.write_bytes(folder / f"{ids[i]}.jpg", wr.encode_jpeg(pixels[j], quality))
            if seen[split_of[i]] < n_superpixels:
                wr.write_bytes(folder / f"{ids[i]}_superpixels.png", wr.encode_png(superpixel_map(size)))
            seen[split_of[i]] += 1
            bar.update(1)
    bar.close()
    for split, prefix in SPLITS.items():
        (root / f"{prefix}_Data").mkdir(parents=True, exist_ok=True)
        rows = [[ids[i], wr.label_text(melanoma[i]), wr.label_text(keratosis[i])]
                for i in range(n) if split_of[i] == split]
        wr.write_csv(root / f"{prefix}_Part3_GroundTruth.csv", HEADER, rows)
    return root
