"""The study's jobs, each independent of the others but for one order (a seed's runs need its pipeline's
tuned settings):

- ``tune/<dataset>/<shortcut>``: every method in dependency order (ERM before the stages that read its
  checkpoint, the teacher before KD), ``trials`` parameter sets each, on the tuning seeds, scored on the
  bias-annotated validation split; writes ``tune/<dataset>/<shortcut>/chosen.json``. No test set is read.
- ``run/<dataset>/<shortcut>/seed<k>``: the methods with their chosen settings (and each variant) on a
  reported seed, scored on the test sets; writes the cell's ``results.json``.

Every stage runs through :func:`shortcut_kd.workflows.runner.run_stage` (the bundle configs, reused only by
content hash), so a study cell is what ``python -m monai.bundle run`` runs.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable

from shortcut_kd.errors import ConfigError
from shortcut_kd.io import read_json, write_json
from shortcut_kd.study.config import StudyConfig, nested
from shortcut_kd.study.tuning import SELECTION_RULE, draw_trials, selection_score

logger = logging.getLogger(__name__)

__all__ = ["job_keys", "job_plans", "run_job", "tune_dir", "cell_dir", "chosen_path", "experiment_settings",
           "tuning_order"]


def tune_dir(out: Path, dataset: str, shortcut: str) -> Path:
    return out / "tune" / dataset / shortcut


def chosen_path(out: Path, dataset: str, shortcut: str) -> Path:
    return tune_dir(out, dataset, shortcut) / "chosen.json"


def cell_dir(out: Path, dataset: str, shortcut: str, seed: int, variant: str | None = None) -> Path:
    base = out / "cells" / dataset / shortcut / f"seed{seed}"
    return base / "variants" / variant if variant else base


def job_keys(cfg: StudyConfig) -> list[str]:
    """Every job of the study: the tuning jobs first (the queue hands them out first), then the runs."""
    tune = [f"tune/{d}/{s}" for d, s in cfg.cells()]
    runs = [f"run/{d}/{s}/seed{k}" for d, s in cfg.cells() for k in cfg.seeds]
    return tune + runs


def job_plans(cfg: StudyConfig) -> dict[str, str]:
    """job key -> a digest of what the job runs, so that a study file that gains a method or a variant
    re-queues the jobs it changes (their finished stages are reused by fingerprint, not rerun); the reported
    seeds, the ablations' titles and the output folder do not enter a job's plan."""
    import dataclasses
    import hashlib
    import json

    def digest(data: dict) -> str:
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    tuning = {"seeds": cfg.tuning_seeds, "trials": cfg.trials, "sampler_seed": cfg.sampler_seed,
              "search_space": cfg.search_space, "reuse": cfg.reuse_tuning}
    plans = {}
    for dataset, shortcut in cfg.cells():
        pipe = dataclasses.asdict(cfg.pipeline(dataset))
        tune_plan = digest({"pipeline": pipe, "methods": cfg.methods, "tuning": tuning})
        plans[f"tune/{dataset}/{shortcut}"] = tune_plan
        run_plan = digest({"tune": tune_plan, "variants": cfg.variants, "device": cfg.device})
        for seed in cfg.seeds:
            plans[f"run/{dataset}/{shortcut}/seed{seed}"] = run_plan
    return plans


def tuning_order(methods: list[str]) -> list[str]:
    """``methods`` in the order their upstream checkpoints need (ERM first, the teacher before KD)."""
    from shortcut_kd.evaluation.schema import METHOD_ORDER

    return sorted(methods, key=METHOD_ORDER.index)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _per_method(chosen: dict[str, dict]) -> dict[str, dict]:
    """The settings' ``per_method`` from chosen parameter sets (JTT's also drive its identification stage)."""
    out = {m: nested(params) for m, params in chosen.items() if params}
    if "jtt" in out:
        out["jtt_identify"] = out["jtt"]
    return out


def data_dirs(cfg: StudyConfig, dataset: str, out: Path) -> tuple[str, str | None]:
    """The pipeline's dataset and OOD folders; synthetic data is generated once per study (fixed seed 0)."""
    pipe = cfg.pipeline(dataset)
    if pipe.dataset_dir:
        return pipe.dataset_dir, pipe.ood_dir
    from shortcut_kd.workflows.demo import ensure_synthetic, ood_size

    n = int(pipe.synthetic_n or 0)
    data = ensure_synthetic(dataset, out, n, 0, "iid")
    ood = ensure_synthetic(dataset, out, ood_size(n), 0, "ood")
    return str(data), str(ood)


def experiment_settings(cfg: StudyConfig, dataset: str, shortcut: str, seed: int, folder: Path, out: Path,
                        per_method: dict[str, dict] | None = None):
    """The settings of one experiment of the study: the pipeline's preset and settings, the shortcut, the
    seed (it varies the split, the shortcut assignment and the initialisation) and the per-method choices."""
    from shortcut_kd.workflows.presets import load_protocol_preset
    from shortcut_kd.workflows.settings import DATA_KEYS, from_dict, without_replaced_network_kwargs

    pipe = cfg.pipeline(dataset)
    preset = {k: v for k, v in (load_protocol_preset(pipe.preset) if pipe.preset else {}).items()
              if k not in DATA_KEYS}
    data_dir, ood_dir = data_dirs(cfg, dataset, out)
    base = _deep_merge(without_replaced_network_kwargs(preset, pipe.settings), pipe.settings)
    base.update({"dataset": dataset, "shortcut": shortcut, "dataset_dir": data_dir, "ood_dir": ood_dir,
                 "output_dir": str(folder), "seed": int(seed), "per_method": per_method or {}})
    if cfg.device:
        base["device"] = cfg.device
    return from_dict(base)


def _log_job(out: Path, key: str, what: str) -> None:
    """One line per job start and end in ``jobs.log`` (which worker ran what, and when)."""
    import os

    with (out / "jobs.log").open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} {what} {key}\n")


def run_job(cfg: StudyConfig, out: Path, key: str, wait_s: float = 5.0, timeout_s: float | None = None,
            tune_failed: Callable[[str], bool] | None = None) -> dict:
    """Run the job ``key`` (see :func:`job_keys`); return its summary. A run waits for its pipeline's tuning
    (done by this or another worker); ``tune_failed(tune_key)`` says when that tuning can no longer finish."""
    parts = key.split("/")
    _log_job(out, key, "start")
    if parts[0] == "tune" and len(parts) == 3:
        summary = tune(cfg, out, parts[1], parts[2])
    elif parts[0] == "run" and len(parts) == 4 and parts[3].startswith("seed"):
        tune_key = f"tune/{parts[1]}/{parts[2]}"
        failed = (lambda: tune_failed(tune_key)) if tune_failed else None
        summary = run_cell(cfg, out, parts[1], parts[2], int(parts[3][4:]), wait_s=wait_s, timeout_s=timeout_s,
                           failed=failed)
    else:
        raise ConfigError("job", key, "use tune/<dataset>/<shortcut> or run/<dataset>/<shortcut>/seed<k>.")
    _log_job(out, key, "done")
    return summary


def tune(cfg: StudyConfig, out: Path, dataset: str, shortcut: str) -> dict:
    """Tune every method of the study on the validation split; write and return ``chosen.json``."""
    from shortcut_kd.evaluation.schema import METHOD_ORDER
    from shortcut_kd.workflows.experiment import Experiment
    from shortcut_kd.workflows.runner import run_stage

    if cfg.reuse_tuning:
        return reuse_tuning(cfg, out, dataset, shortcut)
    folder = tune_dir(out, dataset, shortcut)
    log_path = folder / "trials.json"
    log = read_json(log_path) if log_path.is_file() else {"trials": []}
    done = {(t["method"], t["trial"]): t for t in log["trials"]}
    chosen: dict[str, dict] = {}
    reads = _stage_upstreams(cfg, out, dataset, shortcut, folder)
    for method in tuning_order(cfg.methods):
        space = cfg.search_space.get(method, {})
        candidates = draw_trials(space, cfg.trials, cfg.sampler_seed + METHOD_ORDER.index(method))
        scored = []
        # a trial is trained on top of the settings chosen for the stages it reads (ERM's under the teacher, the
        # teacher's under KD): a record counts only when its own parameters and those upstream choices are the same
        upstream = {m: chosen[m] for m in reads[method] if m in chosen}
        for k, params in enumerate(candidates):
            record = done.get((method, k))
            recorded = (record or {}).get("upstream")
            recorded = None if recorded is None else {m: recorded[m] for m in reads[method] if m in recorded}
            if record is None or record["params"] != params or recorded != upstream:
                start = time.time()
                scores: dict[str, dict] = {}
                for seed in cfg.tuning_seeds:
                    per_method = _per_method({**chosen, method: params})
                    settings = experiment_settings(cfg, dataset, shortcut, seed, folder / f"seed{seed}", out,
                                                   per_method)
                    validation = run_stage(Experiment(settings), method, progress=False, evaluation="validation")
                    scores[str(seed)] = {"score": selection_score(validation),
                                         "auc": {v: (validation.get(v) or {}).get("auc")
                                                 for v in ("aligned", "conflicting")}}
                values = [float(s["score"]) for s in scores.values() if s["score"] is not None]
                record = {"method": method, "trial": k, "params": params, "upstream": upstream, "seeds": scores,
                          "score": sum(values) / len(values) if values else None,
                          "seconds": round(time.time() - start, 1)}
                done[(method, k)] = record
                log["trials"] = sorted(done.values(), key=lambda t: (METHOD_ORDER.index(t["method"]), t["trial"]))
                write_json(log_path, log)
                logger.info("tune %s/%s %s trial %d/%d: validation score %s %s", dataset, shortcut, method, k + 1,
                            len(candidates), record["score"], params)
            scored.append(record)
        valid = [r for r in scored if r["score"] is not None]
        best = max(valid, key=lambda r: r["score"]) if valid else scored[0]  # ties: the earliest (the defaults)
        chosen[method] = best["params"]
    result = {"dataset": dataset, "shortcut": shortcut, "tuning_seeds": cfg.tuning_seeds, "trials": cfg.trials,
              "selection": SELECTION_RULE, "chosen": chosen,
              "scores": {m: max((t["score"] for t in done.values() if t["method"] == m and t["score"] is not None),
                                default=None) for m in chosen}}
    write_json(chosen_path(out, dataset, shortcut), result)
    return result


def _stage_upstreams(cfg: StudyConfig, out: Path, dataset: str, shortcut: str, folder: Path) -> dict[str, list]:
    """method -> every stage it reads, directly or through another (KD: the teacher and ERM)."""
    from shortcut_kd.workflows.experiment import Experiment
    from shortcut_kd.workflows.runner import upstream_methods

    exp = Experiment(experiment_settings(cfg, dataset, shortcut, cfg.tuning_seeds[0],
                                         folder / f"seed{cfg.tuning_seeds[0]}", out, {}))
    reads: dict[str, list] = {}

    def closure(method: str) -> list:  # a stage the study does not list (KD's teacher) still passes ERM on
        if method not in reads:
            direct = upstream_methods(exp, method)
            reads[method] = sorted({*direct, *(m for d in direct for m in closure(d))})
        return reads[method]

    return {method: closure(method) for method in cfg.methods}


def reuse_tuning(cfg: StudyConfig, out: Path, dataset: str, shortcut: str) -> dict:
    """The settings another study chose for this pipeline and shortcut (``tuning.reuse``), as this study's
    ``chosen.json`` (with where they came from); a method that study did not tune keeps the bundle defaults."""
    from shortcut_kd.provenance import file_sha256

    source = chosen_path(Path(cfg.reuse_tuning or ""), dataset, shortcut)
    if not source.is_file():
        raise ConfigError("tuning.reuse", cfg.reuse_tuning, f"it has no {source}: reuse a study that tuned "
                          f"{dataset}/{shortcut}, or tune this one (drop tuning.reuse).")
    original = read_json(source)
    chosen = {m: original["chosen"].get(m, {}) for m in tuning_order(cfg.methods)}
    result = {**original, "chosen": chosen, "scores": {m: original.get("scores", {}).get(m) for m in chosen},
              "reused_from": {"file": str(source), "sha256": file_sha256(source)}}
    write_json(chosen_path(out, dataset, shortcut), result)
    return result


def _wait_for_tuning(out: Path, dataset: str, shortcut: str, wait_s: float, timeout_s: float | None,
                     failed: Callable[[], bool] | None = None, methods: list[str] | None = None) -> dict:
    """``chosen.json`` once it holds a choice for every one of ``methods`` (a study that gained a method
    is re-tuned: the file of the earlier tuning is not read as this one's)."""
    path = chosen_path(out, dataset, shortcut)
    start = time.time()
    while not path.is_file() or not set(methods or []) <= set(read_json(path).get("chosen", {})):
        if failed is not None and failed():
            raise ConfigError("job", f"tune/{dataset}/{shortcut}",
                              "the tuning job failed; fix its error and run the study again.")
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"tune/{dataset}/{shortcut} did not finish within {timeout_s} s")
        time.sleep(wait_s)
    return read_json(path)


def seed_variant(cell: Path, variant: Path) -> None:
    """Give a new variant folder the cell's finished stages (hard links: no copy, and every write replaces a
    file rather than writing into it), so what the variant does not change is reused by its fingerprint.
    A folder that already holds stage records (a resumed variant) is left as it is."""
    import os
    import shutil

    if (variant / "stages").is_dir() and any((variant / "stages").iterdir()):
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system: a copy
            shutil.copy2(src, dst)

    for sub, keep in (("models", lambda p: p.suffix == ".pt" and not p.name.endswith("_last.pt")),
                      ("stages", lambda p: p.suffix == ".json" and not p.name.endswith(".running.json")),
                      ("cache", lambda p: True)):
        src = cell / sub
        if not src.is_dir():
            continue
        for path in src.rglob("*"):
            if path.is_file() and keep(path):
                dst = variant / sub / path.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    link(str(path), str(dst))


def cell_experiment(cfg: StudyConfig, out: Path, dataset: str, shortcut: str, seed: int, chosen: dict) -> Any:
    """The main cell's :class:`~shortcut_kd.workflows.experiment.Experiment` of one reported seed, with the
    settings ``chosen`` by tuning."""
    from shortcut_kd.workflows.experiment import Experiment

    folder = cell_dir(out, dataset, shortcut, seed)
    return Experiment(experiment_settings(cfg, dataset, shortcut, seed, folder, out, _per_method(chosen)))


def run_cell(cfg: StudyConfig, out: Path, dataset: str, shortcut: str, seed: int, wait_s: float = 5.0,
             timeout_s: float | None = None, failed: Callable[[], bool] | None = None) -> dict:
    """The methods (and variants) of the study on one reported seed, with the tuned settings."""
    from shortcut_kd.provenance import portable_paths
    from shortcut_kd.workflows.experiment import Experiment
    from shortcut_kd.workflows.protocol import collect_results
    from shortcut_kd.workflows.runner import run_stage

    chosen = _wait_for_tuning(out, dataset, shortcut, wait_s, timeout_s, failed, cfg.methods)["chosen"]
    per_method = _per_method(chosen)
    folder = cell_dir(out, dataset, shortcut, seed)
    exp = cell_experiment(cfg, out, dataset, shortcut, seed, chosen)
    methods = tuning_order(cfg.methods)
    for i, method in enumerate(methods, 1):
        logger.info("run %s/%s seed %d: [%d/%d] %s", dataset, shortcut, seed, i, len(methods), method)
        run_stage(exp, method, progress=False)
    results = collect_results(exp, methods)
    results["study"] = {"name": cfg.name, "tuned_settings": chosen}
    write_json(folder / "results.json", portable_paths(results, out))
    for name, spec in cfg.variants.items():
        vmethods = tuning_order(cfg.variant_methods(name))
        variant_per_method = {**per_method, **{m: _deep_merge(per_method.get(m, {}), spec.get("settings") or {})
                                               for m in vmethods}}
        vfolder = cell_dir(out, dataset, shortcut, seed, name)
        seed_variant(folder, vfolder)
        vsettings = experiment_settings(cfg, dataset, shortcut, seed, vfolder, out, variant_per_method)
        vexp = Experiment(vsettings.replace(**(spec.get("experiment") or {})))
        logger.info("run %s/%s seed %d: variant %s (%s with %s, experiment %s)", dataset, shortcut, seed, name,
                    vmethods, spec.get("settings"), spec.get("experiment"))
        for method in vmethods:
            run_stage(vexp, method, progress=False)
        vresults = collect_results(vexp, vmethods)
        vresults["study"] = {"name": cfg.name, "variant": name, "of": vmethods, "settings": spec.get("settings"),
                             "experiment": spec.get("experiment")}
        write_json(vfolder / "results.json", portable_paths(vresults, out))
    return {"dataset": dataset, "shortcut": shortcut, "seed": seed, "methods": sorted(results["methods"])}
