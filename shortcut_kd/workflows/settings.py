"""Experiment settings: one dataclass, loadable from YAML, every choice the paper leaves open exposed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shortcut_kd.errors import ConfigError

from shortcut_kd.evaluation.schema import METHOD_ORDER as METHODS  # noqa: F401 - results.json method keys, report order


@dataclass
class DistillSettings:
    """How the student is distilled from the teacher.

    The defaults are the recipe that removed both a localized and a diffuse shortcut in
    benchmarks/method_study.md (strong probe-KL and final-logit terms, student started from the teacher,
    teacher probes fitted to convergence).

    Args:
        loss: per-tap loss: ``probe_kl`` (the paper's), ``fitnet_mse``, ``attention_transfer``, ``cosine``.
        layers: taps to distil: ``all``, ``early``, ``late``, ``auto`` (from the per-layer probe
            analysis of the ERM model) or explicit names.
        weight: weight of each intermediate term.
        final_weight: weight of the final-logit KL term.
        temperature: softmax temperature τ (terms are scaled by τ²).
        rampup_epochs: linear ramp-up of the KD weights over the first epochs.
        cache_teacher: run the teacher once per sample (inputs must be deterministic).
        probe_epochs: epochs to fit the frozen teacher's probes on the specialist subset (cheap: the probes
            train on pooled features computed once; 10 left the early-layer probes near chance).
        student_init: ``teacher`` (start from the specialist teacher's weights; same architecture only, else
            scratch), ``scratch`` (the paper) or ``erm`` (start from the ERM checkpoint).
        lr: the student's learning rate (default: the experiment's ``lr``).
    """

    loss: str = "probe_kl"
    layers: Any = "all"
    weight: float = 50.0
    final_weight: float = 50.0
    temperature: float = 2.0
    rampup_epochs: int = 0
    cache_teacher: bool = True
    probe_epochs: int = 200
    student_init: str = "teacher"
    lr: float | None = None


@dataclass
class BaselineSettings:
    """Hyper-parameters of the baselines (defaults from their papers, scaled to short runs).

    ``jtt_budget``: ``"erm"`` (default) gives JTT's second stage as many steps per epoch as every
    other method (each epoch a fresh random draw, without replacement, of ``len(train)`` items from
    the upsampled list: the errors are still ``λ`` times as likely); ``"upsampled"`` makes full passes
    over the upsampled list as in the paper, which costs ``1 + (λ - 1) · error rate`` ERM runs (10×
    when an early ERM model gets half the set wrong).
    """

    groupdro_eta: float = 0.01
    jtt_epochs: int = 2
    jtt_lambda: int = 20
    jtt_budget: str = "erm"
    mix_alpha: float = 0.4
    randconv_kernel_sizes: tuple = (1, 3, 5, 7)

    def __post_init__(self) -> None:
        if self.jtt_budget not in ("erm", "upsampled"):
            raise ConfigError("baselines.jtt_budget", self.jtt_budget, "use 'erm' or 'upsampled'.")


@dataclass
class ExperimentSettings:
    """Everything that defines one experiment (one dataset, one shortcut, one architecture).

    Paths: ``dataset_dir`` holds the dataset in its native layout; ``ood_dir`` an optional
    shifted source in the same layout; everything is written under ``output_dir``.
    """

    dataset: str = "isic2017"
    dataset_dir: str = "data/isic2017"
    output_dir: str = "runs/isic2017"
    ood_dir: str | None = None
    shortcut: str = "patch"
    shortcut_overrides: dict = field(default_factory=dict)
    p_bias_pos: float = 0.95
    p_bias_neg: float = 0.05
    specialist_size: float = 0.1
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    bias_free: str = "decorrelated"
    architecture: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    teacher_architecture: str | None = None
    image_size: int | None = None
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    teacher_init: str = "erm"
    teacher_epochs: int = 30
    teacher_lr: float = 3e-4
    val_interval: int = 1
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    num_workers: int = 0
    n_bootstrap: int = 500
    distill: DistillSettings = field(default_factory=DistillSettings)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)

    def __post_init__(self) -> None:
        if isinstance(self.distill, dict):
            self.distill = _from_dict(DistillSettings, self.distill, "distill")
        if isinstance(self.baselines, dict):
            self.baselines = _from_dict(BaselineSettings, self.baselines, "baselines")
        if self.teacher_init not in ("erm", "scratch") and not Path(self.teacher_init).is_file():
            raise ConfigError("teacher_init", self.teacher_init,
                              "use 'erm' (fine-tune the ERM checkpoint), 'scratch', or the path of a checkpoint file.")
        if self.bias_free not in ("decorrelated", "absent"):
            raise ConfigError("bias_free", self.bias_free, "use 'decorrelated' or 'absent'.")

    @property
    def root(self) -> Path:
        return Path(self.output_dir)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ExperimentSettings":
        """A copy with ``changes`` applied (nested ``distill`` / ``baselines`` as dicts merge)."""
        data = self.to_dict()
        for key, value in changes.items():
            if key in ("distill", "baselines") and isinstance(value, dict):
                data[key].update(value)
            else:
                data[key] = value
        return from_dict(data)


def _from_dict(cls: type, data: dict, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", data[unknown[0]], f"known keys are {sorted(names)}.")
    return cls(**data)


def from_dict(data: dict) -> ExperimentSettings:
    """Settings from a plain dict, with an error naming any unknown key."""
    return _from_dict(ExperimentSettings, dict(data), "settings")


def load_settings(path: str | Path, **overrides: Any) -> ExperimentSettings:
    """Settings from a YAML file, then ``overrides`` (None values are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("settings file", str(path), "give the path of an existing YAML file (see configs/protocols/).")
    data = yaml.safe_load(path.read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(data)
