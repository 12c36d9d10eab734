"""RandConv: random convolutions of the input, a texture / local-intensity augmentation.

Xu, Liu, Yang, Raffel, Niethammer, "Robust and Generalizable Visual Representation Learning via
Random Convolutions", ICLR 2021. Each batch goes through a randomly initialised convolution
(kernel size drawn from a set, weights ~ N(0, 1 / (C k^d))), whose output is mixed with the
original image by a random weight α ("mix" mode). Shapes are kept; texture and local contrast
change, so a classifier cannot rely on them.

What information it uses: the training images only (no bias labels, no bias-free subset).

Left out: the paper's optional consistency loss between augmented views (a second forward pass).
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from shortcut_kd.baselines.batch_handler import BatchTransformHandler, load_rng_state, rng_state_dict
from shortcut_kd.errors import ConfigError

__all__ = ["RandConv", "RandConvd", "RandConvHandler"]


class RandConv(Randomizable, Transform):
    """Random convolution of a batch ``(N, C, H, W[, D])``, mixed with the input.

    The convolution (C -> C channels, odd kernel size ``k`` drawn from ``kernel_sizes``, weights
    ~ N(0, 1 / (C k^d)), "same" size with replicate padding) is re-drawn every ``redraw_every``
    calls; the mixing weight α ~ U(``alpha_range``) and whether an image is augmented (``prob``)
    are drawn per image at every call. The convolved image is matched to the input's per-image
    mean and standard deviation before mixing, and the mix is matched again, so the intensity
    range stays that of the input (the network's normalisation keeps its meaning).

    This is a batch-level transform like MONAI's ``MixUp``: one convolution for the whole batch.
    All randomness comes from ``self.R`` (``set_random_state(seed)``): same seed, same result.

    Args:
        kernel_sizes: odd kernel sizes to draw from (the paper uses 1, 3, 5, 7).
        redraw_every: draw a new convolution every this many calls (1: every batch).
        mix: mix the convolved image with the original (the paper's ``RC_mix``); ``False`` returns
            the (re-standardised) convolved image.
        alpha_range: range of the uniform mixing weight α of the original image.
        prob: probability that an image of the batch is augmented.
        restandardize: match the output to the input's per-image mean / std.
        eps: guards the division by a near-zero standard deviation.
    """

    def __init__(
        self,
        kernel_sizes: Sequence[int] = (1, 3, 5, 7),
        redraw_every: int = 1,
        mix: bool = True,
        alpha_range: Sequence[float] = (0.0, 1.0),
        prob: float = 1.0,
        restandardize: bool = True,
        eps: float = 1e-6,
    ) -> None:
        sizes = [int(k) for k in kernel_sizes]
        if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
            raise ConfigError("kernel_sizes", list(kernel_sizes), "give positive odd sizes, e.g. [1, 3, 5, 7].")
        if int(redraw_every) < 1:
            raise ConfigError("redraw_every", redraw_every, "use a positive number of calls, e.g. 1.")
        lo, hi = (float(a) for a in alpha_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError("alpha_range", list(alpha_range), "use 0 <= low <= high <= 1, e.g. [0, 1].")
        if not 0.0 <= float(prob) <= 1.0:
            raise ConfigError("prob", prob, "use a probability in [0, 1].")
        self.kernel_sizes = sizes
        self.redraw_every = int(redraw_every)
        self.mix = mix
        self.alpha_range = (lo, hi)
        self.prob = float(prob)
        self.restandardize = restandardize
        self.eps = eps
        self.kernel: np.ndarray | None = None
        self.calls = 0
        self._alpha = np.ones(0)
        self._apply = np.ones(0, dtype=bool)

    def randomize(self, data: torch.Tensor) -> None:
        """Draw the kernel (when due) and the per-image α and apply flags for ``data`` (N, C, ...)."""
        n, c, sd = data.shape[0], data.shape[1], data.ndim - 2
        due = self.calls % self.redraw_every == 0
        if due or self.kernel is None or self.kernel.shape[1] != c or self.kernel.ndim != sd + 2:
            k = int(self.R.choice(self.kernel_sizes))
            std = 1.0 / np.sqrt(c * k**sd)  # He-style scale of the paper: var = 1 / fan_in
            self.kernel = self.R.normal(0.0, std, size=(c, c) + (k,) * sd)
        self._alpha = self.R.uniform(*self.alpha_range, size=n) if self.mix else np.zeros(n)
        self._apply = self.R.uniform(size=n) < self.prob
        self.calls += 1

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            img: batch of images, shape ``(N, C, H, W)`` or ``(N, C, H, W, D)``.
            randomize: draw new parameters first (``False`` re-uses the last draw).
        """
        if img.ndim not in (4, 5):
            raise ValueError(
                f"RandConv expects a batch (N, C, H, W) or (N, C, H, W, D), got shape {tuple(img.shape)}. "
                "Fix: apply it to collated batches (e.g. through RandConvHandler)."
            )
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_floating_point():
            x = x.float()
        if randomize:
            self.randomize(x)
        if self.kernel is None:
            raise RuntimeError("RandConv has no kernel yet. Fix: call it once with randomize=True.")
        weight = torch.as_tensor(self.kernel, dtype=x.dtype, device=x.device)
        k = weight.shape[-1]
        pad = [k // 2] * (2 * (x.ndim - 2))
        conv = F.conv2d if x.ndim == 4 else F.conv3d
        y = conv(F.pad(x, pad, mode="replicate") if k > 1 else x, weight)
        if self.restandardize:
            y = self._match_stats(y, x)
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha = torch.as_tensor(self._alpha, dtype=x.dtype, device=x.device).reshape(shape)
        out = alpha * x + (1 - alpha) * y
        if self.restandardize:
            out = self._match_stats(out, x)
        keep = torch.as_tensor(~self._apply, device=x.device).reshape(shape)
        out = torch.where(keep, x, out)
        return convert_to_dst_type(out, dst=img, dtype=out.dtype)[0]

    def _match_stats(self, y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Give each image of ``y`` the mean and standard deviation of the same image of ``ref``."""
        dims = tuple(range(1, ref.ndim))
        mu_r, sd_r = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True)
        mu_y, sd_y = y.mean(dims, keepdim=True), y.std(dims, keepdim=True)
        return (y - mu_y) / (sd_y + self.eps) * sd_r + mu_r

    def state_dict(self) -> dict[str, Any]:
        """Random state, call count and current kernel, for checkpoint / resume."""
        kernel = None if self.kernel is None else torch.as_tensor(self.kernel)
        return {"rng_state": rng_state_dict(self.R), "calls": self.calls, "kernel": kernel}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_rng_state(self.R, state["rng_state"])
        self.calls = int(state["calls"])
        self.kernel = None if state["kernel"] is None else torch.as_tensor(state["kernel"]).numpy().copy()


class RandConvd(Randomizable, MapTransform):
    """Dictionary-based :class:`RandConv` on a collated batch; all keys share one draw.

    Args:
        keys: keys of the batch images to convolve (e.g. ``"image"``).
        allow_missing_keys: do not raise when a key is missing.
        kwargs: the arguments of :class:`RandConv`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.randconv = RandConv(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandConvd":
        super().set_random_state(seed, state)
        self.randconv.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.randconv.randomize(data)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            d[key] = self.randconv(d[key], randomize=first)
            first = False
        return d


class RandConvHandler(BatchTransformHandler):
    """Apply :class:`RandConv` to the trainer's batch on ``Events.ITERATION_STARTED``.

    The batch image is moved to the engine's device first (the convolution is the costly part);
    labels and the other keys are left as they are.

    What information it uses: the training images only.

    Args:
        image_key: batch key of the images.
        seed: seed of the transform's random state.
        name: logger name (``None``: the engine's logger).
        kwargs: the arguments of :class:`RandConv` (``kernel_sizes``, ``redraw_every``, ``mix``,
            ``alpha_range``, ``prob``, ``restandardize``).

    Example (bundle JSON, in ``train#handlers``)::

        {"_target_": "shortcut_kd.baselines.RandConvHandler", "kernel_sizes": [1, 3, 5, 7], "seed": 0}
    """

    def __init__(self, image_key: str = "image", seed: int = 0, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name)
        self.image_key = image_key
        self.randconv = RandConv(**kwargs)
        self.randconv.set_random_state(seed)

    def transform_batch(self, batch: dict[str, Any], device: torch.device | str | None) -> dict[str, Any]:
        img = batch[self.image_key]
        if device is not None and isinstance(img, torch.Tensor):
            img = img.to(device)
        batch[self.image_key] = self.randconv(img)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.randconv.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.randconv.load_state_dict(state)
