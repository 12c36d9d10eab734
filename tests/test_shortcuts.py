"""Shortcut transforms: shapes and metadata, where they act, determinism per sample id, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, ScaleIntensity

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.seeding import sample_seed
from shortcut_kd.shortcuts import (
    SHORTCUT_CLASSES, BiasFieldShortcut, BlurShortcut, ContrastShortcut, GaussianNoiseShortcut, InjectShortcutd,
    IntensityBlob, RegionalDeformation, SquarePatch, SquarePatchd, Stripes, TextTag, list_shortcuts, load_presets,
    make_shortcut, shortcut_kind, shortcut_mask,
)

LOCALIZED = [SquarePatch, TextTag, Stripes, IntensityBlob, RegionalDeformation]
DIFFUSE = [GaussianNoiseShortcut, BlurShortcut, ContrastShortcut, BiasFieldShortcut]
SHAPES = {2: (1, 32, 28), 3: (1, 16, 16, 14)}


def _image(spatial_dims: int, channels: int = 1, seed: int = 0, scale: float = 200.0, offset: float = -50.0):
    """A random MetaTensor in an arbitrary intensity range, with metadata to check it survives."""
    shape = (channels,) + SHAPES[spatial_dims][1:]
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(shape, generator=g) * scale + offset
    affine = torch.diag(torch.tensor([0.7, 0.8, 0.9, 1.0], dtype=torch.float64))
    return MetaTensor(data, affine=affine, meta={"filename_or_obj": f"sample{seed}.nii.gz"})


def _changed(a, b) -> np.ndarray:
    """Spatial map of voxels changed in any channel."""
    return (torch.as_tensor(a) != torch.as_tensor(b)).any(0).numpy()


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cls", LOCALIZED + DIFFUSE, ids=lambda c: c.__name__)
def test_shape_dtype_and_metadata_kept(cls, spatial_dims):
    img = _image(spatial_dims, channels=3 if spatial_dims == 2 else 1)
    out = cls()(img)
    assert isinstance(out, MetaTensor)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == img.meta["filename_or_obj"]
    assert torch.equal(out.affine, img.affine)
    assert torch.isfinite(out).all()
    # numpy input (here integer typed) comes back as a float tensor of the same shape
    out_np = cls()(np.asarray(img.numpy() + 60, dtype=np.int32))
    assert isinstance(out_np, torch.Tensor) and out_np.dtype == torch.float32 and out_np.shape == img.shape


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cls", LOCALIZED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("position", ["fixed", "random"])
def test_localized_changes_exactly_inside_mask(cls, spatial_dims, position):
    img = _image(spatial_dims)
    sc = cls(position=position)
    sc.set_random_state(seed=3)
    out = sc(img)
    mask = shortcut_mask(sc, img)
    assert mask.shape == tuple(img.shape[1:]) and mask.dtype == bool
    assert 0 < mask.sum() < 0.5 * mask.size
    changed = _changed(out, img)
    assert not (changed & ~mask).any(), "changed outside the reported region"
    # inside, (nearly) everything changes; a deformation leaves its centre voxel in place
    need = 0.6 if cls is RegionalDeformation else 0.95
    assert changed[mask].mean() >= need


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cls", DIFFUSE, ids=lambda c: c.__name__)
def test_diffuse_changes_globally(cls, spatial_dims):
    img = _image(spatial_dims)
    out = cls()(img)
    assert _changed(out, img).mean() > 0.98
    assert cls().mask(img.shape[1:]).all()


def test_patch_geometry_corner_and_intensity():
    img = _image(2) * 0 + torch.linspace(0, 1, 28)  # values 0..1 along the second axis
    out = SquarePatch(size=0.25, intensity=1.0, corner="bottom-right", margin=0.0)(img)
    side = round(0.25 * 28)
    assert torch.all(out[0, -side:, -side:] == 1.0)  # 1.0 = the image's own maximum
    half = SquarePatch(size=0.25, intensity=0.5, corner="top-left", margin=0.0)(img)
    assert torch.allclose(half[0, :side, :side], torch.tensor(0.5))


def test_text_tag_renders_the_text_within_its_corner():
    tag = TextTag(text="PORTABLE", size=0.3, corner="top-left", margin=0.0)
    m = tag.mask((40, 120))
    rows, cols = np.nonzero(m)
    assert rows.min() == 0 and cols.min() == 0 and rows.max() < 20
    assert cols.max() - cols.min() > 3 * (rows.max() - rows.min())  # a word is wider than high
    m3 = TextTag(depth=0.25).mask((32, 32, 16))
    slices = np.nonzero(m3.any((0, 1)))[0]
    assert len(slices) == 4 and slices.min() == 6  # a centred slab of 4 of 16 slices


def test_stripes_are_separate_bars_at_the_edge():
    m = Stripes(n_stripes=3, thickness=0.05, spacing=0.1, length=0.25, edge="bottom", margin=0.0).mask((40, 40))
    assert m[-1].any() and not m[:29].any()
    runs = np.diff(np.concatenate([[0], m[-1].astype(int), [0]]))
    assert (runs == 1).sum() == 3  # three separate bars cross the bottom row


def test_blob_peak_is_its_intensity_fraction():
    img = _image(2)
    lo, hi = float(img.min()), float(img.max())
    blob = IntensityBlob(radius=0.25, intensity=0.5, center=0.5)
    w = blob.weights(img.shape[1:])
    diff = blob(img) - img
    assert np.isclose(w.max(), 1.0, atol=0.05)
    peak = np.unravel_index(int(np.argmax(w)), w.shape)
    assert float(diff[(0,) + peak]) == pytest.approx(0.5 * (hi - lo) * w.max(), rel=1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_regional_deformation_expands_and_contracts(spatial_dims):
    shape = SHAPES[spatial_dims][1:]
    centre = np.array([(n - 1) / 2 for n in shape])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    disc = (np.sqrt(((grid - centre.reshape((-1,) + (1,) * len(shape))) ** 2).sum(0)) < 3).astype(np.float32)
    img = torch.as_tensor(disc)[None]
    area = float((img > 0.5).sum())
    grown = RegionalDeformation(radius=0.4, strength=0.6, center=0.5)(img)
    shrunk = RegionalDeformation(radius=0.4, strength=-0.6, center=0.5)(img)
    assert float((grown > 0.5).sum()) > 1.3 * area
    assert float((shrunk > 0.5).sum()) < 0.8 * area
    with pytest.raises(ValueError, match="strength"):
        RegionalDeformation(strength=1.0)


def test_noise_level_and_grain():
    img = _image(2)
    span = float(img.max() - img.min())
    sc = GaussianNoiseShortcut(std=0.1)
    diff = (sc(img) - img).numpy()
    assert diff.std() == pytest.approx(0.1 * span, rel=0.15)
    coarse = GaussianNoiseShortcut(std=0.1, grain=0.125)  # cells of 0.125 * 28 = 4 pixels (rounded)
    d = (coarse(img) - img)[0].numpy()
    assert np.allclose(d[:4, :4], d[0, 0], atol=1e-3) and not np.isclose(d[0, 0], d[0, 4], atol=1e-3)


def test_contrast_gamma_survives_minmax_but_scale_does_not():
    img = _image(2)
    norm = ScaleIntensity(minv=0.0, maxv=1.0)
    base = norm(img)
    gamma = norm(ContrastShortcut(mode="gamma", gamma=2.0)(img))
    scale = norm(ContrastShortcut(mode="scale", factor=1.2)(img))
    assert (gamma - base).abs().max() > 0.2
    assert torch.allclose(scale, base, atol=1e-5)
    scaled = ContrastShortcut(mode="scale", factor=1.2)(img)
    assert float(scaled.std()) == pytest.approx(1.2 * float(img.std()), rel=1e-4)


def test_bias_field_is_smooth_and_multiplicative():
    img = _image(2) * 0 + 10.0
    img[0, 0, 0] = 0.0  # the minimum the field multiplies from
    out = BiasFieldShortcut(coeff_range=(0.05, 0.15))(img)
    log_ratio = np.log((out / 10.0)[0, 1:, 1:].numpy())
    spread = log_ratio.max() - log_ratio.min()
    assert spread > np.log(1.5)
    steps = np.abs(np.concatenate([np.diff(log_ratio, axis=0).ravel(), np.diff(log_ratio, axis=1).ravel()]))
    assert steps.max() < 0.25 * spread  # smooth: neighbours differ by a small part of the field's spread


@pytest.mark.parametrize("cls", [GaussianNoiseShortcut, BiasFieldShortcut, SquarePatch])
def test_set_random_state_makes_it_repeatable(cls):
    img = _image(3)
    kwargs = {"position": "random"} if cls is SquarePatch else {}
    a = cls(**kwargs).set_random_state(seed=5)(img)
    b = cls(**kwargs).set_random_state(seed=5)(img)
    c = cls(**kwargs).set_random_state(seed=6)(img)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("cls", LOCALIZED + DIFFUSE, ids=lambda c: c.__name__)
def test_dict_form_has_the_array_arguments_and_documents_them(cls):
    import inspect

    import shortcut_kd.shortcuts as sk

    dict_cls = getattr(sk, cls.__name__ + "d")
    array_params = list(inspect.signature(cls).parameters.values())
    dict_params = list(inspect.signature(dict_cls).parameters.values())
    assert [p.name for p in dict_params] == ["keys", *(p.name for p in array_params), "allow_missing_keys"]
    assert [p.default for p in dict_params[1:-1]] == [p.default for p in array_params]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in dict_params)
    args = dict_cls.__doc__.split("Args:")[1]
    assert all(f"    {p.name}: " in args for p in dict_params)
    t = dict_cls(keys="image").set_random_state(seed=3)
    img = _image(2)
    assert torch.equal(t({"image": img})["image"], cls().set_random_state(seed=3)(img))


def test_dict_form_applies_one_draw_to_every_key():
    img = _image(2)
    t = SquarePatchd(keys=["image", "image2"], position="random")
    t.set_random_state(seed=1)
    out = t({"image": img, "image2": img.clone(), "label": 1, "id": "a"})
    assert torch.equal(out["image"], out["image2"]) and out["label"] == 1 and out["id"] == "a"
    assert np.array_equal(_changed(out["image"], img), t.mask(img.shape[1:]))


# ----------------------------------------------------------------------------- InjectShortcutd


def test_inject_only_where_bias_is_one():
    img = _image(2)
    inject = InjectShortcutd("image", make_shortcut("patch", 2))
    kept = inject({"image": img, "bias": 0, "id": "a", "group": 0})
    assert kept["image"] is img and kept["group"] == 0
    hit = inject({"image": img, "bias": 1, "id": "a", "group": 1})
    assert _changed(hit["image"], img).any() and hit["group"] == 1


@pytest.mark.parametrize("preset", ["patch_random", "noise", "tag"])
def test_inject_is_deterministic_per_id(preset):
    img = _image(2)
    inject = InjectShortcutd("image", make_shortcut(preset, 2), seed=7)
    a1 = inject({"image": img, "bias": 1, "id": "a"})["image"]
    a2 = inject({"image": img, "bias": 1, "id": "a"})["image"]
    b = inject({"image": img, "bias": 1, "id": "b"})["image"]
    other_seed = InjectShortcutd("image", make_shortcut(preset, 2), seed=8)({"image": img, "bias": 1, "id": "a"})
    assert torch.equal(a1, a2)
    if preset == "tag":  # a fixed-position shortcut is the same on every sample
        assert torch.equal(a1, b)
    else:
        assert not torch.equal(a1, b) and not torch.equal(a1, other_seed["image"])
    # the same as seeding the shortcut by hand from the documented formula
    manual = make_shortcut(preset, 2).set_random_state(seed=sample_seed(7, "a"))(img)
    assert torch.equal(a1, manual)


def test_inject_mask_reproduces_the_sample_region():
    img = _image(2)
    inject = InjectShortcutd("image", make_shortcut("patch_random", 2), seed=3)
    item = {"image": img, "bias": 1, "id": "x42"}
    changed = _changed(inject(item)["image"], img)
    assert np.array_equal(inject.mask(item, img.shape), changed)
    assert np.array_equal(shortcut_mask(inject, img, sample_id="x42"), changed)
    assert not inject.mask({**item, "bias": 0}, img.shape).any()
    # the region can be asked for at the network's input size, where it scales with the image
    big = inject.mask(item, (1, 64, 56))
    assert big.sum() == pytest.approx(4 * changed.sum(), rel=0.3)


def test_inject_errors_name_the_field_and_the_fix():
    img = _image(2)
    inject = InjectShortcutd("image", SquarePatch())
    with pytest.raises(DataError, match="'bias'.*Fix: add 'bias'"):
        inject({"image": img, "id": "a"})
    with pytest.raises(DataError, match="'id'"):
        inject({"image": img, "bias": 1})
    with pytest.raises(DataError, match="not 0 or 1"):
        inject({"image": img, "bias": 2, "id": "a"})
    lenient = InjectShortcutd("image", SquarePatch(position="random"), allow_missing_keys=True)
    assert lenient({"image": img, "id": "a"})["image"] is img  # no flag: no shortcut
    assert _changed(lenient({"image": img, "bias": 1})["image"], img).any()  # id from the file name
    with pytest.raises(ConfigError):
        InjectShortcutd("image", shortcut="patch")


def _loader_images(num_workers: int) -> list[torch.Tensor]:
    items = [{"image": np.full((1, 24, 24), float(i), np.float32), "bias": i % 3 != 0, "id": f"s{i}"} for i in range(8)]
    items = [{**it, "image": it["image"] + np.linspace(0, 1, 24, dtype=np.float32)} for it in items]
    inject = InjectShortcutd("image", GaussianNoiseShortcut(std=0.2), seed=11)
    patch = InjectShortcutd("image", SquarePatch(position="random"), seed=11)
    ds = Dataset(items, transform=Compose([inject, patch]))
    loader = DataLoader(ds, batch_size=2, num_workers=num_workers, shuffle=False)
    return [b["image"].as_tensor() for b in loader]


def test_inject_is_the_same_across_dataloader_worker_counts():
    single, multi = _loader_images(0), _loader_images(2)
    assert len(single) == len(multi) == 4
    for a, b in zip(single, multi):
        assert torch.equal(a, b)
    # and across epochs: a second pass gives the same images
    assert all(torch.equal(a, b) for a, b in zip(single, _loader_images(0)))


# ----------------------------------------------------------------------------- presets


def test_presets_load_with_kinds_and_dims():
    names = list_shortcuts()
    required = {"patch", "tag", "stripes", "noise", "blur", "contrast", "bias_field", "regional_deformation", "blob"}
    assert required <= set(names)
    presets = load_presets()
    for name in names:
        kind = shortcut_kind(name)
        assert kind in ("localized", "diffuse")
        for dims in presets[name]["spatial_dims"]:
            sc = make_shortcut(name, dims)
            assert isinstance(sc, SHORTCUT_CLASSES[presets[name]["class"]]) and sc.kind == kind
    assert shortcut_kind("patch") == "localized" and shortcut_kind("noise") == "diffuse"


def test_make_shortcut_overrides_and_errors():
    assert make_shortcut("patch", 2, size=0.3).size == 0.3
    assert make_shortcut("bias_field", 3).coeff_range != make_shortcut("bias_field", 2).coeff_range
    with pytest.raises(ConfigError, match="patch.*noise") as e:
        make_shortcut("no_such_shortcut", 2)
    assert "no_such_shortcut" in str(e.value)
    with pytest.raises(ConfigError, match="accepts"):
        make_shortcut("patch", 2, colour="red")
    with pytest.raises(ConfigError, match="spatial_dims"):
        make_shortcut("patch", 4)


def test_custom_presets_file_is_validated(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("big_patch: {kind: localized, class: SquarePatch, spatial_dims: [2], params: {size: 0.5}}\n")
    assert list_shortcuts(good) == ["big_patch"]
    assert make_shortcut("big_patch", 2, path=good).size == 0.5
    with pytest.raises(ConfigError, match="spatial_dims"):
        make_shortcut("big_patch", 3, path=good)
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: {kind: diffuse, class: SquarePatch, spatial_dims: [2]}\n")
    with pytest.raises(ConfigError, match="localized"):
        list_shortcuts(bad)
