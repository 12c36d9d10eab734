"""One experiment on disk: its splits, data loaders, networks and stage folders.

Layout under ``output_dir``::

    splits/            datalists of every role + splits.json (seed, settings, counts)
    stages/<method>/   model.pt, checkpoint_last.pt (resume), metrics.json, log
    results.json       every finished method (schema shortcut-kd/results/v1)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from monai.data import CacheDataset, DataLoader, Dataset

from shortcut_kd.io import read_json
from shortcut_kd.workflows.datasets import DatasetSpec, get_dataset_spec
from shortcut_kd.workflows.settings import ExperimentSettings

logger = logging.getLogger(__name__)

TEST_ROLES = {"unbiased": "test_unbiased", "aligned": "test_aligned", "conflicting": "test_conflicting",
              "clean": "test_clean", "ood": "test_ood"}
"""results.json test key -> split role."""

_PASS_THROUGH = ("role",)
"""Datalist fields that do not change an item's preprocessing (see ``Experiment.preprocess``)."""


class Experiment:
    """Paths and builders shared by every stage of one experiment."""

    def __init__(self, settings: ExperimentSettings) -> None:
        self.settings = settings
        self.spec: DatasetSpec = get_dataset_spec(settings.dataset)
        self.architecture = settings.architecture or self.spec.architecture
        self.teacher_architecture = settings.teacher_architecture or self.architecture
        self.image_size = settings.image_size or self.spec.image_size
        self.native_bias = settings.shortcut == "native"
        if self.native_bias and not self.spec.native_bias:
            from shortcut_kd.errors import ConfigError

            raise ConfigError("shortcut", "native", f"{settings.dataset} carries no bias of its own; "
                              "choose an injected shortcut preset such as patch or noise.")
        self.device = torch.device(settings.device)
        self._preprocessed: dict[tuple, dict] = {}

    # ---- paths -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.settings.output_dir)

    @property
    def split_dir(self) -> Path:
        return self.root / "splits"

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def model_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model.pt"

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "metrics.json").is_file() and self.model_path(stage).is_file()

    # ---- data --------------------------------------------------------------------------
    def prepare_splits(self) -> Path:
        """Read the native dataset, check its images, build and write the splits (reused when unchanged)."""
        from shortcut_kd.workflows.prepare import prepare_splits

        return prepare_splits(self)

    def shortcut(self):
        """The shortcut transform of this experiment, or None for native-bias data."""
        if self.native_bias or self.settings.shortcut in (None, "none"):
            return None
        from shortcut_kd.shortcuts import make_shortcut

        return make_shortcut(self.settings.shortcut, self.spec.spatial_dims, **self.settings.shortcut_overrides)

    def transforms(self, train: bool = False):
        from shortcut_kd.data.transforms import build_transforms

        return build_transforms(self.spec.spatial_dims, self.spec.in_channels, self.image_size,
                                shortcut=self.shortcut(), seed=self.settings.seed, train=train,
                                intensity=self.spec.intensity)

    def datalist(self, role: str) -> list[dict]:
        from shortcut_kd.data.splits import load_split

        return load_split(self.split_dir, role)

    def has_role(self, role: str) -> bool:
        return (self.split_dir / f"{role}.json").is_file() and bool(read_json(self.split_dir / f"{role}.json"))

    def loader(self, role_or_items: str | Sequence[dict], shuffle: bool = False, sampler=None,
               train: bool = False) -> DataLoader:
        """A MONAI DataLoader over a role (or an explicit datalist), cached in memory.

        Preprocessing (including the shortcut) is deterministic, so ``CacheDataset`` holds it once;
        shuffling uses a generator seeded from the experiment seed, so epochs are reproducible.
        """
        items = self.datalist(role_or_items) if isinstance(role_or_items, str) else list(role_or_items)
        if train:  # random augmentation: CacheDataset keeps the deterministic head, re-draws the rest
            dataset = CacheDataset(items, transform=self.transforms(train=True), progress=False,
                                   num_workers=self.settings.num_workers or None)
        else:
            dataset = Dataset(self.preprocess(items))
        generator = torch.Generator().manual_seed(self.settings.seed)
        return DataLoader(dataset, batch_size=self.settings.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=self.settings.num_workers, generator=generator,
                          drop_last=False)

    def preprocess(self, items: Sequence[dict]) -> list[dict]:
        """The deterministic preprocessing of ``items`` (shortcut included), computed once per experiment.

        Every stage reads the same images with the same shortcut flags, and MONAI's ``CacheDataset``
        caches within one dataset only; so the outputs are kept here and shared by the loaders of all
        stages (about 12 KB per 32-px RGB image). An entry is keyed by all its fields but ``role`` (the
        test sets are the same images under other flags), which is set per returned item. The outputs
        must not be modified in place (batching copies them).
        """
        def key(item: dict) -> tuple:
            return tuple(sorted((k, repr(v)) for k, v in item.items() if k not in _PASS_THROUGH))

        keys = [key(item) for item in items]
        missing = {k: item for k, item in zip(keys, items) if k not in self._preprocessed}
        if missing:
            cached = CacheDataset(list(missing.values()), transform=self.transforms(), progress=False,
                                  copy_cache=False, num_workers=self.settings.num_workers or None)
            self._preprocessed.update((k, cached[i]) for i, k in enumerate(missing))
        return [{**self._preprocessed[k], **{f: item[f] for f in _PASS_THROUGH if f in item}}
                for k, item in zip(keys, items)]

    def test_loaders(self) -> dict[str, DataLoader]:
        return {name: self.loader(role) for name, role in TEST_ROLES.items() if self.has_role(role)}

    # ---- networks ----------------------------------------------------------------------
    def network(self, architecture: str | None = None) -> torch.nn.Module:
        from shortcut_kd.nets import build_network

        kwargs = dict(self.spec.arch_kwargs)
        kwargs.update(self.settings.arch_kwargs)
        arch = architecture or self.architecture
        if arch != self.architecture and not self.settings.arch_kwargs:
            kwargs = dict(self.spec.arch_kwargs)
        return build_network(arch, spatial_dims=self.spec.spatial_dims, in_channels=self.spec.in_channels,
                             num_classes=2, **small_image_kwargs(arch, self.image_size, kwargs))

    def load_model(self, stage: str, architecture: str | None = None) -> torch.nn.Module:
        """The trained network of ``stage`` (eval mode, on the experiment's device)."""
        from shortcut_kd.errors import ConfigError

        path = self.model_path(stage)
        if not path.is_file():
            raise ConfigError("stage", stage, f"run the '{stage}' stage first; {path} does not exist.")
        model = self.network(architecture)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(self.device).eval()


def small_image_kwargs(architecture: str, image_size: int, kwargs: dict) -> dict:
    """Stem settings for small inputs.

    Below 96 px a ResNet's 7x7 stride-2 stem followed by max-pooling leaves the deeper taps
    with 1-2 pixels, so a 3x3 stride-2 stem without max-pooling is used instead (the cost
    stays that of the stride-2 stem). Explicit ``arch_kwargs`` always win.
    """
    out = dict(kwargs)
    if architecture.startswith("resnet") and image_size < 96:
        out.setdefault("conv1_t_size", 3)
        out.setdefault("conv1_t_stride", 2)
        out.setdefault("no_max_pool", True)
    return out
