"""Baselines the method is compared against, as components of a stock MONAI ``SupervisedTrainer``.

- augmentation-based (handlers on ``Events.ITERATION_STARTED``): :class:`RandConvHandler`,
  :class:`MixUpHandler`, :class:`CutMixHandler`;
- group-based: :class:`GroupDROHandler` (on ``IterationEvents.LOSS_COMPLETED``),
  :func:`group_balanced_sampler` / :func:`group_balanced_weights` (reweighting), JTT's
  :func:`find_errors` + :func:`jtt_upsample`, DFR's :func:`dfr_retrain`.
"""

from shortcut_kd.baselines.batch_handler import BatchTransformHandler, soft_labels
from shortcut_kd.baselines.dfr import DFR_C_GRID, dfr_retrain, extract_head_inputs
from shortcut_kd.baselines.groupdro import GroupDROHandler
from shortcut_kd.baselines.jtt import find_errors, jtt_upsample
from shortcut_kd.baselines.mixing import CutMixHandler, MixUpHandler
from shortcut_kd.baselines.randconv import RandConv, RandConvd, RandConvHandler
from shortcut_kd.baselines.reweight import group_balanced_sampler, group_balanced_weights

__all__ = [
    "BatchTransformHandler",
    "CutMixHandler",
    "DFR_C_GRID",
    "GroupDROHandler",
    "MixUpHandler",
    "RandConv",
    "RandConvHandler",
    "RandConvd",
    "dfr_retrain",
    "extract_head_inputs",
    "find_errors",
    "group_balanced_sampler",
    "group_balanced_weights",
    "jtt_upsample",
    "soft_labels",
]
