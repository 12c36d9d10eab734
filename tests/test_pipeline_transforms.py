"""The preprocessing pipeline on real small PNG, JPEG and NIfTI files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from PIL import Image

from shortcut_kd.data.transforms import build_transforms
from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.shortcuts import InjectShortcutd, make_shortcut


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    out = {}
    grey = (rng.rand(40, 36) * 180 + 20).astype(np.uint8)
    Image.fromarray(grey).save(root / "grey.png")
    out["grey"] = str(root / "grey.png")
    rgb = (rng.rand(30, 34, 3) * 180 + 20).astype(np.uint8)
    Image.fromarray(rgb).save(root / "colour.jpg", quality=95)
    out["rgb"] = str(root / "colour.jpg")
    vol = (rng.rand(20, 18, 16) * 900 + 100).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0])), str(root / "vol.nii.gz"))
    out["vol"] = str(root / "vol.nii.gz")
    data = (root / "grey.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 3])
    out["truncated"] = str(root / "truncated.png")
    (root / "garbage.nii.gz").write_bytes(b"this is not a nifti volume")
    out["garbage"] = str(root / "garbage.nii.gz")
    return out


def _item(path, bias=0, label=1, sid="s1"):
    return {"image": path, "label": label, "id": sid, "bias": bias, "group": 2 * label + bias, "patient": "p7"}


@pytest.mark.parametrize(
    "key,spatial_dims,in_channels,size,intensity,irange",
    [
        ("grey", 2, 1, 16, "range", (0, 255)),
        ("grey", 2, 3, (16, 12), "range", (0, 255)),
        ("rgb", 2, 1, 16, "minmax", (0, 255)),
        ("rgb", 2, 3, 16, "percentile", (0, 255)),
        ("vol", 3, 1, 8, "range", (0, 1000)),
    ],
)
def test_shapes_types_and_ranges(files, key, spatial_dims, in_channels, size, intensity, irange):
    pipeline = build_transforms(spatial_dims, in_channels, size, intensity=intensity, intensity_range=irange)
    out = pipeline(_item(files[key]))
    expected = (in_channels,) + ((size,) * spatial_dims if isinstance(size, int) else tuple(size))
    img = out["image"]
    assert tuple(img.shape) == expected and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.max() - img.min()) > 0.3
    assert img.meta["filename_or_obj"].endswith(files[key].split("/")[-1])
    assert out["label"].dtype == torch.int64 and out["label"].shape == () and int(out["label"]) == 1
    assert out["id"] == "s1" and out["bias"] == 0 and out["group"] == 2 and out["patient"] == "p7"
    if in_channels == 3 and key == "grey":
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_zscore_and_without_resize(files):
    out = build_transforms(2, 1, None, intensity="zscore", with_label=False)({"image": files["grey"]})
    assert tuple(out["image"].shape) == (1, 36, 40)  # MONAI's PIL reader puts the picture's width first
    assert abs(float(out["image"].mean())) < 1e-4 and float(out["image"].std()) == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("key,spatial_dims,preset", [("grey", 2, "patch"), ("rgb", 2, "noise"), ("vol", 3, "blob")])
def test_shortcut_only_where_bias_is_one(files, key, spatial_dims, preset):
    irange = (0, 1000) if key == "vol" else (0, 255)
    kw = dict(spatial_dims=spatial_dims, in_channels=1, image_size=16, intensity_range=irange)
    plain = build_transforms(**kw)
    biased = build_transforms(**kw, shortcut=preset, seed=3)
    clean0 = plain(_item(files[key], bias=0))["image"]
    assert torch.equal(biased(_item(files[key], bias=0))["image"], clean0)
    hit = biased(_item(files[key], bias=1))["image"]
    assert not torch.equal(hit, clean0)
    assert torch.equal(hit, biased(_item(files[key], bias=1))["image"])  # same sample, same shortcut


def test_patch_lands_in_its_corner_after_resize(files):
    shortcut = make_shortcut("patch", 2, size=0.25, margin=0.0)
    pipeline = build_transforms(2, 1, 20, shortcut=shortcut, intensity="range")
    clean = build_transforms(2, 1, 20)(_item(files["grey"]))["image"]
    hit = pipeline(_item(files["grey"], bias=1))["image"]
    changed = (hit != clean)[0].numpy()
    expected = InjectShortcutd("image", shortcut).mask(_item(files["grey"], bias=1), (1, 20, 20))
    assert changed[:5, :5].all() and not changed[6:, :].any() and not changed[:, 6:].any()
    assert expected[:5, :5].all() and expected.sum() == 25


@pytest.mark.parametrize("key", ["truncated", "garbage"])
def test_undecodable_file_raises_data_error_naming_it(files, key):
    pipeline = build_transforms(3 if key == "garbage" else 2, 1, 8)
    with pytest.raises(DataError) as e:
        pipeline(_item(files[key]))
    assert files[key] in str(e.value) and "check_images" in str(e.value)
    assert e.value.file == files[key]


def test_missing_file_raises_data_error(files, tmp_path):
    missing = str(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="not found") as e:
        build_transforms(2, 1, 8)(_item(missing))
    assert missing in str(e.value)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="intensity"):
        build_transforms(2, 1, 8, intensity="histogram")
    with pytest.raises(ConfigError, match="image_size"):
        build_transforms(2, 1, (8, 8, 8))
    with pytest.raises(ConfigError, match="shortcut"):
        build_transforms(2, 1, 8, shortcut="no_such_preset")


def test_augmentation_only_when_training(files):
    item = _item(files["grey"])
    evaluation = build_transforms(2, 1, 16, augment=True)  # train=False: no augmentation
    assert torch.equal(evaluation(item)["image"], evaluation(item)["image"])
    train = build_transforms(2, 1, 16, train=True, augment=True)
    train.set_random_state(seed=0)
    outs = [train(item)["image"] for _ in range(6)]
    assert all(o.shape == (1, 16, 16) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_batches_through_a_dataloader_with_workers(files):
    items = [_item(files["grey"], bias=i % 2, label=i // 2 % 2, sid=f"s{i}") for i in range(4)]
    pipeline = build_transforms(2, 1, 16, shortcut="patch_random", seed=5)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(Dataset(items, transform=pipeline), batch_size=4, num_workers=workers)
        batches[workers] = next(iter(loader))
    b = batches[2]
    assert tuple(b["image"].shape) == (4, 1, 16, 16) and b["label"].tolist() == [0, 0, 1, 1]
    assert b["id"] == ["s0", "s1", "s2", "s3"] and b["bias"].tolist() == [0, 1, 0, 1]
    assert torch.equal(b["image"].as_tensor(), batches[0]["image"].as_tensor())


def test_dicom_single_slice_is_read_as_2d():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's test files are not installed")
    out = build_transforms(2, 1, 16, intensity="percentile", shortcut="patch")(_item(path, bias=1))
    assert tuple(out["image"].shape) == (1, 16, 16)  # the reader's (1, H, W, 1) is squeezed to 2D
    assert float(out["image"].max()) == pytest.approx(1.0)  # the patch at the image's own maximum


def test_volume_in_a_2d_pipeline_names_the_file(files):
    with pytest.raises(DataError, match="spatial_dims=3") as e:
        build_transforms(2, 1, 8)(_item(files["vol"]))
    assert files["vol"] in str(e.value)
