"""Linear probes on tap points: global average pooling + a linear classifier over the task classes."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Sequence, cast

import torch
import torch.nn.functional as F
from monai.utils import CommonKeys as Keys
from torch import nn

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.nets.capture import FeatureCapture
from shortcut_kd.nets.checkpoint import unwrap

__all__ = ["ProbeHead", "ProbeSet", "default_input_shape", "eval_mode", "fit_probes", "load_probes", "tap_shapes"]

logger = logging.getLogger(__name__)


class ProbeHead(nn.Module):
    """Global average pooling followed by a linear classifier.

    Args:
        in_channels: channels of the tapped feature map.
        num_classes: number of output logits.
        spatial_dims: spatial dimensionality of the feature map (1, 2 or 3); the pooling itself works on
            any (N, C, *spatial) input and also accepts already pooled (N, C) features.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.spatial_dims = int(in_channels), int(num_classes), int(spatial_dims)
        self.linear = nn.Linear(self.in_channels, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over the flattened positions == adaptive average pooling to 1, for 1D, 2D and 3D maps alike
        return self.linear(x.flatten(2).mean(-1) if x.ndim > 2 else x)


def _key(tap: str) -> str:
    # nn.ModuleDict keys may not contain "."; tap names such as "features.denseblock1" do
    return tap.replace(".", "__")


class ProbeSet(nn.Module):
    """One ``ProbeHead`` per tap, held in an ``nn.ModuleDict``; index it by tap name.

    Args:
        channels_per_tap: ordered mapping ``{tap name: channels}`` (see ``tap_shapes``).
        num_classes: number of output logits of every probe.
        spatial_dims: spatial dimensionality of the feature maps.
    """

    def __init__(self, channels_per_tap: Mapping[str, int], num_classes: int, spatial_dims: int) -> None:
        super().__init__()
        self.taps = list(channels_per_tap)
        self.channels = {t: int(c) for t, c in channels_per_tap.items()}
        self.num_classes, self.spatial_dims = int(num_classes), int(spatial_dims)
        self.heads = nn.ModuleDict({_key(t): ProbeHead(c, num_classes, spatial_dims) for t, c in self.channels.items()})
        self.train_accuracy: dict[str, float] = {}

    def __getitem__(self, tap: str) -> ProbeHead:
        if tap not in self.channels:
            raise KeyError(f"no probe for tap '{tap}'; probes exist for {self.taps}.")
        return cast(ProbeHead, self.heads[_key(tap)])

    def __contains__(self, tap: object) -> bool:
        return tap in self.channels

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Probe logits ``{tap: (N, num_classes)}`` for every tap of this set found in ``features``."""
        return {t: self[t](features[t]) for t in self.taps if t in features}

    def save(self, path: str | os.PathLike) -> None:
        """Write the probes (with their shapes) atomically; ``ProbeSet.load`` reads them back."""
        from shortcut_kd.io import save_torch

        save_torch(path, {"channels": self.channels, "num_classes": self.num_classes,
                          "spatial_dims": self.spatial_dims, "train_accuracy": self.train_accuracy,
                          "state_dict": self.state_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "ProbeSet":
        """Read probes written by ``save`` (e.g. from a bundle config that names the file)."""
        if not os.path.isfile(path):
            raise DataError("probe file not found.", file=str(path),
                            fix="fit the teacher's probes with shortcut_kd.distill.fit_probes and save them.")
        blob = torch.load(path, map_location=map_location, weights_only=True)
        try:
            probes = cls(blob["channels"], blob["num_classes"], blob["spatial_dims"])
            probes.load_state_dict(blob["state_dict"])
        except (KeyError, TypeError) as e:
            raise DataError(f"not a probe file ({e}).", file=str(path), fix="write it with ProbeSet.save().") from e
        probes.train_accuracy = dict(blob.get("train_accuracy", {}))
        return probes


def load_probes(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[ProbeSet, list[str]]:
    """Read teacher probes and their taps from a file written by ``ProbeSet.save`` (or a dict
    ``{"taps": [...], "state": probe_set.state_dict()}``).

    Returns:
        ``(probes, taps)``.
    """
    if not os.path.isfile(path):
        raise DataError("probe file not found.", file=str(path),
                        fix="fit the teacher's probes with shortcut_kd.distill.fit_probes and save them.")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(blob, Mapping) and "channels" in blob:
        probes = ProbeSet.load(path, map_location)
        return probes, list(probes.taps)
    try:
        taps, state = list(blob["taps"]), blob["state"]
        weights = {t: state[f"heads.{_key(t)}.linear.weight"] for t in taps}
    except (KeyError, TypeError) as e:
        raise DataError(f"not a probe file (missing {e}).", file=str(path),
                        fix="write it with ProbeSet.save().") from e
    num_classes = next(iter(weights.values())).shape[0]
    probes = ProbeSet({t: w.shape[1] for t, w in weights.items()}, num_classes, int(blob.get("spatial_dims", 2)))
    probes.load_state_dict(state)
    return probes, taps


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block and restore each sub-module's previous mode after it.

    Unlike ``monai.networks.eval_mode`` (which calls ``train()`` on each module that was training, so every
    sub-module comes back in train mode), this restores the mode of every sub-module: a frozen batch norm
    kept in eval mode inside a training network stays frozen after ``tap_shapes`` / ``fit_probes``. It
    does not switch off gradients; combine it with ``torch.no_grad()``.

    Args:
        modules: the networks.
    """
    saved = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


def default_input_shape(model: nn.Module, size: int | None = None) -> tuple[int, ...]:
    """A channel-first sample shape the model accepts, read from its first convolution.

    Args:
        model: a network whose first convolution is an ``nn.Conv1d/2d/3d``.
        size: spatial side; default 64 for 2D, 32 for 3D.
    """
    for m in unwrap(model).modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = len(m.kernel_size)
            side = size or (64 if dims < 3 else 32)
            return (m.in_channels, *([side] * dims))
    raise ConfigError("input_shape", None, "the model has no convolution; give input_shape=(C, H, W[, D]).")


def tap_shapes(
    model: nn.Module, taps: Sequence[str], input_shape: Sequence[int] | None = None
) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape ``(C, *spatial)`` of each tap, from one dry forward pass.

    The forward runs in eval mode under ``torch.no_grad`` (so batch-norm statistics do not move)
    and the model's train/eval modes are restored afterwards.

    Args:
        model: the network.
        taps: tap names.
        input_shape: channel-first shape of one sample, without the batch dimension;
            default ``default_input_shape(model)``.
    """
    model = unwrap(model)
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((1, *shape), device=device)
    with eval_mode(model), torch.no_grad(), FeatureCapture(model, taps, detach=True) as cap:
        model(x)
    missing = [t for t in taps if t not in cap.features]
    if missing:
        raise ConfigError("taps", missing, "these modules were not called in the forward pass; pick other taps.")
    return {t: tuple(cap.features[t].shape[1:]) for t in taps}


def _unpack(batch: object, image_key: str, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        missing = [k for k in (image_key, label_key) if k not in batch]
        if missing:
            raise DataError(f"the loader's batches lack {missing} (they have {sorted(batch)}).", column=missing[0],
                            fix="pass image_key/label_key naming the fields of your datalist.")
        return batch[image_key], batch[label_key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(f"unsupported batch type {type(batch).__name__}.", fix="yield dicts or (image, label) tuples.")


def fit_probes(
    model: nn.Module,
    taps: Sequence[str],
    loader: Iterable,
    epochs: int = 100,
    lr: float = 1e-2,
    device: str | torch.device | None = None,
    num_classes: int = 2,
    image_key: str = Keys.IMAGE,
    label_key: str = Keys.LABEL,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> ProbeSet:
    """Fit one linear probe per tap on a frozen model (the teacher, on the bias-free specialist data).

    The backbone runs once over ``loader`` in eval mode under ``torch.no_grad``; since a probe is
    global average pooling + linear, the probes are then trained (cross-entropy, Adam) on the pooled
    features, which is exact for a deterministic loader (no random augmentation) and much faster than
    re-running the backbone every epoch. The model's parameters and modes are left as they were.

    Args:
        model: the frozen network (typically the specialist teacher).
        taps: tap names.
        loader: yields dict batches with ``image_key`` / ``label_key`` or ``(image, label)`` tuples.
        epochs: passes over the pooled features.
        lr: Adam learning rate.
        device: where to run the model; default: the device of its parameters.
        num_classes: number of classes of the probes.
        image_key: image field of dict batches.
        label_key: label field of dict batches.
        weight_decay: Adam weight decay of the probes.
        batch_size: mini-batch size over the pooled features.
        seed: seeds probe initialisation and shuffling (the global RNG is left untouched).

    Returns:
        A ``ProbeSet`` on ``device`` in eval mode; ``probes.train_accuracy`` holds each probe's accuracy
        on the fitting data (a quick check of how well the teacher encodes the task at each depth).
    """
    model = unwrap(model)
    taps = list(taps)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    pooled: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    labels: list[torch.Tensor] = []
    spatial_dims = None
    with eval_mode(model), torch.no_grad(), FeatureCapture(model, taps, detach=True) as cap:
        for batch in loader:
            x, y = _unpack(batch, image_key, label_key)
            model(torch.as_tensor(x).to(device))
            for t in taps:
                f = cap.features[t]
                spatial_dims = f.ndim - 2
                pooled[t].append(f.float().flatten(2).mean(-1) if f.ndim > 2 else f.float())
            labels.append(torch.as_tensor(y).reshape(-1).long().to(device))
    if not labels:
        raise DataError("the loader yielded no batches.", fix="check the specialist datalist is not empty.")
    feats = {t: torch.cat(v) for t, v in pooled.items()}
    target = torch.cat(labels)
    if int(target.max()) >= num_classes or int(target.min()) < 0:
        raise DataError(f"labels outside 0..{num_classes - 1} found.", column=label_key, fix="check num_classes.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probes = ProbeSet({t: feats[t].shape[1] for t in taps}, num_classes, spatial_dims or 1).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(probes.parameters(), lr=lr, weight_decay=weight_decay)
    n = target.numel()
    with torch.enable_grad():
        for _ in range(int(epochs)):
            order = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, batch_size):
                idx = order[start: start + batch_size]
                losses = [F.cross_entropy(probes[t].linear(feats[t][idx]), target[idx]) for t in taps]
                loss = cast(torch.Tensor, sum(losses))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    probes.eval()
    with torch.no_grad():
        probes.train_accuracy = {
            t: float((probes[t].linear(feats[t]).argmax(1) == target).float().mean()) for t in taps
        }
    logger.info("teacher probe accuracy on the fitting data: %s", probes.train_accuracy)
    return probes
