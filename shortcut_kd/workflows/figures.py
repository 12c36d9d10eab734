"""Figures of one experiment: where each model encodes the shortcut (per-layer probes) and where
it looks (Grad-CAM on bias-conflicting images)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from shortcut_kd.io import write_json
from shortcut_kd.workflows.experiment import Experiment
from shortcut_kd.workflows.settings import ExperimentSettings

logger = logging.getLogger(__name__)

PROBED = ("erm", "kd", "oracle")
"""Models compared in the per-layer probe figure."""
EXPLAINED = ("erm", "groupdro", "dfr", "teacher", "kd", "oracle")
"""Models shown in the Grad-CAM panel (those that ran)."""


def make_figures(settings: ExperimentSettings, methods: Sequence[str], n_panel: int = 4,
                 n_attention: int = 64) -> dict:
    """Write the layer-probe plot and the Grad-CAM panel under ``output_dir/figures``.

    Returns ``{"figures": {caption: path}, "attention_on_shortcut": {method: mean fraction}}``; the
    attention is the share of Grad-CAM mass (class "finding") inside a localized shortcut, over
    bias-conflicting negatives that carry the shortcut (absent for diffuse shortcuts).
    """
    exp = Experiment(settings)
    out = exp.root / "figures"
    done = [m for m in methods if exp.is_done(m)]
    figures: dict[str, str] = {}
    probed = [m for m in PROBED if m in done]
    if probed:
        figures["Shortcut and label decodability per layer"] = str(layer_probe_figure(exp, probed, out))
    explained = [m for m in EXPLAINED if m in done]
    attention: dict[str, float] = {}
    if explained and exp.spatial_dims in (2, 3):
        path, attention = gradcam_figure(exp, explained, out, n_panel, n_attention)
        figures["Grad-CAM on bias-conflicting images"] = str(path)
    return {"figures": figures, "attention_on_shortcut": attention}


def layer_probe_figure(exp: Experiment, methods: Sequence[str], out: Path) -> Path:
    """Per-layer linear probes of the bias and the label for each model, on the unbiased test set
    (bias independent of the label), half to fit and half to score."""
    from shortcut_kd.evaluation.layer_probes import plot_layer_probes, probe_layers, split_by_id, write_probe_table
    from shortcut_kd.nets import get_taps

    fit_items, score_items = split_by_id(exp.datalist("test_unbiased"), seed=exp.settings.seed)
    fit_loader, score_loader = exp.loader(fit_items), exp.loader(score_items)
    rows: list[dict] = []
    for method in methods:
        model = exp.load_model(method)
        rows += probe_layers(model, get_taps(model), fit_loader, score_loader, targets=("bias", "label"),
                             device=exp.device, model_name=method, seed=exp.settings.seed)
    write_json(out / "layer_probes.json", rows)
    write_probe_table(rows, out / "layer_probes.md")
    return plot_layer_probes(rows, out / "layer_probes.png",
                             title=f"{exp.settings.dataset} / {exp.shortcut_name}: linear probe AUC per layer")


def gradcam_figure(exp: Experiment, methods: Sequence[str], out: Path, n_panel: int,
                   n_attention: int) -> tuple[Path, dict[str, float]]:
    from shortcut_kd.evaluation.explain import attention_on_mask, gradcam_maps, save_gradcam_panel
    from shortcut_kd.nets import get_taps
    from shortcut_kd.shortcuts import InjectShortcutd, shortcut_kind

    items = [d for d in exp.datalist("test_conflicting") if d["bias"] == 1][:n_attention]
    if not items:
        items = exp.datalist("test_conflicting")[:n_attention]
    images = torch.cat([batch["image"] for batch in exp.loader(items)])
    masks = None
    shortcut = exp.shortcut()
    if shortcut is not None and shortcut_kind(exp.shortcut_name) == "localized":
        inject = InjectShortcutd(keys="image", shortcut=shortcut, seed=exp.settings.seed)
        masks = np.stack([inject.mask(d, tuple(images.shape[1:])) for d in items])
    maps, attention = {}, {}
    for method in methods:
        model = exp.load_model(method)
        cams = gradcam_maps(model, images, target_layer=get_taps(model)[-1], class_idx=1, device=exp.device)
        maps[method] = cams[:n_panel]
        if masks is not None:
            found = [attention_on_mask(c, m) for c, m in zip(cams, masks)]
            values = [v for v in found if v is not None]
            if values:
                attention[method] = float(np.mean(values))
    titles = [f"{d['id']} (label {d['label']}, shortcut {d['bias']})" for d in items[:n_panel]]
    path = save_gradcam_panel(images[:n_panel], None if masks is None else masks[:n_panel], maps,
                              out / "gradcam_conflicting.png", titles=titles)
    return path, attention
