"""The method: feature taps, probes, distillation losses and the distillation handler for MONAI trainers."""

from shortcut_kd.distill.capture import FeatureCapture, unwrap_model
from shortcut_kd.distill.handler import LayerwiseDistillationHandler, kd_output_transform
from shortcut_kd.distill.losses import (
    TAP_LOSSES,
    Adapter,
    AttentionTransferTapLoss,
    CosineTapLoss,
    FitNetTapLoss,
    LayerwiseDistillationLoss,
    ProbeKLTapLoss,
    TapLoss,
    attention_map,
    attention_transfer,
    cosine,
    fitnet_mse,
    match_spatial,
    probe_kl,
)
from shortcut_kd.distill.probes import (
    ProbeHead,
    ProbeSet,
    default_input_shape,
    eval_mode,
    fit_probes,
    load_probes,
    tap_shapes,
)

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
    "kd_output_transform",
    "load_probes",
    "match_spatial",
    "probe_kl",
    "tap_shapes",
    "unwrap_model",
]
