"""The SimBA 3D CNN and its KD stage at SimBA's full volume size (173 x 211 x 155) on the CPU: step time and peak
memory of ERM and of KD (the teacher under no-grad), batch 1 and 2.

Each (mode, batch) runs in its own process, so its peak resident memory (``ru_maxrss``) is its own; the memory
of the process before training (interpreter, torch, the networks) is reported beside it. KD is probe_kl on every
tap + the final logits with the same network as teacher (``benchmarks/gpu.py``'s measurement). Target: KD peak
<= 1.3 x ERM peak.

    python benchmarks/full3d.py                       # writes benchmarks/results/full3d.json
    python benchmarks/full3d.py --channels 8,16,32,64,64 --steps 2   # the demo's width
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import measure_pipeline  # noqa: E402

from shortcut_kd.io import write_json  # noqa: E402

SIZE = (173, 211, 155)
TARGET = 1.3


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kiB on Linux


def child(mode: str, batch: int, steps: int, channels: list[int] | None) -> dict:
    torch.set_num_threads(1)
    before = _peak_mib()
    kwargs = {"channels": channels} if channels else None
    r = measure_pipeline("simba_shortcut_kd", SIZE, batch, steps, torch.device("cpu"), amp=False,
                         compile_student=False, modes=(mode,), network_kwargs=kwargs)
    return {"mode": mode, "batch": batch, "mean_step_s": r[mode]["mean_step_s"],
            "images_per_s": r[mode]["images_per_s"], "peak_rss_mib": _peak_mib(), "rss_before_mib": before}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,2")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--channels", default=None, help="block widths (default: the SimBA CNN's 32,64,128,256,512)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "full3d.json"))
    args = p.parse_args(argv)
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    if args.child:
        print(json.dumps(child(args.child, int(args.batches), args.steps, channels)))
        return {}
    runs = []
    for batch in (int(b) for b in args.batches.split(",")):
        for mode in ("erm", "kd"):
            cmd = [sys.executable, __file__, "--child", mode, "--batches", str(batch), "--steps", str(args.steps)]
            cmd += ["--channels", args.channels] if args.channels else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    by = {(r["mode"], r["batch"]): r for r in runs}
    ratios = {str(b): {"peak_memory_kd_over_erm": by["kd", b]["peak_rss_mib"] / by["erm", b]["peak_rss_mib"],
                       "step_kd_over_erm": by["kd", b]["mean_step_s"] / by["erm", b]["mean_step_s"]}
              for b in sorted({r["batch"] for r in runs})}
    result = {"benchmark": "simba_full_size_cpu", "volume": list(SIZE), "channels": channels or "default",
              "command": " ".join(["python benchmarks/full3d.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": f"{platform.machine()} CPU, 1 torch thread", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "runs": runs, "ratios": ratios, "target_memory_ratio": TARGET,
              "teacher_cache_bytes_per_volume": "probe_kl caches 2 logits per tap: 4 bytes x 2 x (taps + 1)"}
    write_json(args.out, result)
    print(json.dumps(ratios, indent=1))
    return result


if __name__ == "__main__":
    main()
