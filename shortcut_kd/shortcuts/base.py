"""What every shortcut transform shares: the base class, the intensity range and placement helpers.

Sizes are fractions of the smallest spatial side and intensities are fractions of the image's own
intensity range, so one setting fits a 32x32 phantom and a 390x320 radiograph alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["ShortcutTransform", "LocalizedShortcut", "DiffuseShortcut", "intensity_range", "CORNERS"]

#: named corners in array index terms: (first spatial axis, second spatial axis), 0 = start, 1 = end.
CORNERS: dict[str, tuple[float, float]] = {
    "top-left": (0.0, 0.0),
    "top-right": (0.0, 1.0),
    "bottom-left": (1.0, 0.0),
    "bottom-right": (1.0, 1.0),
}


def intensity_range(img: torch.Tensor) -> tuple[float, float]:
    """The image's own ``(minimum, span)`` over all channels; a constant image gets a span of 1."""
    lo, hi = float(img.min()), float(img.max())
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        span = 1.0
    return lo, span


class ShortcutTransform(Randomizable, Transform):
    """Base of the shortcut array transforms.

    A subclass implements ``_apply(img) -> img`` on a plain float tensor (channel first) and, where it
    has random parameters, ``randomize(img_shape)`` drawing them from ``self.R`` only. Calling the
    transform converts the input (numpy or torch) to a tensor, draws the parameters, applies the
    shortcut and returns a tensor of the input's type (a MetaTensor keeps its metadata). Integer
    inputs come back as float32; floating inputs keep their dtype.

    Each instance owns its random state (seeded 0), so two instances never share a generator;
    :class:`~shortcut_kd.shortcuts.InjectShortcutd` reseeds a copy for every sample.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    #: ``"localized"`` (acts on a region, see :meth:`mask`) or ``"diffuse"`` (acts everywhere)
    kind: str = "diffuse"

    def __init__(self) -> None:
        self.R = np.random.RandomState(0)

    def randomize(self, img_shape: Sequence[int] | None = None) -> None:
        """Draw the random parameters for an image of channel-first shape ``img_shape`` (default: none)."""

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """Boolean array of ``spatial_shape``: where the shortcut acts (everywhere for a diffuse one)."""
        return np.ones(tuple(int(s) for s in spatial_shape), dtype=bool)

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Apply the shortcut to a channel-first image ``img`` of 2 or 3 spatial dimensions.

        Args:
            img: channel-first image, numpy array or torch tensor (MetaTensor keeps its metadata).
            randomize: draw new random parameters first (``False`` reuses the last ones).
        """
        tensor: torch.Tensor = convert_to_tensor(img, track_meta=get_track_meta())
        if tensor.ndim not in (3, 4):
            raise ValueError(
                f"{type(self).__name__} expects a channel-first 2D or 3D image (C, H, W[, D]), got shape "
                f"{tuple(tensor.shape)}; add the channel dimension first (e.g. EnsureChannelFirst)."
            )
        t = tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor
        if not t.is_floating_point():
            t = t.float()
        if randomize:
            self.randomize(tuple(t.shape))
        out = self._apply(t)
        if isinstance(out, MetaTensor):  # MONAI helpers return fresh MetaTensors: keep the input's metadata
            out = out.as_tensor()
        out, *_ = convert_to_dst_type(out, dst=tensor, dtype=out.dtype)
        return out


class DiffuseShortcut(ShortcutTransform):
    """A shortcut that changes the whole image (noise, blur, contrast, bias field)."""

    kind = "diffuse"


class LocalizedShortcut(ShortcutTransform):
    """A shortcut confined to a region; :meth:`mask` reports the region.

    Random parameters are drawn as unit-interval fractions, independent of the image shape, so the
    mask can be computed for any shape (e.g. the resized image shown in a Grad-CAM panel).
    """

    kind = "localized"

    def __init__(self, position: str = "fixed") -> None:
        super().__init__()
        if position not in ("fixed", "random"):
            raise ValueError(f"position must be 'fixed' or 'random', got {position!r}.")
        self.position = position
        self._u: np.ndarray | None = None

    def randomize(self, img_shape: Sequence[int] | None = None) -> None:
        if self.position == "random":
            # always three draws, whatever the image dimension, so the mask is shape independent
            self._u = self.R.uniform(0.0, 1.0, size=3)

    def _fractions(self, fixed: Sequence[float], ndim: int) -> list[float]:
        """Placement fractions per spatial axis: the fixed ones, or the last random draw."""
        if self.position == "fixed":
            return [float(f) for f in fixed][:ndim]
        if self._u is None:
            raise RuntimeError(
                f"{type(self).__name__}(position='random') has no position yet: call the transform "
                "or randomize() before mask()."
            )
        return [float(u) for u in self._u[:ndim]]

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def _paint(self, img: torch.Tensor, intensity: float) -> torch.Tensor:
        """Set the masked region of every channel to ``min + intensity * span`` of the image."""
        lo, span = intensity_range(img)
        region = torch.as_tensor(self.mask(img.shape[1:]), device=img.device)
        value = torch.as_tensor(lo + intensity * span, dtype=img.dtype, device=img.device)
        return torch.where(region.unsqueeze(0), value, img)


def side_pixels(fraction: float, spatial_shape: Sequence[int], minimum: int = 1) -> int:
    """``fraction`` of the smallest spatial side, in whole pixels (at least ``minimum``)."""
    return max(minimum, int(round(float(fraction) * min(int(s) for s in spatial_shape))))


def margin_pixels(fraction: float, spatial_shape: Sequence[int]) -> int:
    """A margin of ``fraction`` of the smallest spatial side (may be 0)."""
    return side_pixels(fraction, spatial_shape, minimum=0)


def place(size: int, length: int, margin: int, fraction: float) -> int:
    """Start index of a segment of ``size`` in an axis of ``length``.

    ``fraction`` 0 puts it ``margin`` from the start, 1 ``margin`` from the end; values between slide it.
    """
    free = length - 2 * margin - size
    if free < 0:  # too little room for the margin: centre what fits
        return max(0, (length - size) // 2)
    return margin + int(round(float(fraction) * free))


def corner_fractions(corner: str | Sequence[float], ndim: int, depth: float = 0.5) -> list[float]:
    """Placement fractions for a named corner (array index terms) or an explicit per-axis sequence.

    A named corner fixes the first two spatial axes; in 3D the third axis is at ``depth``
    (0.5 = centred, so the mark shows on the middle slices).
    """
    if isinstance(corner, str):
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {sorted(CORNERS)} or per-axis fractions, got {corner!r}.")
        fr = list(CORNERS[corner])
    else:
        fr = [float(c) for c in corner]
    return _fit(fr, ndim, depth)


def per_axis(value: float | Sequence[float], ndim: int, fill: float = 0.5) -> list[float]:
    """A scalar broadcast to ``ndim`` axes, or a sequence padded with ``fill``."""
    if isinstance(value, (int, float)):
        return [float(value)] * ndim
    return _fit([float(v) for v in value], ndim, fill)


def _fit(values: list[float], ndim: int, fill: float) -> list[float]:
    """``values`` padded with ``fill`` or cut to ``ndim`` entries."""
    return (values + [fill] * (ndim - len(values)))[:ndim]


def coordinate_grid(spatial_shape: Sequence[int]) -> np.ndarray:
    """Voxel coordinates, shape ``(ndim, *spatial_shape)``, float32."""
    axes = [np.arange(int(s), dtype=np.float32) for s in spatial_shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)
