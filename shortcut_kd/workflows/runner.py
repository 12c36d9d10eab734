"""Run the protocol's stages through the bundles: every ``shortcut-kd stage | protocol | demo`` stage is the
dataset's MONAI bundle config (``train.json`` + the stage's file) run by ``monai.bundle.ConfigWorkflow``
with the experiment's settings as overrides, then scored by the bundle's ``evaluate.json``.

A finished stage is reused only when its fingerprint matches: the hash of the merged config after overrides
(every setting the stage reads, nothing else; the output folder's own path left out, so a copied run folder
is reused), the split manifest and the upstream checkpoints it reads.
Anything else reruns it, and since a rerun changes its checkpoint, the stages that read it rerun too.
Each stage leaves ``stages/<method>.json``: the fingerprint, the overrides (enough to rerun it with
``python -m monai.bundle run``), the hashes, the environment, the wall time and the test metrics.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.io import read_json, write_json

if TYPE_CHECKING:
    from shortcut_kd.workflows.experiment import Experiment

logger = logging.getLogger(__name__)

__all__ = ["run_stage", "stage_record", "upstream_methods", "RECORD_SCHEMA"]

RECORD_SCHEMA = "shortcut-kd/stage/v1"


def upstream_methods(exp: "Experiment", method: str) -> tuple[str, ...]:
    """The stages whose checkpoints ``method`` reads, as its config says (``upstream`` files)."""
    wanted = {str(Path(p)) for p in exp.parsed(method, "upstream") if p}
    found = []
    for other in exp.methods_before(method):
        if {str(p) for p in exp.outputs(other)} & wanted:
            found.append(other)
    return tuple(found)


def fingerprint(exp: "Experiment", method: str, with_code: bool = False) -> dict:
    """What decides ``method``'s result: the resolved config, the split manifest and the upstream files."""
    from shortcut_kd.provenance import file_sha256, git_commit, json_sha256

    parser = exp.parser(method)
    upstream = {Path(p).name: file_sha256(p) for p in exp.parsed(method, "upstream") if p}
    parts = {"stage": method, "config": _relocatable(parser.get(), exp.root),
             "splits": file_sha256(exp.split_dir / "splits.json"), "upstream": upstream}
    if with_code:
        from shortcut_kd import __version__

        parts["code"] = [__version__, git_commit()]
    return {"sha256": json_sha256(parts), "splits": parts["splits"], "upstream": upstream}


def _relocatable(config: Any, root: Path) -> Any:
    """``config`` with the output folder's absolute path written as ``<output_dir>``: where a run is written is
    not what it computes, so a copied or moved run folder (a study variant seeded from its cell) is reused."""
    import json

    text = json.dumps(config, sort_keys=True, default=str)
    return json.loads(text.replace(json.dumps(str(Path(root).resolve()))[1:-1], "<output_dir>"))


def stage_record(exp: "Experiment", method: str) -> dict | None:
    """The record of a finished ``method`` (``stages/<method>.json``), or None."""
    path = exp.record_path(method)
    return read_json(path) if path.is_file() else None


EVALUATIONS = ("test", "validation")
"""What a stage is scored on: the test sets, or the bias-annotated validation split (``val_aligned`` and
``val_conflicting``), on which a study chooses settings without reading any test set."""


def run_stage(exp: "Experiment", method: str, fresh: bool = False, progress: bool = True,
              evaluation: str = "test") -> dict:
    """Run ``method`` (a results.json method key, or ``jtt_identify``) through its bundle config unless an
    identical run is recorded; return its metrics on ``evaluation`` (``test`` or ``validation``).

    Its upstream stages run first (or are reused). An interrupted run with the same fingerprint resumes
    from its last state; one with other settings starts over. ``fresh=True`` reruns it whatever is recorded.
    A reused run that was scored on the other evaluation is scored on this one and its record updated.

    Only one run works in an output folder at a time: the stage holds ``exp.root``'s
    :class:`~shortcut_kd.workflows.lock.OutputLock` (re-entrant for its upstream stages); a second run on the
    same folder is refused with a ``ConfigError`` naming the holder, and a crashed run's stale lock is taken over.
    """
    if evaluation not in EVALUATIONS:
        raise ConfigError("evaluation", evaluation, f"use one of {list(EVALUATIONS)}.")
    exp.check_method(method)
    from shortcut_kd.workflows.lock import OutputLock

    with OutputLock(exp.root):
        return _run_stage(exp, method, fresh, progress, evaluation)


def _run_stage(exp: "Experiment", method: str, fresh: bool, progress: bool, evaluation: str) -> dict:
    """:func:`run_stage` once the output folder is locked."""
    exp.prepare_splits()
    for needed in upstream_methods(exp, method):
        run_stage(exp, needed, progress=progress, evaluation=evaluation)
    if method == "kd" and exp.settings.distill.layers == "auto":
        from shortcut_kd.workflows.auto_layers import auto_layers

        exp.auto_layers = auto_layers(exp)
    current = fingerprint(exp, method, with_code=exp.with_code)
    record = stage_record(exp, method)
    if not fresh and record and record.get("fingerprint") == current["sha256"] and _outputs_intact(exp, method, record):
        logger.info("%s: reusing the recorded run (%s)", method, exp.record_path(method))
        if evaluation not in record and method in exp.evaluated_methods:
            record[evaluation] = _evaluate(exp, method, evaluation)
            write_json(exp.record_path(method), record)
        return record.get(evaluation, {})
    running = exp.record_path(method).with_suffix(".running.json")
    resumable = running.is_file() and read_json(running).get("fingerprint") == current["sha256"] and not fresh
    if not resumable:
        _clear_outputs(exp, method)
    write_json(running, {"fingerprint": current["sha256"]})
    exp.record_path(method).unlink(missing_ok=True)
    start = time.time()
    _run_workflow(exp, method, progress)
    seconds = time.time() - start
    scores = _evaluate(exp, method, evaluation) if method in exp.evaluated_methods else {}
    from shortcut_kd.provenance import environment, file_sha256

    outputs = {p.name: file_sha256(p) for p in exp.outputs(method) if p.is_file()}
    record = {"schema": RECORD_SCHEMA, "stage": method, "fingerprint": current["sha256"],
              "bundle": str(exp.bundle_dir), "config_files": exp.config_files(method),
              "overrides": exp.overrides(method), "split_manifest_sha256": current["splits"],
              "upstream_sha256": current["upstream"], "outputs_sha256": outputs,
              "seed": exp.settings.seed, "seconds": round(seconds, 1), "environment": environment(exp.device),
              "train_images": _train_images(exp, method), evaluation: scores}
    write_json(exp.record_path(method), record)
    running.unlink(missing_ok=True)
    return scores


def _outputs_intact(exp: "Experiment", method: str, record: dict) -> bool:
    from shortcut_kd.provenance import file_sha256

    recorded = record.get("outputs_sha256", {})
    return bool(recorded) and all(file_sha256(p) == recorded.get(p.name) for p in exp.outputs(method))


def _clear_outputs(exp: "Experiment", method: str) -> None:
    """Remove what an earlier run of ``method`` with other settings left (model, last state, logs)."""
    for path in (*exp.outputs(method), exp.last_state_path(method)):
        if path.is_file():
            path.unlink()
    board = exp.root / "tensorboard" / exp.parsed(method, "stage")
    if board.is_dir():
        shutil.rmtree(board)


def _run_workflow(exp: "Experiment", method: str, progress: bool) -> None:
    """``ConfigWorkflow`` initialize / run / finalize of ``method``'s merged bundle config."""
    from shortcut_kd.workflows.bundle_cli import make_workflow, toolkit_error

    workflow = make_workflow(str(exp.bundle_dir), exp.bundle_stage(method), exp.overrides(method))
    try:
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise ConfigError("bundle", str(exp.bundle_dir), f"the {method} config lacks {missing}.")
        if progress and exp.is_training(method):
            _attach_progress(workflow, method)
        workflow.run()
        workflow.finalize()
    except Exception as e:  # a toolkit error behind MONAI's instantiation wrapper: show it as itself
        cause = toolkit_error(e)
        if cause is None or cause is e:
            raise
        raise cause from e
    missing_outputs = [str(p) for p in exp.outputs(method) if not p.is_file()]
    if missing_outputs:
        raise DataError(f"the {method} stage finished without writing its outputs.", file=", ".join(missing_outputs),
                        fix="check the stage config's ckpt_name and save handlers.")


def _attach_progress(workflow: Any, method: str) -> None:
    from ignite.handlers import ProgressBar

    trainer = workflow.parser.get_parsed_content("train#trainer")
    ProgressBar(desc=method, persist=False).attach(trainer, output_transform=lambda o: {
        "loss": float(o[0]["loss"] if isinstance(o, list) else o["loss"])})


def _train_images(exp: "Experiment", method: str) -> dict:
    """The compute a stage got: its epochs and the images of one epoch (the length of its training role)."""
    from shortcut_kd.data.splits import load_split

    parser = exp.parser(method)
    role = parser.get("train#role", "train_biased")
    try:
        per_epoch = len(load_split(exp.split_dir, role))
    except DataError:  # a role this split folder does not hold: the epochs say enough
        per_epoch = None
    epochs = parser.get("train#trainer#max_epochs")
    return {"role": role, "epochs": epochs, "images_per_epoch": per_epoch,
            "images": per_epoch * int(epochs) if per_epoch is not None and isinstance(epochs, int) else None}


def _evaluate(exp: "Experiment", method: str, evaluation: str = "test") -> dict:
    """The bundle's evaluate config on ``method``'s checkpoint alone: the entries of its results on the test
    sets or on the validation split; the per-image predictions are kept beside the stage record."""
    from shortcut_kd.workflows.bundle_cli import make_workflow

    suffix = "" if evaluation == "test" else f".{evaluation}"
    out = exp.record_path(method).with_suffix(f"{suffix}.results.json")
    overrides = {**exp.overrides("evaluate"), "evaluate#checkpoints": {method: str(exp.model_path(method))},
                 "evaluate#results_file": str(out), "evaluate#sets": evaluation,
                 "evaluate#predictions_file": str(exp.record_path(method).with_suffix(f"{suffix}.predictions.json"))}
    workflow = make_workflow(str(exp.bundle_dir), "evaluate", overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return read_json(out)["methods"][method]["test"]
