"""Shortcut transforms: MONAI array and dictionary transforms that inject bias features into images.

Localized: :class:`SquarePatch`, :class:`TextTag`, :class:`Stripes`, :class:`IntensityBlob`,
:class:`RegionalDeformation`. Diffuse: :class:`GaussianNoiseShortcut`, :class:`BlurShortcut`,
:class:`ContrastShortcut`, :class:`BiasFieldShortcut`. :class:`InjectShortcutd` applies one where a
sample's ``bias`` flag is 1, seeded by the sample id; :func:`make_shortcut` builds a named preset.
"""

from shortcut_kd.shortcuts import base, dictionary, diffuse, inject, localized, presets
from shortcut_kd.shortcuts.base import CORNERS, DiffuseShortcut, LocalizedShortcut, ShortcutTransform, intensity_range
from shortcut_kd.shortcuts.dictionary import (
    BiasFieldShortcutd, BiasFieldShortcutD, BiasFieldShortcutDict, BlurShortcutd, BlurShortcutD, BlurShortcutDict,
    ContrastShortcutd, ContrastShortcutD, ContrastShortcutDict, GaussianNoiseShortcutd, GaussianNoiseShortcutD,
    GaussianNoiseShortcutDict, IntensityBlobd, IntensityBlobD, IntensityBlobDict, RegionalDeformationd,
    RegionalDeformationD, RegionalDeformationDict, ShortcutDictTransform, SquarePatchd, SquarePatchD, SquarePatchDict,
    Stripesd, StripesD, StripesDict, TextTagd, TextTagD, TextTagDict,
)
from shortcut_kd.shortcuts.diffuse import BiasFieldShortcut, BlurShortcut, ContrastShortcut, GaussianNoiseShortcut
from shortcut_kd.shortcuts.inject import InjectShortcutd, InjectShortcutD, InjectShortcutDict, shortcut_mask
from shortcut_kd.shortcuts.localized import (
    IntensityBlob, RegionalDeformation, SquarePatch, Stripes, TextTag, render_text,
)
from shortcut_kd.shortcuts.presets import (
    SHORTCUT_CLASSES, list_shortcuts, load_presets, make_shortcut, shortcut_kind, shortcut_preset,
)

# the public names, as each submodule lists them
__all__: list[str] = []
__all__ += base.__all__
__all__ += localized.__all__
__all__ += diffuse.__all__
__all__ += dictionary.__all__
__all__ += inject.__all__
__all__ += presets.__all__
