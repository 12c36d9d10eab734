"""Base of the handlers that transform a training batch before the trainer sees it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import

from shortcut_kd.errors import DataError

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )


class BatchTransformHandler:
    """Ignite handler that replaces ``engine.state.batch`` on ``Events.ITERATION_STARTED``.

    Ignite passes ``engine.state.batch`` to the iteration function right after this event, so a
    change made here is what ``SupervisedTrainer._iteration`` (and its ``prepare_batch``) sees.
    Attach it to the trainer only: evaluators keep their batches untouched. The batch dict is
    shallow-copied, never modified in place. Subclasses implement :meth:`transform_batch`.

    Args:
        name: identifier of the ``logging.Logger`` to use; ``None`` uses ``engine.logger``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.logger = logging.getLogger(name)
        self._name = name

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the Ignite trainer (e.g. a MONAI ``SupervisedTrainer``) whose batches to transform.
        """
        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        if not isinstance(batch, dict):
            raise TypeError(
                f"{type(self).__name__} expects dict batches (a MONAI DataLoader over a datalist), "
                f"got {type(batch).__name__}. Fix: load the data as dicts with 'image' and 'label' keys."
            )
        device = getattr(engine.state, "device", None)
        engine.state.batch = self.transform_batch(dict(batch), device)

    def transform_batch(self, batch: dict[str, Any], device: torch.device | str | None) -> dict[str, Any]:
        """Return the transformed batch (a shallow copy of the loader's batch is passed in)."""
        raise NotImplementedError(f"{type(self).__name__} must implement transform_batch().")


def soft_labels(labels: torch.Tensor, num_classes: int, key: str = "label") -> torch.Tensor:
    """Class-probability targets ``(N, num_classes)`` float from integer labels ``(N,)`` / ``(N, 1)``.

    Labels that are already ``(N, num_classes)`` floats (e.g. mixed earlier) are returned as float.
    ``torch.nn.CrossEntropyLoss`` accepts these as probability targets.
    """
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() and labels.ndim == 2 and labels.shape[1] == num_classes:
        return labels.float()
    labels = labels.reshape(-1).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels must be in [0, {num_classes - 1}], got values {sorted(set(labels.tolist()))}.",
            column=key, fix="use binary 0/1 labels, or set num_classes to the number of classes.",
        )
    return torch.nn.functional.one_hot(labels, num_classes).float()


def rng_state_dict(rng: np.random.RandomState) -> dict[str, Any]:
    """A ``RandomState``'s state as tensors and numbers, loadable with ``torch.load(weights_only=True)``
    (MONAI's ``CheckpointLoader`` loads that way; numpy arrays would be refused)."""
    state = rng.get_state(legacy=True)
    assert isinstance(state, tuple)  # the legacy form: a RandomState's MT19937 state is always a tuple
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def load_rng_state(rng: np.random.RandomState, state: Mapping[str, Any]) -> None:
    """Restore a state written by :func:`rng_state_dict`."""
    keys = np.asarray(torch.as_tensor(state["keys"]).numpy(), dtype=np.uint32)
    rng.set_state(("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])))
