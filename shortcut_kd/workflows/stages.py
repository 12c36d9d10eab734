"""The protocol stages: ERM, the specialist teacher, the distilled student, the oracle and the
baselines, each trained with a stock MONAI SupervisedTrainer plus the method's own handler."""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from monai.utils import set_determinism

from shortcut_kd.errors import ConfigError
from shortcut_kd.io import read_json, save_torch, write_json
from shortcut_kd.workflows.experiment import Experiment
from shortcut_kd.workflows.settings import METHODS
from shortcut_kd.workflows.training import train_network

logger = logging.getLogger(__name__)

STAGE_REQUIRES = {"teacher": ("erm",), "kd": ("teacher",), "dfr": ("erm",)}
"""Stages that build on another stage's checkpoint (``teacher`` needs ``erm`` only with teacher_init=erm)."""


def run_stage(exp: Experiment, stage: str, fresh: bool = False, progress: bool = True) -> dict:
    """Run ``stage`` (a results.json method key) unless it is already done; return its test metrics.

    A finished stage (``model.pt`` and ``metrics.json`` present) is reused; an interrupted one
    resumes from its last checkpoint; ``fresh=True`` starts it over.
    """
    if stage not in STAGES:
        raise ConfigError("stage", stage, f"use one of {list(METHODS)}.")
    stage_dir = exp.stage_dir(stage)
    if fresh and stage_dir.exists():
        for path in stage_dir.rglob("*"):
            if path.is_file():
                path.unlink()
    if exp.is_done(stage):
        logger.info("%s: done already, reusing %s", stage, stage_dir)
        return read_json(stage_dir / "metrics.json")["test"]
    for needed in _requirements(exp, stage):
        if not exp.is_done(needed):
            run_stage(exp, needed, progress=progress)
    exp.prepare_splits()
    set_determinism(seed=exp.settings.seed)
    start = time.time()
    model = STAGES[stage](exp, progress)
    save_torch(exp.model_path(stage), model.state_dict())
    test = evaluate_stage(exp, model)
    write_json(stage_dir / "metrics.json", {"stage": stage, "architecture": _architecture(exp, stage),
                                            "seconds": round(time.time() - start, 1), "test": test})
    return test


def evaluate_stage(exp: Experiment, model: torch.nn.Module) -> dict:
    """Metrics of ``model`` on every test set of the experiment (results.json test entries)."""
    from shortcut_kd.evaluation import evaluate

    return evaluate(model.eval(), exp.test_loaders(), device=exp.device, n_bootstrap=exp.settings.n_bootstrap,
                    seed=exp.settings.seed)


def _requirements(exp: Experiment, stage: str) -> tuple[str, ...]:
    if stage == "teacher" and exp.settings.teacher_init != "erm":
        return ()
    if stage == "kd" and exp.settings.distill.student_init == "erm":
        return ("teacher", "erm")
    return STAGE_REQUIRES.get(stage, ())


def _architecture(exp: Experiment, stage: str) -> str:
    return exp.teacher_architecture if stage == "teacher" else exp.architecture


def _train(exp: Experiment, stage: str, network: torch.nn.Module, loader, progress: bool, handlers=(),
           epochs: int | None = None, lr: float | None = None, extra_state: dict | None = None) -> torch.nn.Module:
    s = exp.settings
    train_network(network, loader, stage_dir=exp.stage_dir(stage), epochs=epochs or s.epochs, lr=lr or s.lr,
                  weight_decay=s.weight_decay, device=exp.device, val_loader=exp.loader("val"),
                  val_interval=s.val_interval, handlers=handlers, amp=s.amp, progress=progress,
                  description=stage, extra_state=extra_state)
    return network


# ---- stages --------------------------------------------------------------------------------
def stage_erm(exp: Experiment, progress: bool) -> torch.nn.Module:
    """Empirical risk minimisation on the biased training set."""
    return _train(exp, "erm", exp.network(), exp.loader("train_biased", shuffle=True), progress)


def stage_oracle(exp: Experiment, progress: bool) -> torch.nn.Module:
    """The same images as ERM with bias-free shortcut flags: the upper reference."""
    return _train(exp, "oracle", exp.network(), exp.loader("oracle", shuffle=True), progress)


def stage_teacher(exp: Experiment, progress: bool) -> torch.nn.Module:
    """Fine-tune the specialist teacher on the small bias-free subset, then fit its tap probes.

    Starts from the ERM checkpoint (``teacher_init: erm``, same architecture; its classifier is
    re-initialised, the backbone kept), a user checkpoint (a path) or from scratch.
    """
    s = exp.settings
    teacher = exp.network(exp.teacher_architecture)
    init, fresh_head = s.teacher_init, False
    if init == "erm":
        if exp.teacher_architecture != exp.architecture:
            logger.warning("teacher architecture %s differs from ERM's %s: teacher starts from scratch",
                           exp.teacher_architecture, exp.architecture)
        else:
            teacher.load_state_dict(torch.load(exp.model_path("erm"), map_location="cpu", weights_only=True))
            fresh_head = True
    elif init != "scratch":
        state = torch.load(init, map_location="cpu", weights_only=True)
        teacher.load_state_dict(state.get("network", state) if isinstance(state, dict) else state)
    loader = exp.loader("specialist", shuffle=True)
    if fresh_head:
        # a fresh classifier on the ERM backbone: the ERM head maps the shortcut's features to the label,
        # and the few bias-free images train a new head that ignores them far better than they undo the
        # old one (benchmarks/method_study.md: with 30 epochs, conflicting AUC 0.84 -> 0.91 on the diffuse shortcut)
        from shortcut_kd.nets import get_head_name

        teacher.get_submodule(get_head_name(teacher)).reset_parameters()
    _train(exp, "teacher", teacher, loader, progress, epochs=s.teacher_epochs, lr=s.teacher_lr)
    if s.distill.loss == "probe_kl":
        # probes on every tap, so the kd stage can distil any subset of layers
        from shortcut_kd.distill import fit_probes
        from shortcut_kd.nets import get_taps

        probes = fit_probes(teacher, get_taps(teacher), exp.loader("specialist", shuffle=True),
                            epochs=s.distill.probe_epochs, lr=1e-2, device=exp.device)
        probes.save(exp.stage_dir("teacher") / "probes.pt")
    return teacher


def _layer_spec(exp: Experiment):
    layers = exp.settings.distill.layers
    if layers == "auto":
        from shortcut_kd.workflows.auto_layers import auto_layers

        return auto_layers(exp)
    return layers


def stage_kd(exp: Experiment, progress: bool) -> torch.nn.Module:
    """The student on the biased set, distilled layer-wise from the frozen specialist teacher."""
    from shortcut_kd.distill import LayerwiseDistillationHandler
    from shortcut_kd.nets import pair_taps

    d = exp.settings.distill
    teacher = exp.load_model("teacher", exp.teacher_architecture)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = exp.network()
    if d.student_init in ("erm", "teacher"):
        if d.student_init == "teacher" and exp.teacher_architecture != exp.architecture:
            logger.warning("teacher architecture %s differs from the student's %s: student starts from scratch",
                           exp.teacher_architecture, exp.architecture)
        else:
            student.load_state_dict(torch.load(exp.model_path(d.student_init), map_location="cpu", weights_only=True))
    student_taps, teacher_taps = pair_taps(student, teacher, _layer_spec(exp))
    probes = exp.stage_dir("teacher") / "probes.pt" if d.loss == "probe_kl" else None
    handler = LayerwiseDistillationHandler(
        teacher=teacher, student_taps=student_taps, teacher_taps=teacher_taps, loss=d.loss, weights=d.weight,
        temperature=d.temperature, final_weight=d.final_weight, teacher_probes=probes,
        rampup_epochs=d.rampup_epochs, cache_teacher=d.cache_teacher)
    return _train(exp, "kd", student, exp.loader("train_biased", shuffle=True), progress, handlers=[handler],
                  lr=d.lr, extra_state={"distillation": handler})


def stage_randconv(exp: Experiment, progress: bool) -> torch.nn.Module:
    from shortcut_kd.baselines import RandConvHandler

    handler = RandConvHandler(kernel_sizes=exp.settings.baselines.randconv_kernel_sizes, seed=exp.settings.seed)
    return _train(exp, "randconv", exp.network(), exp.loader("train_biased", shuffle=True), progress,
                  handlers=[handler])


def _stage_mix(name: str) -> Callable:
    def stage(exp: Experiment, progress: bool) -> torch.nn.Module:
        from shortcut_kd import baselines

        cls = baselines.MixUpHandler if name == "mixup" else baselines.CutMixHandler
        handler = cls(alpha=exp.settings.baselines.mix_alpha, seed=exp.settings.seed)
        return _train(exp, name, exp.network(), exp.loader("train_biased", shuffle=True), progress,
                      handlers=[handler])

    stage.__doc__ = f"ERM with {name} batches."
    return stage


def stage_groupdro(exp: Experiment, progress: bool) -> torch.nn.Module:
    from shortcut_kd.baselines import GroupDROHandler

    handler = GroupDROHandler(num_groups=4, eta=exp.settings.baselines.groupdro_eta)
    return _train(exp, "groupdro", exp.network(), exp.loader("train_biased", shuffle=True), progress,
                  handlers=[handler], extra_state={"groupdro": handler})


def stage_reweight(exp: Experiment, progress: bool) -> torch.nn.Module:
    from shortcut_kd.baselines import group_balanced_sampler

    items = exp.datalist("train_biased")
    sampler = group_balanced_sampler(items, seed=exp.settings.seed)
    return _train(exp, "reweight", exp.network(), exp.loader(items, sampler=sampler), progress)


def stage_jtt(exp: Experiment, progress: bool) -> torch.nn.Module:
    """Just Train Twice: a short ERM run finds the errors, a fresh model trains on the
    training set with the errors repeated λ times. Uses no bias labels."""
    from shortcut_kd.baselines import find_errors, jtt_upsample

    s = exp.settings
    items = exp.datalist("train_biased")
    errors_file = exp.stage_dir("jtt") / "errors.json"
    if errors_file.is_file():
        errors = read_json(errors_file)
    else:
        identifier = _train(exp, "jtt_identify", exp.network(), exp.loader(items, shuffle=True), progress,
                            epochs=s.baselines.jtt_epochs)
        errors = find_errors(identifier.eval(), exp.loader(items), device=exp.device)
        write_json(errors_file, errors)
    upsampled = jtt_upsample(items, errors, s.baselines.jtt_lambda)
    sampler = None  # "upsampled": full shuffled passes over the upsampled list
    if s.baselines.jtt_budget == "erm":  # ERM's number of steps per epoch (see BaselineSettings); seeded
        sampler = torch.utils.data.RandomSampler(upsampled, num_samples=len(items),
                                                 generator=torch.Generator().manual_seed(s.seed))
    return _train(exp, "jtt", exp.network(), exp.loader(upsampled, shuffle=True, sampler=sampler), progress)


def stage_dfr(exp: Experiment, progress: bool) -> torch.nn.Module:
    """Deep Feature Reweighting: the ERM backbone, its last layer refit on the bias-free
    specialist subset (the same data the teacher gets)."""
    from shortcut_kd.baselines import dfr_retrain
    from shortcut_kd.nets import get_head_name

    model = exp.load_model("erm")
    return dfr_retrain(model, get_head_name(model), exp.loader("specialist"), device=exp.device,
                       seed=exp.settings.seed)


STAGES: dict[str, Callable[[Experiment, bool], torch.nn.Module]] = {
    "erm": stage_erm, "teacher": stage_teacher, "kd": stage_kd, "oracle": stage_oracle,
    "randconv": stage_randconv, "mixup": _stage_mix("mixup"), "cutmix": _stage_mix("cutmix"),
    "groupdro": stage_groupdro, "jtt": stage_jtt, "reweight": stage_reweight, "dfr": stage_dfr,
}
