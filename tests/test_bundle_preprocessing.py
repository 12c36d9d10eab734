"""The bundles list their preprocessing as flat MONAI transforms: overridable by ``#`` path, the same for
validation and inference (less the shortcut and the label), the same as ``build_transforms``, and usable
without its loader by an application that feeds in-memory images (MONAI Deploy's bundle operator)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from test_bundles import REPO, TINY, dataset_dir

BUNDLES = ["isic2017", "chexpert", "simba"]
INTENSITY = {"isic2017": "range", "chexpert": "percentile", "simba": "minmax"}
SHARED_KEYS = ("spatial_dims", "in_channels", "image_size", "network_def")
"""Top-level settings that train.json and inference.json both define and must agree on."""


def _configs(name: str) -> tuple[dict, dict]:
    folder = REPO / "bundles" / TINY[name]["folder"] / "configs"
    return (json.loads((folder / "train.json").read_text()), json.loads((folder / "inference.json").read_text()))


def _parser(name: str, config: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / TINY[name]["folder"] / "configs" / config))
    parser.update({"image_size": TINY[name]["image_size"], **overrides})
    return parser


def _deployable(transforms: list[dict]) -> list[dict]:
    """The transforms that touch the image of an unlabelled input, with ``track_meta`` (inference drops the
    metadata, training keeps it) left out."""
    keep = []
    for t in copy.deepcopy(transforms):
        if t["_target_"].endswith("InjectShortcutd") or t.get("keys") == "label":
            continue
        t.pop("track_meta", None)
        keep.append(t)
    return keep


@pytest.mark.parametrize("name", BUNDLES)
def test_inference_preprocessing_is_the_validation_one(name):
    train, inference = _configs(name)
    for key in SHARED_KEYS:
        assert train[key] == inference[key], f"{name}: '{key}' differs between train.json and inference.json"
    validate = train["validate"]["preprocessing"]
    assert inference["preprocessing"]["_target_"] == validate["_target_"]
    assert _deployable(inference["preprocessing"]["transforms"]) == _deployable(validate["transforms"])
    targets = [t["_target_"] for t in inference["preprocessing"]["transforms"]]
    assert "LoadImage" in targets[0] and "Resized" in targets, targets  # a top-level loader an app can strip
    assert not any(t.endswith("build_transforms") for t in targets)


@pytest.mark.parametrize("name", BUNDLES)
def test_flat_pipeline_equals_build_transforms(name, tmp_path_factory):
    """The bundle's validation pipeline and the Python ``build_transforms`` give the same tensors, shortcut
    included: the bundles and the Python API cannot drift apart."""
    from shortcut_kd.data import read_dataset
    from shortcut_kd.data.transforms import build_transforms

    items = read_dataset(name, dataset_dir(tmp_path_factory, name), split="train")[:2]
    shortcut = None if name == "simba" else "patch"
    parser = _parser(name, "train.json", **({"shortcut#name": shortcut} if shortcut else {}))
    flat = parser.get_parsed_content("validate#preprocessing")
    train, _ = _configs(name)
    reference = build_transforms(train["spatial_dims"], train["in_channels"], TINY[name]["image_size"],
                                 shortcut=shortcut, seed=train["seed"], intensity=INTENSITY[name])
    for item in items:
        for bias in (0, 1):
            sample = {**item, "bias": bias}
            a, b = flat(dict(sample)), reference(dict(sample))
            assert a["image"].shape == b["image"].shape
            assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
            assert int(a["label"]) == int(b["label"])


def test_transforms_are_overridable_by_path(tmp_path_factory):
    """Zoo-style overrides reach single transforms; the augmentations are switched by ``train#augment``."""
    from shortcut_kd.data import read_dataset

    item = read_dataset("chexpert", dataset_dir(tmp_path_factory, "chexpert"), split="train")[0]
    _, inference = _configs("chexpert")
    resize = next(i for i, t in enumerate(inference["preprocessing"]["transforms"]) if t["_target_"] == "Resized")
    parser = _parser("chexpert", "inference.json", **{f"preprocessing#transforms#{resize}#spatial_size": [20, 12]})
    assert tuple(parser.get_parsed_content("preprocessing")({"image": item["image"]})["image"].shape) == (1, 20, 12)

    def names(augment: bool) -> list[str]:
        compose = _parser("chexpert", "train.json", **{"train#augment": augment}).get_parsed_content(
            "train#preprocessing")
        return [type(t).__name__ for t in compose.transforms]

    assert "RandFlipd" not in names(False) and {"RandFlipd", "RandRotated"} <= set(names(True))
    assert "InjectShortcutd" in names(False)
    simba = _parser("simba", "train.json").get_parsed_content("validate#preprocessing")  # native bias: no injection
    assert "InjectShortcutd" not in [type(t).__name__ for t in simba.transforms]


@pytest.mark.parametrize("name", ["chexpert", "isic2017", "simba"])
def test_preprocessing_without_its_loader_takes_in_memory_images(name, tmp_path_factory):
    """What MONAI Deploy's bundle operator does: drop every transform whose name holds ``LoadImage`` and feed
    the image it read itself, without a channel dimension and with ``original_channel_dim`` in its metadata;
    the result equals the file's."""
    from monai.transforms import LoadImage

    from shortcut_kd.data import read_dataset

    item = read_dataset(name, dataset_dir(tmp_path_factory, name), split="train")[0]
    full = _parser(name, "inference.json").get_parsed_content("preprocessing")
    stripped = Compose([t for t in full.transforms if "LoadImage" not in type(t).__name__])
    assert len(stripped.transforms) == len(full.transforms) - 1
    image = LoadImage(image_only=True, ensure_channel_first=False)(item["image"])
    assert "original_channel_dim" in image.meta
    expected = full({"image": item["image"]})["image"]
    assert torch.allclose(stripped({"image": image})["image"], expected, atol=1e-6)


def test_compile_option_reaches_the_trainer_only():
    """``compile: true`` compiles the trainer's network (MONAI's ``SupervisedTrainer(compile=...)``); the
    module that checkpoints save stays the plain one, so checkpoint keys do not change."""
    parser = _parser("isic2017", "train.json", compile=True, **{"train#dataloader": "$[]", "train#handlers": []})
    parser.update({"train#trainer#compile_kwargs": {"backend": "eager"}})
    trainer = parser.get_parsed_content("train#trainer")
    saved = parser.get_parsed_content("train#save_dict")["model"]
    assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.network._orig_mod is saved and not isinstance(saved, torch._dynamo.eval_frame.OptimizedModule)
    assert not any(k.startswith("_orig_mod") for k in saved.state_dict())
    assert not _parser("isic2017", "train.json").get_parsed_content("compile")
