"""Per-layer probes: a layer that sees a bright-corner shortcut decodes it, a random-feature layer does not."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_kd.evaluation import (
    choose_taps, format_probe_table, plot_layer_probes, pool_features, probe_layers, split_by_id, write_probe_table,
)


class _RandomFeatures(nn.Module):
    """Output independent of the input (seeded noise): nothing is decodable from it."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(seed)

    def forward(self, x):
        return torch.randn(x.shape[0], 8, 4, 4, generator=self.g)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
        with torch.no_grad():  # +x and -x channels: the ReLU keeps the bright patch in the mean
            self.early[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.early[0].bias.zero_()
        self.noise = _RandomFeatures()
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        h = self.early(x)
        self.noise(h)
        return self.head(h.mean((2, 3)))


def _loader(n, seed, batch=32):
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (n, 1, 16, 16)).astype(np.float32)
    bias = rng.integers(0, 2, n)
    label = rng.integers(0, 2, n)  # independent of the bias, as in test_unbiased
    images[bias == 1, :, :4, :4] += 3.0  # the shortcut: a bright corner patch
    return [{"image": torch.from_numpy(images[i:i + batch]), "bias": torch.from_numpy(bias[i:i + batch]),
             "label": torch.from_numpy(label[i:i + batch])} for i in range(0, n, batch)]


def test_probe_finds_shortcut_layer_and_chance_elsewhere():
    model = _Tiny().train()
    rows = probe_layers(model, ["early", "noise"], _loader(160, 0), _loader(160, 1), model_name="erm")
    assert model.training
    by = {(r["tap"], r["target"]): r for r in rows}
    assert len(rows) == 4 and all(r["model"] == "erm" and r["n_train"] == 160 for r in rows)
    assert by[("early", "bias")]["auc"] > 0.95
    assert by[("early", "bias")]["balanced_accuracy"] > 0.85
    assert abs(by[("noise", "bias")]["auc"] - 0.5) < 0.15
    assert abs(by[("early", "label")]["auc"] - 0.5) < 0.15  # the label is not in the image at all
    json.dumps(rows, allow_nan=False)
    # max_samples caps each half
    capped = probe_layers(model, ["early"], _loader(160, 0), _loader(160, 1), targets=("bias",), max_samples=40)
    assert capped[0]["n_train"] == 40 and capped[0]["n_test"] == 40


def test_probe_rejects_missing_target():
    with pytest.raises(ValueError, match="'group'"):
        probe_layers(_Tiny(), ["early"], _loader(40, 0), _loader(40, 1), targets=("group",))


def test_pool_features_2d_3d_and_vectors():
    assert pool_features(torch.ones(3, 5, 4, 4)).shape == (3, 5)
    x = torch.arange(2 * 3 * 8, dtype=torch.float).view(2, 3, 2, 2, 2)
    assert torch.allclose(pool_features(x), x.mean((2, 3, 4)))
    assert pool_features(torch.ones(3, 7)).shape == (3, 7)


def _rows(aucs, model="erm"):
    return [{"model": model, "tap": f"layer{i + 1}", "depth": i, "target": "bias", "auc": a}
            for i, a in enumerate(aucs)]


def test_choose_taps_rule():
    assert choose_taps(_rows([0.55, 0.8, 0.9, 0.95])) == ["layer2", "layer3", "layer4"]
    assert choose_taps(_rows([0.99, 0.6, 0.6, 0.6])) == ["layer1", "layer2", "layer3", "layer4"]
    assert choose_taps(_rows([0.5, 0.6, 0.7, 0.9]), threshold=0.85) == ["layer4"]
    assert choose_taps(_rows([0.5, 0.55, None, 0.6])) == ["layer1", "layer2", "layer3", "layer4"]  # none: all
    both = _rows([0.5, 0.6, 0.9, 0.9], "erm") + _rows([0.9, 0.9, 0.9, 0.9], "kd")
    with pytest.raises(ValueError, match="several models"):
        choose_taps(both)
    assert choose_taps(both, model="erm") == ["layer3", "layer4"]


def test_split_by_id_is_stable_and_order_free():
    items = [{"id": f"case{i}"} for i in range(200)]
    a, b = split_by_id(items)
    a2, b2 = split_by_id(list(reversed(items)))
    assert {x["id"] for x in a} == {x["id"] for x in a2}
    assert not {x["id"] for x in a} & {x["id"] for x in b} and len(a) + len(b) == 200
    assert 70 < len(a) < 130
    with pytest.raises(ValueError, match="no 'id'"):
        split_by_id([{"image": "x"}])


def test_plot_and_tables(tmp_path):
    rows = _rows([0.6, 0.8, 0.9, 0.95], "erm") + _rows([0.55, 0.6, 0.6, 0.62], "kd")
    rows += [{**r, "target": "label", "auc": 0.7} for r in _rows([0] * 4, "erm")]
    png = plot_layer_probes(rows, tmp_path / "probes.png", title="erm vs kd")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_probe_table(rows)
    assert "erm bias auc" in table and "kd bias auc" in table and "| `layer4` | 0.950 |" in table
    write_probe_table(rows, tmp_path / "probes.csv")
    with open(tmp_path / "probes.csv") as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows) and read[0]["tap"] == "layer1"
    assert write_probe_table(rows, tmp_path / "probes.md").read_text().startswith("| tap |")


def test_cli_reads_plain_and_wrapped_checkpoints(tmp_path):
    from shortcut_kd.errors import ConfigError, DataError
    from shortcut_kd.nets import read_state_dict
    from shortcut_kd.workflows.probe_layers_cli import parse_checkpoints

    state = _Tiny().state_dict()
    torch.save(state, tmp_path / "model.pt")
    torch.save({"network": state, "epoch": 3}, tmp_path / "checkpoint.pt")
    for name in ("model.pt", "checkpoint.pt"):
        loaded = read_state_dict(tmp_path / name)
        assert set(loaded) == set(state) and torch.equal(loaded["head.weight"], state["head.weight"])
    torch.save({"epoch": 3}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="no model weights"):
        read_state_dict(tmp_path / "bad.pt")
    assert parse_checkpoints(["erm=a/model.pt", "kd"]) == [("erm", Path("a/model.pt")), ("kd", None)]
    with pytest.raises(ConfigError, match="uniquely"):
        parse_checkpoints(["x=a.pt", "x=b.pt"])
