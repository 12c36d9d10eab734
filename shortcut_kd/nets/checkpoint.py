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
from collections.abc import Mapping

import torch
from torch import nn

from shortcut_kd.errors import DataError

__all__ = ["STATE_DICT_KEYS", "load_weights", "read_state_dict", "unwrap"]

STATE_DICT_KEYS = ("model", "network", "net", "state_dict", "student")
"""Keys under which a checkpoint dict may hold the network's state dict, in the order they are tried
(``model`` / ``network``: this toolkit's stages and bundles; the others: common ``CheckpointSaver``
``save_dict`` names)."""

_DAMAGED_FIX = ("delete it and rerun the stage that writes it; a resumable run restarts from its last good "
                "checkpoint.")


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
        reason = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]  # torch adds paragraphs of advice
        raise DataError(f"the checkpoint is damaged: truncated, corrupt or not a torch file "
                        f"({type(e).__name__}: {reason}).", file=path, fix=_DAMAGED_FIX) from e
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    raise DataError(f"no model weights found: the file holds {_describe(obj)}, not a state dict.", file=path,
                    fix="save network.state_dict(), or a dict holding it under 'model' or 'network'.")


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
        DataError: naming the file, when it cannot be read or its weights do not fit the network (as with
            ``load_state_dict``, the parameters that did fit may have been copied by then).
    """
    state = read_state_dict(path, written_by=written_by)
    try:
        unwrap(network).load_state_dict(state, strict=strict)
    except RuntimeError as e:  # missing / unexpected keys or a size mismatch
        detail = " ".join(str(e).split())[:300]
        raise DataError(f"the weights do not fit the {type(unwrap(network)).__name__} network ({detail}).",
                        file=os.fspath(path),
                        fix="build the network with the architecture / network_def (and options such as widths) "
                            "the checkpoint was trained with.") from e
    if device is not None:
        network = network.to(device)
    if frozen:
        network.requires_grad_(False).eval()
    return network
