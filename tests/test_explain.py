"""Grad-CAM panels and the attention-on-shortcut score, with a tiny model that looks at a bright patch."""

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_kd.evaluation import attention_on_mask, gradcam_maps, mid_axial_slice, save_gradcam_panel

PNG = b"\x89PNG\r\n\x1a\n"


class _Brightness(nn.Module):
    """The positive logit is the mean of ReLU(image): Grad-CAM at `features` is the image's brightness."""

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[(0, 0) + (1,) * dims] = 1.0  # identity kernel
        self.features = nn.Sequential(conv, nn.ReLU(inplace=True))
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.features(x).flatten(2).mean(2))


def _patch_images(n=3, size=16, dims=2, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, 1) + (size,) * dims
    images = (0.05 * np.abs(rng.normal(size=shape))).astype(np.float32)
    masks = np.zeros(shape, dtype=np.float32)
    corner = (slice(None), slice(None)) + (slice(2, 6),) * dims
    masks[corner] = 1
    images[corner] += 5.0
    return torch.from_numpy(images), masks


def test_gradcam_looks_at_the_patch_and_leaves_model_clean():
    model = _Brightness()
    images, masks = _patch_images()
    maps = gradcam_maps(model, images, "features", class_idx=1)
    assert maps.shape == (3, 1, 16, 16) and maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2, 3)), 1)
    shares = [attention_on_mask(maps[i], masks[i]) for i in range(3)]
    area = masks[0].mean()
    assert all(s > 0.6 for s in shares) and area < 0.1
    # MONAI's GradCAM ran on a copy: no hooks left behind, in-place ReLU untouched
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert model.features[1].inplace
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        gradcam_maps(model, images, "layer9")


def test_attention_on_mask_by_hand():
    mask = np.zeros((1, 4, 4))
    mask[0, :2, :2] = 1
    assert attention_on_mask(mask, mask) == 1.0
    assert attention_on_mask(np.ones((1, 4, 4)), mask) == pytest.approx(4 / 16)
    saliency = np.zeros((1, 4, 4))
    saliency[0, 0, 0], saliency[0, 3, 3] = 3.0, 1.0
    assert attention_on_mask(saliency, mask[0]) == pytest.approx(0.75)  # (H, W) mask broadcasts
    assert attention_on_mask(np.zeros((4, 4)), mask) is None


def test_panel_2d(tmp_path):
    model = _Brightness()
    images, masks = _patch_images(n=2)
    maps = gradcam_maps(model, images, "features")
    uniform = np.ones_like(maps)
    out = save_gradcam_panel(images, masks, {"erm": maps, "kd": uniform}, tmp_path / "panel.png",
                             titles=["case0 y=0", "case1 y=0"])
    assert out.read_bytes()[:8] == PNG
    # no mask (diffuse shortcut): the shortcut column is left out, still a PNG
    assert save_gradcam_panel(images, None, {"erm": maps}, tmp_path / "nomask.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="map 'bad'"):
        save_gradcam_panel(images, masks, {"bad": maps[:1]}, tmp_path / "bad.png")


def test_panel_3d_uses_mid_axial_slice(tmp_path):
    model = _Brightness(dims=3)
    images, masks = _patch_images(n=1, size=8, dims=3)
    maps = gradcam_maps(model, images, "features")
    assert maps.shape == (1, 1, 8, 8, 8)
    assert attention_on_mask(maps[0], masks[0]) > 0.6
    vol = np.arange(2 * 3 * 3 * 5).reshape(2, 3, 3, 5)
    assert np.array_equal(mid_axial_slice(vol, 3), vol[..., 2])
    out = save_gradcam_panel(images.numpy(), masks, {"erm": maps}, tmp_path / "panel3d.png")
    assert out.read_bytes()[:8] == PNG
