"""Small adaptors that the MONAI bundles in ``bundles/`` call from their configs.

The bundle configs stay flat and readable: each piece of logic they need lives here (or deeper in the
library) and is named by ``_target_`` or a short ``$`` expression:

- :func:`prepare_bundle_splits`: the split datalists of a dataset in its native layout (through
  :class:`~shortcut_kd.workflows.experiment.Experiment`, so bundles and ``shortcut-kd stage`` build the
  same splits), once per process group under DDP.
- :func:`bundle_shortcut`: the shortcut transform named in ``shortcut#name`` (None for ``native``/``none``).
- :func:`load_datalist`: one split role as a MONAI datalist.
- :func:`load_network`: a network with the weights of a checkpoint, frozen (the distillation teacher).
- :class:`ResumableCheckpoint`: the last training state every epoch under a fixed name, loaded back when
  it exists (resume).
- :class:`TeacherProbesHandler`: when the teacher's training completes, fit and save its tap probes.
- :class:`SampleIdRecorder`: which sample ids this process trained on, per epoch (checks DDP shards).
- :func:`evaluate_checkpoints`: every stage checkpoint on every test set -> ``results.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events
from torch import nn

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.io import save_torch, write_json

__all__ = [
    "prepare_bundle_splits",
    "bundle_experiment",
    "bundle_shortcut",
    "load_datalist",
    "load_network",
    "is_rank0",
    "ResumableCheckpoint",
    "TeacherProbesHandler",
    "SampleIdRecorder",
    "evaluate_checkpoints",
]

logger = logging.getLogger(__name__)


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_rank0() -> bool:
    """True outside a process group and on its rank 0 (where bundles log and save)."""
    return not _dist_ready() or torch.distributed.get_rank() == 0


def bundle_experiment(dataset: str, dataset_dir: str, output_dir: str, shortcut: str | None = "patch",
                      p_bias_pos: float = 0.95, p_bias_neg: float = 0.05, seed: int = 0,
                      specialist_size: float = 0.1, val_fraction: float = 0.1, test_fraction: float = 0.2,
                      bias_free: str = "decorrelated", ood_dir: str | None = None,
                      shortcut_overrides: Mapping[str, Any] | None = None, **settings: Any):
    """The :class:`~shortcut_kd.workflows.experiment.Experiment` that a bundle's split keys describe.

    Args:
        dataset: ``isic2017``, ``chexpert`` or ``simba``.
        dataset_dir: the dataset in its native layout.
        output_dir: the bundle's output folder; the splits go to ``output_dir/splits``.
        shortcut: shortcut preset name, ``native`` (data with its own bias flag) or ``none``.
        p_bias_pos: P(shortcut | positive) in the biased training set.
        p_bias_neg: P(shortcut | negative) in the biased training set.
        seed: decides every sample's split role and bias flag.
        specialist_size: fraction (or count) of the bias-free specialist subset.
        val_fraction: fraction of the validation split.
        test_fraction: fraction of the test splits.
        bias_free: ``decorrelated`` or ``absent`` (see DESIGN.md, "Bias-free, precisely").
        ood_dir: an optional shifted source in the same layout (the ``ood`` test set).
        shortcut_overrides: preset parameters to change (``make_shortcut`` keyword arguments).
        settings: any other :class:`~shortcut_kd.workflows.settings.ExperimentSettings` field.
    """
    from shortcut_kd.workflows.experiment import Experiment
    from shortcut_kd.workflows.settings import ExperimentSettings

    values = dict(dataset=dataset, dataset_dir=str(dataset_dir), output_dir=str(output_dir),
                  shortcut=shortcut if shortcut not in (None, "") else "none", p_bias_pos=float(p_bias_pos),
                  p_bias_neg=float(p_bias_neg), seed=int(seed), specialist_size=specialist_size,
                  val_fraction=float(val_fraction), test_fraction=float(test_fraction), bias_free=bias_free,
                  ood_dir=str(ood_dir) if ood_dir else None, shortcut_overrides=dict(shortcut_overrides or {}))
    values.update(settings)
    return Experiment(ExperimentSettings(**values))


def prepare_bundle_splits(dataset: str, dataset_dir: str, output_dir: str, shortcut: str | None = "patch",
                          p_bias_pos: float = 0.95, p_bias_neg: float = 0.05, seed: int = 0,
                          specialist_size: float = 0.1, val_fraction: float = 0.1, test_fraction: float = 0.2,
                          bias_free: str = "decorrelated", ood_dir: str | None = None) -> str:
    """Read the dataset in its native layout, build (or reuse) the split datalists and return their folder.

    The splits are rebuilt only when these settings or the dataset folder change, so every stage of a
    bundle (train, teacher, distill, oracle, evaluate) sees the same samples and bias flags. Under DDP
    rank 0 writes them while the other ranks wait.

    Args: see :func:`bundle_experiment`.

    Returns:
        ``output_dir/splits`` (one JSON datalist per role, read with :func:`load_datalist`).
    """
    if not Path(dataset_dir).is_dir():
        raise ConfigError("dataset_dir", str(dataset_dir),
                          f"point dataset_dir at the {dataset} download in its native layout "
                          f"(see the bundle's docs/README.md, section 'Data').")
    exp = bundle_experiment(dataset, dataset_dir, output_dir, shortcut, p_bias_pos, p_bias_neg, seed,
                            specialist_size, val_fraction, test_fraction, bias_free, ood_dir)
    if is_rank0():
        exp.prepare_splits()
    if _dist_ready():
        torch.distributed.barrier()
    return str(exp.split_dir)


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
    """The datalist of one split role (``train_biased``, ``specialist``, ``oracle``, ``val``, ``test_*``).

    Raises:
        DataError: the role is empty (a tiny dataset or ``specialist_size`` too small), with the fix.
    """
    from shortcut_kd.data.splits import load_split

    items = load_split(split_dir, role)
    if not items:
        raise DataError(f"the '{role}' split is empty.", file=str(Path(split_dir) / f"{role}.json"),
                        fix="use more images, or change the split fractions (splits#specialist_size, "
                            "splits#val_fraction, splits#test_fraction).")
    return items


def load_network(network: nn.Module, ckpt_file: str | os.PathLike, device: str | torch.device | None = None,
                 frozen: bool = True) -> nn.Module:
    """Load a checkpoint written by a bundle stage into ``network`` (eval mode, frozen by default).

    Args:
        network: the architecture (e.g. ``@teacher_def``).
        ckpt_file: a state dict file, or a dict holding one under ``model`` / ``network``.
        device: where to move the network.
        frozen: switch off gradients (a teacher).
    """
    path = Path(ckpt_file)
    if not path.is_file():
        raise DataError("checkpoint not found.", file=str(path),
                        fix="run the stage that writes it first (teacher.pt: the 'teacher' stage, "
                            "model.pt: 'train', model_kd.pt: 'distill'), or set the path in the config.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("model", "network"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"the checkpoint does not fit the network ({str(e).splitlines()[0]}).", file=str(path),
                        fix="use the network_def (architecture and widths) the checkpoint was trained with.") from e
    if device is not None:
        network = network.to(device)
    if frozen:
        network.requires_grad_(False)
    return network.eval()


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


class ResumableCheckpoint:
    """Save the whole training state after every epoch to ``save_dir/<stage>_last.pt``; resume from it.

    MONAI's ``CheckpointSaver`` names interval checkpoints by epoch and ``CheckpointLoader`` needs one
    known path, so this handler keeps a single file per stage, written atomically (a crash mid-save never
    destroys the previous state). When the file exists at ``attach``, a MONAI ``CheckpointLoader`` restores
    it when the trainer starts, so a rerun continues where the last one stopped (a finished stage with the
    same ``max_epochs`` does nothing; a larger ``max_epochs`` trains on).

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
        if self.save:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        save_torch(self.path, {k: _unwrap(v).state_dict() for k, v in self._objects.items()})


class ResetHeadHandler:
    """Re-initialise the network's classifier head when training starts (after a CheckpointLoader
    attached before it has loaded the ERM weights): the specialist teacher keeps the ERM backbone
    but learns a fresh head on the bias-free subset (see benchmarks/method_study.md).

    Args:
        network: the network whose head (``shortcut_kd.nets.get_head_name``) is reset.
        enabled: False leaves the head as loaded (e.g. when no ERM checkpoint exists).
    """

    def __init__(self, network: nn.Module, enabled: bool = True) -> None:
        self.network, self.enabled = network, enabled

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from shortcut_kd.nets import get_head_name

        if engine.state.iteration == 0:  # a fresh start, not a resume from the stage's own last state
            net = _unwrap(self.network)
            net.get_submodule(get_head_name(net)).reset_parameters()


class TeacherProbesHandler:
    """When the teacher's training completes, fit one linear probe per tap and save them.

    The probes are what the ``probe_kl`` distillation loss compares student and teacher through (see
    ``shortcut_kd.distill.fit_probes``). They are fitted on the frozen teacher with the weights of its best
    checkpoint (``ckpt_file``, when it exists; else the final weights), on the bias-free specialist data.

    Args:
        network: the teacher being trained (``@network``).
        loader: the specialist loader (``@train#dataloader``); random augmentation is harmless but wasted.
        output_file: where to write the probes (``ProbeSet.save`` format), e.g. ``models/teacher_probes.pt``.
        taps: ``all``, ``early``, ``late`` or tap names (``shortcut_kd.nets.resolve_taps``).
        ckpt_file: the teacher's best checkpoint, loaded into ``network`` before fitting.
        epochs: probe training epochs (over pooled features; cheap).
        lr: probe learning rate.
        seed: probe initialisation and shuffling.
        enabled: False on DDP ranks other than 0.
    """

    def __init__(self, network: nn.Module, loader: Any, output_file: str | os.PathLike, taps: Any = "all",
                 ckpt_file: str | os.PathLike | None = None, epochs: int = 10, lr: float = 1e-2, seed: int = 0,
                 enabled: bool = True) -> None:
        self.network, self.loader, self.output_file = network, loader, Path(output_file)
        self.taps, self.ckpt_file, self.epochs, self.lr, self.seed = taps, ckpt_file, int(epochs), float(lr), seed
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from shortcut_kd.distill import fit_probes
        from shortcut_kd.nets import resolve_taps

        teacher = _unwrap(self.network)
        if self.ckpt_file and Path(self.ckpt_file).is_file():
            load_network(teacher, self.ckpt_file, frozen=False)
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
        batch = engine.state.batch
        ids = [item[self.id_key] for item in batch] if isinstance(batch, list) else list(batch[self.id_key])
        self.seen.setdefault(engine.state.epoch, []).extend(str(i) for i in ids)

    def _write(self, engine: Engine) -> None:
        rank = torch.distributed.get_rank() if _dist_ready() else 0
        write_json(self.output_dir / f"seen_ids_rank{rank}.json", {str(k): v for k, v in self.seen.items()})


def evaluate_checkpoints(checkpoints: Mapping[str, str], network: nn.Module, split_dir: str | os.PathLike,
                         transform: Any, output_file: str | os.PathLike, dataset: str, shortcut: str | None = None,
                         p_bias_pos: float | None = None, p_bias_neg: float | None = None,
                         teacher_network: nn.Module | None = None, device: str | torch.device = "cpu",
                         batch_size: int = 32, num_workers: int = 0, n_bootstrap: int = 500,
                         seed: int = 0) -> dict:
    """Evaluate each existing checkpoint on every test set and write ``results.json``.

    Args:
        checkpoints: results.json method key (``erm``, ``teacher``, ``kd``, ``oracle``) -> checkpoint file;
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

    Returns:
        The results dict (schema ``shortcut-kd/results/v1``).
    """
    from monai.data import DataLoader, Dataset

    from shortcut_kd.data.splits import load_split
    from shortcut_kd.evaluation import evaluate
    from shortcut_kd.evaluation.schema import SCHEMA
    from shortcut_kd.workflows.experiment import TEST_ROLES
    from shortcut_kd.workflows.protocol import shortcut_entry

    loaders = {}
    for name, role in TEST_ROLES.items():
        if (Path(split_dir) / f"{role}.json").is_file():
            items = load_split(split_dir, role)
            if items:
                loaders[name] = DataLoader(Dataset(items, transform=transform), batch_size=int(batch_size),
                                           shuffle=False, num_workers=int(num_workers))
    if not loaders:
        raise DataError("no test split found.", file=str(split_dir),
                        fix="run a training stage first (it writes the splits), with test_fraction > 0.")
    methods: dict[str, dict] = {}
    for method, ckpt in checkpoints.items():
        if not ckpt or not Path(ckpt).is_file():
            logger.info("%s: no checkpoint at %s, skipped", method, ckpt)
            continue
        net = teacher_network if (method == "teacher" and teacher_network is not None) else network
        model = load_network(_unwrap(net), ckpt, device=device)
        methods[method] = {"test": evaluate(model, loaders, device=device, n_bootstrap=int(n_bootstrap),
                                            seed=int(seed))}
        logger.info("%s: AUC %s", method, {t: m.get("auc") for t, m in methods[method]["test"].items()})
    if not methods:
        raise DataError("none of the checkpoints exists.", file=", ".join(str(c) for c in checkpoints.values()),
                        fix="train at least one stage (train, teacher, distill, oracle) before 'evaluate'.")
    exp = bundle_experiment(dataset, "", "", shortcut=shortcut,
                            p_bias_pos=0.0 if p_bias_pos is None else p_bias_pos,
                            p_bias_neg=0.0 if p_bias_neg is None else p_bias_neg)
    results = {"schema": SCHEMA, "dataset": dataset,
               "architecture": getattr(_unwrap(network), "arch_name", type(_unwrap(network)).__name__),
               "shortcut": shortcut_entry(exp), "seed": int(seed), "methods": methods}
    if is_rank0():
        write_json(output_file, results)
    return results
