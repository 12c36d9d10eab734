"""MixUp and CutMix of the trainer's batches, with soft labels, built on MONAI's transforms.

- MixUp: Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
- CutMix: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
  Features", ICCV 2019.

What information they use: the training images and labels only (no bias labels, no bias-free subset).

The batch label becomes a class-probability target ``(N, num_classes)`` float, which
``torch.nn.CrossEntropyLoss`` accepts directly. Attach the handlers to the trainer only; trainer
metrics that expect integer labels (e.g. accuracy on ``engine.state.output["label"]``) do not
apply to mixed batches. The ``bias`` / ``group`` keys of the batch are left unchanged.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import torch
from monai.transforms import CutMix, MixUp
from monai.utils import convert_to_dst_type, convert_to_tensor

from shortcut_kd.baselines.batch_handler import BatchTransformHandler, load_rng_state, rng_state_dict, soft_labels
from shortcut_kd.errors import ConfigError

__all__ = ["MixUpHandler", "CutMixHandler"]


class _MixHandler(BatchTransformHandler):
    """Shared set-up of the two mixing handlers (MONAI mixer, keys, seed, resume state)."""

    mixer_cls: type = MixUp

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = 2,
        image_key: str = "image",
        label_key: str = "label",
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if not float(alpha) > 0:
            raise ConfigError("alpha", alpha, "use a positive Beta(alpha, alpha) parameter, e.g. 0.4 or 1.0.")
        if int(num_classes) < 2:
            raise ConfigError("num_classes", num_classes, "use the number of classes of the network output (2).")
        self.alpha = float(alpha)
        self.num_classes = int(num_classes)
        self.image_key = image_key
        self.label_key = label_key
        # MONAI's mixers take a fixed batch size; it is set per batch (the last batch may be smaller)
        self.mixer = self.mixer_cls(batch_size=1, alpha=self.alpha)
        self.seed = int(seed)
        self.mixer.set_random_state(seed)

    def __call__(self, engine: Any) -> None:
        # iteration k's mixing is drawn from (seed, k): a run resumed from its last checkpoint mixes its batches as
        # the uninterrupted run did, whatever the checkpoint holds of this handler
        state = np.random.SeedSequence([self.seed, int(engine.state.iteration)]).generate_state(1)[0]
        self.mixer.set_random_state(int(state))
        super().__call__(engine)

    def transform_batch(self, batch: dict[str, Any], device: torch.device | str | None) -> dict[str, Any]:
        for key in (self.image_key, self.label_key):
            if key not in batch:
                raise KeyError(f"{type(self).__name__}: the batch has no '{key}' key (keys: {sorted(batch)}). "
                               f"Fix: set image_key / label_key to the datalist's keys.")
        img = batch[self.image_key]
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_floating_point():
            x = x.float()
        y = soft_labels(batch[self.label_key], self.num_classes, self.label_key).to(x.device)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} images in the batch.")
        self.mixer.batch_size = x.shape[0]
        x_mixed, y_mixed = self.mix(x, y)
        batch[self.image_key] = convert_to_dst_type(x_mixed, dst=img, dtype=x_mixed.dtype)[0]
        batch[self.label_key] = y_mixed
        return batch

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"rng_state": rng_state_dict(self.mixer.R)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_rng_state(self.mixer.R, state["rng_state"])


class MixUpHandler(_MixHandler):
    """MixUp of the trainer's batch on ``Events.ITERATION_STARTED`` (MONAI ``MixUp``).

    Each image becomes ``λ x_i + (1 - λ) x_perm(i)`` with ``λ ~ Beta(alpha, alpha)`` per image, and its
    label the same mix of the one-hot labels.

    What information it uses: the training images and labels only.

    Args:
        alpha: Beta distribution parameter (the paper uses 0.2-0.4 for ImageNet; 1.0 is uniform).
        num_classes: number of network outputs (one-hot size of the soft labels).
        image_key: batch key of the images.
        label_key: batch key of the integer labels (replaced by the soft labels).
        seed: seed of the mixer's random state.
        name: logger name (``None``: the engine's logger).

    Example (bundle JSON, in ``train#handlers``)::

        {"_target_": "shortcut_kd.baselines.MixUpHandler", "alpha": 0.4, "seed": 0}
    """

    mixer_cls = MixUp

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.mixer.randomize()
        x_mixed = self.mixer.apply(x)
        # MONAI's MixUp.apply needs a spatial layout: mix the labels as (N, K, 1, 1[, 1]) "images"
        y_img = y.reshape(y.shape + (1,) * (x.ndim - 2))
        y_mixed = self.mixer.apply(y_img).reshape(y.shape)
        return x_mixed, y_mixed


class CutMixHandler(_MixHandler):
    """CutMix of the trainer's batch on ``Events.ITERATION_STARTED`` (MONAI ``CutMix``).

    A box of each image (its size set by ``λ ~ Beta(alpha, alpha)``) is replaced by the same box of
    another image of the batch. The label is mixed by the area actually pasted: MONAI's box is clipped
    at the image border, so the label weights are computed by cutting the one-hot labels, broadcast to
    the image grid, with the same box and averaging them over the grid (exact even when clipped).

    What information it uses: the training images and labels only.

    Args:
        alpha: Beta distribution parameter (the paper uses 1.0).
        num_classes: number of network outputs (one-hot size of the soft labels).
        image_key: batch key of the images.
        label_key: batch key of the integer labels (replaced by the soft labels).
        seed: seed of the mixer's random state.
        name: logger name (``None``: the engine's logger).

    Example (bundle JSON, in ``train#handlers``)::

        {"_target_": "shortcut_kd.baselines.CutMixHandler", "alpha": 1.0, "seed": 0}
    """

    mixer_cls = CutMix

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.mixer.randomize(x)
        spatial = x.shape[2:]
        y_img = y.reshape(y.shape + (1,) * len(spatial)).expand(*y.shape, *spatial)
        with warnings.catch_warnings():
            # MONAI 1.6's CutMix.apply indexes with a list of slices, which torch < 2.14 accepts with a
            # deprecation warning at every call; tests/test_baselines.py checks the boxes are still right
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            x_mixed = self.mixer.apply(x)
            y_mixed = self.mixer.apply(y_img).mean(dim=tuple(range(2, x.ndim)))
        return x_mixed, y_mixed
