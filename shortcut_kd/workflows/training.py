"""A MONAI SupervisedTrainer with the handlers every stage shares: validation, checkpoints
(best key metric + last state for resuming), progress bar, stats and TensorBoard logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (CheckpointLoader, CheckpointSaver, ROCAUC, StatsHandler, TensorBoardStatsHandler,
                            ValidationHandler, from_engine)
from monai.transforms import Activationsd, AsDiscreted, Compose

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "checkpoint_last.pt"


def classification_postprocessing() -> Compose:
    """Softmax predictions and one-hot labels, as ROCAUC expects (decollated items)."""
    return Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="label", to_onehot=2)])


def build_evaluator(network: torch.nn.Module, loader, device: torch.device, amp: bool = False) -> SupervisedEvaluator:
    """Validation on ``loader`` with validation AUC as the key metric."""
    return SupervisedEvaluator(
        device=device, val_data_loader=loader, network=network, amp=amp,
        postprocessing=classification_postprocessing(),
        key_val_metric={"val_auc": ROCAUC(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[StatsHandler(iteration_log=False, name="shortcut_kd.val")])


def train_network(network: torch.nn.Module, train_loader, *, stage_dir: Path, epochs: int, lr: float,
                  weight_decay: float, device: torch.device, val_loader=None, val_interval: int = 1,
                  handlers: Sequence = (), amp: bool = False, progress: bool = True,
                  description: str = "train", extra_state: dict | None = None,
                  optimizer: torch.optim.Optimizer | None = None) -> SupervisedTrainer:
    """Train ``network`` with a stock SupervisedTrainer and return the finished trainer.

    ``handlers`` are attached before the standard ones, so a handler that joins its own
    parameters to the optimizer (distillation probes) is saved and resumed with it. The last
    state (network, optimizer, trainer, ``extra_state``) is saved after every epoch to
    ``stage_dir/checkpoint_last.pt``; if that file exists when training starts, training
    resumes from it.
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    network = network.to(device)
    optimizer = optimizer or torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    trainer = SupervisedTrainer(
        device=device, max_epochs=epochs, train_data_loader=train_loader, network=network,
        optimizer=optimizer, loss_function=torch.nn.CrossEntropyLoss(), amp=amp and device.type == "cuda",
        train_handlers=[])
    for handler in handlers:
        handler.attach(trainer)
    save_dict = {"network": network, "optimizer": optimizer, "trainer": trainer, **(extra_state or {})}
    last = stage_dir / LAST_CHECKPOINT
    if last.is_file():
        logger.info("resuming %s from %s", description, last)
        CheckpointLoader(load_path=str(last), load_dict=save_dict, map_location=str(device)).attach(trainer)
        trainer.add_event_handler(Events.STARTED, _ReplayDataOrder(train_loader))
    standard: list = [StatsHandler(iteration_log=False, name="shortcut_kd.train",
                                   output_transform=from_engine(["loss"], first=True)),
                      TensorBoardStatsHandler(log_dir=str(stage_dir / "tensorboard"), iteration_log=False,
                                              output_transform=from_engine(["loss"], first=True)),
                      _LastCheckpoint(stage_dir, save_dict)]
    if val_loader is not None:
        evaluator = build_evaluator(network, val_loader, device, amp)
        CheckpointSaver(save_dir=str(stage_dir), save_dict={"network": network}, save_key_metric=True,
                        key_metric_filename="model_best_val.pt").attach(evaluator)
        standard.append(ValidationHandler(validator=evaluator, interval=val_interval))
    for handler in standard:
        handler.attach(trainer)
    if progress:
        from ignite.handlers import ProgressBar

        ProgressBar(desc=description, persist=False).attach(trainer, output_transform=lambda o: {
            "loss": float(o[0]["loss"] if isinstance(o, list) else o["loss"])})
    trainer.run()
    return trainer


class _ReplayDataOrder:
    """On resume, advance the training loader's random streams past the finished epochs.

    The checkpoint restores the network, optimizer and counters, but the loader's shuffling
    generator (or its sampler's own) restarts from its seed; without this, epoch ``k + 1`` of a
    resumed run would repeat epoch 1's order instead of drawing what an uninterrupted run draws.
    Each epoch consumes the streams as a real one does: the DataLoader draws its workers' base seed
    when its iterator is made, then the sampler draws the order. Nothing is loaded.
    """

    def __init__(self, loader) -> None:
        self.loader = loader

    def __call__(self, engine) -> None:
        for _ in range(engine.state.epoch):
            iter(self.loader)
            for _ in self.loader.sampler:
                pass


class _LastCheckpoint:
    """Save the full training state after every epoch, atomically, to one fixed file name.

    MONAI's CheckpointSaver keeps numbered files; resuming needs one well-known name, written
    so that a crash mid-save never destroys the previous state.
    """

    def __init__(self, stage_dir: Path, save_dict: dict) -> None:
        self.path = stage_dir / LAST_CHECKPOINT
        self.save_dict = save_dict

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        from shortcut_kd.io import save_torch

        save_torch(self.path, {k: v.state_dict() for k, v in self.save_dict.items()})

