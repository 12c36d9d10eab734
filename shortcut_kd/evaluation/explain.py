"""Grad-CAM explanations: does a model look at the shortcut or at the finding?

- :func:`gradcam_maps`: MONAI's ``GradCAM`` maps for a batch, at the input's resolution, scaled to [0, 1]
  per image with zero kept at zero (MONAI's default post-processing maps the maximum to 0 and the
  minimum to 1, which would make "mass inside the mask" meaningless).
- :func:`attention_on_mask`: the fraction of a map's mass inside the shortcut region.
- :func:`save_gradcam_panel`: a PNG grid, one row per image; columns: the image, the shortcut's
  location (its mask outlined), then each method's map over the image (the outline repeated).

3D volumes are shown by their **mid axial slice**: channel-first ``(C, H, W, D)`` arrays in MONAI's
RAS orientation have the superior-inferior axis last, so the slice is ``[..., D // 2]``.
:func:`attention_on_mask` always uses the whole volume.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["gradcam_maps", "attention_on_mask", "mid_axial_slice", "save_gradcam_panel"]


def _unit_max(x: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch to max 1, keeping 0 at 0 (Grad-CAM maps are non-negative)."""
    peak = x.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
    return x / peak


def gradcam_maps(model: nn.Module, images: torch.Tensor | np.ndarray, target_layer: str, class_idx: int = 1,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """Grad-CAM of ``class_idx`` at ``target_layer`` (``monai.visualize.GradCAM``).

    MONAI's ``GradCAM`` registers hooks on the network that it never removes and switches in-place
    activations off; it is therefore run on a copy of ``model``, which leaves the caller's network
    exactly as it was.

    Args:
        model: a two-logit network.
        images: ``(N, C, *spatial)`` batch, 2D or 3D.
        target_layer: sub-module name, e.g. a tap such as ``"layer4"``.
        class_idx: class to explain (1 = the finding, 0 = its absence).
        device: where to run the copy.

    Returns:
        ``(N, 1, *spatial)`` float array in [0, 1] at the input's resolution.
    """
    from monai.visualize import GradCAM

    try:
        model.get_submodule(target_layer)
    except AttributeError as e:
        raise ValueError(f"model {type(model).__name__} has no layer '{target_layer}'. Fix: use a name from "
                         "shortcut_kd.nets.get_taps(model) or model.named_modules().") from e
    network = copy.deepcopy(model).to(device).eval()
    for p in network.parameters():
        p.requires_grad_(True)
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    # an input that requires grad lets the full backward hook fire on a first layer without a warning
    x = (x.as_tensor() if hasattr(x, "as_tensor") else x).detach().float().to(device).requires_grad_(True)
    cam = GradCAM(nn_module=network, target_layers=target_layer, postprocessing=_unit_max)
    with torch.enable_grad():
        maps = cam(x, class_idx=class_idx)
    return maps.detach().cpu().numpy().astype(np.float32)


def attention_on_mask(saliency: Any, mask: Any) -> float | None:
    """Fraction of the map's (non-negative) mass inside the mask.

    1 means the model attends only to the shortcut region; a map that ignores the region scores
    about the region's share of the image. None when the map is zero everywhere.

    Args:
        saliency: map, any shape (e.g. ``(1, H, W)``), same number of elements as ``mask``.
        mask: the shortcut region (non-zero inside), broadcastable to the map's shape.
    """
    m = np.clip(np.asarray(saliency, dtype=float), 0, None)
    inside = np.asarray(mask) > 0
    inside = inside.reshape(m.shape) if inside.size == m.size else np.broadcast_to(inside, m.shape)
    total = m.sum()
    return None if total <= 0 else float(m[inside].sum() / total)


def mid_axial_slice(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The 2D view of a ``(C, *spatial)`` array: itself in 2D, the mid axial slice ``[..., D // 2]`` in 3D."""
    array = np.asarray(array)
    if spatial_dims == 3:
        return array[..., array.shape[-1] // 2]
    return array


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` -> an RGB ``(H, W, 3)`` or grey ``(H, W)`` image scaled to [0, 1]."""
    img = image[:3].transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    lo, hi = np.percentile(img, [0.5, 99.5])
    img = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return img, (None if img.ndim == 3 else "gray")


def save_gradcam_panel(images: Any, masks: Any | None, maps_by_method: Mapping[str, Any], path: str | os.PathLike,
                       titles: Sequence[str] | None = None, alpha: float = 0.5) -> Path:
    """Write a PNG grid: rows = images; columns = image, shortcut location, each method's map.

    Args:
        images: ``(N, C, *spatial)`` array or tensor, 2D or 3D (3D: mid axial slice).
        masks: shortcut masks ``(N, 1, *spatial)`` or ``(N, *spatial)``, or None (a diffuse shortcut has
            no location: the column is left out).
        maps_by_method: method name -> ``(N, 1, *spatial)`` maps (e.g. from :func:`gradcam_maps`); each
            map's title gives its :func:`attention_on_mask` when masks are given.
        path: the PNG to write.
        titles: one title per row (e.g. the sample id and label).
        alpha: opacity of the map over the image.
    """
    from matplotlib.figure import Figure

    from shortcut_kd.evaluation.report import save_figure

    imgs = _numpy(images)
    n, spatial_dims = imgs.shape[0], imgs.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"images have shape {imgs.shape}; expected (N, C, H, W) or (N, C, H, W, D).")
    msk = None
    if masks is not None:
        msk = _numpy(masks).astype(float)
        msk = msk.reshape(n, 1, *imgs.shape[2:]) if msk.ndim == imgs.ndim - 1 else msk[:, :1]
    maps = {name: _numpy(m) for name, m in maps_by_method.items()}
    for name, m in maps.items():
        if m.shape[0] != n or m.shape[-spatial_dims:] != imgs.shape[2:]:
            raise ValueError(f"map '{name}' has shape {m.shape}, images {imgs.shape}. Fix: give one map per image "
                             "at the image resolution (gradcam_maps returns that).")
    columns = ["image"] + (["shortcut"] if msk is not None else []) + list(maps)
    fig = Figure(figsize=(2.0 * len(columns), 2.0 * n + 0.3))
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        base, cmap = _display(mid_axial_slice(imgs[i], spatial_dims))
        outline = mid_axial_slice(msk[i], spatial_dims)[0] if msk is not None else None
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(base, cmap=cmap, interpolation="nearest")
            label = column if i == 0 else ""
            if column in maps:
                overlay = mid_axial_slice(maps[column][i].reshape(1, *imgs.shape[2:]), spatial_dims)[0]
                ax.imshow(overlay, cmap="jet", alpha=alpha, vmin=0, vmax=max(float(overlay.max()), 1e-12),
                          interpolation="bilinear")
                if msk is not None:
                    share = attention_on_mask(maps[column][i], msk[i])
                    label = (label + "\n" if label else "") + ("on shortcut: –" if share is None
                                                               else f"on shortcut: {share:.2f}")
            if outline is not None and column != "image" and outline.any():
                ax.contour(outline, levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_title(label, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            axes[i, 0].set_ylabel(str(titles[i]), fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.numpy()
    return np.asarray(x)
