"""Cost of a distillation training step relative to an ERM step, with and without the teacher cache.

Three stock MONAI ``SupervisedTrainer``s train the same ResNet-18 student (stride-2 stem) on the same
random 64² batches: plain ERM, KD with ``LayerwiseDistillationHandler`` (probe_kl on all four taps + the
final logits, ResNet-18 teacher), and KD with ``cache_teacher=True`` measured after one epoch has filled
the cache. The trainers take turns, a few steps each per round, so that a load change on a shared
machine affects all three alike. A step is timed from ``ITERATION_STARTED`` to ``ITERATION_COMPLETED``
(forward, loss, distillation terms, backward, optimizer step; data loading excluded). On a CPU the
clock is the process's CPU time with one thread by default, so other jobs on a shared machine do not
distort the ratios; ``--clock wall`` measures elapsed time instead.

    python benchmarks/bench_kd_cost.py                      # CPU
    python benchmarks/bench_kd_cost.py --device cuda --amp  # GPU with mixed precision

Writes ``benchmarks/results/kd_cost.json`` (atomically). Targets: KD/ERM <= 1.4, cached KD/ERM <= 1.15.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

from shortcut_kd.distill import LayerwiseDistillationHandler, ProbeSet, tap_shapes
from shortcut_kd.io import write_json
from shortcut_kd.nets import build_network, get_taps

TARGETS = {"kd_over_erm": 1.4, "kd_cached_over_erm": 1.15}


def _timer(trainer: SupervisedTrainer, device: torch.device, clock, times: list[float], active: list[bool]) -> None:
    start = [0.0]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @trainer.on(Events.ITERATION_STARTED)
    def _start(_):
        sync()
        start[0] = clock()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(_):
        sync()
        if active[0]:
            times.append(clock() - start[0])


def _run_epoch(trainer: SupervisedTrainer) -> None:
    trainer.state.max_epochs = (trainer.state.max_epochs or 0) + 1 if trainer.state.epoch else 1
    trainer.run()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="measured steps per configuration")
    p.add_argument("--rounds", type=int, default=0,
                   help="turns the measured steps are split into (default: one step per turn)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                   help="wall: elapsed time; cpu: this process's CPU time, which other load on a shared machine "
                        "does not inflate (exact with --threads 1); auto: cpu on CPU, wall on GPU")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "kd_cost.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu" else "wall")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch.manual_seed(0)

    rounds = args.rounds or args.steps
    per_round = max(1, args.steps // rounds)
    n = per_round * args.batch  # one epoch == one round: the cached trainer sees every sample in its warm-up epoch
    data = [{"image": torch.randn(1, args.size, args.size), "label": i % 2, "id": f"s{i:05d}"} for i in range(n)]
    net_kw = {"conv1_t_stride": 2}
    student = build_network("resnet18", 2, 1, 2, **net_kw)
    teacher = build_network("resnet18", 2, 1, 2, **net_kw).to(device)
    taps = get_taps(teacher)
    channels = {t: s[0] for t, s in tap_shapes(teacher, taps, (1, args.size, args.size)).items()}
    probes = ProbeSet(channels, 2, 2)  # the probes' values do not change the cost

    def trainer(handler: LayerwiseDistillationHandler | None) -> SupervisedTrainer:
        net = copy.deepcopy(student).to(device)
        loader = DataLoader(data, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        return SupervisedTrainer(
            device=device, max_epochs=1, train_data_loader=loader, network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9),
            loss_function=torch.nn.CrossEntropyLoss(), amp=args.amp,
            train_handlers=[handler] if handler else None,
        )

    def kd(cache: bool) -> LayerwiseDistillationHandler:
        return LayerwiseDistillationHandler(teacher, "all", loss="probe_kl", weights=10.0, teacher_probes=probes,
                                            cache_teacher=cache, input_shape=(1, args.size, args.size))

    kd_cached_handler = kd(True)
    runs = {"erm": trainer(None), "kd": trainer(kd(False)), "kd_cached": trainer(kd_cached_handler)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    active = {k: [False] for k in runs}
    for k, tr in runs.items():
        _timer(tr, device, clock, times[k], active[k])
    for tr in runs.values():  # warm-up round, unmeasured; fills the teacher cache
        _run_epoch(tr)
    forwards_after_warmup = kd_cached_handler.teacher_forward_count
    for _ in range(rounds):
        for k, tr in runs.items():
            active[k][0] = True
            _run_epoch(tr)
            active[k][0] = False

    mean = {k: statistics.fmean(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "kd_step_cost",
        "command": " ".join(["python benchmarks/bench_kd_cost.py", *(sys.argv[1:] if argv is None else argv)]),
        "setup": {"network": "resnet18", "teacher": "resnet18", "network_kwargs": net_kw, "image_size": args.size,
                  "batch": args.batch, "loss": "probe_kl", "taps": taps, "final_term": True,
                  "device": str(device), "amp": args.amp, "clock": clock_name, "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                  "measured_steps": {k: len(v) for k, v in times.items()}},
        "mean_step_s": mean,
        "median_step_s": median,
        "images_per_s": {k: args.batch / v for k, v in mean.items()},
        "ratios": {"kd_over_erm": mean["kd"] / mean["erm"], "kd_cached_over_erm": mean["kd_cached"] / mean["erm"]},
        "ratios_median": {"kd_over_erm": median["kd"] / median["erm"],
                          "kd_cached_over_erm": median["kd_cached"] / median["erm"]},
        "targets": TARGETS,
        "teacher_forwards_while_measuring_cached": kd_cached_handler.teacher_forward_count - forwards_after_warmup,
    }
    result["meets_targets"] = {k: result["ratios"][k] <= v for k, v in TARGETS.items()}
    write_json(args.out, result)
    for k in runs:
        print(f"{k:10s} mean {mean[k]:.3f} s/step  median {median[k]:.3f} s/step  {args.batch / mean[k]:.1f} img/s")
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.3f} (median {result['ratios_median'][k]:.3f}; target <= {TARGETS[k]})")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
