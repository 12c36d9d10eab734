"""Distillation losses between student and teacher tap points, and their layer-wise sum.

Each per-tap loss exists twice:

- a function ``fn(student, teacher, ...) -> scalar`` (``probe_kl``, ``fitnet_mse``, ``attention_transfer``,
  ``cosine``) on already comparable tensors;
- a module in ``TAP_LOSSES`` (selected by the same name) that holds the trainable parts (student probe,
  adapter) and splits the work in two, so the teacher's side can be cached per sample:
  ``target = tap_loss.teacher_target(teacher_feature)`` and ``tap_loss(student_feature, target)``.

``LayerwiseDistillationLoss`` combines them:
``sum_l w_l * loss_l(student_l, teacher_l) + w_final * tau^2 * KL(p_teacher || p_student)`` on the final logits.
"""

from __future__ import annotations

from typing import Mapping, Sequence, cast

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from shortcut_kd.distill.probes import ProbeHead, ProbeSet
from shortcut_kd.errors import ConfigError

__all__ = [
    "Adapter",
    "AttentionTransferTapLoss",
    "CosineTapLoss",
    "FitNetTapLoss",
    "LayerwiseDistillationLoss",
    "ProbeKLTapLoss",
    "TAP_LOSSES",
    "TapLoss",
    "attention_map",
    "attention_transfer",
    "cosine",
    "fitnet_mse",
    "get_tap_loss",
    "match_spatial",
    "probe_kl",
]


# ---------------------------------------------------------------------------------------------- functions


def match_spatial(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``x`` (N, C, *spatial) to ``size``: adaptive average pooling when shrinking every axis,
    (bi/tri)linear interpolation otherwise. Works for 1D, 2D and 3D maps."""
    size = tuple(int(s) for s in size)
    spatial = tuple(x.shape[2:])
    if spatial == size:
        return x
    if len(spatial) != len(size):
        raise ValueError(f"cannot match a {len(spatial)}D map {spatial} to a {len(size)}D size {size}.")
    if all(a >= b for a, b in zip(spatial, size)):
        if len(size) == 3:
            return F.adaptive_avg_pool3d(x, (size[0], size[1], size[2]))
        if len(size) == 2:
            return F.adaptive_avg_pool2d(x, (size[0], size[1]))
        return F.adaptive_avg_pool1d(x, size)
    mode = ("linear", "bilinear", "trilinear")[len(size) - 1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def probe_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, summed over classes, mean over samples.

    Args:
        student: student logits (N, K) (a probe's or the final layer's).
        teacher: teacher logits (N, K).
        temperature: the softmax temperature ``tau``; the ``tau^2`` factor keeps gradient sizes comparable
            across temperatures (Hinton et al., 2015).
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def fitnet_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss: mean squared error between the (adapted) student map and the teacher map.

    The student map is resized to the teacher's spatial size first (``match_spatial``); channel counts
    must already agree (apply an ``Adapter`` to the student before).
    """
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(f"channel counts differ ({student.shape[1]} vs {teacher.shape[1]}): adapt the student first.")
    return F.mse_loss(match_spatial(student.float(), teacher.shape[2:]), teacher.float())


def attention_map(feature: torch.Tensor, p: float = 2.0, size: Sequence[int] | None = None) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis (2017): ``mean_c |A_c|^p``, optionally resized,
    then L2-normalised over positions. Returns (N, *spatial)."""
    q = feature.float().abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None:
        q = match_spatial(q, size)
    flat = F.normalize(q.flatten(1), dim=1)
    return flat.reshape(q.shape[0], *q.shape[2:])


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer between feature maps of any channel counts: the squared L2 distance between
    the normalised attention maps (student map resized to the teacher's size), mean over samples.
    Bounded by 4."""
    q_t = attention_map(teacher, p)
    q_s = attention_map(student, p, size=q_t.shape[1:])
    return (q_s - q_t).pow(2).flatten(1).sum(1).mean()


def cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cosine similarity`` per sample, mean over samples; inputs (N, C) pooled vectors or (N, C, *spatial)
    maps (the student map is resized to the teacher's size)."""
    if student.ndim > 2:
        student = match_spatial(student, teacher.shape[2:])
    sim = F.cosine_similarity(student.float().flatten(1), teacher.float().flatten(1), dim=1, eps=1e-8)
    return (1.0 - sim).mean()


# ---------------------------------------------------------------------------------------------- modules


class Adapter(nn.Module):
    """A learned 1×1 convolution mapping student channels to teacher channels (FitNets' regressor).

    Initialised to the identity when the channel counts agree, so an identical student and teacher
    start at zero loss.

    Args:
        in_channels: student channels.
        out_channels: teacher channels.
        spatial_dims: 1, 2 or 3.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=True)
        if in_channels == out_channels:
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight.view(out_channels, in_channels).copy_(torch.eye(out_channels))
                self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _make_adapter(mode: str, s_ch: int, t_ch: int, spatial_dims: int) -> nn.Module:
    if mode not in ("auto", "always", "never"):
        raise ConfigError("adapter", mode, "use 'auto' (only when channel counts differ), 'always' or 'never'.")
    if mode == "always" or (mode == "auto" and s_ch != t_ch):
        return Adapter(s_ch, t_ch, spatial_dims)
    if s_ch != t_ch:
        raise ConfigError("adapter", mode, f"{s_ch} student vs {t_ch} teacher channels need an adapter; "
                                           "use adapter='auto'.")
    return nn.Identity()


class TapLoss(nn.Module):
    """Base of the per-tap losses: ``teacher_target(feature)`` (cacheable, no grad) and
    ``forward(student_feature, target) -> scalar``.

    Every subclass is built the same way, so ``LayerwiseDistillationLoss`` can build any of ``TAP_LOSSES``
    by name::

        cls(student_channels, teacher_channels, spatial_dims, teacher_probe=None, **options)

    with ``options`` (keyword-only) among the class's ``option_names``. ``requires`` names the
    arguments the class cannot do without (``"student_channels"``, ``"teacher_channels"``,
    ``"teacher_probe"``); the others may be None.

    Args:
        student_channels: channels of the student tap.
        teacher_channels: channels of the paired teacher tap.
        spatial_dims: spatial dimensionality of the feature maps (1, 2 or 3).
        teacher_probe: the teacher's fitted ``ProbeHead`` on the paired tap.
    """

    option_names: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    def __init__(self, student_channels: int | None, teacher_channels: int | None, spatial_dims: int,
                 teacher_probe: ProbeHead | None = None) -> None:
        super().__init__()
        missing = [k for k, v in (("student_channels", student_channels), ("teacher_channels", teacher_channels),
                                  ("teacher_probe", teacher_probe)) if k in self.requires and v is None]
        if missing:
            raise ConfigError(missing[0], None, f"{type(self).__name__} needs {', '.join(self.requires)}.")

    def teacher_target(self, feature: torch.Tensor) -> torch.Tensor:
        return feature.float()


class ProbeKLTapLoss(TapLoss):
    """``probe_kl`` between the student's probe (trained jointly) and the teacher's frozen probe.

    Args:
        student_channels: channels of the student tap.
        teacher_channels: channels of the teacher tap (unused: the teacher probe's input size rules).
        spatial_dims: spatial dimensionality of the feature maps.
        teacher_probe: the teacher's fitted ``ProbeHead`` on the paired tap (frozen here).
        temperature: softmax temperature.
        init_from_teacher: start the student probe as a copy of the teacher's when channel counts agree.
    """

    option_names = ("temperature", "init_from_teacher")
    requires = ("student_channels", "teacher_probe")

    def __init__(self, student_channels: int, teacher_channels: int | None, spatial_dims: int,
                 teacher_probe: ProbeHead | None = None, *, temperature: float = 2.0,
                 init_from_teacher: bool = True) -> None:
        super().__init__(student_channels, teacher_channels, spatial_dims, teacher_probe)
        assert teacher_probe is not None  # required: TapLoss.__init__ raised otherwise
        self.temperature = float(temperature)
        self.teacher_probe = teacher_probe.requires_grad_(False).eval()
        self.student_probe = ProbeHead(student_channels, teacher_probe.num_classes, teacher_probe.spatial_dims)
        if init_from_teacher and student_channels == teacher_probe.in_channels:
            self.student_probe.load_state_dict(teacher_probe.state_dict())

    def teacher_target(self, feature: torch.Tensor) -> torch.Tensor:
        return self.teacher_probe(feature).float()

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return probe_kl(self.student_probe(student), target, self.temperature)


class FitNetTapLoss(TapLoss):
    """``fitnet_mse`` through an ``Adapter`` on the student map (needed when channel counts differ).

    Args:
        student_channels: channels of the student tap.
        teacher_channels: channels of the teacher tap.
        spatial_dims: spatial dimensionality of the feature maps (for the adapter).
        teacher_probe: unused.
        adapter: ``"auto"`` (only when channel counts differ), ``"always"`` or ``"never"``.
    """

    option_names = ("adapter",)
    requires = ("student_channels", "teacher_channels")

    def __init__(self, student_channels: int, teacher_channels: int, spatial_dims: int,
                 teacher_probe: ProbeHead | None = None, *, adapter: str = "auto") -> None:
        super().__init__(student_channels, teacher_channels, spatial_dims, teacher_probe)
        self.adapter = _make_adapter(adapter, student_channels, teacher_channels, spatial_dims)

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return fitnet_mse(self.adapter(student), target)


class AttentionTransferTapLoss(TapLoss):
    """``attention_transfer``; no trainable parts, any channel counts. The target is the teacher's map.

    Args:
        student_channels: unused (any).
        teacher_channels: unused (any).
        spatial_dims: unused (the maps' own).
        teacher_probe: unused.
        p: exponent of the attention map ``mean_c |A_c|^p``.
    """

    option_names = ("p",)

    def __init__(self, student_channels: int | None = None, teacher_channels: int | None = None,
                 spatial_dims: int = 2, teacher_probe: ProbeHead | None = None, *, p: float = 2.0) -> None:
        super().__init__(student_channels, teacher_channels, spatial_dims, teacher_probe)
        self.p = float(p)

    def teacher_target(self, feature: torch.Tensor) -> torch.Tensor:
        return attention_map(feature, self.p)

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q_s = attention_map(student, self.p, size=target.shape[1:])
        return (q_s - target).pow(2).flatten(1).sum(1).mean()


class CosineTapLoss(TapLoss):
    """``cosine`` distance of globally pooled features (``pooled=True``) or of whole maps, through an
    ``Adapter`` when channel counts differ.

    Args:
        student_channels: channels of the student tap.
        teacher_channels: channels of the teacher tap.
        spatial_dims: spatial dimensionality of the feature maps (for the adapter).
        teacher_probe: unused.
        adapter: ``"auto"`` (only when channel counts differ), ``"always"`` or ``"never"``.
        pooled: compare globally pooled features (True) or whole maps (False).
    """

    option_names = ("adapter", "pooled")
    requires = ("student_channels", "teacher_channels")

    def __init__(self, student_channels: int, teacher_channels: int, spatial_dims: int,
                 teacher_probe: ProbeHead | None = None, *, adapter: str = "auto", pooled: bool = True) -> None:
        super().__init__(student_channels, teacher_channels, spatial_dims, teacher_probe)
        self.pooled = bool(pooled)
        self.adapter = _make_adapter(adapter, student_channels, teacher_channels, spatial_dims)

    def teacher_target(self, feature: torch.Tensor) -> torch.Tensor:
        return feature.float().flatten(2).mean(-1) if self.pooled else feature.float()

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            # pool first, then adapt: a 1x1 conv commutes with global average pooling and is cheaper here
            spatial_dims = student.ndim - 2
            pooled = student.flatten(2).mean(-1).reshape(*student.shape[:2], *([1] * spatial_dims))
            return cosine(self.adapter(pooled).flatten(1), target)
        return cosine(self.adapter(student), target)


TAP_LOSSES: dict[str, type[TapLoss]] = {
    "probe_kl": ProbeKLTapLoss,
    "fitnet_mse": FitNetTapLoss,
    "attention_transfer": AttentionTransferTapLoss,
    "cosine": CosineTapLoss,
}
"""The per-tap losses by name (the ``loss`` setting); each is built as ``TapLoss`` describes."""


def get_tap_loss(name: str) -> type[TapLoss]:
    """The ``TapLoss`` class registered as ``name`` in ``TAP_LOSSES``.

    Raises:
        ConfigError: an unknown name; the message lists the valid ones.
    """
    if name not in TAP_LOSSES:
        raise ConfigError("loss", name, f"use one of {sorted(TAP_LOSSES)}.")
    return TAP_LOSSES[name]


def _per_tap(value, taps: Sequence[str], key: str, kind: type | tuple) -> list:
    """Expand a scalar / {tap: value} / [values] setting to one value per student tap."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in taps]
        missing = [t for t in taps if t not in value]
        if unknown or missing:
            raise ConfigError(key, dict(value), f"give a value for exactly the taps {list(taps)} "
                                                f"(unknown: {unknown}, missing: {missing}).")
        return [value[t] for t in taps]
    if isinstance(value, (list, tuple)):
        if len(value) != len(taps):
            raise ConfigError(key, list(value), f"give one value per tap ({len(taps)}: {list(taps)}).")
        return list(value)
    if not isinstance(value, kind):
        raise ConfigError(key, value, f"give a {kind}, a list with one per tap or a {{tap: value}} mapping.")
    return [value] * len(taps)


def _teacher_probe(teacher_probes: ProbeSet | None, t_tap: str, t_ch: Mapping[str, int]) -> ProbeHead:
    """The teacher's probe on ``t_tap``, checked against the tap's channels when known."""
    if teacher_probes is None or t_tap not in teacher_probes:
        have = teacher_probes.taps if teacher_probes is not None else None
        raise ConfigError(
            "teacher_probes", have,
            f"probe_kl needs a teacher probe on tap '{t_tap}': fit them with "
            "shortcut_kd.distill.fit_probes(teacher, taps, specialist_loader) on the bias-free "
            "specialist subset (teacher frozen) and pass the ProbeSet.",
        )
    probe = teacher_probes[t_tap]
    if t_tap in t_ch and t_ch[t_tap] != probe.in_channels:
        raise ConfigError("teacher_probes", t_tap, f"the probe expects {probe.in_channels} "
                          f"channels but the teacher tap has {t_ch[t_tap]}; refit the probes.")
    return probe


class LayerwiseDistillationLoss(nn.Module):
    """The layer-wise distillation terms, as a module holding their trainable parts (student probes, adapters).

    ``forward`` returns a dict of weighted terms: ``{prefix}{student_tap}`` for each tap,
    ``{prefix}final`` and ``{prefix}total`` (their sum), each a scalar with gradient to the student.

    Args:
        taps_student: student tap names.
        taps_teacher: teacher tap names paired by position (default: the student's names).
        loss: ``"probe_kl"`` | ``"fitnet_mse"`` | ``"attention_transfer"`` | ``"cosine"``, a list with one
            per tap, or ``{student_tap: name}``.
        weights: weight ``w_l`` of each tap term: a float, a list, or ``{student_tap: weight}``.
        temperature: ``tau`` of the KL terms (probe and final).
        final_weight: weight of ``tau^2 * KL`` on the final logits (0 switches it off).
        student_channels: ``{student_tap: channels}`` (needed by every loss but attention transfer).
        teacher_channels: ``{teacher_tap: channels}`` (needed by fitnet_mse and cosine).
        spatial_dims: spatial dimensionality of the feature maps (for adapters).
        teacher_probes: the teacher's fitted ``ProbeSet`` (needed by probe_kl; frozen here).
        adapter: ``"auto"`` (a 1×1 adapter only where channel counts differ), ``"always"`` or ``"never"``.
        init_student_probes: ``"teacher"`` (copy the teacher's probe where shapes agree) or ``"random"``.
        cosine_pooled: cosine on globally pooled features (True) or on whole maps (False).
        prefix: prefix of the term names.
    """

    def __init__(
        self,
        taps_student: Sequence[str],
        taps_teacher: Sequence[str] | None = None,
        loss: str | Sequence[str] | Mapping[str, str] = "probe_kl",
        weights: float | Sequence[float] | Mapping[str, float] = 10.0,
        temperature: float = 2.0,
        final_weight: float = 1.0,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
        spatial_dims: int = 2,
        teacher_probes: ProbeSet | None = None,
        adapter: str = "auto",
        init_student_probes: str = "teacher",
        cosine_pooled: bool = True,
        prefix: str = "kd_",
    ) -> None:
        super().__init__()
        self.taps_student = list(taps_student)
        self.taps_teacher = list(taps_teacher) if taps_teacher is not None else list(self.taps_student)
        if len(self.taps_teacher) != len(self.taps_student) or len(set(self.taps_student)) != len(self.taps_student):
            raise ConfigError("taps_teacher", self.taps_teacher,
                              f"give one teacher tap per (distinct) student tap {self.taps_student}.")
        self.loss_names = [str(n) for n in _per_tap(loss, self.taps_student, "loss", str)]
        classes = [get_tap_loss(name) for name in self.loss_names]
        self.weights = [float(w) for w in _per_tap(weights, self.taps_student, "weights", (int, float))]
        self.temperature, self.final_weight, self.prefix = float(temperature), float(final_weight), prefix
        if init_student_probes not in ("teacher", "random"):
            raise ConfigError("init_student_probes", init_student_probes, "use 'teacher' or 'random'.")
        # every option any tap loss takes; each class gets those among its option_names
        options = {"temperature": self.temperature, "init_from_teacher": init_student_probes == "teacher",
                   "adapter": adapter, "pooled": cosine_pooled}
        s_ch, t_ch = dict(student_channels or {}), dict(teacher_channels or {})
        losses = []
        for s_tap, t_tap, name, cls in zip(self.taps_student, self.taps_teacher, self.loss_names, classes):
            probe = _teacher_probe(teacher_probes, t_tap, t_ch) if "teacher_probe" in cls.requires else None
            s_c, t_c = s_ch.get(s_tap), t_ch.get(t_tap)
            if "teacher_channels" in cls.requires and (s_c is None or t_c is None):
                raise ConfigError("student_channels/teacher_channels", s_tap if s_c is None else t_tap,
                                  f"{name} needs the channel counts of both taps (see tap_shapes).")
            if "student_channels" in cls.requires and s_c is None:
                raise ConfigError("student_channels", s_ch, f"give the channels of tap '{s_tap}'.")
            if "adapter" in cls.option_names and adapter == "never" and s_c != t_c:
                raise ConfigError("adapter", adapter, f"tap '{s_tap}' has {s_c} student vs {t_c} teacher "
                                                      "channels; use adapter='auto'.")
            losses.append(cls(s_c, t_c, spatial_dims, probe,
                              **{k: v for k, v in options.items() if k in cls.option_names}))
        self.tap_losses = nn.ModuleList(losses)

    @property
    def term_names(self) -> list[str]:
        """Names of the terms ``forward`` returns, in order (the total last)."""
        return [self.prefix + t for t in self.taps_student] + [self.prefix + "final", self.prefix + "total"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters to train with the student (student probes, adapters); teacher probes are excluded."""
        return [p for p in self.parameters() if p.requires_grad]

    def teacher_targets(self, features: Mapping[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the student is matched against, per student tap plus ``"final"``; float32, cacheable per sample.

        Args:
            features: teacher tap outputs ``{teacher_tap: (N, C, *spatial)}``.
            logits: teacher final logits (N, K).
        """
        out = {s: cast(TapLoss, mod).teacher_target(features[t])
               for s, t, mod in zip(self.taps_student, self.taps_teacher, self.tap_losses)}
        out["final"] = logits.float()
        return out

    def forward(
        self, features: Mapping[str, torch.Tensor], logits: torch.Tensor, targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Weighted terms ``{prefix}<tap>``, ``{prefix}final``, ``{prefix}total``.

        Args:
            features: student tap outputs ``{student_tap: tensor}`` (with gradient).
            logits: student final logits (N, K).
            targets: ``teacher_targets(...)`` of the teacher on the same samples.
        """
        terms: dict[str, torch.Tensor] = {}
        zero = logits.new_zeros((), dtype=torch.float32)
        for tap, mod, w in zip(self.taps_student, self.tap_losses, self.weights):
            terms[self.prefix + tap] = w * mod(features[tap], targets[tap]) if w != 0 else zero
        final = self.final_weight * probe_kl(logits, targets["final"], self.temperature) if self.final_weight else zero
        terms[self.prefix + "final"] = final
        terms[self.prefix + "total"] = torch.stack(list(terms.values())).sum()
        return terms

    def compute(
        self,
        student_features: Mapping[str, torch.Tensor],
        student_logits: torch.Tensor,
        teacher_features: Mapping[str, torch.Tensor],
        teacher_logits: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``forward`` from raw teacher outputs (no cache)."""
        with torch.no_grad():
            targets = self.teacher_targets(teacher_features, teacher_logits)
        return self(student_features, student_logits, targets)
