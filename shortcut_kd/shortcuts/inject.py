"""Put the shortcut on the samples the datalist flags, the same way in every worker, epoch and run."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.seeding import sample_seed
from shortcut_kd.shortcuts.base import ShortcutTransform
from shortcut_kd.shortcuts.dictionary import ShortcutDictTransform

__all__ = ["InjectShortcutd", "InjectShortcutD", "InjectShortcutDict", "shortcut_mask"]


class InjectShortcutd(MapTransform):
    """Apply ``shortcut`` to the images of samples whose ``bias`` flag is 1; leave the others untouched.

    Untouched images keep their values; like MONAI's random transforms when they skip, they are
    returned as tensors (floating point, as the shortcut's output is) so that a batch collates.

    Before each application a private copy of ``shortcut`` is seeded with
    ``shortcut_kd.seeding.sample_seed(seed, str(data[id_key]))``, so a sample's patch position or
    noise depends only on the run seed and its id: identical in every DataLoader worker, epoch and
    rerun, and no random state is shared between samples (or threads).

    This transform is deliberately not ``Randomizable``: its output is a fixed function of the sample,
    so caching datasets (``CacheDataset``, ``PersistentDataset``) may cache it.

    Args:
        keys: keys of the images to change (all get the same shortcut parameters).
            See also: :py:class:`monai.transforms.MapTransform`.
        shortcut: a shortcut array transform, e.g. ``make_shortcut("patch", spatial_dims=2)``
            (a dictionary form is accepted and its array transform used).
        bias_key: the datalist field saying whether the sample carries the shortcut (0 or 1).
        id_key: the datalist field holding the sample's unique id.
        seed: the run (dataset) seed.
        allow_missing_keys: don't raise an exception if an image key is missing; a missing bias flag
            then means 0, and a missing id falls back to the image's source file name.
    """

    def __init__(
        self,
        keys: KeysCollection,
        shortcut: ShortcutTransform | ShortcutDictTransform,
        bias_key: str = "bias",
        id_key: str = "id",
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(shortcut, ShortcutDictTransform):
            shortcut = shortcut.shortcut
        if not isinstance(shortcut, ShortcutTransform):
            raise ConfigError(
                "shortcut", shortcut,
                "pass a shortcut array transform such as make_shortcut('patch', spatial_dims=2) or SquarePatch().",
            )  # fmt: skip
        self.shortcut = shortcut
        self.bias_key, self.id_key, self.seed = bias_key, id_key, int(seed)

    def is_biased(self, data: Mapping[Hashable, object]) -> bool:
        """Whether the sample carries the shortcut; errors name the sample and the field."""
        if self.bias_key not in data:
            if self.allow_missing_keys:
                return False
            raise DataError(
                f"the sample has no '{self.bias_key}' field, so it is unknown whether it carries the shortcut.",
                row=str(data.get(self.id_key, "?")),
                column=self.bias_key,
                fix=f"add '{self.bias_key}' (0 or 1) to every datalist item, e.g. with shortcut_kd.data.build_splits, "
                "or pass bias_key= naming the field your datalist uses.",
            )
        value = data[self.bias_key]
        try:
            flag = float(np.asarray(value).item())
        except (TypeError, ValueError):
            flag = float("nan")
        if flag not in (0.0, 1.0):
            raise DataError(
                f"bias flag {value!r} is not 0 or 1.",
                row=str(data.get(self.id_key, "?")),
                column=self.bias_key,
                fix=f"set '{self.bias_key}' to 0 (no shortcut) or 1 (shortcut).",
            )
        return flag == 1.0

    def sample_id(self, data: Mapping[Hashable, object]) -> str:
        """The id that seeds the sample's shortcut."""
        if self.id_key in data:
            return str(data[self.id_key])
        if self.allow_missing_keys:
            for key in self.keys:
                meta = getattr(data.get(key), "meta", None)
                if meta and meta.get("filename_or_obj"):
                    return str(meta["filename_or_obj"])
        raise DataError(
            f"the sample has no '{self.id_key}' field to seed its shortcut from.",
            column=self.id_key,
            fix=f"give every datalist item a unique '{self.id_key}' (the readers do), or pass id_key= naming "
            "the field your datalist uses.",
        )

    def sample_shortcut(self, data: Mapping[Hashable, object]) -> ShortcutTransform:
        """A private copy of the shortcut, seeded for this sample (its random parameters not yet drawn)."""
        sc = copy.deepcopy(self.shortcut)
        sc.set_random_state(seed=sample_seed(self.seed, self.sample_id(data)))
        return sc

    def mask(self, data: Mapping[Hashable, object], img_shape: Sequence[int]) -> np.ndarray:
        """Where this sample's shortcut acts on an image of channel-first ``img_shape`` (all False if unbiased).

        For a localized shortcut the region is reproduced from the sample's seed; it may be asked for at
        another resolution than the injected one (e.g. the network's input size) and scales with it.
        """
        spatial = tuple(int(s) for s in img_shape)[1:]
        if not self.is_biased(data):
            return np.zeros(spatial, dtype=bool)
        sc = self.sample_shortcut(data)
        sc.randomize(tuple(int(s) for s in img_shape))
        return sc.mask(spatial)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if not self.is_biased(d):
            for key in self.key_iterator(d):  # values untouched; the type of a shortcut's output, so batches collate
                d[key] = _as_float_tensor(d[key])
            return d
        for key in self.key_iterator(d):
            sc = self.sample_shortcut(d)  # the same parameters for every key of the sample
            d[key] = sc(d[key])
        return d


InjectShortcutD = InjectShortcutDict = InjectShortcutd


def _as_float_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    tensor: torch.Tensor = convert_to_tensor(img, track_meta=get_track_meta())
    return tensor if tensor.is_floating_point() else tensor.float()


def shortcut_mask(
    shortcut: ShortcutTransform | ShortcutDictTransform | InjectShortcutd,
    img: NdarrayOrTensor,
    sample_id: str | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Where ``shortcut`` acts on ``img`` (channel first), as a boolean array of its spatial shape.

    Args:
        shortcut: a shortcut transform, its dictionary form, or an :class:`InjectShortcutd`.
        img: the channel-first image (only its shape is used).
        sample_id: when given, the region of this sample's shortcut as :class:`InjectShortcutd` seeds it
            (``seed`` defaults to the injector's seed, else 0); otherwise the region of the shortcut's last call.
        seed: the run seed that goes with ``sample_id``.
    """
    shape = tuple(int(s) for s in img.shape)
    if isinstance(shortcut, InjectShortcutd):
        seed = shortcut.seed if seed is None else seed
        shortcut = shortcut.shortcut
    if isinstance(shortcut, ShortcutDictTransform):
        shortcut = shortcut.shortcut
    if sample_id is None:
        return shortcut.mask(shape[1:])
    sc = copy.deepcopy(shortcut)
    sc.set_random_state(seed=sample_seed(0 if seed is None else seed, str(sample_id)))
    sc.randomize(shape)
    return sc.mask(shape[1:])
