"""Baselines: each one's core rule on toy data, and the handlers inside a stock SupervisedTrainer."""

import logging
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

from shortcut_kd.baselines import (
    CutMixHandler, GroupDROHandler, MixUpHandler, RandConv, RandConvd, RandConvHandler, dfr_retrain, find_errors,
    group_balanced_sampler, group_balanced_weights, jtt_upsample,
)
from shortcut_kd.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- helpers


def _items(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label, bias = i % 2, (i // 2) % 2
        items.append({"image": torch.randn(1, size, size, generator=g) + label, "label": label, "bias": bias,
                      "group": 2 * label + bias, "id": f"s{i:03d}"})
    return items


def _tiny_net(size=8):
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * size * size, 2))


def _trainer(net, loader, handlers, iterations=2):
    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=iterations, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=nn.CrossEntropyLoss(),
        train_handlers=handlers, decollate=False,
    )


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


# ----------------------------------------------------------------------------- GroupDRO


def test_groupdro_upweights_the_worst_group(tmp_path):
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # confident and right everywhere except group 3 (label 1, predicted 0)
    pred = torch.tensor([[3.0, -3.0]] * 4 + [[-3.0, 3.0]] * 2 + [[1.0, -1.0]] * 2, requires_grad=True)
    handler = GroupDROHandler(num_groups=4, eta=0.1)
    plain = F.cross_entropy(pred, labels)
    for _ in range(5):
        loss = handler.robust_loss(pred, labels, groups)
    q = handler.q
    assert torch.isclose(q.sum(), torch.tensor(1.0))
    assert int(q.argmax()) == 3 and q[3] > 0.25 > q[0]
    assert loss.item() > plain.item()
    loss.backward()  # the replaced loss is differentiable
    assert pred.grad is not None and pred.grad[6:].abs().sum() > 0

    # the weights checkpoint and resume (loaded as MONAI's CheckpointLoader does)
    torch.save(handler.state_dict(), tmp_path / "groupdro.pt")
    other = GroupDROHandler(num_groups=4, eta=0.1)
    other.load_state_dict(torch.load(tmp_path / "groupdro.pt", weights_only=True))
    assert torch.equal(other.q, handler.q)


def test_groupdro_rejects_out_of_range_groups():
    handler = GroupDROHandler(num_groups=4)
    with pytest.raises(DataError, match="group"):
        handler._groups({"group": torch.tensor([0, 5])}, torch.device("cpu"), 2)


def test_groupdro_in_a_supervised_trainer():
    torch.manual_seed(0)
    items = _items(16)
    loader = DataLoader(Dataset(items), batch_size=8, shuffle=False)
    net = _tiny_net()
    handler = GroupDROHandler(num_groups=4, eta=0.5)
    trainer = _trainer(net, loader, [handler])
    seen = []

    @trainer.on(IterationEvents.LOSS_COMPLETED)  # attached after GroupDRO: sees the replaced loss
    def check(engine):
        out = engine.state.output
        losses = F.cross_entropy(out[Keys.PRED].detach(), out[Keys.LABEL], reduction="none")
        groups = engine.state.batch["group"]
        group_loss = torch.stack([losses[groups == g].mean() for g in range(4)])
        seen.append((out[Keys.LOSS].item(), float((handler.q * group_loss).sum()), losses.mean().item()))

    before = _params(net)
    trainer.run()
    assert len(seen) == 2
    for replaced, expected, plain in seen:
        assert replaced == pytest.approx(expected, rel=1e-5)
    assert not torch.allclose(handler.q, torch.full((4,), 0.25))
    assert trainer.state.group_weights == pytest.approx(handler.q.tolist())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


# ----------------------------------------------------------------------------- reweighting


def test_group_balanced_sampler_draws_groups_equally():
    counts = {0: 70, 1: 20, 2: 8, 3: 2}
    datalist = [{"id": f"{g}-{i}", "group": g} for g, n in counts.items() for i in range(n)]
    weights = group_balanced_weights(datalist)
    per_group = Counter()
    for item, w in zip(datalist, weights):
        per_group[item["group"]] += w
    assert all(v == pytest.approx(len(datalist) / 4) for v in per_group.values())

    sampler = group_balanced_sampler(datalist, num_samples=4000, seed=1)
    drawn = Counter(datalist[i]["group"] for i in sampler)
    assert all(abs(drawn[g] / 4000 - 0.25) < 0.03 for g in counts), drawn
    assert list(group_balanced_sampler(datalist, seed=1)) == list(group_balanced_sampler(datalist, seed=1))
    assert list(group_balanced_sampler(datalist, seed=1)) != list(group_balanced_sampler(datalist, seed=2))
    with pytest.raises(DataError, match="row 2"):
        group_balanced_weights([{"group": 0}, {"label": 1}])


# ----------------------------------------------------------------------------- JTT


class _SignModel(nn.Module):
    """Predicts class 1 when the first pixel is positive."""

    def forward(self, x):
        s = x.flatten(1)[:, :1]
        return torch.cat([-s, s], dim=1)


def test_find_errors_returns_exactly_the_misclassified_ids():
    rng = np.random.RandomState(0)
    items, expected = [], []
    for i in range(11):
        value = float(rng.choice([-1.0, 1.0]))
        label = int(value > 0) if i % 3 else int(value < 0)  # every third sample is an error
        items.append({"image": torch.full((1, 2, 2), value), "label": label, "id": f"case{i}"})
        if i % 3 == 0:
            expected.append(f"case{i}")
    model = _SignModel().train()
    errors = find_errors(model, DataLoader(Dataset(items), batch_size=4), "cpu")
    assert errors == expected
    assert model.training  # mode restored


def test_jtt_upsample_repeats_exactly_the_errors():
    datalist = [{"id": f"s{i}", "label": i % 2} for i in range(10)]
    errors = ["s3", "s7", "s8"]
    out = jtt_upsample(datalist, errors, lambda_up=5)
    counts = Counter(item["id"] for item in out)
    assert all(counts[f"s{i}"] == (5 if f"s{i}" in errors else 1) for i in range(10))
    assert len(out) == 10 + 3 * 4
    assert out == jtt_upsample(datalist, errors, lambda_up=5)  # deterministic order
    assert jtt_upsample(datalist, [], 5) == datalist
    out[0]["label"] = 9
    assert datalist[0]["label"] == 0  # copies, the input is untouched
    with pytest.raises(DataError, match="not in the datalist"):
        jtt_upsample(datalist, ["nope"], 2)
    with pytest.raises(ConfigError):
        jtt_upsample(datalist, errors, 0)


# ----------------------------------------------------------------------------- DFR


class _ToyNet(nn.Module):
    """Backbone passes (core, spurious, noise, noise) through; the head sees them after a flatten in forward."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(1, 4, kernel_size=(2, 2), bias=False)
        with torch.no_grad():
            self.backbone.weight.zero_()
            for k in range(4):
                self.backbone.weight[k, 0].view(-1)[k] = 1.0
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():  # the ERM head: the spurious feature only
            self.fc.weight.copy_(torch.tensor([[0.0, -3.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.backbone(x), 1))


def _toy_set(n, mode, seed):
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, n)
    b = {"decorrelated": rng.randint(0, 2, n), "aligned": y, "conflicting": 1 - y}[mode]
    core = (2 * y - 1) + rng.normal(0, 0.6, n)
    spur = (2 * b - 1) * 2.0 + rng.normal(0, 0.1, n)
    noise = rng.normal(0, 1, (n, 2))
    feats = np.column_stack([core, spur, noise]).astype(np.float32)
    return [{"image": torch.from_numpy(f).reshape(1, 2, 2), "label": int(l), "bias": int(bb),
             "group": int(2 * l + bb), "id": f"{mode}{i}"} for i, (f, l, bb) in enumerate(zip(feats, y, b))]


def _worst_group_accuracy(model, items):
    x = torch.stack([it["image"] for it in items])
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    y = np.array([it["label"] for it in items])
    g = np.array([it["group"] for it in items])
    return min(float(np.mean(pred[g == k] == y[g == k])) for k in np.unique(g))


def test_dfr_refits_only_the_head_on_the_given_subset():
    model = _ToyNet()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    test = _toy_set(400, "decorrelated", seed=9)
    assert _worst_group_accuracy(model, test) < 0.1  # ERM head: the shortcut

    subset = _toy_set(160, "decorrelated", seed=1)
    loader = DataLoader(Dataset(subset), batch_size=32)
    dfr = dfr_retrain(model, "fc", loader, "cpu", seed=0, c_grid=(1.0, 0.1), n_repeats=5)

    # the input model is untouched, byte for byte; the returned copy shares its backbone weights
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    assert torch.equal(dfr.backbone.weight, model.backbone.weight)
    assert not torch.equal(dfr.fc.weight, model.fc.weight)

    assert _worst_group_accuracy(dfr, test) > 0.75
    w = dfr.fc.weight[1] - dfr.fc.weight[0]
    assert w[0].abs() > w[1].abs()  # relies on the core feature now

    # same seed, same head; another subset, another head
    again = dfr_retrain(model, "fc", loader, "cpu", seed=0, c_grid=(1.0, 0.1), n_repeats=5)
    assert torch.equal(again.fc.weight, dfr.fc.weight)
    aligned = dfr_retrain(model, "fc", DataLoader(Dataset(_toy_set(160, "aligned", seed=1)), batch_size=32),
                          "cpu", seed=0, c_grid=(1.0,), balance=False)
    assert not torch.allclose(aligned.fc.weight, dfr.fc.weight)
    w_al = aligned.fc.weight[1] - aligned.fc.weight[0]
    assert w_al[1].abs() > w_al[0].abs()  # fitted on aligned data, the shortcut wins again


def test_dfr_balances_by_label_without_groups_and_names_a_bad_head():
    model = _ToyNet()
    subset = [{k: v for k, v in it.items() if k not in ("group", "bias")} for it in _toy_set(80, "decorrelated", 2)]
    dfr = dfr_retrain(model, "fc", DataLoader(Dataset(subset), batch_size=16), seed=0, c_grid=(1.0,), n_repeats=2)
    assert not torch.equal(dfr.fc.weight, model.fc.weight)
    with pytest.raises(ConfigError, match="head_name"):
        dfr_retrain(model, "backbone", DataLoader(Dataset(subset), batch_size=16))


# ----------------------------------------------------------------------------- RandConv


def _smooth_images(n=3, size=16, depth=None):
    grid = torch.linspace(0, 1, size)
    if depth is None:
        yy, xx = torch.meshgrid(grid, grid, indexing="ij")
        base = torch.sin(3 * xx) + torch.cos(2 * yy) + (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.06).float()
    else:
        zz, yy, xx = torch.meshgrid(torch.linspace(0, 1, depth), grid, grid, indexing="ij")
        base = torch.sin(3 * xx) + torch.cos(2 * yy) + zz
    return torch.stack([(i + 1) * base + i for i in range(n)]).unsqueeze(1)


def _high_freq(x):
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(x, lap).pow(2).mean(dim=(1, 2, 3))


def test_randconv_preserves_shape_and_changes_texture():
    x = _smooth_images()
    rc = RandConv(kernel_sizes=(3, 5, 7), alpha_range=(0.0, 0.5))
    rc.set_random_state(3)
    y = rc(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y - x).abs().mean() > 0.05 * x.std()
    assert torch.all((_high_freq(y) - _high_freq(x)).abs() > 0.05 * _high_freq(x))
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-4)
    assert torch.allclose(y.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), rtol=1e-3)
    assert not torch.allclose(rc(x), y)  # a new draw

    twin = RandConv(kernel_sizes=(3, 5, 7), alpha_range=(0.0, 0.5))
    twin.set_random_state(3)
    assert torch.equal(twin(x), y)  # same seed, same result

    x3 = _smooth_images(n=2, size=8, depth=6).repeat(1, 2, 1, 1, 1)
    assert rc(x3).shape == x3.shape

    dict_form = RandConvd(keys="image", kernel_sizes=(3, 5, 7), alpha_range=(0.0, 0.5)).set_random_state(3)
    assert torch.equal(dict_form({"image": x, "label": 1})["image"], y)


def test_randconv_redraws_the_kernel_every_n_calls():
    x = _smooth_images(n=2, size=8)
    rc = RandConv(kernel_sizes=(3, 5), redraw_every=2)
    rc.set_random_state(0)
    kernels = []
    for _ in range(4):
        rc(x)
        kernels.append(rc.kernel.copy())
    assert np.array_equal(kernels[0], kernels[1]) and np.array_equal(kernels[2], kernels[3])
    assert not (kernels[1].shape == kernels[2].shape and np.array_equal(kernels[1], kernels[2]))
    with pytest.raises(ConfigError):
        RandConv(kernel_sizes=(2,))


def test_randconv_handler_in_a_supervised_trainer():
    items = _items(8)
    originals = [it["image"].clone() for it in items]
    loader = DataLoader(Dataset(items), batch_size=4)
    net = _tiny_net()
    seen = []
    trainer = _trainer(net, loader, [RandConvHandler(seed=0, kernel_sizes=(3,), alpha_range=(0.0, 0.2))])

    @trainer.on(IterationEvents.FORWARD_COMPLETED)
    def grab(engine):
        seen.append(engine.state.output[Keys.IMAGE].clone())

    trainer.run()
    assert len(seen) == 2 and seen[0].shape == (4, 1, 8, 8)
    assert not torch.allclose(seen[0], torch.stack(originals[:4]))
    assert all(torch.equal(a, it["image"]) for a, it in zip(originals, items))  # the data is untouched


# ----------------------------------------------------------------------------- MixUp / CutMix


@pytest.mark.parametrize("handler_cls", [MixUpHandler, CutMixHandler])
def test_mixing_handlers_mix_images_and_labels_alike(handler_cls):
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    # every image is constant and equal to its label: a mixed image's mean is its label's class-1 weight
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 12, 10).clone()
    handler = handler_cls(alpha=1.0, seed=4)
    batch = {"image": images, "label": labels, "group": labels * 2}
    out = handler.transform_batch(dict(batch), None)
    soft = out["label"]
    assert soft.shape == (8, 2) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(1), torch.ones(8))
    assert out["image"].shape == images.shape
    assert torch.allclose(out["image"].mean(dim=(1, 2, 3)), soft[:, 1], atol=1e-5)
    assert ((soft > 0.01) & (soft < 0.99)).any()  # something was mixed
    assert torch.equal(batch["label"], labels) and torch.equal(batch["image"], images)  # input untouched

    twin = handler_cls(alpha=1.0, seed=4).transform_batch(dict(batch), None)
    assert torch.equal(twin["image"], out["image"]) and torch.equal(twin["label"], soft)


@pytest.mark.parametrize("handler_cls", [MixUpHandler, CutMixHandler])
def test_a_batch_is_mixed_by_the_seed_and_the_iteration_alone(handler_cls):
    """A run resumed at iteration k mixes batch k as the uninterrupted run did, with no mixer state restored."""
    from types import SimpleNamespace

    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    batch = {"image": torch.rand(6, 1, 12, 10, generator=torch.Generator().manual_seed(0)), "label": labels}

    def mixed_at(handler, iteration):
        engine = SimpleNamespace(state=SimpleNamespace(iteration=iteration, batch=dict(batch), device=None),
                                 logger=logging.getLogger("test"), has_event_handler=lambda *a: True)
        handler(engine)
        return engine.state.batch

    straight = handler_cls(alpha=1.0, seed=7)
    for k in range(1, 5):
        last = mixed_at(straight, k)
    resumed = mixed_at(handler_cls(alpha=1.0, seed=7), 4)
    assert torch.equal(resumed["image"], last["image"]) and torch.equal(resumed["label"], last["label"])
    other = mixed_at(handler_cls(alpha=1.0, seed=7), 3)
    assert not torch.equal(other["image"], last["image"])


@pytest.mark.parametrize("handler_cls", [MixUpHandler, CutMixHandler])
def test_mixing_handlers_train_a_supervised_trainer(handler_cls):
    items = _items(12)
    loader = DataLoader(Dataset(items), batch_size=5)  # batches of 5: not the mixer's construction size
    net = _tiny_net()
    losses, targets = [], []
    trainer = _trainer(net, loader, [handler_cls(alpha=0.4, seed=0)])

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def grab(engine):
        losses.append(engine.state.output[Keys.LOSS].item())
        targets.append(engine.state.output[Keys.LABEL])

    before = _params(net)
    trainer.run()
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert all(t.shape == (5, 2) and t.is_floating_point() for t in targets)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert all(isinstance(it["label"], int) for it in items)  # the datalist keeps hard labels for evaluation


@pytest.mark.parametrize("handler_cls", [RandConvHandler, MixUpHandler, CutMixHandler])
def test_augmentation_handlers_resume_through_a_weights_only_checkpoint(handler_cls, tmp_path):
    batch = {"image": _smooth_images(n=4, size=8), "label": torch.tensor([0, 1, 1, 0])}
    handler = handler_cls(seed=1)
    handler.transform_batch(dict(batch), None)  # advance the random state
    torch.save(handler.state_dict(), tmp_path / "h.pt")
    expected = handler.transform_batch(dict(batch), None)
    fresh = handler_cls(seed=99)
    fresh.load_state_dict(torch.load(tmp_path / "h.pt", weights_only=True))  # as MONAI's CheckpointLoader
    got = fresh.transform_batch(dict(batch), None)
    assert torch.equal(got["image"], expected["image"]) and torch.equal(got["label"], expected["label"])
