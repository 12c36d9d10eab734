"""Where a result comes from: code and library versions, machine, threads, and content hashes of the
files it was made from, recorded beside every metrics and results file."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "json_sha256", "git_commit", "environment", "relative_paths", "portable_paths"]


def file_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 of a file's bytes (None when it does not exist)."""
    return file_digest(path, "sha256")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str | None:
    """The ``hashlib`` digest ``algorithm`` (e.g. ``md5`` for ``large_files.yml``) of a file's bytes, read in
    blocks (None when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(data: Any) -> str:
    """The SHA-256 of ``data`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def git_commit() -> str | None:
    """The commit of the shortcut-kd source tree when it is a git checkout (with ``+dirty`` for local
    changes), else None (an installed wheel: its version says which code ran)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment(device: Any = None) -> dict:
    """Versions, device and thread count of this process."""
    import monai
    import torch

    from shortcut_kd import __version__

    device = torch.device(device) if device is not None else None
    return {"shortcut_kd": __version__, "git_commit": git_commit(), "torch": torch.__version__,
            "monai": monai.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device) if device is not None else None,
            "device_name": torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else
            platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


def relative_paths(data: Any, base: str | os.PathLike) -> Any:
    """``data`` with every string that is an absolute path inside ``base`` written relative to it (``.`` for
    ``base`` itself), so a results file can be moved, shared or committed without naming the machine's
    folders. Other values are unchanged."""
    root = os.path.abspath(base)

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, str) and os.path.isabs(value):
            path = os.path.abspath(value)
            if path == root or path.startswith(root + os.sep):
                return os.path.relpath(path, root)
        return value

    return convert(data)


def portable_paths(data: Any, base: str | os.PathLike) -> Any:
    """``data`` with folders inside ``base`` (a run's output) and inside the shortcut-kd installation (its
    bundles and presets) written relative to them: what a committed or shared results file should hold."""
    source_root = Path(__file__).resolve().parents[1]
    return relative_paths(relative_paths(data, base), source_root)
