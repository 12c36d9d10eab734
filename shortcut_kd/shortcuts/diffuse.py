"""Diffuse shortcuts: changes spread over the whole image (noise, blur, contrast, bias field).

Levels are fractions of the image's own intensity range and sizes fractions of the smallest spatial
side, so a preset means the same on a 32x32 phantom and on a full-size radiograph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import AdjustContrast, GaussianSmooth, RandBiasField

from shortcut_kd.shortcuts.base import DiffuseShortcut, intensity_range

__all__ = ["GaussianNoiseShortcut", "BlurShortcut", "ContrastShortcut", "BiasFieldShortcut"]


class GaussianNoiseShortcut(DiffuseShortcut):
    """Additive Gaussian noise at a fixed level (a scanner or site signature).

    Unlike MONAI's ``RandGaussianNoise`` (an augmentation with a random level and a probability),
    the level here is fixed and relative to the image's range, and the noise may be spatially
    coarse: a down-sampling resize averages independent per-pixel noise away (resizing 320 -> 32
    divides its std by about 10), while noise in cells of ``grain`` of the side survives it.

    Args:
        std: noise standard deviation as a fraction of the image's own [min, max] range.
        grain: noise cell size as a fraction of the smallest spatial side; 0 = independent per pixel.
            Choose about ``1 / image_size`` when images are shrunk a lot after injection.
    """

    def __init__(self, std: float = 0.12, grain: float = 0.0) -> None:
        super().__init__()
        if float(std) < 0 or float(grain) < 0:
            raise ValueError(f"std and grain must be non-negative, got std={std}, grain={grain}.")
        self.std, self.grain = float(std), float(grain)
        self.noise: np.ndarray | None = None

    def _cell(self, spatial_shape: Sequence[int]) -> int:
        return max(1, int(round(self.grain * min(int(s) for s in spatial_shape))))

    def randomize(self, img_shape: Sequence[int] | None = None) -> None:
        if img_shape is None:
            raise ValueError("GaussianNoiseShortcut.randomize needs the channel-first image shape.")
        channels, *spatial = (int(s) for s in img_shape)
        cell = self._cell(spatial)
        coarse = [-(-n // cell) for n in spatial]  # ceil division
        self.noise = self.R.standard_normal(size=(channels, *coarse)).astype(np.float32)

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        if self.noise is None:
            raise RuntimeError("call randomize() (or the transform with randomize=True) first.")
        spatial = img.shape[1:]
        cell = self._cell(spatial)
        noise = torch.as_tensor(self.noise, device=img.device)
        for axis in range(1, noise.ndim):  # nearest up-sampling of the coarse cells, cropped to size
            noise = noise.repeat_interleave(cell, dim=axis)
        noise = noise[(slice(None),) + tuple(slice(0, int(n)) for n in spatial)]
        if tuple(noise.shape) != tuple(img.shape):
            raise RuntimeError(
                f"noise drawn for shape {tuple(noise.shape)} cannot apply to an image of shape {tuple(img.shape)}; "
                "call with randomize=True."
            )
        _, span = intensity_range(img)
        return img + (self.std * span) * noise.to(img.dtype)


class BlurShortcut(DiffuseShortcut):
    """Gaussian blur of the whole image (e.g. a softer reconstruction kernel), via MONAI ``GaussianSmooth``.

    Args:
        sigma: the blur's standard deviation, in pixels or as a fraction of the smallest spatial side.
        unit: ``"fraction"`` (default; resolution independent) or ``"pixels"``.
    """

    def __init__(self, sigma: float = 0.03, unit: str = "fraction") -> None:
        super().__init__()
        if unit not in ("fraction", "pixels"):
            raise ValueError(f"unit must be 'fraction' or 'pixels', got {unit!r}.")
        if float(sigma) <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}.")
        self.sigma, self.unit = float(sigma), unit

    def sigma_pixels(self, spatial_shape: Sequence[int]) -> float:
        """The blur sigma in pixels for an image of ``spatial_shape``."""
        if self.unit == "pixels":
            return self.sigma
        return self.sigma * min(int(s) for s in spatial_shape)

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        out = GaussianSmooth(sigma=self.sigma_pixels(img.shape[1:]))(img)
        return torch.as_tensor(out).to(img.dtype)


class ContrastShortcut(DiffuseShortcut):
    """A global contrast change.

    ``mode="gamma"`` (default) maps ``x -> min + span * ((x - min) / span) ** gamma`` (MONAI
    ``AdjustContrast``); being non-linear, it survives any linear or min-max intensity normalisation
    applied afterwards. ``mode="scale"`` multiplies contrast about the mean,
    ``x -> mean + factor * (x - mean)`` (SimBA's intensity bias uses 1.2); it is affine, so a later
    min-max or z-score normalisation undoes it exactly: pair it with a fixed-range normalisation
    (``build_transforms(intensity="range")``).

    Args:
        mode: ``"gamma"`` or ``"scale"``.
        gamma: the exponent for ``mode="gamma"`` (> 1 darkens the mid-tones, < 1 brightens them).
        factor: the contrast factor for ``mode="scale"``.
    """

    def __init__(self, mode: str = "gamma", gamma: float = 2.0, factor: float = 1.2) -> None:
        super().__init__()
        if mode not in ("gamma", "scale"):
            raise ValueError(f"mode must be 'gamma' or 'scale', got {mode!r}.")
        if float(gamma) <= 0 or float(factor) <= 0:
            raise ValueError(f"gamma and factor must be positive, got gamma={gamma}, factor={factor}.")
        self.mode, self.gamma, self.factor = mode, float(gamma), float(factor)

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        if self.mode == "scale":
            mean = img.mean()
            return mean + self.factor * (img - mean)
        return torch.as_tensor(AdjustContrast(gamma=self.gamma)(img)).to(img.dtype)


class BiasFieldShortcut(DiffuseShortcut):
    """A smooth multiplicative intensity field (an MR coil / bias-field signature).

    The field is MONAI ``RandBiasField``'s (the exponential of a product of Legendre polynomials with
    coefficients drawn from ``coeff_range``), drawn from this transform's ``self.R``. It multiplies
    the image above its minimum, ``x -> min + (x - min) * field``, so images with negative values
    (e.g. CT) are treated like images starting at zero. With positive coefficients every field
    brightens towards the same corner, which makes it a consistent, learnable signature.

    Args:
        degree: polynomial degree of the field (at least 1).
        coeff_range: range of the uniformly drawn polynomial coefficients.
    """

    def __init__(self, degree: int = 3, coeff_range: Sequence[float] = (0.05, 0.15)) -> None:
        super().__init__()
        self.degree, self.coeff_range = int(degree), (float(coeff_range[0]), float(coeff_range[1]))
        self._field = RandBiasField(degree=self.degree, coeff_range=self.coeff_range, prob=1.0)
        self._field.set_random_state(state=self.R)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self._field.set_random_state(state=self.R)  # one generator: the field draws from self.R
        return self

    def randomize(self, img_shape: Sequence[int] | None = None) -> None:
        if img_shape is None:
            raise ValueError("BiasFieldShortcut.randomize needs the channel-first image shape.")
        self._field.randomize(img_size=tuple(img_shape)[1:])

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        lo, _ = intensity_range(img)
        out = self._field(img - lo, randomize=False)
        return torch.as_tensor(out).to(img.dtype) + lo
