"""Network registry: how to build each architecture, its ordered tap points and its final linear layer.

Tap names are ``model.get_submodule`` names. Every network returns raw logits of shape
``(N, num_classes)``; the positive-class probability is ``softmax(logits)[:, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from monai.networks.nets import DenseNet, DenseNet121, ResNet
from monai.networks.nets.resnet import get_inplanes
from torch import nn

from shortcut_kd.errors import ConfigError
from shortcut_kd.nets.alexnet import AlexNet
from shortcut_kd.nets.checkpoint import unwrap
from shortcut_kd.nets.simba_cnn import SimBACNN

__all__ = [
    "NetworkSpec",
    "build_network",
    "get_head_name",
    "get_taps",
    "list_networks",
    "pair_taps",
    "register_network",
    "resolve_taps",
]

TapSpec = str | Sequence[str] | None


@dataclass(frozen=True)
class NetworkSpec:
    """What the registry knows about one architecture.

    Args:
        builder: ``builder(spatial_dims, in_channels, num_classes, **kwargs) -> nn.Module``.
        taps: ordered (shallow to deep) tap names, valid for ``model.get_submodule``.
        head: name of the final ``nn.Linear``.
        spatial_dims: the spatial dimensionalities the builder supports.
        description: one line for ``list_networks`` / the docs.
    """

    builder: Callable[..., nn.Module]
    taps: tuple[str, ...]
    head: str
    spatial_dims: tuple[int, ...] = (2, 3)
    description: str = ""


def _resnet(layers: list[int]) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
        # MONAI's ResNet class directly (not monai.networks.nets.resnet18), so that no pretrained-weight
        # download path can be triggered on an offline machine.
        return ResNet(
            "basic", layers, get_inplanes(), spatial_dims=spatial_dims, n_input_channels=in_channels,
            num_classes=num_classes, **kwargs,
        )

    return build


def _densenet121(spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)


def _alexnet(spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    return AlexNet(in_channels=in_channels, num_classes=num_classes, **kwargs)


def _simba_cnn(spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    return SimBACNN(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kwargs)


_RESNET_TAPS = ("layer1", "layer2", "layer3", "layer4")
_DENSENET_TAPS = tuple(f"features.denseblock{i}" for i in range(1, 5))
_ALEXNET_TAPS = tuple(f"features.block{i}" for i in range(1, 6))
_SIMBA_TAPS = tuple(f"block{i}" for i in range(1, 6))

_RESNET_DOC = (
    "MONAI ResNet-{} (kwargs: conv1_t_stride, conv1_t_size, no_max_pool, widen_factor, ...). For small "
    "images use conv1_t_stride=2, no_max_pool=True: layer1 runs at half resolution as with the default "
    "stem, at a quarter of the stem's cost; keep the max pool too (1/4 resolution) for images >= 64^2."
)

_REGISTRY: dict[str, NetworkSpec] = {
    "resnet10": NetworkSpec(_resnet([1, 1, 1, 1]), _RESNET_TAPS, "fc", (2, 3), _RESNET_DOC.format(10)),
    "resnet18": NetworkSpec(_resnet([2, 2, 2, 2]), _RESNET_TAPS, "fc", (2, 3), _RESNET_DOC.format(18)),
    "resnet34": NetworkSpec(_resnet([3, 4, 6, 3]), _RESNET_TAPS, "fc", (2, 3), _RESNET_DOC.format(34)),
    "densenet121": NetworkSpec(
        _densenet121, _DENSENET_TAPS, "class_layers.out", (2, 3), "MONAI DenseNet-121 (kwargs: dropout_prob, ...)"
    ),
    "alexnet": NetworkSpec(
        _alexnet, _ALEXNET_TAPS, "classifier.out", (2,),
        "AlexNet, own implementation (kwargs: widths, hidden, pool_size, dropout, stem_stride)",
    ),
    "simba_cnn": NetworkSpec(
        _simba_cnn, _SIMBA_TAPS, "fc", (3, 2), "SimBA 3D CNN, five conv blocks 32->512 (kwargs: channels, dropout)"
    ),
}


def register_network(
    name: str,
    builder: Callable[..., nn.Module],
    taps: Sequence[str],
    head: str,
    spatial_dims: Sequence[int] = (2, 3),
    description: str = "",
) -> None:
    """Add (or replace) an architecture in the registry so ``build_network`` and the tap helpers know it.

    Args:
        name: registry name (lower case).
        builder: ``builder(spatial_dims, in_channels, num_classes, **kwargs) -> nn.Module`` returning logits.
        taps: ordered tap names (shallow to deep), valid for ``model.get_submodule``.
        head: name of the final ``nn.Linear``.
        spatial_dims: supported spatial dimensionalities.
        description: one line of documentation.
    """
    _REGISTRY[name.lower()] = NetworkSpec(builder, tuple(taps), head, tuple(spatial_dims), description)


def list_networks() -> list[str]:
    """Names accepted by ``build_network``."""
    return sorted(_REGISTRY)


def _spec(name: str) -> NetworkSpec:
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ConfigError("network", name, f"use one of {list_networks()} or add one with register_network().")
    return _REGISTRY[key]


def build_network(
    name: str, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, **kwargs
) -> nn.Module:
    """Build a registered network that returns raw logits ``(N, num_classes)``.

    The architecture name is stored on the model as ``model.arch_name`` so that ``get_taps(model)``
    and ``get_head_name(model)`` work on the instance.

    Args:
        name: one of ``list_networks()``: ``resnet10``, ``resnet18``, ``resnet34``, ``densenet121``
            (MONAI's, 2D/3D), ``alexnet`` (2D) and ``simba_cnn`` (3D, also 2D).
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        num_classes: number of output logits.
        kwargs: forwarded to the architecture, e.g. ``conv1_t_stride=2, no_max_pool=True`` or
            ``widen_factor=0.25`` for MONAI's ResNet, ``channels=(4, 8, 8, 16, 16)`` for ``simba_cnn``.

    For small images (32²-64²) a ResNet with a stride-2 stem and no max pool
    (``conv1_t_stride=2, no_max_pool=True``) is a good choice: layer1 sees the same half resolution as with
    MONAI's default stem (stride 1 + max pool) at a quarter of the stem's cost; keeping the max pool as
    well (``conv1_t_stride=2`` alone) quarters the resolution and the cost again, fine from 64² up.
    """
    spec = _spec(name)
    if int(spatial_dims) not in spec.spatial_dims:
        raise ConfigError(
            "spatial_dims", spatial_dims, f"network '{name}' supports spatial_dims in {list(spec.spatial_dims)}."
        )
    model = spec.builder(int(spatial_dims), int(in_channels), int(num_classes), **kwargs)
    # torch annotates Module.__setattr__ for tensors and modules only; a plain attribute is fine
    model.arch_name = str(name).lower()  # type: ignore[assignment]
    return model


def _arch_of(model: nn.Module) -> str | None:
    model = unwrap(model)
    name = getattr(model, "arch_name", None)
    if name is not None:
        return str(name).lower()
    # models built outside build_network: recognise the classes whose tap names are fixed
    if isinstance(model, SimBACNN):
        return "simba_cnn"
    if isinstance(model, AlexNet):
        return "alexnet"
    if isinstance(model, DenseNet) and all(_has(model, t) for t in _DENSENET_TAPS):
        return "densenet121"
    if isinstance(model, ResNet):
        return "resnet18"  # every MONAI ResNet has layer1..layer4 and fc
    return None


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _spec_of(name_or_model: str | nn.Module) -> NetworkSpec:
    if isinstance(name_or_model, str):
        return _spec(name_or_model)
    arch = _arch_of(name_or_model)
    if arch is None or arch not in _REGISTRY:
        raise ConfigError(
            "network", type(name_or_model).__name__,
            "build it with shortcut_kd.nets.build_network, set `model.arch_name` to a registered name, "
            "register it with register_network(), or pass explicit tap names.",
        )
    return _REGISTRY[arch]


def get_taps(name_or_model: str | nn.Module) -> list[str]:
    """Ordered (shallow to deep) tap names of an architecture, valid for ``model.get_submodule``.

    Args:
        name_or_model: a registry name or a model (built by ``build_network`` or of a known class).
    """
    return list(_spec_of(name_or_model).taps)


def get_head_name(name_or_model: str | nn.Module) -> str:
    """Name of the final ``nn.Linear`` of an architecture (e.g. ``fc``, ``class_layers.out``)."""
    return _spec_of(name_or_model).head


def resolve_taps(model_or_name: str | nn.Module, spec: TapSpec = "all") -> list[str]:
    """Turn a tap specification into an ordered list of tap names.

    Args:
        model_or_name: a model or a registry name.
        spec: ``"all"`` (or None), ``"early"`` (the first half of the taps), ``"late"`` (the second
            half; with an odd count the middle tap is late), a list of names or a comma-separated string.
            With a model, explicit names may be any sub-module name; with a registry name they must be
            registered taps.

    Raises:
        ConfigError: a name that is not a tap, or an empty specification; the message lists the valid taps.
    """
    is_model = isinstance(model_or_name, nn.Module)
    if isinstance(spec, str) and spec.strip().lower() in ("all", "early", "late"):
        taps = get_taps(model_or_name)
        key = spec.strip().lower()
        if key == "early":
            return taps[: max(1, len(taps) // 2)]
        if key == "late":
            return taps[len(taps) // 2:]
        return taps
    if spec is None:
        return get_taps(model_or_name)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ConfigError("taps", spec, "give 'all', 'early', 'late' or at least one tap name.")
    try:
        valid = get_taps(model_or_name)
    except ConfigError:
        if not is_model:
            raise
        valid = []
    model = unwrap(model_or_name) if isinstance(model_or_name, nn.Module) else None
    for n in names:
        ok = _has(model, n) if model is not None else n in valid
        if not ok:
            shown = valid or ([m for m, _ in model.named_children()] if model is not None else [])
            raise ConfigError("taps", n, f"use 'all', 'early', 'late' or names from {shown}.")
    return names


def pair_taps(
    student: str | nn.Module, teacher: str | nn.Module, student_spec: TapSpec = "all", teacher_spec: TapSpec = None
) -> tuple[list[str], list[str]]:
    """Pair student taps with teacher taps.

    With ``teacher_spec`` given, both lists are resolved and must have the same length. Without it,
    the teacher uses the student's names when both share the architecture; otherwise each student tap
    is matched to the teacher tap at the same relative depth (index ``i`` of ``n_s`` taps maps to
    ``round(i * (n_t - 1) / (n_s - 1))`` of the teacher's ``n_t`` taps), so e.g. a 4-tap ResNet student
    and a 5-tap AlexNet teacher pair as layer1-block1, layer2-block2, layer3-block4, layer4-block5.

    Returns:
        ``(student_taps, teacher_taps)``, equally long; teacher taps may repeat.
    """
    s_taps = resolve_taps(student, student_spec)
    if teacher_spec is not None:
        t_taps = resolve_taps(teacher, teacher_spec)
        if len(t_taps) != len(s_taps):
            raise ConfigError(
                "teacher_taps", teacher_spec,
                f"give as many teacher taps as student taps ({len(s_taps)}: {s_taps}), paired by position.",
            )
        return s_taps, t_taps
    s_all, t_all = get_taps(student), get_taps(teacher)
    if s_all == t_all:
        return s_taps, list(s_taps)
    missing = [t for t in s_taps if t not in s_all]
    if missing:
        raise ConfigError("teacher_taps", None, f"student taps {missing} are not registered taps; give teacher_taps.")
    n_s, n_t = len(s_all), len(t_all)
    t_taps = []
    for name in s_taps:
        i = s_all.index(name)
        j = 0 if n_s == 1 else int(math.floor(i * (n_t - 1) / (n_s - 1) + 0.5))
        t_taps.append(t_all[j])
    return s_taps, t_taps
