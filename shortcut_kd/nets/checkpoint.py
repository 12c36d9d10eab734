"""Network weights on disk: read a state dict, load it into a (possibly DDP-wrapped) network.

Every failure is a :class:`~shortcut_kd.errors.DataError` that names the file, says what is wrong
with it and how to recover: a missing file, a damaged one (truncated by a crash or a full disk, or not
a torch file at all), one that holds no state dict, or weights of another architecture.

MONAI's ``CheckpointLoader`` restores a whole training state into live objects; these helpers cover
the other case, reading the weights of one network (e.g. a frozen teacher) from a file another stage
wrote, with errors a user can act on.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

from shortcut_kd.errors import DataError

__all__ = ["STATE_DICT_KEYS", "load_weights", "read_state_dict", "unwrap"]

STATE_DICT_KEYS = ("model", "network", "net", "state_dict", "student")
"""Keys under which a checkpoint dict may hold the network's state dict, in the order they are tried
(``model`` / ``network``: this toolkit's stages and bundles; the others: common ``CheckpointSaver``
``save_dict`` names)."""

_DAMAGED_FIX = ("delete it and rerun the stage that writes it; a stage resumes from its '<stage>_last.pt' when that "
                "one is intact (its last good checkpoint, saved at the end of every epoch), else it starts over.")
_DAMAGED_LAST_FIX = ("delete it and rerun the stage: this is the stage's own last state (its last good checkpoint "
                     "is lost), so the stage starts over.")


def _damaged_fix(path: str) -> str:
    """The fix of a damaged file: a ``<stage>_last.pt`` is the resume state itself, anything else is rewritten by
    the stage that writes it (which resumes from its own last state when that one is intact)."""
    return _DAMAGED_LAST_FIX if os.path.basename(path).endswith("_last.pt") else _DAMAGED_FIX


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside (possibly nested) ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers.

    Args:
        model: a network, wrapped or not.

    Returns:
        the innermost wrapped module, or ``model`` itself when it is not a wrapper.
    """
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {[str(k) for k in list(obj)[:10]]}"
    return f"a {type(obj).__name__}"


def read_state_dict(path: str | os.PathLike, *, written_by: str | None = None) -> dict:
    """Read a network's state dict from ``path`` (on the CPU, ``weights_only``: no code is unpickled).

    Args:
        path: a file holding a state dict, or a dict holding one under one of ``STATE_DICT_KEYS``
            (``"model"``, ``"network"``, ...), as ``CheckpointSaver`` and this toolkit's stages write.
        written_by: what writes the file, for the fix of a missing file, e.g.
            ``"the 'teacher' stage (configs/teacher.json)"``.

    Returns:
        the state dict (parameter name -> tensor).

    Raises:
        DataError: naming the file: it is missing, damaged (truncated, corrupt or not a torch file) or
            holds no state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        where = "is a folder, not a checkpoint file" if os.path.isdir(path) else "not found"
        fix = f"run {written_by} first, or fix the path." if written_by else \
            "check the path, or run the stage that writes it first."
        raise DataError(f"checkpoint {where}.", file=path, fix=fix)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise DataError(f"cannot read the checkpoint ({e.strerror}).", file=path,
                        fix="give this user read permission on the file.") from e
    except Exception as e:
        # a truncated or garbled file makes torch.load raise nearly any type (RuntimeError from the zip
        # reader, UnpicklingError, EOFError, KeyError, IndexError, struct.error, UnicodeDecodeError, ...)
        text = str(e)
        if "WeightsUnpickler error:" in text:  # torch's own words come after its paragraphs about weights_only
            text = text.split("WeightsUnpickler error:", 1)[1]
        reason = (text.strip().splitlines() or [""])[0].split(". ")[0][:200]
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in reason:
            # an intact torch file holding Python objects: weights_only refuses to import their classes
            raise DataError(f"the file holds pickled Python objects, not a state dict of tensors ({reason}).",
                            file=path, fix="save network.state_dict() (or a dict holding it under 'model' or "
                                           "'network'); if a stage of this toolkit wrote the file, "
                                           + _damaged_fix(path)) from e
        raise DataError(f"the checkpoint is damaged: truncated, corrupt or not a torch file "
                        f"({type(e).__name__}: {reason}).", file=path, fix=_damaged_fix(path)) from e
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    raise DataError(f"no model weights found: the file holds {_describe(obj)}, not a state dict.", file=path,
                    fix="save network.state_dict(), or a dict holding it under 'model' or 'network'.")


def _first_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                    strict: bool = True) -> str | None:
    """The first key where the state dict ``found`` (a checkpoint's) does not fit ``expected`` (a network's).

    Args:
        expected: the network's ``state_dict()``.
        found: the checkpoint's state dict.
        strict: also report keys missing from ``found`` or not in ``expected`` (as ``load_state_dict``);
            shapes are compared either way.

    Returns:
        a sentence naming the key and what differs (the shapes, or which side lacks it), or None when it fits.
    """
    for key, value in expected.items():
        if key not in found:
            if strict:
                return f"key '{key}' of the network is missing from the checkpoint"
            continue
        theirs = found[key]
        if tuple(theirs.shape) != tuple(value.shape):
            return (f"key '{key}' has shape {tuple(theirs.shape)} in the checkpoint but {tuple(value.shape)} in the "
                    f"network")
    if strict:
        for key in found:
            if key not in expected:
                return f"key '{key}' of the checkpoint is not in the network"
    return None


def load_weights(
    network: nn.Module,
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    frozen: bool = False,
    written_by: str | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load the weights in ``path`` (see :func:`read_state_dict`) into ``unwrap(network)``.

    Args:
        network: the architecture to fill, possibly wrapped in ``DataParallel`` / ``DistributedDataParallel``.
        path: the checkpoint file.
        device: where to move the network afterwards (default: leave it where it is).
        frozen: switch off gradients and put the network in eval mode (a teacher); otherwise its mode and
            ``requires_grad`` flags are left as they are.
        written_by: what writes the file, for the error when it is missing (see :func:`read_state_dict`).
        strict: as ``nn.Module.load_state_dict``: every key must match.

    Returns:
        ``network`` (the object passed in, moved to ``device`` when given).

    Raises:
        DataError: naming the file, when it cannot be read or its weights do not fit the network (naming
            the first mismatching key; found before any weight is copied).
    """
    state = read_state_dict(path, written_by=written_by)
    target = unwrap(network)
    mismatch = _first_mismatch(target.state_dict(), state, strict=strict)
    fit_fix = ("build the network with the architecture / network_def (and options such as widths) the checkpoint "
               "was trained with.")
    if mismatch is not None:  # found before anything is copied: the network is left as it was
        raise DataError(f"the weights do not fit the {type(target).__name__} network: {mismatch}.",
                        file=os.fspath(path), fix=fit_fix)
    try:
        target.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # what the check above does not foresee (a module's own load hooks)
        detail = " ".join(str(e).split())[:300]
        raise DataError(f"the weights do not fit the {type(target).__name__} network ({detail}).",
                        file=os.fspath(path), fix=fit_fix) from e
    if device is not None:
        network = network.to(device)
    if frozen:
        network.requires_grad_(False).eval()
    return network
