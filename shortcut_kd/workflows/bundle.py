"""Small adaptors that the MONAI bundles in ``bundles/`` call from their configs.

The bundle configs stay flat and readable: each piece of logic they need lives here (or deeper in the
library) and is named by ``_target_`` or a short ``$`` expression:

- :func:`prepare_bundle_splits`: the split datalists of a dataset in its native layout, once per process
  group under DDP.
- :func:`bundle_shortcut`: the shortcut transform named in ``shortcut#name`` (None for ``native``/``none``).
- :func:`load_datalist`: one split role as a MONAI datalist.
- :func:`load_network`: a network with the weights of a checkpoint, frozen (the distillation teacher).
- :class:`ResumableCheckpoint`: the last training state every epoch under a fixed name, loaded back when
  it exists (resume).
- :class:`FiniteLossGuard`: stop training at the first iteration whose loss (or a loss term) is NaN or
  infinite, naming the iteration and every term (:class:`TrainingError`), before a bad state is saved.
- :class:`TeacherProbesHandler`: when the teacher's training completes, fit and save its tap probes.
- :class:`SampleIdRecorder`: which sample ids this process trained on, per epoch (checks DDP shards).
- :func:`split_loaders` / :func:`test_loaders`: a loader per test set, or per view of the bias-annotated
  validation split (which never opens a test split).
- :func:`evaluate_checkpoints`: every stage checkpoint on every test set (or on the validation split)
  -> ``results.json``, and optionally the per-image predictions.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, cast

import torch
from ignite.engine import Engine, Events
from torch import nn

if TYPE_CHECKING:
    from monai.engines import Workflow

from shortcut_kd.errors import ConfigError, DataError, ShortcutKDError
from shortcut_kd.io import read_json, save_torch, write_json

__all__ = [
    "prepare_bundle_splits",
    "bundle_shortcut",
    "load_datalist",
    "load_network",
    "is_rank0",
    "ResumableCheckpoint",
    "FiniteLossGuard",
    "TrainingError",
    "TeacherProbesHandler",
    "SampleIdRecorder",
    "InitialWeights",
    "SaveFinalModel",
    "jtt_datalist",
    "run_dfr",
    "split_loaders",
    "test_loaders",
    "evaluate_checkpoints",
    "EVALUATION_SETS",
    "PREDICTIONS_SCHEMA",
    "shortcut_entry",
]

logger = logging.getLogger(__name__)

EVALUATION_SETS = ("test", "validation")
"""What :func:`split_loaders` and :func:`evaluate_checkpoints` evaluate on: the test sets (roles ``test_<name>``)
or the views of the bias-annotated validation split (roles ``val_<name>``)."""
PREDICTIONS_SCHEMA = "shortcut-kd/predictions/v1"
"""Schema of the per-image predictions file of :func:`evaluate_checkpoints`."""


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_rank0() -> bool:
    """True outside a process group and on its rank 0 (where bundles log and save)."""
    return not _dist_ready() or torch.distributed.get_rank() == 0


def prepare_bundle_splits(dataset: str, dataset_dir: str, output_dir: str, shortcut: str | None = "patch",
                          p_bias_pos: float = 0.95, p_bias_neg: float = 0.05, seed: int = 0,
                          specialist_size: float = 0.1, val_fraction: float = 0.1, test_fraction: float = 0.2,
                          bias_free: str = "decorrelated", ood_dir: str | None = None,
                          val_annotated_size: float | int = 0.05, specialist_source: str = "train") -> str:
    """Read the dataset in its native layout, build (or reuse) the split datalists and return their folder.

    The splits are rebuilt only when these settings or the dataset folder change, so every stage of a
    bundle (train, teacher, distill, oracle, the baselines, evaluate) sees the same samples and bias flags.
    Under DDP rank 0 writes them while the other ranks wait.

    Args:
        dataset: a key of ``shortcut_kd.data.registry.DATASETS`` (``isic2017``, ``chexpert``, ``simba``).
        dataset_dir: the dataset in its native layout.
        output_dir: the run's output folder; the splits go to ``output_dir/splits``.
        shortcut: shortcut preset name, ``native`` (the data's own bias flag, e.g. SimBA) or ``none``.
        p_bias_pos: P(shortcut | positive) in the biased training set.
        p_bias_neg: P(shortcut | negative) in the biased training set.
        seed: decides every sample's split role and bias flag.
        specialist_size: fraction (or count) of the bias-free specialist subset.
        val_fraction: fraction of the validation split.
        test_fraction: fraction of the test splits.
        bias_free: ``decorrelated`` (the shortcut on a random half of each class) or ``absent``.
        ood_dir: an optional shifted source in the same layout (the ``ood`` test set).
        val_annotated_size: fraction (or count) of the bias-annotated validation split (roles
            ``val_aligned`` / ``val_conflicting``: model selection and hyperparameters, never a test set).

    Returns:
        ``output_dir/splits`` (one JSON datalist per role, read with :func:`load_datalist`).
    """
    from shortcut_kd.data.prepare import prepare_splits
    from shortcut_kd.data.registry import get_dataset
    from shortcut_kd.data.splits import SplitSettings

    entry = get_dataset(dataset)
    if not Path(dataset_dir).is_dir():
        raise ConfigError("dataset_dir", str(dataset_dir),
                          f"point dataset_dir at the {dataset} download in its native layout "
                          f"(see the bundle's docs/README.md, section 'Data').")
    native = shortcut == "native"
    if native and not entry.native_bias:
        raise ConfigError("shortcut#name", "native", f"{dataset} carries no bias of its own; choose an injected "
                                                     "shortcut preset such as patch or noise.")
    settings = SplitSettings(seed=int(seed), p_bias_pos=float(p_bias_pos), p_bias_neg=float(p_bias_neg),
                             specialist_size=specialist_size, val_fraction=float(val_fraction),
                             test_fraction=float(test_fraction), bias_free=bias_free, group_key=entry.group_key,
                             native_bias=native, val_annotated_size=val_annotated_size,
                             specialist_source=specialist_source)
    split_dir = Path(output_dir) / "splits"
    if is_rank0():
        prepare_splits(dataset, dataset_dir, split_dir, settings, ood_dir=ood_dir or None)
    if _dist_ready():
        torch.distributed.barrier()
    return str(split_dir)


def bundle_shortcut(name: str | None, spatial_dims: int, overrides: Mapping[str, Any] | None = None):
    """The shortcut transform a bundle injects where ``bias == 1``.

    Args:
        name: a preset of ``configs/shortcuts.yaml``; ``native`` (the data carries its own bias, e.g.
            SimBA's ``_B`` files) and ``none`` inject nothing and return None.
        spatial_dims: 2 or 3.
        overrides: preset parameters to change.
    """
    if name in (None, "", "none", "native"):
        return None
    from shortcut_kd.shortcuts import make_shortcut

    return make_shortcut(name, spatial_dims, **dict(overrides or {}))


def load_datalist(split_dir: str | os.PathLike, role: str) -> list[dict]:
    """The datalist of one split role (``train_biased``, ``specialist``, ``oracle``, ``val``, ``val_*``, ``test_*``).

    Raises:
        DataError: the role is empty (a tiny dataset or ``specialist_size`` too small), with the fix.
    """
    from shortcut_kd.data.splits import load_split

    items = load_split(split_dir, role)
    if not items:
        raise DataError(f"the '{role}' split is empty.", file=str(Path(split_dir) / f"{role}.json"),
                        fix="use more images, or change the split fractions (splits#specialist_size, "
                            "splits#val_fraction, splits#test_fraction, splits#val_annotated_size).")
    return items


def load_network(network: nn.Module, ckpt_file: str | os.PathLike, device: str | torch.device | None = None,
                 frozen: bool = True, written_by: str | None = None) -> nn.Module:
    """Load a checkpoint written by a bundle stage into ``network`` (eval mode, frozen by default).

    Args:
        network: the architecture (e.g. ``@teacher_def``).
        ckpt_file: a state dict file, or a dict holding one under ``model`` / ``network``.
        device: where to move the network.
        frozen: switch off gradients (a teacher).
        written_by: the stage that writes ``ckpt_file``, named in the error when it is missing.
    """
    from shortcut_kd.nets.checkpoint import load_weights

    net = load_weights(network, ckpt_file, device=device, frozen=frozen, written_by=written_by)
    return net.eval()


def _unwrap(obj: Any) -> Any:
    from shortcut_kd.nets.checkpoint import unwrap

    return unwrap(obj) if isinstance(obj, nn.Module) else obj


class ResumableCheckpoint:
    """Save the whole training state after every epoch to ``save_dir/<stage>_last.pt``; resume from it.

    MONAI's ``CheckpointSaver`` names interval checkpoints by epoch and ``CheckpointLoader`` needs one
    known path, so this handler keeps a single file per stage, written atomically (a crash mid-save never
    destroys the previous state). When the file exists at ``attach``, a MONAI ``CheckpointLoader`` restores
    it when the trainer starts and the loader's random streams are advanced past the finished epochs, so a
    rerun continues where the last one stopped and ends with the weights of an uninterrupted run (a
    finished stage with the same ``max_epochs`` does nothing; a larger ``max_epochs`` trains on).

    The trainer is added to ``save_dict`` at ``attach`` (the config cannot name it without a reference
    cycle).

    Args:
        save_dir: the folder (the bundle's ``models/``).
        save_dict: objects with ``state_dict`` to save, e.g. ``{"model": @network, "optimizer": @optimizer}``
            (the distill stage adds its ``LayerwiseDistillationHandler``).
        stage: file name prefix (``erm``, ``teacher``, ``kd``, ``oracle``).
        save: write the file (False on DDP ranks other than 0; all ranks resume).
        resume: load the file when it exists.
        map_location: ``torch.load`` map location when resuming.
    """

    def __init__(self, save_dir: str | os.PathLike, save_dict: Mapping[str, Any], stage: str = "erm",
                 save: bool = True, resume: bool = True, map_location: Any = None) -> None:
        self.path = Path(save_dir) / f"{stage}_last.pt"
        self.save_dict = dict(save_dict)
        self.save, self.resume, self.map_location = bool(save), bool(resume), map_location
        self._objects: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Resume ``engine`` from the file if it exists; save after every epoch."""
        from monai.handlers import CheckpointLoader

        self._objects = {**self.save_dict, "trainer": engine}
        if self.resume and self.path.is_file():
            logger.info("resuming from %s", self.path)
            map_location = self.map_location
            if isinstance(map_location, torch.device):
                map_location = str(map_location)
            loader = CheckpointLoader(load_path=str(self.path), load_dict=self._objects, map_location=map_location)
            loader.attach(engine)
            engine.add_event_handler(Events.STARTED, self._replay_data_order)
        if self.save:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        save_torch(self.path, {k: _unwrap(v).state_dict() for k, v in self._objects.items()})

    @staticmethod
    def _replay_data_order(engine: Workflow) -> None:
        """After loading, advance the training loader's random streams past the finished epochs.

        The checkpoint restores the network, optimizer and counters, but the loader's shuffling generator
        (or its sampler's own) restarts from its seed; without this, epoch ``k + 1`` of a resumed run would
        repeat epoch 1's order instead of drawing what an uninterrupted run draws. Each epoch consumes the
        streams as a real one does: the DataLoader draws its workers' base seed when its iterator is made,
        then the sampler draws the order. Nothing is loaded.
        """
        loader = engine.data_loader
        if loader is None or not hasattr(loader, "sampler"):
            return
        sampler = loader.sampler
        for epoch in range(engine.state.epoch):
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: the order is a function of the epoch
                break
            iter(loader)
            for _ in sampler:
                pass


class InitialWeights:
    """Start training from another stage's checkpoint, or fail by name when it is missing.

    Loaded when the handler is attached, that is when the trainer is built and before anything runs or
    is written: a missing upstream file stops the stage with an error naming the file and the stage that
    writes it, never a silent start from scratch. Starting from scratch is the explicit ``ckpt_file: null``
    (or ``"scratch"``). A resumed run (the stage's own last state exists) keeps the resumed weights,
    since MONAI's ``CheckpointLoader`` of ``ResumableCheckpoint`` loads them when the trainer starts.

    Args:
        network: the network being trained (``@network``).
        ckpt_file: the checkpoint to start from; None or ``"scratch"`` for random initialisation.
        reset_head: re-initialise the classifier head after loading (the specialist teacher learns a fresh
            head on the bias-free subset: the ERM head maps the shortcut's features to the label).
        written_by: the stage that writes ``ckpt_file`` (named in the error).
    """

    def __init__(self, network: nn.Module, ckpt_file: str | os.PathLike | None, reset_head: bool = False,
                 written_by: str | None = None) -> None:
        self.network, self.ckpt_file = network, ckpt_file
        self.reset_head, self.written_by = bool(reset_head), written_by

    @property
    def scratch(self) -> bool:
        return self.ckpt_file in (None, "", "scratch")

    def attach(self, engine: Engine) -> None:
        if self.scratch:
            return
        from shortcut_kd.nets import get_head_name
        from shortcut_kd.nets.checkpoint import load_weights, unwrap

        net = load_weights(self.network, str(self.ckpt_file), written_by=self.written_by)
        if self.reset_head:
            net = unwrap(net)
            cast(nn.Linear, net.get_submodule(get_head_name(net))).reset_parameters()


class SaveFinalModel:
    """Save the network's weights when training completes: the stage's model (model selection: the last
    epoch, the same rule for every method).

    MONAI's ``CheckpointSaver(save_final=True)`` also writes its final file when an exception ends the
    run, which would leave a half-trained model under the stage's name; this handler writes only on
    ``COMPLETED``, atomically, a plain state dict as ``monai.bundle`` tools expect.

    Args:
        network: the network (``@network``; a DDP wrapper is looked through).
        path: the file (``models/model_<stage>.pt``; ``models/model.pt`` for the distilled student).
        save: False on DDP ranks other than 0.
    """

    def __init__(self, network: nn.Module, path: str | os.PathLike, save: bool = True) -> None:
        self.network, self.path, self.save = network, Path(path), bool(save)

    def attach(self, engine: Engine) -> None:
        if self.save:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from shortcut_kd.nets.checkpoint import unwrap

        save_torch(self.path, unwrap(self.network).state_dict())
        logger.info("saved %s (epoch %d)", self.path, engine.state.epoch)


class TrainingError(ShortcutKDError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN): names the stage, the epoch, the iteration, what went wrong
    and the fix.

    Args:
        message: what went wrong, where.
        fix: what the user should do about it.
        epoch: the epoch (1-based) it happened in.
        iteration: the trainer's iteration (1-based, counted over all epochs).
        terms: the loss terms at that iteration (name -> value).
    """

    def __init__(self, message: str, fix: str, epoch: int | None = None, iteration: int | None = None,
                 terms: Mapping[str, float] | None = None) -> None:
        self.fix, self.epoch, self.iteration = fix, epoch, iteration
        self.terms = dict(terms or {})
        super().__init__(f"{message} Fix: {fix}")


class FiniteLossGuard:
    """Stop training at the first iteration whose loss, or any scalar loss term, is NaN or infinite.

    Attached on ``Events.ITERATION_COMPLETED``: it reads ``engine.state.output`` (a dict, or MONAI's decollated
    list of dicts) and checks ``loss`` and every other scalar entry (the terms the distillation handler adds:
    ``task_loss``, ``kd_<tap>``, ``kd_final``, ``kd_total``; GroupDRO's reweighted loss). A non-finite one
    raises :class:`TrainingError` naming the epoch, the iteration and every term with its value. It fires
    before the epoch's end, so :class:`ResumableCheckpoint` never saves the diverged state: the stage's
    ``<stage>_last.pt`` stays the one of the last finished epoch, and :class:`SaveFinalModel` writes nothing.

    Bundle config (``train#handlers``)::

        {"_target_": "shortcut_kd.workflows.bundle.FiniteLossGuard", "stage": "@stage", "ckpt_dir": "@ckpt_dir"}

    Args:
        stage: the stage (``erm``, ``teacher``, ``kd``, ...), for the name of its last state in the message.
        ckpt_dir: the folder of ``<stage>_last.pt`` (the bundle's ``ckpt_dir``), named in the message.
        loss_key: the key of the total loss in the output.
        ignore_keys: output entries that are data, not loss terms (a decollated item's ``label`` is a scalar).
        enabled: False switches the check off.
    """

    def __init__(self, stage: str = "erm", ckpt_dir: str | os.PathLike | None = None, loss_key: str = "loss",
                 ignore_keys: Sequence[str] = ("image", "label", "pred"), enabled: bool = True) -> None:
        self.stage, self.loss_key, self.enabled = str(stage), str(loss_key), bool(enabled)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.ignore_keys = frozenset(str(k) for k in ignore_keys)

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer (a MONAI ``SupervisedTrainer``).
        """
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def terms(self, output: Any) -> dict[str, float]:
        """The scalar loss terms of an engine output (``loss`` first), as floats; non-scalar entries and
        ``ignore_keys`` are left out."""
        first = output[0] if isinstance(output, (list, tuple)) and output else output
        if not isinstance(first, Mapping):
            return {}
        found: dict[str, float] = {}
        for key, value in first.items():
            if str(key) in self.ignore_keys and str(key) != self.loss_key:
                continue
            if isinstance(value, torch.Tensor):
                if value.numel() != 1 or value.is_complex():
                    continue
                found[str(key)] = float(value.detach().float().cpu())
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                found[str(key)] = float(value)
        if self.loss_key in found:
            found = {self.loss_key: found.pop(self.loss_key), **found}
        return found

    def __call__(self, engine: Engine) -> None:
        terms = self.terms(engine.state.output)
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        if not bad:
            return
        epoch, iteration = int(engine.state.epoch), int(engine.state.iteration)
        length = engine.state.epoch_length
        where = f"epoch {epoch}, iteration {iteration}"
        if length:
            where += f" (iteration {(iteration - 1) % int(length) + 1} of {int(length)} in the epoch)"
        values = ", ".join(f"{k}={v!r}" for k, v in terms.items())
        last = (self.ckpt_dir / f"{self.stage}_last.pt") if self.ckpt_dir is not None else Path(f"{self.stage}_last.pt")
        if epoch > 1:
            kept = f"the last good checkpoint {last} (the end of epoch {epoch - 1}) is kept: a rerun resumes from it."
        else:
            kept = f"no epoch had finished, so there is no last good checkpoint ({last}) yet."
        raise TrainingError(f"stage '{self.stage}': the loss is not finite at {where}: {', '.join(bad)} "
                            f"({values}).",
                            fix="lower the learning rate (optimizer#lr) or turn AMP off (amp), and check the inputs "
                                f"for NaN / Inf values (images, labels, the shortcut parameters); {kept}",
                            epoch=epoch, iteration=iteration, terms=terms)


class TeacherProbesHandler:
    """When the teacher's training completes, fit one linear probe per tap and save them.

    The probes are what the ``probe_kl`` distillation loss compares student and teacher through (see
    ``shortcut_kd.distill.fit_probes``). They are fitted on the frozen final teacher (the weights the
    stage saves), on the bias-free specialist data.

    Args:
        network: the teacher being trained (``@network``).
        loader: the specialist loader (``@train#dataloader``); random augmentation is harmless but wasted.
        output_file: where to write the probes (``ProbeSet.save`` format), e.g. ``models/teacher_probes.pt``.
        taps: ``all``, ``early``, ``late`` or tap names (``shortcut_kd.nets.resolve_taps``).
        epochs: probe training epochs (over pooled features; cheap).
        lr: probe learning rate.
        seed: probe initialisation and shuffling.
        enabled: False on DDP ranks other than 0.
    """

    def __init__(self, network: nn.Module, loader: Any, output_file: str | os.PathLike, taps: Any = "all",
                 epochs: int = 10, lr: float = 1e-2, seed: int = 0, enabled: bool = True) -> None:
        self.network, self.loader, self.output_file = network, loader, Path(output_file)
        self.taps, self.epochs, self.lr, self.seed = taps, int(epochs), float(lr), seed
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from shortcut_kd.distill import fit_probes
        from shortcut_kd.nets import resolve_taps

        teacher = _unwrap(self.network)
        taps = resolve_taps(teacher, self.taps)
        device = next(teacher.parameters()).device
        loader = self.loader
        if isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):
            # under DDP the training loader holds this rank's shard only: fit on the whole subset
            from monai.data import DataLoader

            loader = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                                num_workers=loader.num_workers)
        probes = fit_probes(teacher, taps, loader, epochs=self.epochs, lr=self.lr, device=device, seed=self.seed)
        probes.save(self.output_file)
        logger.info("teacher probes on %s (fit accuracy %s) saved to %s", taps,
                    {t: round(a, 3) for t, a in probes.train_accuracy.items()}, self.output_file)


class SampleIdRecorder:
    """Write the sample ids this process trained on, per epoch, to ``output_dir/seen_ids_rank<r>.json``.

    Shows that DDP ranks train on disjoint shards and that every epoch covers the training set.

    Args:
        output_dir: where to write the file.
        id_key: the batch field of the sample ids.
    """

    def __init__(self, output_dir: str | os.PathLike, id_key: str = "id") -> None:
        self.output_dir, self.id_key = Path(output_dir), id_key
        self.seen: dict[int, list[str]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _record(self, engine: Engine) -> None:
        batch: Any = engine.state.batch  # ignite annotates State.batch as an int
        ids = [item[self.id_key] for item in batch] if isinstance(batch, list) else list(batch[self.id_key])
        self.seen.setdefault(engine.state.epoch, []).extend(str(i) for i in ids)

    def _write(self, engine: Engine) -> None:
        rank = torch.distributed.get_rank() if _dist_ready() else 0
        write_json(self.output_dir / f"seen_ids_rank{rank}.json", {str(k): v for k, v in self.seen.items()})


def jtt_datalist(items: list[dict], identifier: nn.Module, transform: Any, lambda_up: int,
                 errors_file: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32) -> list[dict]:
    """JTT's second-stage datalist: the samples the identification model gets wrong, ``lambda_up`` times.

    Args:
        items: the training datalist.
        identifier: the early-stopped ERM network (the ``jtt_identify`` stage's checkpoint).
        transform: deterministic preprocessing (the errors are those of the data, not of an augmented view).
        lambda_up: the upsampling factor λ.
        errors_file: where to record the error ids (for inspection).
        device: where to run the identifier.
        batch_size: inference batch size.
    """
    from monai.data import DataLoader, Dataset

    from shortcut_kd.baselines import find_errors, jtt_upsample

    loader = DataLoader(Dataset(items, transform=transform), batch_size=int(batch_size), shuffle=False)
    errors = find_errors(identifier, loader, device=device)
    if errors_file and is_rank0():
        write_json(errors_file, errors)
    logger.info("jtt: %d of %d training samples misclassified, upsampled x%d", len(errors), len(items), lambda_up)
    return jtt_upsample(items, errors, int(lambda_up))


def run_dfr(network: nn.Module, erm_ckpt: str | os.PathLike, loader: Any, output_file: str | os.PathLike,
            device: str | torch.device = "cpu", seed: int = 0) -> nn.Module:
    """Deep Feature Reweighting as a bundle stage: the ERM backbone with its last layer refit on the bias-free
    specialist subset (``loader``), saved to ``output_file``.

    Args:
        network: the ERM architecture (``@network_def``).
        erm_ckpt: the ERM checkpoint (written by the erm stage, ``configs/train.json``).
        loader: the specialist loader.
        output_file: where to save the refit network.
        device: where to run it.
        seed: the refit's subsampling seed.
    """
    from shortcut_kd.baselines import dfr_retrain
    from shortcut_kd.nets import get_head_name

    model = load_network(network, erm_ckpt, device=device, written_by="the erm stage (configs/train.json)")
    refit = dfr_retrain(model, get_head_name(model), loader, device=device, seed=int(seed))
    if is_rank0():
        save_torch(output_file, _unwrap(refit).state_dict())
    return refit


def split_loaders(split_dir: str | os.PathLike, transform: Any, sets: str = "test", batch_size: int = 32,
                  num_workers: int = 0, cache_dir: str | os.PathLike | None = None) -> dict:
    """A MONAI DataLoader per evaluation set of ``split_dir``, in a fixed order, without shuffling.

    Args:
        split_dir: the folder written by :func:`prepare_bundle_splits`.
        transform: the deterministic preprocessing (with the shortcut where ``bias == 1``).
        sets: ``"test"``: the test sets found (roles ``test_<name>`` for ``name`` in
            ``shortcut_kd.data.splits.TEST_SETS``, ``ood`` only when it was built); ``"validation"``: the
            views of the bias-annotated validation split (roles ``val_<name>`` for ``name`` in
            ``VALIDATION_SETS``), read without opening any test split.
        batch_size: loader batch size.
        num_workers: data loader workers.
        cache_dir: the shared preprocessing cache (``cached_dataset``).

    Returns:
        ``{name: loader}``, ``name`` the results.json key (``unbiased``, ..., or ``aligned`` /
        ``conflicting`` of the validation split); an empty set is left out.

    Raises:
        ConfigError: ``sets`` is neither ``"test"`` nor ``"validation"``.
        DataError: no set holds an item, or (validation) the split folder predates the validation split.
    """
    from monai.data import DataLoader

    from shortcut_kd.data.cache import cached_dataset
    from shortcut_kd.data.splits import TEST_SETS, VALIDATION_SETS, load_split

    if sets not in EVALUATION_SETS:
        raise ConfigError("evaluate#sets", sets, f"use one of {list(EVALUATION_SETS)}.")
    loaders = {}
    names = TEST_SETS if sets == "test" else VALIDATION_SETS
    for name in names:
        if sets == "test":
            path = Path(split_dir) / f"test_{name}.json"
            items = load_split(split_dir, f"test_{name}") if path.is_file() else []
        else:  # load_split reads splits.json and val_<name>.json only; a missing role is an error, with its fix
            items = load_split(split_dir, f"val_{name}")
            if not items:
                logger.warning("validation set '%s' of %s is empty: left out.", name, split_dir)
        if items:
            dataset = cached_dataset(items, transform, cache_dir=cache_dir, num_workers=num_workers)
            loaders[name] = DataLoader(dataset, batch_size=int(batch_size), shuffle=False,
                                       num_workers=int(num_workers))
    if not loaders:
        if sets == "test":
            raise DataError("no test split found.", file=str(split_dir),
                            fix="run a training stage first (it writes the splits), with test_fraction > 0.")
        raise DataError("the bias-annotated validation split is empty.", file=str(split_dir),
                        fix="raise splits#val_annotated_size (or use more data) and rebuild the splits.")
    return loaders


def test_loaders(split_dir: str | os.PathLike, transform: Any, batch_size: int = 32, num_workers: int = 0,
                 cache_dir: str | os.PathLike | None = None) -> dict:
    """A MONAI DataLoader per test set found in ``split_dir`` (results.json test key -> loader):
    :func:`split_loaders` with ``sets="test"``."""
    return split_loaders(split_dir, transform, "test", batch_size, num_workers, cache_dir)


def evaluate_checkpoints(checkpoints: Mapping[str, str | None], network: nn.Module, split_dir: str | os.PathLike,
                         transform: Any, output_file: str | os.PathLike, dataset: str, shortcut: str | None = None,
                         p_bias_pos: float | None = None, p_bias_neg: float | None = None,
                         teacher_network: nn.Module | None = None, device: str | torch.device = "cpu",
                         batch_size: int = 32, num_workers: int = 0, n_bootstrap: int = 500,
                         seed: int = 0, cache_dir: str | os.PathLike | None = None, sets: str = "test",
                         predictions_file: str | os.PathLike | None = None) -> dict:
    """Evaluate each existing checkpoint on every test set (or on the validation split) and write ``results.json``.

    Every method entry records the SHA-256 of the checkpoint it scored; the results record the split
    manifest's hash, the versions, device and thread count, and ``sets``. With ``sets="validation"`` the
    method entries have the same format, their ``test`` dict holding ``aligned`` / ``conflicting`` of the
    bias-annotated validation split, and no test split is read: settings are chosen on that.

    Args:
        checkpoints: results.json method key (``erm``, ``teacher``, ``kd``, ...) -> checkpoint file;
            missing files are skipped with a log line.
        network: the architecture of the student checkpoints (weights are loaded in turn).
        split_dir: the folder written by :func:`prepare_bundle_splits`.
        transform: the deterministic preprocessing (with the shortcut where ``bias == 1``).
        output_file: the results.json to write (atomically).
        dataset: ``isic2017``, ``chexpert`` or ``simba`` (the results' ``dataset``).
        shortcut: the shortcut name (``native`` for data with its own bias) for the ``shortcut`` block.
        p_bias_pos: P(shortcut | positive) of the biased training set.
        p_bias_neg: P(shortcut | negative) of the biased training set.
        teacher_network: the teacher's architecture (default: ``network``).
        device: where to run the models.
        batch_size: test batch size.
        num_workers: data loader workers.
        n_bootstrap: bootstrap resamples of the AUC confidence interval.
        seed: bootstrap seed.
        cache_dir: the shared preprocessing cache (``cached_dataset``).
        sets: ``"test"`` (the test sets) or ``"validation"`` (the bias-annotated validation split); see
            :func:`split_loaders`.
        predictions_file: where to write (atomically) the per-image predictions behind the metrics, for
            paired tests: ``{"schema": "shortcut-kd/predictions/v1", "sets": sets, "methods": {method:
            {set_name: {"id": [...], "label": [...], "bias": [...], "score": [...]}}}}`` (``score``: the
            positive-class probability; the same pass as the metrics); None: not written.

    Returns:
        The results dict (schema ``shortcut-kd/results/v1``).
    """
    from shortcut_kd.data.synthetic.generate import synthetic_marker
    from shortcut_kd.evaluation.metrics import compute_metrics, predict
    from shortcut_kd.evaluation.schema import SCHEMA
    from shortcut_kd.provenance import environment, file_sha256

    loaders = split_loaders(split_dir, transform, sets, batch_size, num_workers, cache_dir)
    methods: dict[str, dict] = {}
    predictions: dict[str, dict] = {}
    for method, ckpt in checkpoints.items():
        if not ckpt or not Path(ckpt).is_file():
            logger.info("%s: no checkpoint at %s, skipped", method, ckpt)
            continue
        net = teacher_network if (method == "teacher" and teacher_network is not None) else network
        model = load_network(_unwrap(net), ckpt, device=device)
        entries, predictions[method] = {}, {}
        for name, loader in loaders.items():  # what shortcut_kd.evaluation.evaluate does, keeping the predictions
            pred = predict(model, loader, device=device)
            entries[name] = compute_metrics(pred["labels"], pred["scores"], pred["bias"],
                                            n_bootstrap=int(n_bootstrap), seed=int(seed))
            predictions[method][name] = {"id": _as_list(pred["ids"], str), "label": _as_list(pred["labels"], int),
                                         "bias": _as_list(pred["bias"], int),
                                         "score": _as_list(pred["scores"], float)}
        methods[method] = {"test": entries, "checkpoint": {"file": Path(ckpt).name, "sha256": file_sha256(ckpt)}}
        logger.info("%s (%s): AUC %s", method, sets, {t: m.get("auc") for t, m in methods[method]["test"].items()})
    if not methods:
        raise DataError("none of the checkpoints exists.", file=", ".join(str(c) for c in checkpoints.values()),
                        fix="train at least one stage (train, teacher, distill, oracle, a baseline) before "
                            "'evaluate'.")
    results = {"schema": SCHEMA, "dataset": dataset,
               "architecture": getattr(_unwrap(network), "arch_name", type(_unwrap(network)).__name__),
               "shortcut": shortcut_entry(shortcut, p_bias_pos, p_bias_neg), "seed": int(seed), "sets": sets,
               "methods": methods,
               "provenance": {"split_manifest_sha256": file_sha256(Path(split_dir) / "splits.json"),
                              "n_bootstrap": int(n_bootstrap), **environment(device)}}
    marker = synthetic_marker((read_json(Path(split_dir) / "splits.json").get("source") or {}).get("dataset_dir"))
    if marker:  # generated data: the results say so (bundle docs and exported metadata read it)
        results["data"] = marker
    if is_rank0():  # the predictions first: a results.json never stands beside stale predictions
        if predictions_file:
            write_json(predictions_file, {"schema": PREDICTIONS_SCHEMA, "sets": sets, "methods": predictions})
        write_json(output_file, results)
    return results


def _as_list(values: Any, kind: type) -> list | None:
    """An array of :func:`~shortcut_kd.evaluation.metrics.predict` as a JSON list (None stays None)."""
    return None if values is None else [kind(v) for v in values]


def shortcut_entry(name: str | None, p_bias_pos: float | None, p_bias_neg: float | None) -> dict:
    """The ``shortcut`` block of results.json."""
    if name in (None, "", "none", "native"):
        return {"name": name or "none", "kind": name or "none", "p_bias_pos": None, "p_bias_neg": None}
    from shortcut_kd.shortcuts import shortcut_kind

    return {"name": name, "kind": shortcut_kind(name), "p_bias_pos": p_bias_pos, "p_bias_neg": p_bias_neg}
