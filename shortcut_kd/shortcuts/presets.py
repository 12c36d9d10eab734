"""Named shortcut presets, read from ``configs/shortcuts.yaml`` in the installed package.

A preset is::

    patch:
      kind: localized            # or diffuse
      class: SquarePatch         # a transform of shortcut_kd.shortcuts
      spatial_dims: [2, 3]       # the dimensions it supports
      description: ...
      params: {size: 0.125, ...} # constructor arguments
      params_3d: {...}           # optional, merged over params for 3D images (params_2d likewise)
"""

from __future__ import annotations

import copy
import inspect
import os
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml

from shortcut_kd.errors import ConfigError
from shortcut_kd.shortcuts.base import ShortcutTransform
from shortcut_kd.shortcuts.diffuse import BiasFieldShortcut, BlurShortcut, ContrastShortcut, GaussianNoiseShortcut
from shortcut_kd.shortcuts.localized import IntensityBlob, RegionalDeformation, SquarePatch, Stripes, TextTag

__all__ = ["SHORTCUT_CLASSES", "load_presets", "list_shortcuts", "shortcut_kind", "shortcut_preset", "make_shortcut"]

SHORTCUT_CLASSES: dict[str, type[ShortcutTransform]] = {
    cls.__name__: cls
    for cls in (
        SquarePatch, TextTag, Stripes, IntensityBlob, RegionalDeformation,
        GaussianNoiseShortcut, BlurShortcut, ContrastShortcut, BiasFieldShortcut,
    )
}  # fmt: skip

_KINDS = ("localized", "diffuse")


def _default_file() -> str:
    return str(files("shortcut_kd") / "configs" / "shortcuts.yaml")


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> dict[str, dict[str, Any]]:
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError("shortcuts", type(raw).__name__, f"{path} must map preset names to settings.")
    for name, preset in raw.items():
        _validate(path, str(name), preset)
    return {str(k): v for k, v in raw.items()}


def _validate(path: str, name: str, preset: Any) -> None:
    where = f"{name}"
    if not isinstance(preset, dict):
        raise ConfigError(where, preset, f"in {path}, give the preset 'kind', 'class', 'spatial_dims' and 'params'.")
    for field in ("kind", "class", "spatial_dims"):
        if field not in preset:
            raise ConfigError(f"{where}.{field}", None, f"in {path}, add '{field}' to preset '{name}'.")
    if preset["kind"] not in _KINDS:
        raise ConfigError(f"{where}.kind", preset["kind"], f"in {path}, use one of {list(_KINDS)}.")
    if preset["class"] not in SHORTCUT_CLASSES:
        raise ConfigError(f"{where}.class", preset["class"], f"in {path}, use one of {sorted(SHORTCUT_CLASSES)}.")
    if SHORTCUT_CLASSES[preset["class"]].kind != preset["kind"]:
        raise ConfigError(
            f"{where}.kind", preset["kind"],
            f"in {path}, {preset['class']} is {SHORTCUT_CLASSES[preset['class']].kind}; set kind to match.",
        )  # fmt: skip
    dims = preset["spatial_dims"]
    if not isinstance(dims, list) or not dims or any(d not in (2, 3) for d in dims):
        raise ConfigError(f"{where}.spatial_dims", dims, f"in {path}, give a list drawn from [2, 3].")


def load_presets(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """All presets, from ``path`` or the packaged ``configs/shortcuts.yaml``."""
    path = str(path) if path is not None else _default_file()
    if not os.path.isfile(path):
        raise ConfigError("shortcuts file", path, "reinstall shortcut-kd, or pass the path of a shortcuts.yaml.")
    return copy.deepcopy(_load(path, os.path.getmtime(path)))  # callers may edit their copy


def list_shortcuts(path: str | os.PathLike | None = None) -> list[str]:
    """The preset names, in file order."""
    return list(load_presets(path))


def shortcut_preset(name: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """One preset's settings; an unknown name raises a ConfigError listing the valid names."""
    presets = load_presets(path)
    if name not in presets:
        raise ConfigError("shortcut", name, f"use one of: {', '.join(presets)}.")
    return presets[name]


def shortcut_kind(name: str, path: str | os.PathLike | None = None) -> str:
    """``"localized"`` or ``"diffuse"``."""
    return str(shortcut_preset(name, path)["kind"])


def make_shortcut(
    name: str, spatial_dims: int, path: str | os.PathLike | None = None, **overrides: Any
) -> ShortcutTransform:
    """Build the shortcut array transform of preset ``name`` for ``spatial_dims`` (2 or 3).

    Args:
        name: a preset name (see :func:`list_shortcuts`).
        spatial_dims: 2 or 3; must be among the preset's ``spatial_dims``.
        path: an alternative shortcuts.yaml (default: the packaged one).
        overrides: constructor arguments replacing the preset's, e.g. ``size=0.2``.
    """
    preset = shortcut_preset(name, path)
    if spatial_dims not in preset["spatial_dims"]:
        raise ConfigError("spatial_dims", spatial_dims, f"preset '{name}' supports {preset['spatial_dims']}.")
    cls = SHORTCUT_CLASSES[preset["class"]]
    params = dict(preset.get("params") or {})
    params.update(preset.get(f"params_{spatial_dims}d") or {})
    params.update(overrides)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", params[unknown[0]], f"{cls.__name__} accepts {accepted}.")
    return cls(**params)
