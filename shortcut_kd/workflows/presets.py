"""Protocol presets shipped in configs/protocols/."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml

from shortcut_kd.errors import ConfigError


def protocol_dir() -> Path:
    return Path(str(files("shortcut_kd") / "configs" / "protocols"))


def load_protocol_preset(name: str) -> dict:
    """The preset ``configs/protocols/<name>.yaml`` as a dict."""
    path = protocol_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in protocol_dir().glob("*.yaml"))
        raise ConfigError("protocol preset", name, f"use one of {known}.")
    return yaml.safe_load(path.read_text()) or {}
