"""Localized shortcuts: a mark confined to a region that :meth:`mask` reports.

Every transform here is channel first, works in 2D and 3D and changes the image inside its mask
only (the result outside is the input, bit for bit). Sizes are fractions of the smallest spatial
side, intensities fractions of the image's own intensity range (1.0 = its maximum).

Positions are in array index terms: the first spatial axis is "top"/"bottom", the second
"left"/"right". MONAI's PIL reader transposes 2D pictures (``reverse_indexing``), so in a PNG loaded
by ``LoadImage`` the first axis runs along the picture's width; a corner stays a corner either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from shortcut_kd.shortcuts.base import (
    LocalizedShortcut, coordinate_grid, corner_fractions, intensity_range, margin_pixels, per_axis, place, side_pixels,
)

__all__ = ["SquarePatch", "TextTag", "Stripes", "IntensityBlob", "RegionalDeformation", "render_text"]


def _shape(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected 2 or 3 spatial dimensions, got spatial shape {shape}.")
    return shape


class SquarePatch(LocalizedShortcut):
    """A filled square (2D) or cube (3D) of constant intensity: the classic localized shortcut.

    Args:
        size: side of the square as a fraction of the smallest spatial side.
        intensity: the patch value as a fraction of the image's own [min, max] range (1.0 = its max,
            0.0 = its min).
        position: ``"fixed"`` (at ``corner``) or ``"random"`` (a new place per sample, drawn from ``self.R``).
        corner: ``"top-left"``, ``"top-right"``, ``"bottom-left"``, ``"bottom-right"`` (array index terms;
            in 3D the patch is centred along the third axis), or per-axis fractions (0 = start, 1 = end).
        margin: gap between the patch and the image border, as a fraction of the smallest side.
    """

    def __init__(
        self,
        size: float = 0.125,
        intensity: float = 1.0,
        position: str = "fixed",
        corner: str | Sequence[float] = "top-left",
        margin: float = 0.03125,
    ) -> None:
        super().__init__(position)
        corner_fractions(corner, 3)  # validate early
        self.size, self.intensity, self.corner, self.margin = float(size), float(intensity), corner, float(margin)

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        shape = _shape(spatial_shape)
        side = side_pixels(self.size, shape)
        m = margin_pixels(self.margin, shape)
        fr = self._fractions(corner_fractions(self.corner, len(shape)), len(shape))
        idx = []
        for n, f in zip(shape, fr):
            s = min(side, n)
            start = place(s, n, m, f)
            idx.append(slice(start, start + s))
        out = np.zeros(shape, dtype=bool)
        out[tuple(idx)] = True
        return out

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        return self._paint(img, self.intensity)


def render_text(text: str) -> np.ndarray:
    """Render ``text`` with PIL's built-in bitmap font; a boolean glyph mask cropped to the ink."""
    from PIL import Image, ImageDraw, ImageFont

    if not text or not text.strip():
        raise ValueError("text must contain at least one visible character.")
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(canvas).text((-left, -top), text, fill=255, font=font)
    ink = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if rows.size == 0:
        raise ValueError(f"text {text!r} renders no visible pixels with the default font.")
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1).astype(int)
    return mask[np.ix_(rows, cols)]


def _slab(depth_len: int, depth: float, fraction: float) -> slice:
    """A slab of ``depth`` (fraction of the axis) along the third axis, placed at ``fraction``."""
    thick = max(1, min(depth_len, int(round(depth * depth_len))))
    start = place(thick, depth_len, 0, fraction)
    return slice(start, start + thick)


class TextTag(LocalizedShortcut):
    """A rendered text marker, such as a laterality ``"L"`` or a ``"PORTABLE"`` label on a radiograph.

    The text is drawn with PIL's built-in bitmap font, scaled (nearest neighbour) to ``size`` of the
    smallest in-plane side, and stamped in the plane of the first two spatial axes; in 3D on a slab of
    slices along the third axis.

    Args:
        text: the marker text.
        size: text height as a fraction of the smallest of the first two spatial sides (shrunk to fit).
        intensity: the ink value as a fraction of the image's own [min, max] range.
        position: ``"fixed"`` (at ``corner``) or ``"random"`` (per sample, from ``self.R``).
        corner: a named corner or per-axis fractions, as for :class:`SquarePatch`.
        margin: gap to the border, as a fraction of the smallest side.
        depth: in 3D, the slab thickness as a fraction of the third axis (centred unless random).
    """

    def __init__(
        self,
        text: str = "L",
        size: float = 0.2,
        intensity: float = 1.0,
        position: str = "fixed",
        corner: str | Sequence[float] = "top-right",
        margin: float = 0.03125,
        depth: float = 0.5,
    ) -> None:
        super().__init__(position)
        corner_fractions(corner, 3)
        self.text, self.size, self.intensity = text, float(size), float(intensity)
        self.corner, self.margin, self.depth = corner, float(margin), float(depth)
        self.glyph = render_text(text)

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        shape = _shape(spatial_shape)
        plane = shape[:2]
        m = margin_pixels(self.margin, plane)
        gh, gw = self.glyph.shape
        h = side_pixels(self.size, plane)
        w = max(1, int(round(gw * h / gh)))
        room_h, room_w = max(1, plane[0] - 2 * m), max(1, plane[1] - 2 * m)
        scale = min(1.0, room_h / h, room_w / w)  # shrink to fit, keeping the aspect ratio
        h, w = max(1, int(h * scale)), max(1, int(w * scale))
        stamp = _resize_nearest(self.glyph, h, w)
        fr = self._fractions(corner_fractions(self.corner, 3), 3)
        r0, c0 = place(h, plane[0], m, fr[0]), place(w, plane[1], m, fr[1])
        out = np.zeros(shape, dtype=bool)
        if len(shape) == 2:
            out[r0 : r0 + h, c0 : c0 + w] = stamp
        else:
            out[r0 : r0 + h, c0 : c0 + w, _slab(shape[2], self.depth, fr[2])] = stamp[..., None]
        return out

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        return self._paint(img, self.intensity)


_EDGES = ("top", "bottom", "left", "right")


class Stripes(LocalizedShortcut):
    """Ruler- or stripe-like marks: a few parallel bars running in from one edge of the image.

    Args:
        n_stripes: number of bars.
        thickness: bar thickness as a fraction of the smallest side (at least one pixel).
        length: how far the bars reach into the image, as a fraction of the smallest side.
        spacing: gap between neighbouring bars, as a fraction of the smallest side (at least one pixel).
        intensity: the bar value as a fraction of the image's own [min, max] range.
        edge: ``"top"``/``"bottom"`` (ends of the first spatial axis) or ``"left"``/``"right"`` (second axis).
        offset: where the group of bars sits along the edge (0 = start, 1 = end); random per sample
            when ``position="random"``.
        position: ``"fixed"`` or ``"random"``.
        margin: gap to the border, as a fraction of the smallest side.
        depth: in 3D, the slab thickness as a fraction of the third axis.
    """

    def __init__(
        self,
        n_stripes: int = 3,
        thickness: float = 0.03,
        length: float = 0.25,
        spacing: float = 0.05,
        intensity: float = 1.0,
        edge: str = "bottom",
        offset: float = 0.5,
        position: str = "fixed",
        margin: float = 0.03125,
        depth: float = 0.5,
    ) -> None:
        super().__init__(position)
        if edge not in _EDGES:
            raise ValueError(f"edge must be one of {_EDGES}, got {edge!r}.")
        if int(n_stripes) < 1:
            raise ValueError(f"n_stripes must be at least 1, got {n_stripes}.")
        self.n_stripes, self.thickness, self.length, self.spacing = int(n_stripes), thickness, length, spacing
        self.intensity, self.edge, self.offset = float(intensity), edge, float(offset)
        self.margin, self.depth = float(margin), float(depth)

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        shape = _shape(spatial_shape)
        plane = shape[:2]
        m = margin_pixels(self.margin, plane)
        t = side_pixels(self.thickness, plane)
        g = side_pixels(self.spacing, plane)
        along_axis = 0 if self.edge in ("top", "bottom") else 1  # the bars run along this axis
        across_axis = 1 - along_axis
        n_along, n_across = plane[along_axis], plane[across_axis]
        length = min(side_pixels(self.length, plane), n_along)
        start_along = place(length, n_along, m, 0.0 if self.edge in ("top", "left") else 1.0)
        fr = self._fractions([self.offset, self.offset, 0.5], 3)
        group = min(self.n_stripes * t + (self.n_stripes - 1) * g, n_across)
        start_across = place(group, n_across, m, fr[0])
        plane_mask = np.zeros(plane, dtype=bool)
        for i in range(self.n_stripes):
            a0 = start_across + i * (t + g)
            if a0 >= start_across + group:
                break
            idx = [slice(None), slice(None)]
            idx[along_axis] = slice(start_along, start_along + length)
            idx[across_axis] = slice(a0, min(a0 + t, start_across + group))
            plane_mask[tuple(idx)] = True
        if len(shape) == 2:
            return plane_mask
        out = np.zeros(shape, dtype=bool)
        out[..., _slab(shape[2], self.depth, fr[2])] = plane_mask[..., None]
        return out

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        return self._paint(img, self.intensity)


class _RoundRegion(LocalizedShortcut):
    """A ball-shaped region of ``radius`` (fraction of the smallest side) around a centre."""

    def __init__(self, radius: float, position: str, center: float | Sequence[float]) -> None:
        super().__init__(position)
        if float(radius) <= 0:
            raise ValueError(f"radius must be positive, got {radius}.")
        self.radius, self.center = float(radius), center

    def _geometry(self, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
        """Per-voxel offset from the centre, shape ``(ndim, *shape)``, and the radius in voxels."""
        nd = len(shape)
        rad = max(1.0, self.radius * min(shape))
        if self.position == "fixed":
            centre = [f * (n - 1) for f, n in zip(per_axis(self.center, nd), shape)]
        else:
            centre = []
            for f, n in zip(self._fractions([], nd), shape):
                lo = min(rad, (n - 1) / 2)  # keep the whole ball inside when it fits
                centre.append(lo + f * (n - 1 - 2 * lo))
        offset = coordinate_grid(shape) - np.asarray(centre, dtype=np.float32).reshape((nd,) + (1,) * nd)
        return offset, rad


class IntensityBlob(_RoundRegion):
    """A smooth blob of added intensity: a Gaussian bump, exactly zero beyond ``radius``.

    The profile is a Gaussian with sigma = radius / 3, lowered by its value at the radius so that it
    reaches zero there (continuous, and confined to the ball).

    Args:
        radius: radius of the blob as a fraction of the smallest spatial side.
        intensity: peak added intensity as a fraction of the image's own range (negative: a dark blob).
        position: ``"fixed"`` (at ``center``) or ``"random"`` (per sample, the ball kept inside the image).
        center: the fixed centre as a fraction of each axis (a scalar for every axis, or one per axis).
    """

    def __init__(
        self,
        radius: float = 0.15,
        intensity: float = 0.5,
        position: str = "fixed",
        center: float | Sequence[float] = (0.3, 0.7, 0.5),
    ) -> None:
        super().__init__(radius, position, center)
        self.intensity = float(intensity)

    def weights(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """The blob profile in [0, 1] on ``spatial_shape`` (0 outside the mask)."""
        offset, rad = self._geometry(_shape(spatial_shape))
        d2 = (offset**2).sum(0)
        sigma2 = (rad / 3.0) ** 2
        tail = np.exp(-(rad**2) / (2 * sigma2))
        w = (np.exp(-d2 / (2 * sigma2)) - tail) / (1.0 - tail)
        return np.where(d2 < rad**2, np.clip(w, 0.0, 1.0), 0.0).astype(np.float32)

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        return self.weights(spatial_shape) > 0

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        _, span = intensity_range(img)
        w = torch.as_tensor(self.weights(img.shape[1:]), dtype=img.dtype, device=img.device)
        return img + (self.intensity * span) * w.unsqueeze(0)


class RegionalDeformation(_RoundRegion):
    """A smooth local expansion or contraction, confined to a ball: a morphological shortcut (as in SimBA).

    Each voxel ``x`` within ``radius`` of the centre ``c`` takes its value from
    ``x - strength * w(r) * (x - c)`` with ``r = |x - c| / radius`` and the bump ``w(r) = (1 - r^2)^2``
    (zero at and beyond the radius, so nothing outside the ball moves). ``strength > 0`` magnifies the
    region (the centre by ``1 / (1 - strength)``), ``strength < 0`` shrinks it. The map stays one-to-one
    for ``-1.25 < strength < 1``. Resampling uses MONAI's ``Warp`` (bilinear, border padding).

    Args:
        radius: radius of the deformed region as a fraction of the smallest spatial side.
        strength: expansion (> 0) or contraction (< 0), in (-1.25, 1).
        position: ``"fixed"`` (at ``center``) or ``"random"`` (per sample, the ball kept inside the image).
        center: the fixed centre as a fraction of each axis (a scalar for every axis, or one per axis).
    """

    def __init__(
        self,
        radius: float = 0.25,
        strength: float = 0.5,
        position: str = "fixed",
        center: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__(radius, position, center)
        if not -1.25 < float(strength) < 1.0:
            raise ValueError(f"strength must be in (-1.25, 1) to keep the deformation one-to-one, got {strength}.")
        self.strength = float(strength)

    def displacement(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """Dense displacement field in voxels, shape ``(ndim, *spatial_shape)``."""
        offset, rad = self._geometry(_shape(spatial_shape))
        r2 = (offset**2).sum(0) / rad**2
        w = np.where(r2 < 1.0, (1.0 - r2) ** 2, 0.0).astype(np.float32)
        return (-self.strength * w)[None] * offset

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        return np.abs(self.displacement(spatial_shape)).sum(0) > 0

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        from monai.networks.blocks import Warp

        ddf_np = self.displacement(img.shape[1:])
        ddf = torch.as_tensor(ddf_np, dtype=torch.float32, device=img.device)
        with warnings.catch_warnings():  # Warp announces its PyTorch fallback on every construction
            warnings.simplefilter("ignore")
            warp = Warp(mode="bilinear", padding_mode="border")
        with torch.no_grad():
            moved = warp(img.float().unsqueeze(0), ddf.unsqueeze(0))[0].to(img.dtype)
        region = torch.as_tensor(np.abs(ddf_np).sum(0) > 0, device=img.device).unsqueeze(0)
        # outside the ball the displacement is zero; taking the input there keeps it bit-exact
        return torch.where(region, moved, img)
