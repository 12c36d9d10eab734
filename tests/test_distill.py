"""Layer-wise distillation: feature capture, probes, losses and the MONAI trainer handler."""

import copy
import logging

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler
from monai.utils import CommonKeys as Keys

from shortcut_kd.distill import (
    TAP_LOSSES, FeatureCapture, FitNetTapLoss, LayerwiseDistillationHandler, LayerwiseDistillationLoss, ProbeSet,
    attention_transfer, cosine, fit_probes, fitnet_mse, get_tap_loss, kd_output_transform, load_probes, match_spatial,
    probe_kl, tap_shapes,
)
from shortcut_kd.errors import ConfigError
from shortcut_kd.nets import build_network, get_taps, pair_taps

TINY = {"widen_factor": 0.125, "conv1_t_stride": 2, "no_max_pool": True}


def _net(name="resnet10", dims=2, **kw):
    if name.startswith("resnet"):
        kw = {**TINY, **kw}
    elif name == "alexnet":
        kw = {"widths": (8, 8, 16, 8, 8), "hidden": 16, "stem_stride": 2, **kw}
    elif name == "simba_cnn":
        kw = {"channels": (4, 4, 8, 8, 16), **kw}
    return build_network(name, dims, 1, 2, **kw)


def _data(n=8, dims=2, size=16, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        x = torch.randn((1, *([size] * dims)), generator=g) + shift * (i % 2)
        items.append({"image": x, "label": i % 2, "id": f"case{i:03d}"})
    return items


def _loader(items, batch=4, shuffle=False):
    return DataLoader(items, batch_size=batch, shuffle=shuffle, generator=torch.Generator().manual_seed(1))


def _probes(teacher, taps, size=16, dims=2):
    shapes = tap_shapes(teacher, taps, (1, *([size] * dims)))
    return ProbeSet({t: s[0] for t, s in shapes.items()}, 2, dims)


def _trainer(student, loader, handlers=(), epochs=1, loss_function=None, **kw):
    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.05),
        loss_function=loss_function or torch.nn.CrossEntropyLoss(),
        train_handlers=list(handlers), **kw,
    )


def _no_hooks(model, taps):
    return all(len(model.get_submodule(t)._forward_hooks) == 0 for t in taps)


def _record(trainer):
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    return seen


# ----------------------------------------------------------------------------------------------- capture


def test_feature_capture_removes_hooks_after_use_and_on_error():
    model = _net()
    taps = get_taps(model)
    with FeatureCapture(model, taps) as cap:
        assert cap.active and not _no_hooks(model, taps)
        model(torch.randn(2, 1, 16, 16))
    assert set(cap.features) == set(taps) and _no_hooks(model, taps) and not cap.active
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureCapture(model, taps):
            raise RuntimeError("boom")
    assert _no_hooks(model, taps)
    with pytest.raises(ConfigError, match="layer9"):
        FeatureCapture(model, ["layer9"])


def test_tap_shapes_leaves_modes_and_statistics_alone():
    model = _net().train()
    before = model.bn1.running_mean.clone()
    shapes = tap_shapes(model, ["layer1", "layer4"], (1, 16, 16))
    assert shapes["layer1"][0] == 8 and len(shapes["layer4"]) == 3
    assert model.training and torch.equal(model.bn1.running_mean, before)


# ----------------------------------------------------------------------------------------------- losses


def test_loss_functions_zero_when_equal_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    logits, other = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    f, f2 = torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 6, 8, 8, generator=g)
    assert probe_kl(logits, logits).abs() < 1e-6 and probe_kl(other, logits) > 1e-3
    assert fitnet_mse(f, f) == 0 and fitnet_mse(f2, f) > 1e-3
    assert attention_transfer(f, f).abs() < 1e-6 and attention_transfer(f2, f) > 1e-4
    assert cosine(f, f).abs() < 1e-6 and cosine(f2, f) > 1e-3
    # attention transfer and cosine across sizes; 3D resizing both ways
    assert attention_transfer(torch.randn(4, 3, 16, 16, generator=g), f).isfinite()
    assert match_spatial(torch.randn(2, 3, 8, 8, 8), (4, 4, 4)).shape == (2, 3, 4, 4, 4)
    assert match_spatial(torch.randn(2, 3, 2, 2, 2), (4, 4, 4)).shape == (2, 3, 4, 4, 4)


@pytest.mark.parametrize("loss", sorted(TAP_LOSSES))
def test_layerwise_loss_zero_for_identical_student_positive_otherwise(loss):
    teacher = _net().eval()
    student = copy.deepcopy(teacher).eval()
    taps = get_taps(teacher)
    shapes = tap_shapes(teacher, taps, (1, 16, 16))
    channels = {t: s[0] for t, s in shapes.items()}
    kd = LayerwiseDistillationLoss(taps, taps, loss=loss, weights=1.0, student_channels=channels,
                                   teacher_channels=channels, teacher_probes=_probes(teacher, taps))
    x = torch.randn(4, 1, 32, 32)  # layer4 at 2x2: an attention map over one position is always 1

    def total():
        with torch.no_grad(), FeatureCapture(teacher, taps) as t_cap:
            t_out = teacher(x)
        with FeatureCapture(student, taps) as s_cap:
            s_out = student(x)
        return kd.compute(s_cap.features, s_out, t_cap.features, t_out)

    terms = total()
    assert set(terms) == {"kd_layer1", "kd_layer2", "kd_layer3", "kd_layer4", "kd_final", "kd_total"}
    assert terms["kd_total"].item() < 1e-5
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    terms = total()
    assert all(terms[f"kd_{t}"].item() > 1e-6 for t in taps) and terms["kd_total"].item() > 1e-4


def test_tap_losses_by_name_share_one_constructor():
    teacher = _net()
    probe = _probes(teacher, ["layer2"])["layer2"]
    for name in TAP_LOSSES:
        cls = get_tap_loss(name)
        mod = cls(8, probe.in_channels, 2, probe)  # one signature for all
        feature = torch.randn(2, 8, 4, 4)
        target = mod.teacher_target(torch.randn(2, probe.in_channels, 4, 4))
        assert mod(feature, target).ndim == 0
    with pytest.raises(ConfigError, match="attention_transfer") as e:
        get_tap_loss("kl_probe")
    assert all(n in str(e.value) for n in TAP_LOSSES)
    with pytest.raises(ConfigError, match="teacher_probe"):
        get_tap_loss("probe_kl")(8, 8, 2)


@pytest.mark.parametrize("dims", [2, 3])
def test_fitnet_adapter_across_channels_and_sizes(dims):
    tap_loss = FitNetTapLoss(4, 6, dims)
    for s_size, t_size in [(8, 4), (2, 4)]:  # student larger (pooled down) and smaller (interpolated up)
        student = torch.randn(2, 4, *([s_size] * dims), requires_grad=True)
        target = tap_loss.teacher_target(torch.randn(2, 6, *([t_size] * dims)))
        value = tap_loss(student, target)
        value.backward()
        assert value > 0 and student.grad is not None and tap_loss.adapter.conv.weight.grad is not None
    with pytest.raises(ConfigError, match="adapter"):
        FitNetTapLoss(4, 6, dims, adapter="never")


def test_gradients_reach_only_student_probes_and_adapters():
    teacher, student = _net("resnet10").eval(), _net("resnet18", widen_factor=0.25).train()
    taps = get_taps(student)
    t_before = copy.deepcopy(teacher.state_dict())
    probes = _probes(teacher, taps)
    losses = {"layer1": "fitnet_mse", "layer2": "probe_kl", "layer3": "cosine", "layer4": "attention_transfer"}
    kd = LayerwiseDistillationLoss(
        taps, taps, loss=losses, weights=[1.0, 2.0, 3.0, 4.0], student_channels={t: s[0] for t, s in tap_shapes(
            student, taps, (1, 16, 16)).items()}, teacher_channels=probes.channels, teacher_probes=probes)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    with torch.no_grad(), FeatureCapture(teacher, taps) as t_cap:
        t_out = teacher(x)
    with FeatureCapture(student, taps) as s_cap:
        s_out = student(x)
    terms = kd.compute(s_cap.features, s_out, t_cap.features, t_out)
    (torch.nn.functional.cross_entropy(s_out, y) + terms["kd_total"]).backward()
    assert all(p.grad is not None for p in student.parameters())
    trainable = kd.trainable_parameters()
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in probes.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())


# ----------------------------------------------------------------------------------------------- probes


def test_fit_probes_on_frozen_teacher(tmp_path):
    teacher = _net().train()
    before = copy.deepcopy(teacher.state_dict())
    taps = get_taps(teacher)
    probes = fit_probes(teacher, taps, _loader(_data(16, shift=3.0)), epochs=30, lr=0.05, device="cpu")
    assert probes.taps == taps and max(probes.train_accuracy.values()) >= 0.9
    assert teacher.training and all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in teacher.parameters())
    probes.save(tmp_path / "probes.pt")
    loaded = ProbeSet.load(tmp_path / "probes.pt")
    feat = torch.randn(3, probes.channels["layer2"], 4, 4)
    assert torch.allclose(loaded["layer2"](feat), probes["layer2"](feat))
    assert loaded.train_accuracy == probes.train_accuracy
    torch.save({"taps": taps, "state": probes.state_dict()}, tmp_path / "plain.pt")
    for name in ("probes.pt", "plain.pt"):
        again, again_taps = load_probes(tmp_path / name)
        assert again_taps == taps and torch.allclose(again["layer2"](feat), probes["layer2"](feat))


# ----------------------------------------------------------------------------------------------- handler


def test_handler_on_stock_trainer_with_stats_tensorboard_and_checkpoint(tmp_path):
    teacher, student = _net("resnet10"), _net("resnet10")
    taps = get_taps(teacher)
    t_before = copy.deepcopy(teacher.state_dict())
    probes = fit_probes(teacher, taps, _loader(_data(8, seed=5)), epochs=5)
    items = _data(8)
    plain = _trainer(copy.deepcopy(student), _loader(items), epochs=1)  # plain CE on the same batches
    plain_seen = _record(plain)
    plain.run()

    kd = LayerwiseDistillationHandler(teacher, "all", loss="probe_kl", weights=10.0, teacher_probes=probes)
    stats = StatsHandler(name="kd_stats_test", output_transform=kd_output_transform)
    lines = []
    log_handler = logging.Handler()
    log_handler.emit = lambda record: lines.append(record.getMessage())
    tb = TensorBoardStatsHandler(log_dir=str(tmp_path / "tb"), output_transform=kd_output_transform)
    saver = CheckpointSaver(str(tmp_path / "ckpt"), {"net": student, "kd": kd}, save_final=True)
    trainer = _trainer(student, _loader(items), [kd, stats, tb, saver], epochs=1)
    logging.getLogger("kd_stats_test").addHandler(log_handler)
    seen = _record(trainer)
    try:
        trainer.run()
    finally:
        logging.getLogger("kd_stats_test").removeHandler(log_handler)

    probe_params = {id(p) for p in kd.distill_loss.trainable_parameters()}
    assert len(seen) == 2 and probe_params <= {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    for out in seen:
        tap_terms = [out[f"kd_{t}"] for t in taps]
        assert out["kd_total"] == pytest.approx(sum(tap_terms) + out["kd_final"], rel=1e-4)
        assert out[Keys.LOSS] == pytest.approx(out["task_loss"] + out["kd_total"], rel=1e-4)
        assert out["kd_total"] > 0 and out[Keys.LOSS] > out["task_loss"]
    # same initial student and first batch: the task loss is the plain CE, and KD adds to it
    assert seen[0]["task_loss"] == pytest.approx(plain_seen[0][Keys.LOSS], rel=1e-5)
    assert seen[0][Keys.LOSS] > plain_seen[0][Keys.LOSS]
    # each term logged on its own: per iteration (StatsHandler, TensorBoard) and per epoch (metrics)
    assert sum("kd_layer1:" in s and "kd_final:" in s and "task_loss:" in s for s in lines) >= 2
    assert {f"kd_{t}" for t in taps} | {"kd_final", "kd_total"} <= set(trainer.state.metrics)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"kd_layer1", "kd_layer4", "kd_final", "kd_total", "loss"} <= set(acc.Tags()["scalars"])
    # checkpoint written, with the student probes; teacher untouched; no hook left anywhere
    files = list((tmp_path / "ckpt").glob("*.pt"))
    assert files
    ckpt = torch.load(files[0], weights_only=True)
    assert any("student_probe" in k for k in ckpt["kd"])
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    assert all(p.grad is None for p in teacher.parameters())
    assert _no_hooks(student, taps) and _no_hooks(teacher, taps)


@pytest.mark.parametrize("where", ["loss", "forward"])
def test_no_hook_survives_a_failing_iteration(where):
    teacher, student = _net(), _net()
    taps = get_taps(student)
    kd = LayerwiseDistillationHandler(teacher, "all", loss="attention_transfer")

    def bad_loss(pred, label):
        raise RuntimeError("loss failed")

    def bad_forward(x):
        raise RuntimeError("forward failed")

    trainer = _trainer(student, _loader(_data(4)), [kd], loss_function=bad_loss if where == "loss" else None)
    if where == "forward":  # after set-up (its dry forward), fail inside the student's forward, taps hooked
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: setattr(student.fc, "forward", bad_forward))
    with pytest.raises(RuntimeError, match="failed"):
        trainer.run()
    assert _no_hooks(student, taps) and _no_hooks(teacher, taps)


def test_kd_run_2d_student_and_teacher_of_different_architectures():
    student, teacher = _net("resnet18", widen_factor=0.25), _net("alexnet")
    _, t_taps = pair_taps(student, teacher)
    probes = _probes(teacher, sorted(set(t_taps)))
    kd = LayerwiseDistillationHandler(teacher, "all", loss=["fitnet_mse", "probe_kl", "cosine", "fitnet_mse"],
                                      teacher_probes=probes, amp=True)
    trainer = _trainer(student, _loader(_data(8)), [kd])
    seen = _record(trainer)
    trainer.run()
    assert kd.teacher_taps == t_taps and kd.teacher_forward_count == 2
    assert all(torch.isfinite(torch.tensor(o[Keys.LOSS])) and o["kd_layer1"] > 0 for o in seen)
    # student 16/32 channels vs alexnet 8/16: adapters were created and trained with the student
    adapters = [m for m in kd.distill_loss.modules() if type(m).__name__ == "Adapter"]
    assert adapters and all(p.grad is not None for a in adapters for p in a.parameters())


def test_kd_run_3d_simba_student_resnet_teacher():
    student, teacher = _net("simba_cnn", 3), _net("resnet10", 3)
    kd = LayerwiseDistillationHandler(teacher, "all", loss="fitnet_mse", weights=1.0, input_shape=(1, 8, 8, 8))
    trainer = _trainer(student, _loader(_data(8, dims=3, size=8)), [kd])
    seen = _record(trainer)
    trainer.run()
    assert kd.student_taps == [f"block{i}" for i in range(1, 6)] and len(kd.teacher_taps) == 5
    assert len(seen) == 2 and all(o["kd_total"] > 0 for o in seen)
    assert _no_hooks(student, kd.student_taps) and _no_hooks(teacher, set(kd.teacher_taps))


def test_teacher_cache_same_loss_fewer_teacher_runs():
    teacher, student = _net(), _net()
    taps = get_taps(teacher)
    probes = _probes(teacher, taps)
    items = _data(8)
    results = {}
    for cache in (False, True):
        kd = LayerwiseDistillationHandler(teacher, "all", teacher_probes=probes, cache_teacher=cache)
        trainer = _trainer(copy.deepcopy(student), _loader(items, shuffle=True), [kd], epochs=3)
        calls = []
        handle = teacher.register_forward_hook(lambda *a: calls.append(1))
        seen = _record(trainer)
        try:
            trainer.run()
        finally:
            handle.remove()
        results[cache] = ([o[Keys.LOSS] for o in seen], len(calls) - 1)  # minus the set-up's dry forward
        assert kd.teacher_forward_count == len(calls) - 1
    (loss_plain, calls_plain), (loss_cached, calls_cached) = results[False], results[True]
    assert calls_plain == 6 and calls_cached == 2  # 3 epochs x 2 batches vs. once per sample
    assert loss_cached == pytest.approx(loss_plain, rel=1e-4, abs=1e-6)


def test_cache_needs_ids():
    teacher, student = _net(), _net()
    items = [{k: v for k, v in d.items() if k != "id"} for d in _data(4)]
    kd = LayerwiseDistillationHandler(teacher, "all", loss="attention_transfer", cache_teacher=True)
    with pytest.raises(ValueError, match="'id'"):
        _trainer(student, _loader(items), [kd]).run()


def test_rampup_scales_the_terms():
    teacher, student = _net(), _net()
    kd = LayerwiseDistillationHandler(teacher, "early", loss="attention_transfer", rampup_epochs=2)
    trainer = _trainer(student, _loader(_data(8)), [kd], epochs=1)
    scales = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scales.append(kd.current_scale))
    seen = _record(trainer)
    trainer.run()
    assert scales == [0.25, 0.5]
    assert set(seen[0]) >= {"kd_layer1", "kd_layer2", "kd_final"} and "kd_layer3" not in seen[0]


def test_a_compiled_student_is_refused_with_taps_and_trained_on_the_final_logits_alone():
    """Forward hooks do not run inside a torch.compile'd graph: intermediate taps are refused by name, before
    any step; the final-logit term needs no hook and trains (eager backend: no compiler needed)."""
    teacher = _net()
    kd = LayerwiseDistillationHandler(teacher, "all", loss="attention_transfer")
    trainer = _trainer(_net(), _loader(_data(4)), [kd], compile=True, compile_kwargs={"backend": "eager"})
    with pytest.raises(ConfigError, match="compile.*set compile: false for the kd stage"):
        trainer.run()
    final = LayerwiseDistillationHandler(teacher, "none", loss="attention_transfer")
    trainer = _trainer(_net(), _loader(_data(4)), [final], compile=True, compile_kwargs={"backend": "eager"})
    seen = _record(trainer)
    trainer.run()
    assert seen and float(seen[-1]["kd_final"]) > 0


def test_handler_configuration_errors():
    teacher = _net()
    with pytest.raises(ConfigError, match="fit_probes"):
        LayerwiseDistillationHandler(teacher, "all", loss="probe_kl")
    with pytest.raises(ConfigError, match="probe_kl"):
        LayerwiseDistillationHandler(teacher, "all", loss="kl_probe")
    with pytest.raises(ConfigError, match="layer7"):
        kd = LayerwiseDistillationHandler(teacher, "layer7", loss="attention_transfer")
        _trainer(_net(), _loader(_data(4)), [kd]).run()


def test_handler_from_a_bundle_config(tmp_path):
    from monai.bundle import ConfigParser

    net = {"_target_": "shortcut_kd.nets.build_network", "name": "resnet10", "spatial_dims": 2, **TINY}
    trained_teacher = build_network("resnet10", 2, **TINY)
    torch.save({"net": trained_teacher.state_dict()}, tmp_path / "teacher.pt")
    _probes(trained_teacher, ["layer3", "layer4"]).save(tmp_path / "probes.pt")
    config = {
        "teacher": net,
        "student": net,
        "kd": {"_target_": "shortcut_kd.distill.LayerwiseDistillationHandler", "teacher": "@teacher",
               "student_taps": "late", "loss": "probe_kl", "weights": 10.0, "rampup_epochs": 1,
               "teacher_probes": str(tmp_path / "probes.pt"), "teacher_checkpoint": str(tmp_path / "teacher.pt")},
        "trainer": {
            "_target_": "SupervisedTrainer", "device": "$torch.device('cpu')", "max_epochs": 1,
            "train_data_loader": "$monai.data.DataLoader(@data, batch_size=4)", "network": "@student",
            "optimizer": "$torch.optim.SGD(@student.parameters(), lr=0.01)",
            "loss_function": "$torch.nn.CrossEntropyLoss()",
            "train_handlers": ["@kd", {"_target_": "StatsHandler", "output_transform": {
                "_target_": "shortcut_kd.distill.kd_output_transform", "_mode_": "callable"}}],
        },
    }
    parser = ConfigParser(config)
    parser["data"] = _data(8)
    trainer = parser.get_parsed_content("trainer")
    seen = _record(trainer)
    trainer.run()
    teacher = parser.get_parsed_content("teacher")
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in trained_teacher.state_dict().items())
    assert len(seen) == 2 and {"kd_layer3", "kd_layer4", "kd_final"} <= set(seen[-1])
    # the trainable parts round-trip through state_dict, also when loaded before set-up
    kd = parser.get_parsed_content("kd")
    state = kd.state_dict()
    assert state and not any("teacher_probe" in k for k in state)
    again = LayerwiseDistillationHandler(teacher, "late", teacher_probes=str(tmp_path / "probes.pt"))
    again.load_state_dict(state)  # before set-up: kept, applied when the trainer starts
    restored = []
    trainer = _trainer(_net(), _loader(_data(4), batch=4), [again], epochs=1)
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: restored.append(all(
        torch.equal(v, again.state_dict()[k]) for k, v in state.items())))
    trainer.run()
    assert restored == [True]


def test_probe_parameters_join_the_optimizer_under_an_lr_scheduler():
    from monai.handlers import LrScheduleHandler

    teacher, student = _net(), _net()
    probes = _probes(teacher, ["layer4"])
    for lr, groups in [(None, 1), (0.5, 2)]:
        net = copy.deepcopy(student)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        kd = LayerwiseDistillationHandler(teacher, "layer4", teacher_probes=probes, lr=lr)
        trainer = SupervisedTrainer(torch.device("cpu"), 2, _loader(_data(4)), net, opt, torch.nn.CrossEntropyLoss(),
                                    train_handlers=[LrScheduleHandler(scheduler, print_lr=False), kd])
        trainer.run()
        student_probe = kd.distill_loss.tap_losses[0].student_probe.linear.weight
        # the student probe started as a copy of the teacher's and was trained
        assert len(opt.param_groups) == groups and not torch.equal(student_probe, probes["layer4"].linear.weight)
        assert opt.param_groups[-1]["lr"] == pytest.approx((lr or 0.1) * 0.25)  # followed the schedule


@pytest.mark.parametrize("mixer", ["MixUpHandler", "CutMixHandler"])
def test_distilling_on_mixed_batches_the_teacher_sees_what_the_student_sees(mixer):
    """With a mixing handler on the trainer (``distill.mix``), the teacher runs on the mixed batch the student
    is trained on, not on the raw one, and the task loss takes the mixed (soft) labels."""
    import shortcut_kd.baselines as baselines

    teacher = _net()
    seen_by_teacher: list[torch.Tensor] = []
    teacher.register_forward_hook(lambda _m, inputs, _o: seen_by_teacher.append(inputs[0].detach().clone()))
    kd = LayerwiseDistillationHandler(teacher, "all", loss="attention_transfer")
    raw = _data(8)
    trainer = _trainer(_net(), _loader(raw, batch=8), [getattr(baselines, mixer)(alpha=1.0, seed=0), kd])
    fed: list[tuple[torch.Tensor, ...]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: fed.append(  # decollated: one dict per sample
        tuple(torch.stack([torch.as_tensor(o[k]) for o in e.state.output]) for k in ("image", "label"))))
    trainer.run()
    assert len(fed) == 1  # one batch of 8
    images, labels = fed[0]
    teacher_input = seen_by_teacher[-1]  # (earlier calls: the dry forward that reads the tap shapes)
    assert not torch.allclose(teacher_input, torch.stack([d["image"] for d in raw]))  # mixed before the teacher
    assert torch.allclose(teacher_input, images)
    assert labels.is_floating_point() and labels.shape == (8, 2)  # soft labels


def test_bundle_distill_mix_adds_the_mixer_and_turns_the_teacher_cache_off():
    from monai.bundle import ConfigParser
    from test_bundles import REPO

    configs = REPO / "bundles" / "isic2017_shortcut_kd" / "configs"
    for mix, mixer in (("none", None), ("mixup", "MixUpHandler"), ("cutmix", "CutMixHandler")):
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / "distill.json")])
        parser.update({"image_size": 16, "distill#mix": mix, "distill#loss": "attention_transfer",
                       "teacher_network": "@network_def"})
        handlers = parser.get_parsed_content("train#extra_handlers")
        names = [type(h).__name__ for h in handlers]
        assert names == ["InitialWeights", *([mixer] if mixer else []), "LayerwiseDistillationHandler"]
        assert handlers[-1].cache_teacher is (mix == "none")
