"""Dictionary (``d``) forms of the shortcut transforms.

Each applies its array transform to every key, with one draw of the random parameters per call
(so an image and, say, its second view get the same patch). To inject a shortcut on some samples
only, keyed by the datalist's ``bias`` flag, use :class:`~shortcut_kd.shortcuts.InjectShortcutd`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

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
    """Dictionary form of a shortcut array transform (``array_class``).

    Args:
        keys: keys of the images to change. See also: :py:class:`monai.transforms.MapTransform`.
        allow_missing_keys: don't raise an exception if a key is missing.
        kwargs: the arguments of the array transform.
    """

    array_class: type[ShortcutTransform] = ShortcutTransform

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.shortcut = self.array_class(**kwargs)
        self.R = self.shortcut.R
        self.kind = self.shortcut.kind

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.shortcut.set_random_state(state=self.R)
        return self

    def randomize(self, data: NdarrayOrTensor | None = None) -> None:
        self.shortcut.randomize(None if data is None else tuple(data.shape))

    def mask(self, spatial_shape) -> np.ndarray:
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


def _doc(cls: type[ShortcutDictTransform]) -> type[ShortcutDictTransform]:
    cls.__doc__ = (
        f"Dictionary-based version :py:class:`shortcut_kd.shortcuts.{cls.array_class.__name__}`.\n\n"
        "    Args:\n"
        "        keys: keys of the images to change.\n"
        "        allow_missing_keys: don't raise an exception if a key is missing.\n"
        f"        kwargs: the arguments of {cls.array_class.__name__}.\n"
    )
    return cls


@_doc
class SquarePatchd(ShortcutDictTransform):
    array_class = SquarePatch


@_doc
class TextTagd(ShortcutDictTransform):
    array_class = TextTag


@_doc
class Stripesd(ShortcutDictTransform):
    array_class = Stripes


@_doc
class IntensityBlobd(ShortcutDictTransform):
    array_class = IntensityBlob


@_doc
class RegionalDeformationd(ShortcutDictTransform):
    array_class = RegionalDeformation


@_doc
class GaussianNoiseShortcutd(ShortcutDictTransform):
    array_class = GaussianNoiseShortcut


@_doc
class BlurShortcutd(ShortcutDictTransform):
    array_class = BlurShortcut


@_doc
class ContrastShortcutd(ShortcutDictTransform):
    array_class = ContrastShortcut


@_doc
class BiasFieldShortcutd(ShortcutDictTransform):
    array_class = BiasFieldShortcut


SquarePatchD = SquarePatchDict = SquarePatchd
TextTagD = TextTagDict = TextTagd
StripesD = StripesDict = Stripesd
IntensityBlobD = IntensityBlobDict = IntensityBlobd
RegionalDeformationD = RegionalDeformationDict = RegionalDeformationd
GaussianNoiseShortcutD = GaussianNoiseShortcutDict = GaussianNoiseShortcutd
BlurShortcutD = BlurShortcutDict = BlurShortcutd
ContrastShortcutD = ContrastShortcutDict = ContrastShortcutd
BiasFieldShortcutD = BiasFieldShortcutDict = BiasFieldShortcutd
