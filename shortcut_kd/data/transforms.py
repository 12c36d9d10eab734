"""The preprocessing pipeline: load -> channels -> inject the shortcut where bias==1 -> normalise -> resize
-> (augment) -> tensors.

The shortcut goes in on the image as read (after the channel count is fixed) and before intensity
normalisation and resizing, as an artefact of the acquisition would be. Keys other than the image
keys and ``label`` (``id``, ``bias``, ``group``, ``patient``, ...) pass through to the batch.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Compose, EnsureTyped, LoadImaged, MapTransform, NormalizeIntensityd, RandFlipd, RandRotated, Resized,
    ScaleIntensityd, ScaleIntensityRanged, ScaleIntensityRangePercentilesd,
)
from monai.utils import convert_to_tensor

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.shortcuts import InjectShortcutd, ShortcutTransform, make_shortcut

__all__ = ["CheckedLoadImaged", "AdaptChannelsd", "PipelineCompose", "build_transforms", "INTENSITY_MODES"]

INTENSITY_MODES = ("range", "minmax", "zscore", "percentile")
_SKIP_FIX = (
    "replace or remove the file, or drop unreadable images before training with "
    "shortcut_kd.data.check_images(datalist, on_error='skip')."
)


def _source(img: object) -> str | None:
    """The file an image was read from, if its metadata says."""
    meta = getattr(img, "meta", None)
    if meta and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return None


class CheckedLoadImaged(MapTransform):
    """MONAI ``LoadImaged`` whose failures name the file: a missing or undecodable image raises a DataError.

    A single DICOM file is read by :class:`~shortcut_kd.data.dicom.DicomDisplayReader` (modality LUT, VOI LUT
    / window, MONOCHROME1 inverted, 0-255); any other input by the reader MONAI picks from the extension
    (PNG/JPEG: PIL, NIfTI: nibabel, a DICOM series folder: pydicom / ITK), unless ``reader`` is given.

    Args:
        keys: keys holding image paths.
        reader: an optional reader (name or instance) passed to ``LoadImaged``.
        ensure_channel_first: move or add the channel dimension first.
        allow_missing_keys: don't raise an exception if a key is missing.
        kwargs: further ``LoadImaged`` arguments.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader=None,
        ensure_channel_first: bool = True,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if reader is None:  # DICOM files as display grey levels; every other format: MONAI's choice
            from shortcut_kd.data.dicom import DicomDisplayReader

            reader = DicomDisplayReader()
        self.loader = LoadImaged(
            keys, reader=reader, image_only=True, ensure_channel_first=ensure_channel_first,
            allow_missing_keys=allow_missing_keys, **kwargs,
        )  # fmt: skip

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            try:
                d[key] = self.loader({key: path})[key]
            except Exception as e:  # any reader failure: re-raise naming the file
                missing = isinstance(path, (str, os.PathLike)) and not os.path.exists(path)
                raise DataError(
                    "image file not found." if missing else f"cannot decode the image ({type(e).__name__}: {e}).",
                    file=str(path),
                    row=None if d.get("id") is None else str(d.get("id")),
                    column=str(key),
                    fix="check the path in the datalist." if missing else _SKIP_FIX,
                ) from e
        return d


class AdaptChannelsd(MapTransform):
    """Give every image ``in_channels`` channels and ``spatial_dims`` spatial dimensions.

    Grey to colour repeats the channel; colour (RGB, or RGBA with alpha dropped) to grey averages the
    colour channels. Trailing singleton spatial dimensions (a 2D DICOM read as ``(C, H, W, 1)``) are
    squeezed. MONAI's ``RepeatChanneld`` only repeats, hence this small transform.

    Args:
        keys: image keys.
        in_channels: the wanted channel count (1 or 3 typically).
        spatial_dims: the wanted number of spatial dimensions (2 or 3).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, in_channels: int, spatial_dims: int, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.in_channels, self.spatial_dims = int(in_channels), int(spatial_dims)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=get_track_meta())
            while img.ndim - 1 > self.spatial_dims and img.shape[-1] == 1:
                img = img[..., 0]
            if img.ndim - 1 != self.spatial_dims:
                raise DataError(
                    f"image has shape {tuple(img.shape)} (channel first), not {self.spatial_dims} spatial dimensions.",
                    file=_source(img), column=str(key),
                    fix=f"use a pipeline with spatial_dims={img.ndim - 1}, or convert the image.",
                )  # fmt: skip
            channels = img.shape[0]
            if channels in (2, 4):  # grey + alpha, RGB + alpha: drop the alpha channel
                img = img[: channels - 1]
                channels -= 1
            if channels != self.in_channels:
                if channels == 1:
                    img = img.repeat(self.in_channels, *([1] * self.spatial_dims))
                elif self.in_channels == 1:
                    img = img.float().mean(0, keepdim=True)
                else:
                    raise DataError(
                        f"image has {channels} channels; cannot make {self.in_channels}.",
                        file=_source(img), column=str(key),
                        fix="set in_channels to 1 or to the image's channel count.",
                    )  # fmt: skip
            d[key] = img
        return d


class PipelineCompose(Compose):
    """``Compose`` that lets a DataError through as itself (MONAI wraps transform errors in RuntimeError).

    Inside a MONAI ``Dataset`` the DataError is still wrapped once by the dataset; it is the
    ``__cause__`` of the RuntimeError and its message (with the file path) is in the traceback.
    """

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as e:
            cause = e.__cause__
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from cause.__cause__


def _intensity_transform(mode: str, keys: Sequence[str], intensity_range: Sequence[float]):
    if mode == "range":
        a_min, a_max = (float(v) for v in intensity_range)
        if not a_max > a_min:
            raise ConfigError("intensity_range", intensity_range, "give (a_min, a_max) with a_max > a_min.")
        return ScaleIntensityRanged(keys, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)
    if mode == "minmax":
        return ScaleIntensityd(keys, minv=0.0, maxv=1.0)
    if mode == "zscore":
        return NormalizeIntensityd(keys)
    if mode == "percentile":
        return ScaleIntensityRangePercentilesd(keys, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    raise ConfigError("intensity", mode, f"use one of {list(INTENSITY_MODES)}.")


def build_transforms(
    spatial_dims: int,
    in_channels: int,
    image_size: int | Sequence[int] | None,
    shortcut: ShortcutTransform | str | None = None,
    seed: int = 0,
    train: bool = False,
    augment: bool = False,
    intensity: str = "range",
    intensity_range: Sequence[float] = (0, 255),
    keys: Sequence[str] = ("image",),
    with_label: bool = True,
) -> Compose:
    """The preprocessing pipeline for a datalist of ``{"image": path, "label": 0|1, "id": ..., "bias": 0|1}``.

    Order: load (MONAI picks the reader from the extension; an unreadable file raises a DataError naming
    it) -> make ``in_channels`` channels -> inject ``shortcut`` where ``bias == 1`` (seeded by ``seed`` and
    the sample id) -> intensity normalisation -> resize to ``image_size`` -> light augmentation (only when
    ``train and augment``) -> tensors (image float32, ``label`` int64 scalar).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels the network expects (grey is repeated, colour averaged to grey).
        image_size: output spatial size (an int for every axis, or one per axis); ``None`` keeps the size.
        shortcut: a shortcut array transform or a preset name (see ``shortcut_kd.shortcuts.list_shortcuts``);
            ``None``: no injection.
        seed: the run seed that, with each sample's id, fixes its shortcut.
        train: whether this is a training pipeline (augmentation needs ``train`` and ``augment``).
        augment: small random flips (first spatial axis, the left-right axis of PIL-read pictures and
            RAS NIfTI) and rotations (up to 10 degrees). A flip moves a corner patch to the opposite
            corner, so a fixed-position shortcut then appears at two places.
        intensity: ``"range"`` (fixed ``intensity_range`` -> [0, 1], clipped; keeps global contrast
            shortcuts and suits 8-bit images), ``"minmax"`` (each image's own min/max -> [0, 1]),
            ``"zscore"`` (zero mean, unit variance per image), ``"percentile"`` (0.5-99.5 percentiles
            -> [0, 1], clipped). ``minmax`` and ``zscore`` undo an affine contrast shortcut
            (``ContrastShortcut(mode="scale")``).
        intensity_range: ``(a_min, a_max)`` for ``intensity="range"``.
        keys: image keys.
        with_label: convert ``label`` to an int64 tensor.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError("spatial_dims", spatial_dims, "use 2 or 3.")
    keys = [keys] if isinstance(keys, str) else list(keys)
    if intensity not in INTENSITY_MODES:
        raise ConfigError("intensity", intensity, f"use one of {list(INTENSITY_MODES)}.")
    transforms: list = [
        CheckedLoadImaged(keys, ensure_channel_first=True, dtype=np.float32),
        AdaptChannelsd(keys, in_channels=in_channels, spatial_dims=spatial_dims),
    ]
    if shortcut is not None:
        if isinstance(shortcut, str):
            shortcut = make_shortcut(shortcut, spatial_dims)
        transforms.append(InjectShortcutd(keys, shortcut, seed=seed))
    transforms.append(_intensity_transform(intensity, keys, intensity_range))
    if image_size is not None:
        size = [int(image_size)] * spatial_dims if isinstance(image_size, int) else [int(s) for s in image_size]
        if len(size) != spatial_dims:
            raise ConfigError("image_size", image_size, f"give one int or {spatial_dims} ints.")
        transforms.append(Resized(keys, spatial_size=size, mode="area"))
    if train and augment:
        angle = float(np.deg2rad(10.0))
        out_of_plane = angle if spatial_dims == 3 else 0.0  # 0.0: RandRotated's default, no rotation
        transforms += [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandRotated(keys, range_x=angle, range_y=out_of_plane, range_z=out_of_plane, prob=0.5, keep_size=True,
                        padding_mode="zeros"),
        ]
    transforms.append(EnsureTyped(keys, dtype=torch.float32))
    if with_label:
        transforms.append(EnsureTyped("label", dtype=torch.int64, track_meta=False))
    return PipelineCompose(transforms)
