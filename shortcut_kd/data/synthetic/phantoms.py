"""Shared building blocks of the phantoms: coordinate grids, soft shapes, smooth random fields.

Every phantom is rendered for a whole batch at once: per-subject parameters are arrays of
shape ``(B,)`` and broadcast against a grid of shape ``(1, *spatial)``. Shapes are
written as implicit functions of continuous coordinates in ``[-1, 1]`` and rendered with a
soft (sigmoid) edge, so one parameter set gives the same anatomy at any image size and the
images are anti-aliased without a resampling step. Written here rather than taken from
MONAI because MONAI's transforms act on one image at a time and have no shape primitives.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator, Sequence

import numpy as np

from shortcut_kd.errors import ConfigError

#: Subjects rendered per batch. A constant, so the output never depends on how work is split.
CHUNK_2D = 128
CHUNK_3D = 16

VARIANTS = ("iid", "ood")

#: ``c(key)``: a per-subject parameter as a column that broadcasts against a grid (see :func:`columns`)
Columns = Callable[[str], np.ndarray]


def check_variant(variant: str) -> str:
    """Return ``variant`` if it is ``"iid"`` or ``"ood"``, else raise a :class:`ConfigError`."""
    if variant not in VARIANTS:
        raise ConfigError("variant", variant, f"use one of {', '.join(VARIANTS)}.")
    return variant


def check_size(image_size: int, minimum: int = 8, key: str = "image_size") -> int:
    """Return ``image_size`` (or a count, with ``key``) as an int if it is a whole number >= ``minimum``.

    Raises:
        ConfigError: naming ``key`` otherwise.
    """
    if int(image_size) != image_size or image_size < minimum:
        raise ConfigError(key, image_size, f"use a whole number >= {minimum}.")
    return int(image_size)


def make_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A generator fixed by ``seed`` and a path of keys (dataset, variant, purpose, chunk index).

    Strings are hashed stably (not with Python's salted ``hash``), so every run and machine
    derives the same stream.
    """
    words = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        if isinstance(k, str):
            words.append(int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], "little"))
        else:
            words.append(int(k) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(words))


def chunks(n: int, chunk: int, seed: int, *keys: int | str) -> Iterator[tuple[slice, np.random.Generator]]:
    """The slices of ``range(n)`` rendered together (``chunk`` subjects each), each with its generator.

    The generator of the ``k``-th slice is ``make_rng(seed, *keys, k)``.
    """
    for k, start in enumerate(range(0, n, chunk)):
        yield slice(start, min(n, start + chunk)), make_rng(seed, *keys, k)


def phantom_labels(labels: np.ndarray | None, n: int, prevalence: float, seed: int, dataset: str,
                   variant: str) -> np.ndarray:
    """``labels`` as int64, or, when omitted, ``n`` labels with ``prevalence`` drawn for ``dataset``."""
    if labels is None:
        labels = exact_labels(make_rng(seed, dataset, variant, "labels"), n, prevalence)
    return np.asarray(labels, dtype=np.int64)


def grid(size: int, dims: int) -> list[np.ndarray]:
    """Pixel-centre coordinates in ``[-1, 1]``, one array per axis, shaped ``(1, size, ..., size)``.

    Axis ``i`` of the returned list varies along array axis ``i + 1`` (axis 0 is the batch).
    """
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    out = []
    for i in range(dims):
        shape = [1] * (dims + 1)
        shape[i + 1] = size
        out.append(c.reshape(shape))
    return out


def col(a: np.ndarray, dims: int) -> np.ndarray:
    """Reshape per-subject values ``(B,)`` to ``(B, 1, ..., 1)`` to broadcast against a grid."""
    return np.asarray(a, dtype=np.float32).reshape((-1,) + (1,) * dims)


def columns(p: dict[str, np.ndarray], dims: int) -> Columns:
    """``c(key)``: the per-subject parameter ``p[key]`` as a column (:func:`col`) against a ``dims``-D grid."""
    return lambda key: col(p[key], dims)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function in float32."""
    x = np.clip(x, -30.0, 30.0).astype(np.float32, copy=False)
    return 1.0 / (1.0 + np.exp(-x))


def edge_width(size: int, anatomical: float = 0.015) -> float:
    """Width of a soft edge in grid units: the anatomical blur combined with about one pixel."""
    return float(np.hypot(anatomical, 1.0 / size))


def ellipsoid_rho(coords: Sequence[np.ndarray], centre: Sequence, radii: Sequence) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid: 1 on its surface, < 1 inside.

    ``centre`` and ``radii`` hold one value or one ``(B, 1, ...)`` array per axis.
    """
    total = 0.0
    for x, c, r in zip(coords, centre, radii):
        total = total + ((x - c) / r) ** 2
    return np.sqrt(total)


def soft_inside(rho: np.ndarray, scale: float | np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``rho < 1``; ``scale`` turns the normalised radius into grid units."""
    return sigmoid((1.0 - rho) * scale / width)


def smooth_field(rng: np.random.Generator, n: int, coords: Sequence[np.ndarray], n_waves: int = 6,
                 max_freq: float = 1.5) -> np.ndarray:
    """A smooth random field per subject, roughly zero mean and unit standard deviation.

    A sum of ``n_waves`` plane waves with random frequency (up to ``max_freq`` cycles across the
    field of view), orientation and phase: cheap, fully vectorised and band-limited.

    Returns:
        float32 array ``(n, *spatial)``.
    """
    dims = len(coords)
    freqs = rng.uniform(-max_freq, max_freq, size=(n, n_waves, dims)).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=(n, n_waves)).astype(np.float32)
    amps = (rng.standard_normal((n, n_waves)) * np.sqrt(2.0 / n_waves)).astype(np.float32)
    spatial = np.broadcast_shapes(*[c.shape[1:] for c in coords])
    separable = all(c.shape[0] == 1 and sum(s > 1 for s in c.shape[1:]) <= 1 for c in coords)
    if separable:
        return _separable_waves(coords, spatial, freqs, phases, amps)
    out = np.zeros((n,) + spatial, dtype=np.float32)
    for k in range(n_waves):
        arg = col(phases[:, k], dims)
        for d in range(dims):
            arg = arg + np.pi * col(freqs[:, k, d], dims) * coords[d]
        out += col(amps[:, k], dims) * np.cos(arg)
    return out


def _separable_waves(coords: Sequence[np.ndarray], spatial: tuple[int, ...], freqs: np.ndarray,
                     phases: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Plane waves on a regular grid from outer products of 1D complex exponentials.

    ``cos(f . x + phi)`` is the real part of ``e^{i phi} prod_a e^{i f_a x_a}``, so no full-size
    cosine is evaluated. Plain broadcasting, no BLAS: the result is the same on every machine.
    """
    n, k, _ = freqs.shape
    ndim = len(spatial)
    phase_1d = [np.zeros((n, k, length), np.float32) for length in spatial]
    offset = phases.astype(np.float32).copy()
    for d, c in enumerate(coords):
        varying = [a for a, s in enumerate(c.shape[1:]) if s > 1]
        if varying:
            phase_1d[varying[0]] += np.pi * freqs[:, :, d, None] * c.reshape(1, 1, -1)
        else:
            offset += np.pi * freqs[:, :, d] * float(c.reshape(-1)[0])
    factors = [np.exp(1j * ph).astype(np.complex64) for ph in phase_1d]
    factors[0] = factors[0] * (amps * np.exp(1j * offset)).astype(np.complex64)[:, :, None]
    # all axes but the last: small complex outer products, (n, k, prod)
    head = factors[0]
    for f in factors[1:-1]:
        head = (head[:, :, :, None] * f[:, :, None, :]).reshape(n, k, -1)
    if ndim == 1:
        return head.real.sum(axis=1).astype(np.float32)
    last = factors[-1]
    out = np.zeros((n, head.shape[2], last.shape[2]), np.float32)
    for j in range(k):
        out += head[:, j, :, None].real * last[:, j, None, :].real
        out -= head[:, j, :, None].imag * last[:, j, None, :].imag
    return out.reshape((n,) + spatial)


def exact_labels(rng: np.random.Generator, n: int, prevalence: float, key: str = "prevalence") -> np.ndarray:
    """``round(prevalence * n)`` ones and the rest zeros, in random order."""
    if not 0.0 <= prevalence <= 1.0:
        raise ConfigError(key, prevalence, "use a fraction between 0 and 1.")
    labels = np.zeros(n, dtype=np.int64)
    labels[: int(round(prevalence * n))] = 1
    return rng.permutation(labels)


def split_counts(n: int, fractions: Sequence[float], key: str = "fractions") -> list[int]:
    """Split ``n`` items into parts proportional to ``fractions``, each part non-empty when ``n`` allows."""
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or (fr < 0).any() or fr.sum() <= 0:
        raise ConfigError(key, tuple(fractions),
                          "give non-negative fractions with a positive sum, e.g. (0.7, 0.1, 0.2).")
    fr = fr / fr.sum()
    counts = np.floor(fr * n).astype(int)
    counts[int(np.argmax(fr))] += n - counts.sum()
    # give each wanted part at least one item, taken from the largest part
    for i in np.flatnonzero((counts == 0) & (fr > 0)):
        j = int(np.argmax(counts))
        if counts[j] > 1:
            counts[j] -= 1
            counts[i] += 1
    return counts.tolist()


def add_noise(rng: np.random.Generator, images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Add Gaussian noise with a per-subject standard deviation ``sigma`` ``(B,)``."""
    dims = images.ndim - 1
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    return images + col(sigma, dims) * noise


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Clip to ``[0, 1]`` and quantise to 8 bits."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def blob_field(rng: np.random.Generator, n: int, size: int, dims: int, cells: int = 8) -> np.ndarray:
    """Isotropic random blobs per subject: white noise on a coarse grid smoothed by a Gaussian kernel.

    Unlike :func:`smooth_field` (a few plane waves, which read as stripes when thresholded) the
    blobs have no preferred direction, like the patches of a variegated lesion. The Gaussian
    kernel is separable, so the field is one small matrix product per axis.

    Args:
        rng: the random generator.
        n: number of fields.
        size: side of each field in pixels.
        dims: 2 or 3.
        cells: coarse grid nodes across the field of view (about the number of blobs per side).

    Returns:
        float32 array ``(n, size, ..., size)`` with unit standard deviation at every pixel.
    """
    step = 2.0 / cells
    nodes = np.arange(-1.0 - 2 * step, 1.0 + 2 * step + 1e-9, step)
    x = ((np.arange(size) + 0.5) / size) * 2.0 - 1.0
    kernel = np.exp(-0.5 * ((x[:, None] - nodes[None, :]) / (0.7 * step)) ** 2)
    kernel = (kernel / np.sqrt((kernel ** 2).sum(axis=1, keepdims=True))).astype(np.float32)
    field = rng.standard_normal((n,) + (len(nodes),) * dims).astype(np.float32)
    letters = "xyz"[:dims]
    for axis, ch in enumerate(letters):
        # einsum's own loops, not BLAS: the same bytes on every machine
        spec = f"b{letters},i{ch}->b{letters.replace(ch, 'i')}"
        field = np.einsum(spec, field, kernel, optimize=False)
    return np.ascontiguousarray(field, dtype=np.float32)


def blur_each(images: np.ndarray, sigma: np.ndarray, channel_last: bool = False) -> np.ndarray:
    """Gaussian blur with a per-image ``sigma`` (pixels, ``(B,)``); a zero sigma leaves the image as is."""
    from scipy.ndimage import gaussian_filter

    out = images.copy()
    spatial = images.ndim - 1 - int(channel_last)
    for i, s in enumerate(np.asarray(sigma, dtype=float)):
        if s > 0:
            out[i] = gaussian_filter(images[i], sigma=(s,) * spatial + ((0,) if channel_last else ()), mode="nearest")
    return out
