"""A training run killed with SIGKILL after its first checkpoint, then rerun with the same command, ends with the
weights (bit for bit) and the test metrics of a run that was never interrupted: ERM, KD and GroupDRO, each
through ``shortcut-kd stage`` in a real subprocess on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_workflows import TINY, make_isic_tree

METHODS = ("erm", "kd", "groupdro")
EPOCHS = 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _command(data, out, method):
    flags = ["--dataset-dir", str(data / "iid"), "--output-dir", str(out), "--device", "cpu", "--shortcut", "patch",
             "--epochs", str(EPOCHS)]
    for key in ("image_size", "batch_size", "specialist_size", "n_bootstrap", "num_workers"):
        flags += ["--set", f"{key}={json.dumps(TINY[key])}"]
    flags += ["--set", 'architecture="resnet10"', "--set", 'arch_kwargs={"widen_factor": 0.25}',
              "--set", f"teacher_epochs={EPOCHS}", "--set", "distill.probe_epochs=1"]
    return [sys.executable, "-m", "shortcut_kd.cli", "stage", method, *flags]


def _record(out, method) -> dict:
    found = sorted(out.glob(f"**/stages/{method}.json"))
    assert len(found) == 1, f"expected one record of {method} under {out}, found {found}"
    return json.loads(found[0].read_text())


def _state(out, name) -> dict:
    (path,) = out.glob(f"**/models/{name}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _kill_after_first_checkpoint(command, out, method) -> None:
    """Start ``command``, SIGKILL it as soon as ``<method>_last.pt`` exists; the stage must not have finished."""
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while not list(out.glob(f"**/models/{method}_last.pt")):
            if proc.poll() is not None:
                pytest.fail(f"{method} ended (rc {proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {method}_last.pt after 240 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(out.glob(f"**/stages/{method}.json")), f"{method} finished before the kill: nothing was resumed"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_isic_tree(tmp_path_factory.mktemp("isic_kill"), n=120)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    for method in METHODS:
        done = subprocess.run(_command(data, out, method), env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_killed_run_resumes_to_the_uninterrupted_outputs_and_metrics(data, straight, tmp_path):
    killed = tmp_path / "killed"
    for method in METHODS:  # in this order, so kd's own stage is the one killed (erm is reused by then)
        command = _command(data, killed, method)
        _kill_after_first_checkpoint(command, killed, method)
        resumed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        got, want = _record(killed, method), _record(straight, method)
        assert got["fingerprint"] == want["fingerprint"]
        assert sorted(got["outputs_sha256"]) == sorted(want["outputs_sha256"])
        for name in want["outputs_sha256"]:  # the tensors, not the file bytes (torch.save's zip is not canonical)
            resumed_state, straight_state = _state(killed, name), _state(straight, name)
            assert list(resumed_state) == list(straight_state)
            for key, tensor in straight_state.items():
                assert torch.equal(resumed_state[key], tensor), f"{method}: {name} {key} differs after the resume"
        assert got["test"] == want["test"], f"{method}: resumed metrics differ"
