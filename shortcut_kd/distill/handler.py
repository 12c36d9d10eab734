"""A workflow handler that turns a stock MONAI ``SupervisedTrainer`` into a layer-wise distillation trainer."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, cast

import torch
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.utils import CommonKeys as Keys
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from shortcut_kd.distill.losses import LayerwiseDistillationLoss, get_tap_loss
from shortcut_kd.distill.probes import ProbeSet, tap_shapes
from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.nets.capture import FeatureCapture
from shortcut_kd.nets.checkpoint import load_weights, unwrap
from shortcut_kd.nets.registry import pair_taps

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )

__all__ = ["LayerwiseDistillationHandler", "kd_output_transform"]

TASK_LOSS = "task_loss"
#: The teacher cache rides in the resume state up to this size (probe logits: a few bytes per sample); a larger
#: one (whole feature maps) is rebuilt after a resume, equal to the last bits where the backend allows.
RESUME_CACHE_LIMIT_BYTES = 256 * 2 ** 20
CACHE_STATE_KEY = "teacher_cache"


def _world_size() -> int:
    """Number of DDP processes (1 when torch.distributed is not in use)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def kd_output_transform(output: Any) -> dict[str, Any]:
    """``output_transform`` for ``StatsHandler`` / ``TensorBoardStatsHandler`` that logs every loss term.

    Returns ``{"loss": total, "task_loss": ..., "kd_<tap>": ..., "kd_final": ..., "kd_total": ...}`` from
    ``engine.state.output`` (decollated or not). Python::

        StatsHandler(name="train", output_transform=kd_output_transform)

    Bundle config::

        {"_target_": "StatsHandler", "output_transform":
            {"_target_": "shortcut_kd.distill.kd_output_transform", "_mode_": "callable"}}
    """
    first = output[0] if isinstance(output, (list, tuple)) else output
    if not isinstance(first, Mapping):
        return {}
    return {k: v for k, v in first.items() if k in (Keys.LOSS, TASK_LOSS) or str(k).startswith("kd_")}


def _is_teacher_key(key: str) -> bool:
    return ".teacher_probe." in f".{key}"


def final_only(spec: Any) -> bool:
    """True for the tap specification ``"none"`` (or an empty list): only the final-logit KL term is used."""
    if isinstance(spec, str):
        return spec.strip().lower() == "none"
    return spec is not None and len(list(spec)) == 0


class _CapturingInferer(Inferer):
    """Wraps the trainer's inferer: the student's tap hooks exist only while it runs the student, and are
    removed when it returns or raises (so they never outlive one forward pass)."""

    def __init__(self, inner: Callable, handler: "LayerwiseDistillationHandler") -> None:
        self.inner, self.handler = inner, handler

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        self.handler._student_features = None
        if not isinstance(network, nn.Module):
            raise TypeError(f"LayerwiseDistillationHandler needs the student network to be a torch.nn.Module, "
                            f"got {type(network).__name__}.")
        with FeatureCapture(network, self.handler.student_taps) as cap:
            out = self.inner(inputs, network, *args, **kwargs)
        self.handler._student_features = dict(cap.features)
        return out

    def __getattr__(self, name: str) -> Any:  # e.g. attributes of a SlidingWindowInferer
        if name in ("inner", "handler"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class LayerwiseDistillationHandler:
    """Distil a frozen teacher into the trainer's network at intermediate taps and at the final logits.

    ``attach(engine)`` on a stock ``monai.engines.SupervisedTrainer``:

    - wraps ``engine.inferer`` so forward hooks on the student's taps exist only during the student's
      forward pass (removed on return and on error; none remain after an iteration or a run);
    - on ``IterationEvents.LOSS_COMPLETED`` (before backward) runs the teacher in eval mode under
      ``torch.no_grad`` (and ``torch.autocast`` with AMP) on ``engine.state.output["image"]``, computes the
      ``LayerwiseDistillationLoss`` terms and adds ``ramp * kd_total`` to ``engine.state.output["loss"]``;
      the student is not run a second time;
    - adds its trainable parts (student probes, adapters) to ``engine.optimizer`` at the trainer's
      ``STARTED`` event (see ``attach``): into the first param group by default, so they follow the
      student's learning rate and any LR scheduler; with ``lr`` set, as a new param group via
      ``add_param_group`` (a scheduler created before then must handle the extra group: ``StepLR`` and
      ``CosineAnnealingLR`` do, ``LambdaLR`` fails). Put the handler itself in the ``save_dict`` of
      ``CheckpointSaver`` / ``CheckpointLoader`` to save and resume them;
    - logs each term on its own: ``engine.state.output`` gains ``task_loss`` (the loss before KD) and the
      weighted, ramped terms ``kd_<tap>``, ``kd_final``, ``kd_total`` (so ``loss = task_loss + kd_total``);
      use ``StatsHandler(output_transform=kd_output_transform)`` or ``TensorBoardStatsHandler(...)`` with the
      same transform for per-iteration logs. ``engine.state.metrics`` holds the running epoch means of the
      same terms, which both handlers write at the end of each epoch without any option.

    The KD weight ramps linearly from ``1 / (rampup_epochs * epoch_length)`` at the first iteration to 1
    after ``rampup_epochs`` epochs (``rampup_epochs=0``: full weight at once).

    Teacher cache (``cache_teacher=True``): the teacher's per-tap targets (probe logits for probe_kl,
    attention maps / pooled or whole features for the other losses) and final logits are stored per sample
    id (``engine.state.batch[id_key]``), so the teacher runs once per sample instead of once per epoch.
    This is only correct when a sample's input is the same every epoch: no random augmentation (the
    shortcut injection of this toolkit is deterministic per id and is fine). Memory: one target per tap and
    sample, on ``cache_device`` (default: the trainer's device); feature losses cache whole maps.

    Args:
        teacher: the frozen teacher network (any registered architecture; may differ from the student).
            It is moved to the trainer's device, put in eval mode and gets ``requires_grad=False``.
        student_taps: ``"all"``, ``"early"``, ``"late"``, a list or a comma-separated string of student taps;
            ``"none"``: no intermediate term, the final-logit KL alone (the final-only ablation).
        teacher_taps: the paired teacher taps (same count); default: the student's names for the same
            architecture, else the teacher taps at the same relative depth (see ``pair_taps``).
        loss: per-tap loss name (``probe_kl``, ``fitnet_mse``, ``attention_transfer``, ``cosine``), a list,
            or ``{student_tap: name}``.
        weights: per-tap weight: a float, a list or ``{student_tap: weight}``.
        temperature: softmax temperature of the KL terms.
        final_weight: weight of the KL term on the final logits.
        teacher_probes: the teacher's probes (``fit_probes`` on the bias-free specialist subset), as a
            ``ProbeSet`` or the path of a file written by ``ProbeSet.save``; required by probe_kl.
        teacher_checkpoint: optional weights loaded into ``teacher`` at set-up: a state dict file, or a
            ``CheckpointSaver`` file holding it under ``model`` / ``network`` / ``net`` / ``state_dict``
            (``shortcut_kd.nets.load_weights``; convenient in bundle configs, where the teacher is built by
            ``build_network``).
        rampup_epochs: epochs of the linear ramp-up of all KD terms.
        cache_teacher: cache the teacher's targets per sample id (deterministic inputs only).
        id_key: the batch field holding sample ids (for the cache).
        amp: run the teacher under ``torch.autocast``; ``None``: follow ``engine.amp``.
        input_shape: channel-first sample shape for the dry forward that reads tap channel counts at attach
            time (default: from the networks' first convolutions, 64² / 32³).
        lr: learning rate of a separate param group for the probes / adapters (default: none; they join the
            first param group of the optimizer).
        adapter: ``"auto"`` | ``"always"`` | ``"never"`` (see ``LayerwiseDistillationLoss``).
        init_student_probes: ``"teacher"`` | ``"random"``.
        cache_device: where cached targets live (default: the trainer's device).
        log_metrics: keep the running epoch means of the terms in ``engine.state.metrics``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student_taps: str | Sequence[str] = "all",
        teacher_taps: str | Sequence[str] | None = None,
        loss: str | Sequence[str] | Mapping[str, str] = "probe_kl",
        weights: float | Sequence[float] | Mapping[str, float] = 10.0,
        temperature: float = 2.0,
        final_weight: float = 1.0,
        teacher_probes: ProbeSet | str | os.PathLike | None = None,
        teacher_checkpoint: str | os.PathLike | None = None,
        rampup_epochs: float = 0,
        cache_teacher: bool = False,
        id_key: str = "id",
        amp: bool | None = None,
        input_shape: Sequence[int] | None = None,
        lr: float | None = None,
        adapter: str = "auto",
        init_student_probes: str = "teacher",
        cache_device: str | torch.device | None = None,
        log_metrics: bool = True,
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise ConfigError("teacher", type(teacher).__name__, "pass the teacher network (an nn.Module).")
        names = [loss] if isinstance(loss, str) else list(loss.values() if isinstance(loss, Mapping) else loss)
        for n in names:
            get_tap_loss(n)  # an unknown name fails here, listing the valid ones
        if "probe_kl" in names and teacher_probes is None:
            raise ConfigError(
                "teacher_probes", None,
                "probe_kl needs the teacher's probes: fit them with shortcut_kd.distill.fit_probes(teacher, taps, "
                "specialist_loader) on the bias-free specialist subset (teacher frozen) and pass the ProbeSet or "
                "the file written by ProbeSet.save().",
            )
        if isinstance(teacher_probes, (str, os.PathLike)):
            teacher_probes = ProbeSet.load(teacher_probes)
        if float(rampup_epochs) < 0:
            raise ConfigError("rampup_epochs", rampup_epochs, "use 0 (no ramp-up) or a positive number of epochs.")
        self.teacher = teacher
        self.student_taps_spec, self.teacher_taps_spec = student_taps, teacher_taps
        self.loss, self.weights, self.temperature, self.final_weight = loss, weights, temperature, final_weight
        self.teacher_probes = teacher_probes
        self.teacher_checkpoint = teacher_checkpoint
        self.rampup_epochs, self.cache_teacher, self.id_key, self.amp = float(rampup_epochs), cache_teacher, id_key, amp
        self.input_shape, self.lr, self.adapter = input_shape, lr, adapter
        self.init_student_probes = init_student_probes
        self.cache_device, self.log_metrics = cache_device, log_metrics
        self.logger = logging.getLogger(__name__)

        self.distill_loss: LayerwiseDistillationLoss | None = None
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []
        self.teacher_forward_count = 0  # teacher forward passes run so far
        self.teacher_sample_count = 0  # samples the teacher has processed so far
        self.current_scale = 0.0
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self._student_features: dict[str, torch.Tensor] | None = None
        self._sums: dict[str, float] = {}
        self._count = 0
        self._engine: Engine | None = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ set-up

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine`` (a ``SupervisedTrainer``).

        A trainer attaches its ``train_handlers`` before it has a network or optimizer, so the set-up that
        needs them (tap pairing, a dry forward for the channel counts, the probes / adapters and their
        optimizer param group, the inferer wrapper) runs at ``Events.STARTED``; when the engine already
        has its network, it runs at once. Ignite runs the handlers of one event in the order they were
        added, so attach this handler before a ``CheckpointLoader`` that restores the optimizer (earlier in
        ``train_handlers``, or a loader attached after the trainer is built): the optimizer must hold the
        probes / adapters when its state is loaded. Restoring the handler's own state works in either order.

        Args:
            engine: the trainer; its ``network``, ``optimizer``, ``inferer`` and ``state.device`` are used.
        """
        if self._engine is not None:
            raise RuntimeError("this LayerwiseDistillationHandler is already attached to an engine.")
        self._engine = engine
        if all(hasattr(engine, a) for a in ("network", "optimizer", "inferer")):
            self._setup(engine)
        else:
            engine.add_event_handler(Events.STARTED, self._setup)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._loss_completed)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._average_gradients)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._release)
        engine.add_event_handler(Events.COMPLETED, self._release)

    def _setup(self, engine: Engine) -> None:
        if self.distill_loss is not None:  # a second run() of the same trainer
            return
        for attr in ("network", "optimizer", "inferer"):
            if not hasattr(engine, attr):
                raise TypeError(f"LayerwiseDistillationHandler needs a SupervisedTrainer-like engine with "
                                f"`{attr}`; got {type(engine).__name__}.")
        trainer = cast("SupervisedTrainer", engine)  # or an engine with the same three attributes
        if hasattr(trainer.network, "_orig_mod") and not final_only(self.student_taps_spec):
            # the taps are read by forward hooks added around each student pass; a torch.compile'd graph
            # does not run hooks added after it was traced, so the intermediate terms would see no features
            raise ConfigError("compile", True, "layer-wise distillation reads the student's intermediate layers "
                                               "through forward hooks, which a torch.compile'd student does not "
                                               "run: set compile: false for the kd stage (other stages may keep "
                                               "it), or distil the final logits only (layers: none).")
        student = unwrap(trainer.network)
        device = getattr(engine.state, "device", None)
        if device is None:
            param = next(student.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)

        if self.teacher_checkpoint is not None:
            load_weights(self.teacher, self.teacher_checkpoint, written_by="the teacher stage")
        self.teacher.to(self.device).eval().requires_grad_(False)
        if final_only(self.student_taps_spec):  # the final-logit term alone (Hinton's KD): no taps, no shapes
            self.student_taps, self.teacher_taps, s_shapes, t_shapes = [], [], {}, {}
        else:
            self.student_taps, self.teacher_taps = pair_taps(student, self.teacher, self.student_taps_spec,
                                                             self.teacher_taps_spec)
            s_shapes = tap_shapes(student, self.student_taps, self.input_shape)
            t_shapes = tap_shapes(self.teacher, list(dict.fromkeys(self.teacher_taps)), self.input_shape)
        probes = self.teacher_probes
        if probes is not None:
            probes.to(self.device).eval().requires_grad_(False)
        self.distill_loss = LayerwiseDistillationLoss(
            self.student_taps, self.teacher_taps, loss=self.loss, weights=self.weights,
            temperature=self.temperature, final_weight=self.final_weight,
            student_channels={t: s[0] for t, s in s_shapes.items()},
            teacher_channels={t: s[0] for t, s in t_shapes.items()},
            spatial_dims=len(next(iter(s_shapes.values()))) - 1 if s_shapes else 2, teacher_probes=probes,
            adapter=self.adapter,
            init_student_probes=self.init_student_probes,
        ).to(self.device)
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)
        params = self.distill_loss.trainable_parameters()
        if _world_size() > 1:  # every rank starts from rank 0's probes / adapters, as DDP does for the network
            for p in params:
                torch.distributed.broadcast(p.data, src=0)
        if params and self.lr is None:
            # join the first param group rather than adding one: LR schedulers built on the optimizer before
            # this point keep one entry per group (LambdaLR fails on an extra group), and the probes and
            # adapters simply follow the student's learning rate and schedule
            known = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
            trainer.optimizer.param_groups[0]["params"].extend(p for p in params if id(p) not in known)
        elif params and self.lr is not None:
            group: dict[str, Any] = {"params": params, "lr": float(self.lr)}
            if any("initial_lr" in g for g in trainer.optimizer.param_groups):  # an LR scheduler already exists
                group["initial_lr"] = group["lr"]
            trainer.optimizer.add_param_group(group)
        trainer.inferer = _CapturingInferer(trainer.inferer, self)
        self.logger.info("distilling teacher taps %s into student taps %s (%s)", self.teacher_taps,
                         self.student_taps, self.distill_loss.loss_names)

    def state_dict(self) -> dict[str, Any]:
        """The trainable distillation parts (student probes, adapters), for ``CheckpointSaver``'s ``save_dict``.

        The teacher's probes are not included: they are an input, like the teacher. The teacher cache is, up to
        ``RESUME_CACHE_LIMIT_BYTES``, so that a resumed run distils the very targets an uninterrupted one does."""
        if self.distill_loss is None:
            return dict(self._pending_state or {})
        state: dict[str, Any] = {k: v for k, v in self.distill_loss.state_dict().items() if not _is_teacher_key(k)}
        cached = sum(v.numel() * v.element_size() for entry in self._cache.values() for v in entry.values())
        if self._cache and cached <= RESUME_CACHE_LIMIT_BYTES:
            # the cached targets were computed on the batches of the epochs already run; recomputing them on
            # other batches after a resume changes their last bits on some backends, so they travel along
            state[CACHE_STATE_KEY] = {sid: {k: v.detach().cpu().clone() for k, v in entry.items()}
                                      for sid, entry in self._cache.items()}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (before set-up it is kept and applied at set-up)."""
        if self.distill_loss is None:
            self._pending_state = dict(state_dict)
            return
        state_dict = dict(state_dict)
        cache = state_dict.pop(CACHE_STATE_KEY, None)
        if cache is not None and self.cache_teacher:
            store = self.cache_device if self.cache_device is not None else self.device
            self._cache = {sid: {k: v.to(store) for k, v in entry.items()} for sid, entry in cache.items()}
        result = self.distill_loss.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not _is_teacher_key(k)]
        if missing or result.unexpected_keys:
            raise ConfigError("kd state", sorted(state_dict)[:4], f"does not match this handler's taps and losses "
                              f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}); resume with the "
                              "settings it was saved with.")

    def clear_cache(self) -> None:
        """Forget the cached teacher targets (e.g. after changing the inputs or the teacher)."""
        self._cache.clear()

    # ------------------------------------------------------------------------------------------ events

    def _average_gradients(self, engine: Engine) -> None:
        """Under DDP, average the probes' / adapters' gradients across ranks before the optimizer step.

        They sit outside the ``DistributedDataParallel`` wrapper of the student (the handler adds them
        after the trainer was built), so nothing else all-reduces them; without this each rank's copy
        would drift apart."""
        world = _world_size()
        if world <= 1 or self.distill_loss is None:
            return
        grads = [p.grad for p in self.distill_loss.trainable_parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _distill_loss(self) -> LayerwiseDistillationLoss:
        """The loss module that the set-up built (at ``Events.STARTED`` or in :meth:`attach`)."""
        if self.distill_loss is None:
            raise RuntimeError("LayerwiseDistillationHandler is not set up: attach it to the trainer before running.")
        return self.distill_loss

    def _epoch_started(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def _release(self, engine: Engine) -> None:
        self._student_features = None

    def _scale(self, engine: Engine) -> float:
        if self.rampup_epochs <= 0:
            return 1.0
        length = engine.state.epoch_length
        if length:
            return min(1.0, engine.state.iteration / (self.rampup_epochs * length))
        return min(1.0, engine.state.epoch / self.rampup_epochs)

    def _loss_completed(self, engine: Engine) -> None:
        features, self._student_features = self._student_features, None
        if features is None:
            raise RuntimeError("LayerwiseDistillationHandler found no student features: the trainer's inferer "
                               "was replaced after attach(); attach the handler after setting the inferer.")
        # the trainer's output dict (ignite annotates State.output as an int)
        out: dict[str, Any] = engine.state.output  # type: ignore[assignment]
        targets = self._teacher_targets(engine, out[Keys.IMAGE])
        distill_loss = self._distill_loss()
        terms = distill_loss(features, out[Keys.PRED], targets)
        scale = self.current_scale = self._scale(engine)
        task = out[Keys.LOSS]
        total_key = distill_loss.term_names[-1]
        out[Keys.LOSS] = task + scale * terms[total_key].to(task.dtype)
        out[TASK_LOSS] = task.detach()
        names = distill_loss.term_names
        logged = torch.stack([terms[k].detach().float() for k in names]) * scale
        for k, v in zip(names, logged):
            out[k] = v
        if self.log_metrics:
            self._count += 1
            for k, v in zip([TASK_LOSS, *names], [float(task.detach()), *logged.tolist()]):
                self._sums[k] = self._sums.get(k, 0.0) + v
                engine.state.metrics[k] = self._sums[k] / self._count

    # ------------------------------------------------------------------------------------------ teacher

    def _run_teacher(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        amp = bool(getattr(engine, "amp", False)) if self.amp is None else bool(self.amp)
        self.teacher.eval()
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=amp):
            with FeatureCapture(self.teacher, self.teacher_taps, detach=True) as cap:
                logits = self.teacher(x)
            targets = self._distill_loss().teacher_targets(cap.features, logits)
        self.teacher_forward_count += 1
        self.teacher_sample_count += int(x.shape[0])
        return targets

    def _batch_ids(self, engine: Engine) -> list[str]:
        batch = engine.state.batch
        if not isinstance(batch, Mapping) or self.id_key not in batch:
            have = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise DataError(f"cache_teacher needs sample ids in every batch, but the batch has {have}.",
                            column=self.id_key, fix=f"add a unique '{self.id_key}' to each datalist item, set "
                                                    "id_key, or use cache_teacher=False.")
        ids = batch[self.id_key]
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return [str(i) for i in ids]

    def _teacher_targets(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.cache_teacher:
            return self._run_teacher(engine, x)
        ids = self._batch_ids(engine)
        if len(ids) != x.shape[0]:
            raise DataError(f"{len(ids)} ids for {x.shape[0]} images in a batch.", column=self.id_key,
                            fix="give every sample exactly one id.")
        first = {}
        for i, sid in enumerate(ids):
            if sid not in self._cache and sid not in first:
                first[sid] = i
        fresh = None
        if first:
            index = list(first.values())
            sub = x if len(index) == x.shape[0] else x[torch.as_tensor(index, device=x.device)]
            fresh = self._run_teacher(engine, sub)
            store = self.cache_device
            for j, sid in enumerate(first):
                self._cache[sid] = {k: (v[j] if store is None else v[j].to(store)) for k, v in fresh.items()}
            if len(index) == x.shape[0]:  # every sample new and distinct: no gather needed
                return fresh
        keys = list(self._cache[ids[0]])
        return {k: torch.stack([self._cache[sid][k] for sid in ids]).to(x.device) for k in keys}
