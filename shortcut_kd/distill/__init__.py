"""The method: probes, distillation losses and the distillation handler for MONAI trainers.

``FeatureCapture`` lives in :mod:`shortcut_kd.nets` (beside the taps) and is re-exported here.
"""

from shortcut_kd.distill.handler import LayerwiseDistillationHandler, kd_output_transform
from shortcut_kd.distill.losses import (
    TAP_LOSSES, Adapter, AttentionTransferTapLoss, CosineTapLoss, FitNetTapLoss, LayerwiseDistillationLoss,
    ProbeKLTapLoss, TapLoss, attention_map, attention_transfer, cosine, fitnet_mse, get_tap_loss, match_spatial,
    probe_kl,
)
from shortcut_kd.distill.probes import (
    ProbeHead, ProbeSet, default_input_shape, eval_mode, fit_probes, load_probes, tap_shapes,
)
from shortcut_kd.nets.capture import FeatureCapture

__all__ = [
    "TAP_LOSSES",
    "Adapter",
    "AttentionTransferTapLoss",
    "CosineTapLoss",
    "FeatureCapture",
    "FitNetTapLoss",
    "LayerwiseDistillationHandler",
    "LayerwiseDistillationLoss",
    "ProbeHead",
    "ProbeKLTapLoss",
    "ProbeSet",
    "TapLoss",
    "attention_map",
    "attention_transfer",
    "cosine",
    "default_input_shape",
    "eval_mode",
    "fit_probes",
    "fitnet_mse",
    "get_tap_loss",
    "kd_output_transform",
    "load_probes",
    "match_spatial",
    "probe_kl",
    "tap_shapes",
]
