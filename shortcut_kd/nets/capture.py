"""Capture intermediate feature maps (at the taps) with forward hooks that never outlive their use."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from shortcut_kd.errors import ConfigError
from shortcut_kd.nets.checkpoint import unwrap

__all__ = ["FeatureCapture"]


class FeatureCapture:
    """Context manager that records the outputs of named sub-modules during forward passes.

    The hooks are registered on ``__enter__`` and removed on ``__exit__``, also when the body
    raises, so no hook leaks into a later iteration or run. ``features`` maps each name to the
    output of its most recent forward call (overwritten at every call).

    Args:
        model: the network to tap (a ``DataParallel`` / ``DistributedDataParallel`` wrapper is looked through).
        names: sub-module names as accepted by ``model.get_submodule`` (e.g. ``"layer1"``).
        detach: store detached outputs (for a frozen teacher or for analysis).

    Example::

        with FeatureCapture(model, ["layer1", "layer4"]) as cap:
            logits = model(x)
        cap.features["layer4"].shape
    """

    def __init__(self, model: nn.Module, names: Sequence[str], detach: bool = False) -> None:
        self.model = model = unwrap(model)
        self.names = list(dict.fromkeys(names))
        self.detach = detach
        self.features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for name in self.names:  # fail early, with the valid names, before any hook exists
            try:
                model.get_submodule(name)
            except AttributeError as e:
                valid = [n for n, _ in model.named_modules() if n][:40]
                raise ConfigError("taps", name, f"{type(model).__name__} has no such sub-module; "
                                  f"use one of {valid}.") from e

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs, output) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.features[name] = output.detach() if self.detach else output

        return record

    def __enter__(self) -> "FeatureCapture":
        self.remove()  # re-entering never stacks a second set of hooks
        self.features.clear()
        for name in self.names:
            self._handles.append(self.model.get_submodule(name).register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this capture registered (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        """True while hooks are registered."""
        return bool(self._handles)
