"""What each supported dataset pipeline needs: reader, dimensionality, channels, defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from shortcut_kd.errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset pipeline.

    Every native split of a dataset is pooled and re-split patient-disjointly by the split
    builder: the official splits carry no shortcut design.

    Args:
        name: registry key (also the ``read_dataset`` and ``synthesize`` name).
        spatial_dims: 2 or 3.
        in_channels: channels the network sees (1 grey, 3 RGB).
        image_size: default training resolution (side length).
        architecture: default network.
        intensity: normalisation mode of ``build_transforms`` ("range" keeps contrast shortcuts).
        native_bias: the data carries its own bias flag (SimBA ``_B`` files); no shortcut is injected
            unless one is asked for.
        group_key: the field that must never straddle two splits.
    """

    name: str
    spatial_dims: int
    in_channels: int
    image_size: int
    architecture: str
    intensity: str = "range"
    native_bias: bool = False
    group_key: str | None = "patient"
    arch_kwargs: dict = field(default_factory=dict)


DATASETS: dict[str, DatasetSpec] = {
    "isic2017": DatasetSpec("isic2017", 2, 3, 64, "resnet18", group_key=None),
    "chexpert": DatasetSpec("chexpert", 2, 1, 64, "densenet121"),
    "simba": DatasetSpec("simba", 3, 1, 32, "simba_cnn", intensity="minmax",
                         native_bias=True, group_key=None),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``, with an error listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError("dataset", name, f"use one of {sorted(DATASETS)}.") from None
