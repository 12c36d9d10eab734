"""Experiment settings: the overrides the ``shortcut-kd`` commands apply to a bundle's configs, loadable from YAML."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shortcut_kd.errors import ConfigError


@dataclass
class DistillSettings:
    """How the student is distilled from the teacher. ``None`` keeps the bundle's value
    (``bundles/common/configs/distill.json``, ``teacher.json``).

    Args:
        loss: per-tap loss: ``probe_kl`` (the paper's), ``fitnet_mse``, ``attention_transfer``, ``cosine``
            (``distill#loss``).
        layers: taps to distil: ``all``, ``early``, ``late``, ``auto`` (from the per-layer probe
            analysis of the ERM model), explicit names, or ``none`` (the final-logit term alone)
            (``distill#layers``). Intermediate terms alone: ``final_weight: 0``.
        weight: weight of each intermediate term (``distill#weight``).
        final_weight: weight of the final-logit KL term (``distill#final_weight``).
        temperature: softmax temperature τ; terms are scaled by τ² (``distill#temperature``).
        rampup_epochs: linear ramp-up of the KD weights over the first epochs (``distill#rampup_epochs``).
        cache_teacher: run the teacher once per sample; inputs must be deterministic (``distill#cache_teacher``).
        probe_epochs: epochs to fit the frozen teacher's probes on the specialist subset; a setting of the
            teacher stage (``teacher#probe_epochs``).
        student_init: ``scratch`` (the paper and the bundles' default: the same initialisation as ERM),
            ``teacher`` (start from the specialist teacher's weights: a variant, reported as one) or ``erm``
            (``distill#student_init``).
        lr: the student's learning rate (``optimizer#lr`` of the kd stage; default: the experiment's ``lr``).
        mix: ``cutmix`` (the bundles' default), ``mixup`` or ``none`` (the paper's recipe as written): distil on
            mixed pairs of training images. The teacher and the student see the same mixed batch, the task loss
            takes the mixed labels and the teacher cache is off (``distill#mix``). Mixing pairs moves the
            shortcut between images independently of what the teacher answers, so matching the teacher on them
            cannot be done through the shortcut (function matching on mixed inputs, Beyer et al., CVPR 2022).
        mix_alpha: the Beta(α, α) parameter of the mixing (``distill#mix_alpha``).
    """

    loss: str | None = None
    layers: Any = None
    weight: float | None = None
    final_weight: float | None = None
    temperature: float | None = None
    rampup_epochs: int | None = None
    cache_teacher: bool | None = None
    probe_epochs: int | None = None
    student_init: str | None = None
    lr: float | None = None
    mix: str | None = None
    mix_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.student_init not in (None, "teacher", "scratch", "erm"):
            raise ConfigError("distill.student_init", self.student_init, "use 'teacher', 'scratch' or 'erm'.")
        if self.mix not in (None, "none", "mixup", "cutmix"):
            raise ConfigError("distill.mix", self.mix, "use 'none', 'mixup' or 'cutmix'.")
        if self.mix_alpha is not None and not float(self.mix_alpha) > 0:
            raise ConfigError("distill.mix_alpha", self.mix_alpha, "use a positive Beta(alpha, alpha) parameter.")


@dataclass
class BaselineSettings:
    """Hyper-parameters of the baselines; ``None`` keeps the bundle's stage config.

    ``jtt_budget``: ``"erm"`` (the bundles' default) gives JTT's second stage as many steps per epoch as
    every other method (each epoch a fresh random draw, without replacement, of ``len(train)`` items from
    the upsampled list: the errors are still ``λ`` times as likely); ``"upsampled"`` makes full passes
    over the upsampled list as in the paper, which costs ``1 + (λ - 1) · error rate`` ERM runs (10×
    when an early ERM model gets half the set wrong).
    """

    groupdro_eta: float | None = None
    jtt_epochs: int | None = None
    jtt_lambda: int | None = None
    jtt_budget: str | None = None
    mix_alpha: float | None = None
    randconv_kernel_sizes: list | None = None

    def __post_init__(self) -> None:
        if self.jtt_budget not in (None, "erm", "upsampled"):
            raise ConfigError("baselines.jtt_budget", self.jtt_budget, "use 'erm' or 'upsampled'.")


@dataclass
class ExperimentSettings:
    """What the ``shortcut-kd`` commands change in a dataset's MONAI bundle: every stage is that bundle's
    config (``bundles/<dataset>_shortcut_kd/configs/``) with these values as overrides. ``None`` keeps the
    bundle's value, so a setting left out here means the same as in ``python -m monai.bundle run``.

    Paths: ``dataset_dir`` holds the dataset in its native layout; ``ood_dir`` an optional shifted source
    in the same layout; everything is written under ``output_dir``.

    ``specialist_source``: ``train`` (the teacher's bias-free subset from the dataset) or ``ood`` (from
    ``ood_dir``: teacher data from another source, the student's data unchanged; ``splits#specialist_source``).

    ``val_annotated_size`` is the size of the bias-annotated validation split (a fraction or a number of
    items; ``splits#val_annotated_size``), on which settings are chosen, never on a test set.
    ``per_method`` maps a method (``erm``, ``kd``, a baseline, ...) to settings that apply to its stage only,
    over the others (e.g. ``{"groupdro": {"lr": 3e-4, "baselines": {"groupdro_eta": 0.1}}}``): how a study
    gives every method its own tuned values in one experiment. What the stages share (the data, the splits,
    the shortcut, the image size, the architecture, the seed, the device) cannot be set per method.
    """

    dataset: str = "isic2017"
    dataset_dir: str = "data/isic2017"
    output_dir: str = "runs/isic2017"
    ood_dir: str | None = None
    shortcut: str | None = None
    shortcut_overrides: dict | None = None
    p_bias_pos: float | None = None
    p_bias_neg: float | None = None
    specialist_size: float | None = None
    specialist_source: str | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    bias_free: str | None = None
    val_annotated_size: float | None = None
    architecture: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    teacher_architecture: str | None = None
    teacher_arch_kwargs: dict = field(default_factory=dict)
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    teacher_init: str | None = None
    teacher_epochs: int | None = None
    teacher_lr: float | None = None
    val_interval: int | None = None
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    num_workers: int | None = None
    n_bootstrap: int | None = None
    distill: DistillSettings = field(default_factory=DistillSettings)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    per_method: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.distill, dict):
            self.distill = _from_dict(DistillSettings, self.distill, "distill")
        if isinstance(self.baselines, dict):
            self.baselines = _from_dict(BaselineSettings, self.baselines, "baselines")
        if self.teacher_init not in (None, "erm", "scratch") and not Path(self.teacher_init).is_file():
            raise ConfigError("teacher_init", self.teacher_init,
                              "use 'erm' (fine-tune the ERM checkpoint), 'scratch', or the path of a checkpoint file.")
        if self.bias_free not in (None, "decorrelated", "absent"):
            raise ConfigError("bias_free", self.bias_free, "use 'decorrelated' or 'absent'.")
        for key in ("epochs", "teacher_epochs", "batch_size", "image_size"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(key, value, "use a positive integer.")
        self._check_per_method()

    def _check_per_method(self) -> None:
        from shortcut_kd.evaluation.schema import METHOD_ORDER

        if not isinstance(self.per_method, dict):
            raise ConfigError("per_method", self.per_method, "map method names to dicts of settings.")
        for method, changes in self.per_method.items():
            if method not in (*METHOD_ORDER, "jtt_identify"):
                raise ConfigError(f"per_method.{method}", changes, f"use methods of {list(METHOD_ORDER)}.")
            if not isinstance(changes, dict):
                raise ConfigError(f"per_method.{method}", changes, "give a dict of settings.")
            shared = sorted(set(changes) & set(SHARED_KEYS))
            if shared:
                raise ConfigError(f"per_method.{method}.{shared[0]}", changes[shared[0]],
                                  "set it for the whole experiment: every stage shares it.")
            self.replace(**changes, per_method={})  # unknown keys and bad values fail here, naming the key

    def for_method(self, method: str) -> "ExperimentSettings":
        """The settings ``method``'s stage runs with: these, with ``per_method[method]`` applied."""
        changes = self.per_method.get(method)
        return self.replace(**changes, per_method={}) if changes else self

    @property
    def root(self) -> Path:
        return Path(self.output_dir)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ExperimentSettings":
        """A copy with ``changes`` applied (nested ``distill`` / ``baselines`` as dicts merge). Naming another
        network drops the old network's arguments unless ``changes`` gives new ones."""
        data = without_replaced_network_kwargs(self.to_dict(), changes)
        for key, value in changes.items():
            if key in ("distill", "baselines") and isinstance(value, dict):
                data[key].update(value)
            else:
                data[key] = value
        return from_dict(data)


NETWORK_KWARGS = {"architecture": "arch_kwargs", "teacher_architecture": "teacher_arch_kwargs"}
"""Each network setting and the setting that holds that network's constructor arguments."""


def without_replaced_network_kwargs(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` without the constructor arguments of any network that ``changes`` replaces by another one: a
    ResNet's ``widen_factor`` means nothing to an AlexNet, and they are never merged into the new network's."""
    out = dict(base)
    for network, kwargs in NETWORK_KWARGS.items():
        if changes.get(network) not in (None, base.get(network)):
            out.pop(kwargs, None)
    return out


SHARED_KEYS = ("dataset", "dataset_dir", "output_dir", "ood_dir", "shortcut", "shortcut_overrides", "p_bias_pos",
               "p_bias_neg", "specialist_size", "specialist_source", "val_fraction", "test_fraction", "bias_free",
               "val_annotated_size", "architecture", "arch_kwargs", "teacher_architecture", "teacher_arch_kwargs",
               "teacher_init", "image_size", "seed", "device", "amp", "num_workers", "n_bootstrap",
               "per_method")
"""Settings every stage of an experiment shares (they define the data, the splits, the student and the teacher
networks and how the teacher starts): never per method."""


def nested_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as settings: ``{"distill.weight": 5, "lr": 1e-3}`` -> ``{"distill": {"weight": 5}, "lr": 1e-3}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def _from_dict(cls: type, data: dict, where: str) -> Any:
    """``cls(**data)``, with a ``ConfigError`` naming the first unknown key, the nearest known one and all of them.

    Args:
        cls: the settings dataclass.
        data: its fields.
        where: the prefix of the key in the error (``settings``, ``distill``, ``baselines``).
    """
    names = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{where}.{key}", data[key], f"{hint}known keys are {names}.")
    return cls(**data)


def from_dict(data: dict) -> ExperimentSettings:
    """Settings from a plain dict, with an error naming any unknown key."""
    return _from_dict(ExperimentSettings, dict(data), "settings")


DATA_KEYS = ("synthetic_n",)
"""Keys of a protocol preset that describe the demo's generated dataset, not the experiment (the number of
synthetic images); :func:`read_settings` leaves them out."""


def read_settings(path: str | Path, **overrides: Any) -> ExperimentSettings:
    """Settings from a YAML file (a protocol preset's :data:`DATA_KEYS` left out), then ``overrides``
    (None values are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("settings file", str(path),
                          "give the path of an existing YAML file (see configs/protocols/).")
    data = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k not in DATA_KEYS}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(data)
