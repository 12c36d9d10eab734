"""Share a study's jobs among workers through Optuna's storage, not a scheduler of our own.

Each job is one *enqueued* Optuna trial whose only parameter is the job key. A worker pops a waiting trial
(Optuna moves it from WAITING to RUNNING in one storage transaction, so two workers never get the same
one), runs the job and completes the trial. With the default SQLite file (``queue.db`` in the study folder)
the workers are processes on one machine; with ``--storage postgresql://...`` (or any URL Optuna's
``RDBStorage`` takes) they can be on several machines that see the same output folder. A worker that dies
leaves a RUNNING trial whose heartbeat stops: after the grace period Optuna fails it and
``RetryFailedTrialCallback`` puts the job back in the queue; a rerun of the study also re-queues failed jobs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

__all__ = ["open_queue", "enqueue", "job_states", "work"]

PARAM = "job"


def open_queue(name: str, out: Path, storage: str | None = None, heartbeat_s: int = 30, grace_s: int = 300):
    """The study's Optuna study (created on first use).

    ``grace_s``: how long a RUNNING job may go without a heartbeat before another worker fails and re-queues
    it. Ten missed heartbeats: on a loaded machine a live worker's heartbeat can be late by minutes, and a
    live job failed as stale cannot report its result (Optuna: "Cannot tell a FAIL trial")."""
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'queue.db').resolve()}"
    rdb = RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                     failed_trial_callback=RetryFailedTrialCallback(max_retry=2),
                     engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
    return optuna.create_study(study_name=name, storage=rdb, load_if_exists=True)


def job_states(queue, plans: dict[str, str]) -> dict[str, list[str]]:
    """job key -> the states of its trials (e.g. ``["FAIL", "COMPLETE"]``). Only the trials queued with the
    job's current plan (``plans``: job key -> plan digest) count: a job whose plan changed is new."""
    states: dict[str, list[str]] = {}
    for trial in queue.get_trials(deepcopy=False):
        key = trial.params.get(PARAM) or trial.system_attrs.get("fixed_params", {}).get(PARAM)
        if key and trial.user_attrs.get("plan") == plans.get(key):
            states.setdefault(key, []).append(trial.state.name)
    return states


def enqueue(queue, keys: list[str], plans: dict[str, str]) -> list[str]:
    """Queue every job that is not complete, waiting or running (failed jobs again) under its current plan;
    return those queued."""
    states = job_states(queue, plans)
    queued = []
    for key in keys:
        if not {"COMPLETE", "WAITING", "RUNNING"} & set(states.get(key, [])):
            queue.enqueue_trial({PARAM: key}, user_attrs={"enqueued": True, "plan": plans[key]})
            queued.append(key)
    return queued


def work(queue, keys: list[str], plans: dict[str, str], run: Callable[[str], dict], poll_s: float = 5.0,
         progress: Callable[[dict[str, list[str]]], None] | None = None) -> list[str]:
    """Pop and run jobs until none is waiting or running; return the keys of jobs that failed here."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    failed: list[str] = []

    def objective(trial) -> float:
        if not trial.user_attrs.get("enqueued"):  # the queue was empty when this worker asked: not a job
            raise optuna.TrialPruned("no job left")
        key = trial.suggest_categorical(PARAM, keys)
        start = time.time()
        try:
            run(key)
        except Exception:
            failed.append(key)
            logger.exception("job %s failed", key)
            raise
        return time.time() - start

    while True:
        fail_stale_trials(queue)
        waiting = queue.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        running = queue.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if waiting:
            queue.optimize(objective, n_trials=1, catch=(Exception,))
            if progress:
                progress(job_states(queue, plans))
        elif running:
            time.sleep(poll_s)  # others are still working (a run may wait on their tuning)
        else:
            return failed
