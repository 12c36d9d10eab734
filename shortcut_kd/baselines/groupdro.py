"""Group distributionally robust optimisation (online GroupDRO) as a trainer handler.

Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust Neural Networks for Group Shifts: On the
Importance of Regularization for Worst-Case Generalization", ICLR 2020 (Algorithm 1).

What information it uses: the group of every training sample, i.e. the bias attribute of the
large biased training set (``group = 2 * label + bias``). It does not use the bias-free subset.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils import IgniteInfo, min_version, optional_import

from shortcut_kd.errors import ConfigError, DataError

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )

__all__ = ["GroupDROHandler"]


class GroupDROHandler:
    """Replace the trainer's loss by the GroupDRO loss ``Σ_g q_g · loss_g`` on ``LOSS_COMPLETED``.

    At every iteration: per-sample cross-entropy from ``engine.state.output["pred"]`` and
    ``engine.state.output["label"]`` (integer or class-probability targets), mean loss per group of the
    batch, then the exponentiated-gradient step ``q_g <- q_g · exp(eta · loss_g)`` and ``q <- q / Σ q``,
    and ``engine.state.output["loss"]`` becomes ``Σ_g q_g · loss_g`` (which the trainer back-propagates).
    As in the authors' implementation, a group absent from the batch has loss 0 there, so its weight
    is not pushed up by that batch.

    The weights are kept in this handler (``state_dict`` / ``load_state_dict``: pass the handler to a
    ``CheckpointSaver`` / ``CheckpointLoader`` ``save_dict`` to resume), mirrored on
    ``engine.state.group_weights`` (a list, for ``StatsHandler(state_attributes=[...])``) and logged at
    the end of every epoch.

    The loss is *replaced*: attach this handler before any handler that adds terms to the loss on
    ``LOSS_COMPLETED`` (Ignite calls handlers in the order they were attached).

    Args:
        num_groups: number of groups (4 for binary label x binary bias).
        eta: step size of the exponentiated-gradient update of the group weights.
        group_key: batch key holding each sample's group index in ``[0, num_groups)``.
        name: logger name (``None``: the engine's logger).

    Example (bundle JSON, in ``train#handlers``)::

        {"_target_": "shortcut_kd.baselines.GroupDROHandler", "num_groups": 4, "eta": 0.01}
    """

    def __init__(self, num_groups: int = 4, eta: float = 0.01, group_key: str = "group",
                 name: str | None = None) -> None:
        if int(num_groups) < 1:
            raise ConfigError("num_groups", num_groups, "use the number of groups, 4 for label x bias.")
        if not float(eta) >= 0:
            raise ConfigError("eta", eta, "use a non-negative step size, e.g. 0.01.")
        self.num_groups = int(num_groups)
        self.eta = float(eta)
        self.group_key = group_key
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups)
        self.last_group_loss = torch.zeros(self.num_groups)
        self.logger = logging.getLogger(name)
        self._name = name

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a MONAI ``SupervisedTrainer`` (it fires ``IterationEvents.LOSS_COMPLETED``).
        """
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_weights)
        # ignite's State takes new attributes, but its type declares only the built-in ones
        engine.state.group_weights = self.q.tolist()  # type: ignore[attr-defined]

    def __call__(self, engine: Engine) -> None:
        output: dict[str, Any] = engine.state.output  # type: ignore[assignment]  # ignite annotates it as an int
        pred = output[Keys.PRED]
        groups = self._groups(engine.state.batch, pred.device, pred.shape[0])
        loss = self.robust_loss(pred, output[Keys.LABEL], groups)
        output[Keys.LOSS] = loss
        engine.state.group_weights = self.q.tolist()  # type: ignore[attr-defined]

    def robust_loss(self, pred: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Update ``q`` with the batch's group losses and return ``Σ_g q_g · loss_g``.

        Args:
            pred: logits ``(N, K)``.
            labels: integer labels ``(N,)`` / ``(N, 1)`` or class probabilities ``(N, K)``.
            groups: group indices ``(N,)``.
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(labels).to(pred.device)
        if not (target.is_floating_point() and target.shape == pred.shape):
            target = target.reshape(-1).long()
        losses = F.cross_entropy(pred.float(), target.float() if target.is_floating_point() else target,
                                 reduction="none")
        onehot = F.one_hot(groups, self.num_groups).to(losses.dtype)  # (N, G)
        counts = onehot.sum(0)
        group_loss = (onehot.t() @ losses) / counts.clamp(min=1)  # absent groups: 0
        with torch.no_grad():
            q = self.q.to(group_loss.device) * torch.exp(self.eta * group_loss.detach())
            self.q = (q / q.sum()).cpu()
            self.last_group_loss = group_loss.detach().cpu()
        return (self.q.to(group_loss.device) * group_loss).sum()

    def _groups(self, batch: Any, device: torch.device, n: int) -> torch.Tensor:
        if not isinstance(batch, Mapping) or self.group_key not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise DataError(f"GroupDRO needs each sample's group; the batch has {keys}.", column=self.group_key,
                            fix="add 'group' (= 2 * label + bias) to the datalist (the split builder does) "
                                "or set group_key.")
        groups = torch.as_tensor(batch[self.group_key]).reshape(-1).long().to(device)
        if groups.numel() != n:
            raise DataError(f"{groups.numel()} group values for {n} predictions.", column=self.group_key,
                            fix="give one group per sample.")
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.num_groups):
            raise DataError(f"group values {sorted(set(groups.tolist()))} outside [0, {self.num_groups - 1}].",
                            column=self.group_key, fix="use group = 2 * label + bias, or raise num_groups.")
        return groups

    def log_weights(self, engine: Engine) -> None:
        """Log the group weights and the last batch's group losses."""
        q = ", ".join(f"{v:.4f}" for v in self.q.tolist())
        losses = ", ".join(f"{v:.4f}" for v in self.last_group_loss.tolist())
        self.logger.info(f"GroupDRO epoch {engine.state.epoch}: group weights q = [{q}], "
                         f"last batch group losses = [{losses}]")

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.clone(), "eta": self.eta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        q = torch.as_tensor(state["q"], dtype=torch.float32).cpu()
        if q.shape != (self.num_groups,):
            raise ConfigError("num_groups", self.num_groups,
                              f"the checkpoint holds {q.numel()} group weights; build the handler with that many.")
        self.q = q
