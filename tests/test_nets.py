"""Networks with named tap points: building, logits shape, tap registry and tap specifications."""

import pytest
import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import get_inplanes
from torch import nn

from shortcut_kd.errors import ConfigError
from shortcut_kd.nets import (
    FeatureCapture, build_network, get_head_name, get_taps, list_networks, pair_taps, register_network, resolve_taps,
)

TINY_RESNET = {"widen_factor": 0.125, "conv1_t_stride": 2, "no_max_pool": True}
TINY_DENSENET = {"init_features": 8, "growth_rate": 4}
TINY_ALEXNET = {"widths": (8, 8, 16, 8, 8), "hidden": 16}
TINY_SIMBA = {"channels": (4, 4, 8, 8, 16)}

CASES = [
    ("resnet10", 2, 16, TINY_RESNET),
    ("resnet10", 3, 8, TINY_RESNET),
    ("resnet18", 2, 16, {"widen_factor": 0.125}),
    ("resnet18", 3, 8, TINY_RESNET),
    ("resnet34", 2, 16, TINY_RESNET),
    ("densenet121", 2, 32, TINY_DENSENET),
    ("densenet121", 3, 32, TINY_DENSENET),
    ("alexnet", 2, 32, TINY_ALEXNET),
    ("alexnet", 2, 224, TINY_ALEXNET),
    ("simba_cnn", 3, 8, TINY_SIMBA),
    ("simba_cnn", 2, 16, TINY_SIMBA),
]


@pytest.mark.parametrize("name,dims,size,kwargs", CASES, ids=[f"{c[0]}-{c[1]}d-{c[2]}" for c in CASES])
def test_network_builds_taps_and_logits(name, dims, size, kwargs):
    model = build_network(name, spatial_dims=dims, in_channels=1, num_classes=2, **kwargs).eval()
    assert model.arch_name == name
    taps = get_taps(model)
    assert taps == get_taps(name) and len(taps) >= 4
    x = torch.randn(3, 1, *([size] * dims))
    with torch.no_grad(), FeatureCapture(model, taps) as cap:
        logits = model(x)
    assert logits.shape == (3, 2)
    # every tap fires, in order of depth, with a (N, C, *spatial) map
    assert list(cap.features) == taps
    for feat in cap.features.values():
        assert feat.ndim == 2 + dims and feat.shape[0] == 3
    head = model.get_submodule(get_head_name(model))
    assert isinstance(head, nn.Linear) and head.out_features == 2


def test_network_two_input_channels_and_three_classes():
    model = build_network("resnet10", 2, in_channels=2, num_classes=3, **TINY_RESNET)
    assert model(torch.randn(2, 2, 16, 16)).shape == (2, 3)


def test_list_networks_and_bad_names():
    assert {"resnet10", "resnet18", "resnet34", "densenet121", "alexnet", "simba_cnn"} <= set(list_networks())
    with pytest.raises(ConfigError, match="resnet18"):
        build_network("resnet19")
    with pytest.raises(ConfigError, match="spatial_dims"):
        build_network("alexnet", spatial_dims=3)


def test_tap_specs_all_early_late_explicit():
    model = build_network("resnet10", 2, **TINY_RESNET)
    assert resolve_taps(model, "all") == ["layer1", "layer2", "layer3", "layer4"]
    assert resolve_taps(model, None) == resolve_taps(model, "all")
    assert resolve_taps(model, "early") == ["layer1", "layer2"]
    assert resolve_taps(model, "late") == ["layer3", "layer4"]
    assert resolve_taps(model, ["layer4", "layer2"]) == ["layer4", "layer2"]
    assert resolve_taps(model, " layer1, layer3 ") == ["layer1", "layer3"]
    assert resolve_taps(model, "layer2.0") == ["layer2.0"]  # any sub-module of an instance
    assert resolve_taps("simba_cnn", "early") == ["block1", "block2"]
    assert resolve_taps("simba_cnn", "late") == ["block3", "block4", "block5"]
    assert resolve_taps("densenet121", "late") == ["features.denseblock3", "features.denseblock4"]


def test_bad_tap_names_list_the_valid_ones():
    model = build_network("resnet10", 2, **TINY_RESNET)
    with pytest.raises(ConfigError, match="layer1") as err:
        resolve_taps(model, "layer5")
    assert "layer5" in str(err.value)
    with pytest.raises(ConfigError, match="block1"):
        resolve_taps("simba_cnn", "layer1")
    with pytest.raises(ConfigError):
        resolve_taps(model, ",")


def test_taps_of_models_not_built_by_the_registry():
    plain = ResNet("basic", [1, 1, 1, 1], get_inplanes(), spatial_dims=2, n_input_channels=1, num_classes=2)
    assert get_taps(plain) == ["layer1", "layer2", "layer3", "layer4"] and get_head_name(plain) == "fc"
    with pytest.raises(ConfigError, match="register_network"):
        get_taps(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))


def test_register_network(monkeypatch):
    from shortcut_kd.nets import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real registry untouched

    def build(spatial_dims, in_channels, num_classes, width=4):
        return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, num_classes))

    register_network("tiny_test_net", build, taps=["0", "1"], head="4", spatial_dims=(2,))
    model = build_network("tiny_test_net", 2, width=3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2)
    assert get_taps(model) == ["0", "1"] and get_head_name("tiny_test_net") == "4"


def test_pair_taps_same_and_different_architectures():
    assert pair_taps("resnet18", "resnet10", "late") == (["layer3", "layer4"], ["layer3", "layer4"])
    s, t = pair_taps("resnet18", "alexnet")
    assert s == ["layer1", "layer2", "layer3", "layer4"]
    assert t == ["features.block1", "features.block2", "features.block4", "features.block5"]
    s, t = pair_taps("simba_cnn", "resnet10", "all")
    assert len(s) == len(t) == 5 and t[0] == "layer1" and t[-1] == "layer4"
    assert pair_taps("resnet18", "alexnet", "layer1", ["features.block3"]) == (["layer1"], ["features.block3"])
    with pytest.raises(ConfigError, match="as many teacher taps"):
        pair_taps("resnet18", "alexnet", "all", "early")


@pytest.mark.parametrize("name,dims", [("resnet18", 2), ("densenet121", 2), ("alexnet", 2), ("simba_cnn", 3)])
def test_networks_export_to_torchscript(name, dims):
    """Bundles export with ckpt_export, which scripts the network: every architecture must script."""
    import torch

    from shortcut_kd.nets import build_network

    net = build_network(name, spatial_dims=dims, in_channels=1, num_classes=2).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, *([32] * dims))
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
