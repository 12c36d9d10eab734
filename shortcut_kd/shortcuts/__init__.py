"""Shortcut transforms: MONAI array and dictionary transforms that inject bias features into images.

Localized: :class:`SquarePatch`, :class:`TextTag`, :class:`Stripes`, :class:`IntensityBlob`,
:class:`RegionalDeformation`. Diffuse: :class:`GaussianNoiseShortcut`, :class:`BlurShortcut`,
:class:`ContrastShortcut`, :class:`BiasFieldShortcut`. :class:`InjectShortcutd` applies one where a
sample's ``bias`` flag is 1, seeded by the sample id; :func:`make_shortcut` builds a named preset.
"""

from shortcut_kd.shortcuts.base import CORNERS, DiffuseShortcut, LocalizedShortcut, ShortcutTransform, intensity_range
from shortcut_kd.shortcuts.diffuse import BiasFieldShortcut, BlurShortcut, ContrastShortcut, GaussianNoiseShortcut
from shortcut_kd.shortcuts.dictionary import (
    BiasFieldShortcutd,
    BiasFieldShortcutD,
    BiasFieldShortcutDict,
    BlurShortcutd,
    BlurShortcutD,
    BlurShortcutDict,
    ContrastShortcutd,
    ContrastShortcutD,
    ContrastShortcutDict,
    GaussianNoiseShortcutd,
    GaussianNoiseShortcutD,
    GaussianNoiseShortcutDict,
    IntensityBlobd,
    IntensityBlobD,
    IntensityBlobDict,
    RegionalDeformationd,
    RegionalDeformationD,
    RegionalDeformationDict,
    ShortcutDictTransform,
    SquarePatchd,
    SquarePatchD,
    SquarePatchDict,
    Stripesd,
    StripesD,
    StripesDict,
    TextTagd,
    TextTagD,
    TextTagDict,
)
from shortcut_kd.shortcuts.inject import InjectShortcutd, InjectShortcutD, InjectShortcutDict, shortcut_mask
from shortcut_kd.shortcuts.localized import (
    IntensityBlob,
    RegionalDeformation,
    SquarePatch,
    Stripes,
    TextTag,
    render_text,
)
from shortcut_kd.shortcuts.presets import (
    SHORTCUT_CLASSES,
    list_shortcuts,
    load_presets,
    make_shortcut,
    shortcut_kind,
    shortcut_preset,
)

__all__ = [
    "CORNERS", "ShortcutTransform", "LocalizedShortcut", "DiffuseShortcut", "ShortcutDictTransform",
    "intensity_range", "render_text",
    "SquarePatch", "TextTag", "Stripes", "IntensityBlob", "RegionalDeformation",
    "GaussianNoiseShortcut", "BlurShortcut", "ContrastShortcut", "BiasFieldShortcut",
    "SquarePatchd", "SquarePatchD", "SquarePatchDict",
    "TextTagd", "TextTagD", "TextTagDict",
    "Stripesd", "StripesD", "StripesDict",
    "IntensityBlobd", "IntensityBlobD", "IntensityBlobDict",
    "RegionalDeformationd", "RegionalDeformationD", "RegionalDeformationDict",
    "GaussianNoiseShortcutd", "GaussianNoiseShortcutD", "GaussianNoiseShortcutDict",
    "BlurShortcutd", "BlurShortcutD", "BlurShortcutDict",
    "ContrastShortcutd", "ContrastShortcutD", "ContrastShortcutDict",
    "BiasFieldShortcutd", "BiasFieldShortcutD", "BiasFieldShortcutDict",
    "InjectShortcutd", "InjectShortcutD", "InjectShortcutDict", "shortcut_mask",
    "SHORTCUT_CLASSES", "load_presets", "list_shortcuts", "shortcut_kind", "shortcut_preset", "make_shortcut",
]  # fmt: skip
