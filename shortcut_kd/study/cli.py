"""``shortcut-kd study CONFIG``: run a study (tuning on the validation split, then the reported seeds) with
one or more workers, and write ``study.json`` / ``study.md``.

``--workers N`` starts N worker processes here; ``--join`` adds this process as a worker to a study that
another command queued (another terminal, GPU or machine sharing the output folder and ``--storage``).
A rerun resumes: finished stages are reused by content, interrupted ones resume from their last state.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

from shortcut_kd.study.config import StudyConfig, read_study

__all__ = ["add_arguments", "run", "study_output"]

logger = logging.getLogger(__name__)


def study_output(cfg: StudyConfig, out: str | None) -> Path:
    return Path(out or cfg.output_dir or f"runs/studies/{cfg.name}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the study file (configs/studies/*.yaml)")
    parser.add_argument("--out", help="output folder (default: the file's output_dir, or runs/studies/NAME)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes to start here (default 1)")
    parser.add_argument("--join", action="store_true", help="only work on an already queued study")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/queue.db)")
    parser.add_argument("--aggregate-only", action="store_true", help="rebuild study.json / study.md and stop")
    parser.add_argument("--layer-use", action="store_true",
                        help="measure per-layer shortcut use of every finished cell (once) before aggregating")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    parser.add_argument("--readme", help="also write the study's headline tables into this Markdown file, "
                                         "between its '<!-- study headline -->' markers")


def _progress(total: int, start: float, workers: int):
    def show(states: dict[str, list[str]]) -> None:
        done = sum("COMPLETE" in s for s in states.values())
        elapsed = time.time() - start
        left = (elapsed / done) * (total - done) / max(workers, 1) if done else None
        eta = f", about {left / 60:.0f} min left" if left is not None else ""
        print(f"[study] {done}/{total} jobs done{eta}", file=sys.stderr, flush=True)

    return show


def _worker(config: str, out: str, storage: str | None, workers: int) -> list[str]:
    from shortcut_kd.study.jobs import job_keys, job_plans, run_job
    from shortcut_kd.study.schedule import job_states, open_queue, work

    cfg = read_study(config)
    queue = open_queue(cfg.name, Path(out), storage)
    keys, plans = job_keys(cfg), job_plans(cfg)

    def tune_failed(key: str) -> bool:  # it failed and is neither queued again, running nor done
        states = set(job_states(queue, plans).get(key, []))
        return "FAIL" in states and not {"COMPLETE", "WAITING", "RUNNING"} & states

    return work(queue, keys, plans, lambda key: run_job(cfg, Path(out), key, tune_failed=tune_failed),
                progress=_progress(len(keys), time.time(), workers))


def _worker_process(config: str, out: str, storage: str | None, workers: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
    failed = _worker(config, out, storage, workers)
    sys.exit(1 if failed else 0)


def run(args: argparse.Namespace) -> int:
    from shortcut_kd.study.aggregate import aggregate
    from shortcut_kd.study.jobs import job_keys, job_plans
    from shortcut_kd.study.schedule import enqueue, job_states, open_queue

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = read_study(args.config)
    out = study_output(cfg, args.out)
    keys, plans = job_keys(cfg), job_plans(cfg)
    if not args.aggregate_only:
        queue = open_queue(cfg.name, out, args.storage)
        if not args.join:
            from shortcut_kd.study.jobs import data_dirs

            for pipe in cfg.pipelines:  # generated data is written here once, before any worker reads it
                data_dirs(cfg, pipe.dataset, out)
            queued = enqueue(queue, keys, plans)
            print(f"[study] {cfg.name}: {len(keys)} jobs, {len(queued)} queued, output {out}",
                  file=sys.stderr)
        if args.workers <= 1:
            _worker(args.config, str(out), args.storage, 1)
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=_worker_process, args=(args.config, str(out), args.storage, args.workers))
                     for _ in range(args.workers)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        states = job_states(queue, plans)
        unfinished = [k for k in keys if "COMPLETE" not in states.get(k, [])]
        if unfinished:
            print(f"[study] not finished: {unfinished} (run the same command again to retry)", file=sys.stderr)
    if args.layer_use:
        from shortcut_kd.study.layer_use import measure_layer_use

        written = measure_layer_use(cfg, out)
        print(f"[study] measured shortcut use per layer in {len(written)} cell(s)", file=sys.stderr)
    study = aggregate(cfg, out, n_bootstrap=args.n_bootstrap)
    print(f"[study] wrote {out / 'study.json'} and {out / 'study.md'}", file=sys.stderr)
    if args.readme:
        from shortcut_kd.study.aggregate import update_readme

        if update_readme(Path(args.readme), out / "study.json", source=str(out / "study.json")):
            print(f"[study] wrote the headline into {args.readme}", file=sys.stderr)
    complete = all(c["rows"] for c in study["cells"].values())
    return 0 if args.aggregate_only or complete else 1
