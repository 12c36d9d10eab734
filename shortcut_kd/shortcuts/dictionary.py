"""Dictionary (``d``) forms of the shortcut transforms.

Each applies its array transform to every key, with one draw of the random parameters per call
(so an image and, say, its second view get the same patch). To inject a shortcut on some samples
only, keyed by the datalist's ``bias`` flag, use :class:`~shortcut_kd.shortcuts.InjectShortcutd`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable

from shortcut_kd.shortcuts.base import ShortcutTransform
from shortcut_kd.shortcuts.diffuse import BiasFieldShortcut, BlurShortcut, ContrastShortcut, GaussianNoiseShortcut
from shortcut_kd.shortcuts.localized import IntensityBlob, RegionalDeformation, SquarePatch, Stripes, TextTag

__all__ = [
    "ShortcutDictTransform",
    "SquarePatchd", "SquarePatchD", "SquarePatchDict",
    "TextTagd", "TextTagD", "TextTagDict",
    "Stripesd", "StripesD", "StripesDict",
    "IntensityBlobd", "IntensityBlobD", "IntensityBlobDict",
    "RegionalDeformationd", "RegionalDeformationD", "RegionalDeformationDict",
    "GaussianNoiseShortcutd", "GaussianNoiseShortcutD", "GaussianNoiseShortcutDict",
    "BlurShortcutd", "BlurShortcutD", "BlurShortcutDict",
    "ContrastShortcutd", "ContrastShortcutD", "ContrastShortcutDict",
    "BiasFieldShortcutd", "BiasFieldShortcutD", "BiasFieldShortcutDict",
]  # fmt: skip


class ShortcutDictTransform(Randomizable, MapTransform):
    """Dictionary form of a shortcut array transform: one draw of its random parameters per call, for every key.

    The named subclasses (:class:`SquarePatchd`, ...) build their array transform from the same
    arguments as the array class; this base class wraps an existing one.

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        shortcut: the shortcut array transform to apply (this transform shares its random state).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = ShortcutTransform.backend

    def __init__(self, keys: KeysCollection, shortcut: ShortcutTransform, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.shortcut = shortcut
        self.R = self.shortcut.R
        self.kind = self.shortcut.kind

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> ShortcutDictTransform:
        super().set_random_state(seed, state)
        self.shortcut.set_random_state(state=self.R)
        return self

    def randomize(self, data: NdarrayOrTensor | None = None) -> None:
        self.shortcut.randomize(None if data is None else tuple(data.shape))

    def mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """Where the shortcut acted in the last call, as a boolean array of ``spatial_shape``."""
        return self.shortcut.mask(spatial_shape)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.randomize(d[first])
        for key in self.key_iterator(d):
            d[key] = self.shortcut(d[key], randomize=False)
        return d


class SquarePatchd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.SquarePatch`.

    All keys get the same patch (one draw of the random position per call).

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        size: side of the square as a fraction of the smallest spatial side.
        intensity: the patch value as a fraction of the image's own [min, max] range (1.0 = its max,
            0.0 = its min).
        position: ``"fixed"`` (at ``corner``) or ``"random"`` (a new place per call, drawn from ``self.R``).
        corner: ``"top-left"``, ``"top-right"``, ``"bottom-left"``, ``"bottom-right"`` (array index terms;
            in 3D the patch is centred along the third axis), or per-axis fractions (0 = start, 1 = end).
        margin: gap between the patch and the image border, as a fraction of the smallest side.
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: float = 0.125,
        intensity: float = 1.0,
        position: str = "fixed",
        corner: str | Sequence[float] = "top-left",
        margin: float = 0.03125,
        allow_missing_keys: bool = False,
    ) -> None:
        shortcut = SquarePatch(size=size, intensity=intensity, position=position, corner=corner, margin=margin)
        super().__init__(keys, shortcut, allow_missing_keys)


class TextTagd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.TextTag`.

    All keys get the same marker (one draw of the random position per call).

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        text: the marker text.
        size: text height as a fraction of the smallest of the first two spatial sides (shrunk to fit).
        intensity: the ink value as a fraction of the image's own [min, max] range.
        position: ``"fixed"`` (at ``corner``) or ``"random"`` (per call, from ``self.R``).
        corner: a named corner or per-axis fractions, as for :class:`SquarePatchd`.
        margin: gap to the border, as a fraction of the smallest side.
        depth: in 3D, the slab thickness as a fraction of the third axis (centred unless random).
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        text: str = "L",
        size: float = 0.2,
        intensity: float = 1.0,
        position: str = "fixed",
        corner: str | Sequence[float] = "top-right",
        margin: float = 0.03125,
        depth: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        shortcut = TextTag(
            text=text, size=size, intensity=intensity, position=position, corner=corner, margin=margin, depth=depth
        )
        super().__init__(keys, shortcut, allow_missing_keys)


class Stripesd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.Stripes`.

    All keys get the same bars (one draw of the random offset per call).

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        n_stripes: number of bars.
        thickness: bar thickness as a fraction of the smallest side (at least one pixel).
        length: how far the bars reach into the image, as a fraction of the smallest side.
        spacing: gap between neighbouring bars, as a fraction of the smallest side (at least one pixel).
        intensity: the bar value as a fraction of the image's own [min, max] range.
        edge: ``"top"``/``"bottom"`` (ends of the first spatial axis) or ``"left"``/``"right"`` (second axis).
        offset: where the group of bars sits along the edge (0 = start, 1 = end); random per call
            when ``position="random"``.
        position: ``"fixed"`` or ``"random"``.
        margin: gap to the border, as a fraction of the smallest side.
        depth: in 3D, the slab thickness as a fraction of the third axis.
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
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
        allow_missing_keys: bool = False,
    ) -> None:
        shortcut = Stripes(
            n_stripes=n_stripes,
            thickness=thickness,
            length=length,
            spacing=spacing,
            intensity=intensity,
            edge=edge,
            offset=offset,
            position=position,
            margin=margin,
            depth=depth,
        )
        super().__init__(keys, shortcut, allow_missing_keys)


class IntensityBlobd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.IntensityBlob`.

    All keys get the same blob (one draw of the random centre per call).

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        radius: radius of the blob as a fraction of the smallest spatial side.
        intensity: peak added intensity as a fraction of the image's own range (negative: a dark blob).
        position: ``"fixed"`` (at ``center``) or ``"random"`` (per call, the ball kept inside the image).
        center: the fixed centre as a fraction of each axis (a scalar for every axis, or one per axis).
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        radius: float = 0.15,
        intensity: float = 0.5,
        position: str = "fixed",
        center: float | Sequence[float] = (0.3, 0.7, 0.5),
        allow_missing_keys: bool = False,
    ) -> None:
        shortcut = IntensityBlob(radius=radius, intensity=intensity, position=position, center=center)
        super().__init__(keys, shortcut, allow_missing_keys)


class RegionalDeformationd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.RegionalDeformation`.

    All keys get the same deformation (one draw of the random centre per call).

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        radius: radius of the deformed region as a fraction of the smallest spatial side.
        strength: expansion (> 0) or contraction (< 0), in (-1.25, 1).
        position: ``"fixed"`` (at ``center``) or ``"random"`` (per call, the ball kept inside the image).
        center: the fixed centre as a fraction of each axis (a scalar for every axis, or one per axis).
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        radius: float = 0.25,
        strength: float = 0.5,
        position: str = "fixed",
        center: float | Sequence[float] = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        shortcut = RegionalDeformation(radius=radius, strength=strength, position=position, center=center)
        super().__init__(keys, shortcut, allow_missing_keys)


class GaussianNoiseShortcutd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.GaussianNoiseShortcut`.

    All keys get the same noise (one draw per call), so they must have the same shape.

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        std: noise standard deviation as a fraction of the image's own [min, max] range.
        grain: noise cell size as a fraction of the smallest spatial side; 0 = independent per pixel.
            Choose about ``1 / image_size`` when images are shrunk a lot after injection.
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self, keys: KeysCollection, std: float = 0.12, grain: float = 0.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, GaussianNoiseShortcut(std=std, grain=grain), allow_missing_keys)


class BlurShortcutd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.BlurShortcut`.

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        sigma: the blur's standard deviation, in pixels or as a fraction of the smallest spatial side.
        unit: ``"fraction"`` (default; resolution independent) or ``"pixels"``.
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self, keys: KeysCollection, sigma: float = 0.03, unit: str = "fraction", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, BlurShortcut(sigma=sigma, unit=unit), allow_missing_keys)


class ContrastShortcutd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.ContrastShortcut`.

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        mode: ``"gamma"`` or ``"scale"``.
        gamma: the exponent for ``mode="gamma"`` (> 1 darkens the mid-tones, < 1 brightens them).
        factor: the contrast factor for ``mode="scale"``.
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "gamma",
        gamma: float = 2.0,
        factor: float = 1.2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, ContrastShortcut(mode=mode, gamma=gamma, factor=factor), allow_missing_keys)


class BiasFieldShortcutd(ShortcutDictTransform):
    """Dictionary-based version :py:class:`shortcut_kd.shortcuts.BiasFieldShortcut`.

    All keys get the same field (one draw per call), so they must have the same spatial shape.

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        degree: polynomial degree of the field (at least 1).
        coeff_range: range of the uniformly drawn polynomial coefficients.
        allow_missing_keys: don't raise exception if key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        degree: int = 3,
        coeff_range: Sequence[float] = (0.05, 0.15),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, BiasFieldShortcut(degree=degree, coeff_range=coeff_range), allow_missing_keys)


SquarePatchD = SquarePatchDict = SquarePatchd
TextTagD = TextTagDict = TextTagd
StripesD = StripesDict = Stripesd
IntensityBlobD = IntensityBlobDict = IntensityBlobd
RegionalDeformationD = RegionalDeformationDict = RegionalDeformationd
GaussianNoiseShortcutD = GaussianNoiseShortcutDict = GaussianNoiseShortcutd
BlurShortcutD = BlurShortcutDict = BlurShortcutd
ContrastShortcutD = ContrastShortcutDict = ContrastShortcutd
BiasFieldShortcutD = BiasFieldShortcutDict = BiasFieldShortcutd
