"""The GPU path measured per pipeline: ERM and KD training images/s at the bundles' sizes, the KD / ERM step ratio
with and without the teacher cache, and peak GPU memory (the SimBA 3D CNN at SimBA's full 173 x 211 x 155).

For each bundle (``bundles/<name>/configs/train.json``: its architecture, channels and batch size) three stock MONAI
``SupervisedTrainer``s train the same student on the same random batches, as the bundles do: plain ERM, KD with
``LayerwiseDistillationHandler`` (probe_kl on every tap + the final logits, the same network as teacher, under
no-grad), and KD with ``cache_teacher=True`` after a warm-up epoch has filled the cache. On CUDA: AMP in bfloat16
where the device supports it (float16 otherwise), channels-last for 2D networks, non-blocking transfers and
``cudnn.benchmark``; ``--compile`` adds ``torch.compile`` of the student. A step is timed from
``ITERATION_STARTED`` to ``ITERATION_COMPLETED`` (data loading excluded), synchronised on CUDA. Peak memory is
``torch.cuda.max_memory_allocated`` over each trainer's steps, reset between trainers.

``--study CONFIG`` also times ``shortcut-kd study`` on a copy of CONFIG (e.g. ``configs/studies/isic2017_demo.yaml``)
with ``device`` set, end to end in a fresh folder, and records its wall time.

    python benchmarks/gpu.py --dry-run            # tiny sizes on the CPU: checks the script (CI runs it)
    python benchmarks/gpu.py                      # on a GPU: writes benchmarks/results/gpu.json

Writes one JSON (atomically).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kd_cost import _timer  # noqa: E402  (the step timer shared with the CPU benchmark)

from shortcut_kd.distill import LayerwiseDistillationHandler, ProbeSet, tap_shapes  # noqa: E402
from shortcut_kd.io import write_json  # noqa: E402
from shortcut_kd.nets import build_network, get_taps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Spatial size per pipeline: the bundles' training size in 2D; SimBA's own volume size in 3D.
FULL_SIZES = {"chexpert_shortcut_kd": (224, 224), "isic2017_shortcut_kd": (224, 224),
              "simba_shortcut_kd": (173, 211, 155)}
FULL_BATCH = {"simba_shortcut_kd": 2}
MODES = ("erm", "kd", "kd_cached")
DRY_SIZES = {"chexpert_shortcut_kd": (32, 32), "isic2017_shortcut_kd": (32, 32), "simba_shortcut_kd": (32, 32, 32)}


def bundle_network(bundle: str) -> tuple[str, int, int]:
    """The architecture, input channels and batch size that ``bundles/<bundle>/configs/train.json`` trains."""
    config = json.loads((ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
    return config["network_def"]["name"], int(config["in_channels"]), int(config["batch_size"])


def measure_pipeline(bundle: str, size: tuple[int, ...], batch: int, steps: int, device: torch.device,
                     amp: bool, compile_student: bool, modes: tuple[str, ...] = MODES,
                     network_kwargs: dict | None = None) -> dict:
    """ERM, KD and cached-KD steps of one pipeline's network; images/s, ratios and peak memory."""
    arch, in_channels, _ = bundle_network(bundle)
    dims = len(size)
    shape = (in_channels, *size)
    torch.manual_seed(0)
    data = [{"image": torch.randn(*shape), "label": i % 2, "id": f"s{i:05d}"} for i in range(steps * batch)]
    student = build_network(arch, dims, in_channels, 2, **(network_kwargs or {}))
    teacher = build_network(arch, dims, in_channels, 2, **(network_kwargs or {})).to(device)
    channels_last = device.type == "cuda" and dims == 2
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last)
    taps = get_taps(teacher)
    probes = ProbeSet({t: s[0] for t, s in tap_shapes(teacher, taps, shape).items()}, 2, dims)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    amp_kwargs = {"dtype": torch.bfloat16 if bf16 else torch.float16} if amp else None

    def trainer(handler: LayerwiseDistillationHandler | None) -> SupervisedTrainer:
        net = copy.deepcopy(student).to(device)
        if compile_student:
            net = torch.compile(net)
        loader = DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                            pin_memory=device.type == "cuda")
        return SupervisedTrainer(
            device=device, max_epochs=1, train_data_loader=loader, network=net, non_blocking=True,
            optimizer=torch.optim.Adam(net.parameters(), lr=1e-4), loss_function=torch.nn.CrossEntropyLoss(),
            amp=amp, amp_kwargs=amp_kwargs, train_handlers=[handler] if handler else None)

    def kd(cache: bool) -> LayerwiseDistillationHandler:
        return LayerwiseDistillationHandler(teacher, "all", loss="probe_kl", weights=10.0, teacher_probes=probes,
                                            cache_teacher=cache, input_shape=shape, amp=amp)

    out: dict = {"architecture": arch, "input": list(shape), "batch": batch, "taps": taps}
    for name in modes:
        tr = trainer({"erm": None, "kd": kd(False), "kd_cached": kd(True)}[name])
        if name == "kd_cached":  # fill the cache with one unmeasured epoch
            tr.run()
            tr.state.max_epochs += 1
        times: list[float] = []
        _timer(tr, device, time.perf_counter, times, [True])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        tr.run()
        measured = times[1:] if len(times) > 2 else times  # the first step compiles / picks kernels
        mean = statistics.fmean(measured)
        out[name] = {"mean_step_s": mean, "median_step_s": statistics.median(measured),
                     "images_per_s": batch / mean, "measured_steps": len(measured),
                     "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                                         if device.type == "cuda" else None)}
        del tr
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if set(modes) != set(MODES):
        return out
    out["kd_over_erm"] = out["kd"]["mean_step_s"] / out["erm"]["mean_step_s"]
    out["kd_cached_over_erm"] = out["kd_cached"]["mean_step_s"] / out["erm"]["mean_step_s"]
    if device.type == "cuda":
        out["kd_over_erm_peak_memory"] = out["kd"]["peak_memory_gib"] / out["erm"]["peak_memory_gib"]
    return out


def time_study(config: str, device: str, workers: int) -> dict:
    """Wall time of ``shortcut-kd study`` on a copy of ``config`` with ``device:`` set, into a fresh folder."""
    import tempfile

    import yaml

    data = yaml.safe_load(Path(config).read_text())
    data["device"] = device
    with tempfile.TemporaryDirectory() as tmp:
        copy_path = Path(tmp) / Path(config).name
        copy_path.write_text(yaml.safe_dump(data))
        cmd = [sys.executable, "-m", "shortcut_kd.cli", "study", str(copy_path), "--out", str(Path(tmp) / "out"),
               "--workers", str(workers)]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
    return {"config": config, "device": device, "workers": workers, "returncode": done.returncode,
            "wall_seconds": wall, "stderr_tail": done.stderr[-2000:] if done.returncode else ""}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, two steps, on the CPU: checks the script")
    p.add_argument("--device", default=None, help="default: cuda when available (cpu with --dry-run)")
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the student")
    p.add_argument("--steps", type=int, default=None, help="steps per trainer (default 20; 3 with --dry-run)")
    p.add_argument("--pipelines", default=",".join(FULL_SIZES), help="comma-separated bundle names")
    p.add_argument("--study", default=None, help="also time `shortcut-kd study STUDY` on the device")
    p.add_argument("--study-workers", type=int, default=4, help="worker processes of the timed study")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"))
    amp = device.type == "cuda" and not args.no_amp
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # speed, not bitwise reproducibility: this is a timing run
    steps = args.steps or (3 if args.dry_run else 20)
    result: dict = {
        "benchmark": "gpu_path", "dry_run": args.dry_run,
        "command": " ".join(["python benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "amp": (("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if amp else None),
        "channels_last_2d": device.type == "cuda", "compile": args.compile, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "pipelines": {},
    }
    for bundle in args.pipelines.split(","):
        size = DRY_SIZES[bundle] if args.dry_run else FULL_SIZES[bundle]
        batch = 2 if args.dry_run else FULL_BATCH.get(bundle, bundle_network(bundle)[2])
        print(f"{bundle}: {bundle_network(bundle)[0]} {size} batch {batch} on {device}", flush=True)
        # the KD handler refuses a compiled student with taps (its hooks do not run in a compiled graph)
        modes = ("erm",) if args.compile else MODES
        r = measure_pipeline(bundle, size, batch, steps, device, amp, args.compile, modes=modes)
        result["pipelines"][bundle] = r
        if args.compile:
            r["kd"] = "not measured: layer-wise KD needs an eager student (compile: false for the kd stage)"
            print(f"  compiled ERM {r['erm']['images_per_s']:.1f} img/s", flush=True)
            continue
        print(f"  ERM {r['erm']['images_per_s']:.1f} img/s, KD {r['kd']['images_per_s']:.1f} img/s "
              f"({r['kd_over_erm']:.2f}x step), cached KD {r['kd_cached_over_erm']:.2f}x", flush=True)
    if args.study:
        result["study"] = time_study(args.study, str(device), args.study_workers)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
