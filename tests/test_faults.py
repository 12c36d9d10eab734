"""Faults a user meets, each stopped with an error that names the file / field and the fix: a damaged checkpoint,
a loss that turns NaN mid-run (the last good state kept), a second run on an output folder in use (and a
crashed run's stale lock), and typos in settings and ``--set`` overrides."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from ignite.engine import Engine
from test_bundles import dataset_dir, network_of, run_stage, tiny_bundle

from shortcut_kd.errors import ConfigError, DataError, find_toolkit_error
from shortcut_kd.nets import build_network, load_weights, read_state_dict
from shortcut_kd.workflows import from_dict
from shortcut_kd.workflows.bundle import FiniteLossGuard, TrainingError, load_network
from shortcut_kd.workflows.lock import LOCK_NAME, OutputLock, read_lock

NET = {"widen_factor": 0.125, "conv1_t_stride": 2, "no_max_pool": True}


def _net(**kw):
    return build_network("resnet10", 2, 1, 2, **{**NET, **kw})


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ 1. damaged checkpoints
def test_damaged_checkpoints_are_named_errors_and_the_good_file_is_untouched(tmp_path):
    good = tmp_path / "model_teacher.pt"
    torch.save({"model": _net().state_dict(), "epoch": 2}, good)
    digest = _sha(good)
    data = good.read_bytes()
    bad = {"truncated.pt": data[: len(data) // 2], "zero.pt": b"", "garbage.pt": os.urandom(4096),
           "text.pt": b"epoch,loss\n1,0.5\n"}
    for name, content in bad.items():
        path = tmp_path / name
        path.write_bytes(content)
        for load in (read_state_dict, lambda p: load_weights(_net(), p),
                     lambda p: load_network(_net(), p, written_by="the teacher stage")):
            with pytest.raises(DataError, match="damaged") as e:
                load(path)
            assert e.value.file == str(path) and str(path) in str(e.value), name
            assert "delete it and rerun the stage that writes it" in e.value.fix and "_last.pt" in e.value.fix
    # a damaged last state is the resume state itself: the stage starts over
    last = tmp_path / "erm_last.pt"
    last.write_bytes(data[:100])
    with pytest.raises(DataError, match="damaged") as e:
        read_state_dict(last)
    assert "starts over" in e.value.fix
    # intact pickles that hold no state dict
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(DataError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.save(logging.Formatter(), tmp_path / "object.pt")  # a Python object: weights_only refuses its class
    with pytest.raises(DataError, match="pickled Python objects") as e:
        read_state_dict(tmp_path / "object.pt")
    assert "Formatter" in str(e.value) and "state_dict()" in e.value.fix
    # the good file still loads, byte for byte as written
    assert _sha(good) == digest
    net = load_network(_net(), good)
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_shape_mismatch_names_the_file_and_the_first_key_and_copies_nothing(tmp_path):
    path = tmp_path / "model_erm.pt"
    torch.save(_net().state_dict(), path)
    wider = _net(widen_factor=0.25)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(DataError, match="do not fit") as e:
        load_network(wider, path)
    first = next(iter(before))  # conv1.weight: the first parameter of the network
    assert str(path) in str(e.value) and f"key '{first}'" in str(e.value)
    assert f"{tuple(before[first].shape)} in the network" in str(e.value)
    assert all(torch.equal(v, wider.state_dict()[k]) for k, v in before.items()), "weights were copied"
    torch.save({k: v for k, v in _net().state_dict().items() if k != "fc.bias"}, path)
    with pytest.raises(DataError, match="'fc.bias' of the network is missing"):
        load_weights(_net(), path)


# ------------------------------------------------------------------------ 2. NaN / Inf loss
def _engine(output):
    engine = Engine(lambda e, b: output)
    FiniteLossGuard(stage="kd", ckpt_dir="/runs/x/models").attach(engine)
    return engine


def test_finite_loss_guard_names_every_term():
    terms = {"loss": torch.tensor(1.5), "task_loss": torch.tensor(0.5), "kd_layer1": torch.tensor(math.inf),
             "kd_final": 0.25, "kd_total": torch.tensor(math.inf), "pred": torch.zeros(2), "label": 1}
    _engine({"loss": torch.tensor(0.7), "task_loss": 0.7}).run([0, 1, 2], max_epochs=2)  # finite: runs through
    with pytest.raises(TrainingError) as e:
        _engine([terms, dict(terms)]).run([0, 1, 2], max_epochs=2)  # decollated: a list of dicts
    text = str(e.value)
    assert "epoch 1, iteration 1" in text and "kd_layer1, kd_total" in text
    for part in ("loss=1.5", "task_loss=0.5", "kd_layer1=inf", "kd_final=0.25", "kd_total=inf"):
        assert part in text
    assert "pred" not in text and "learning rate" in e.value.fix and e.value.terms["kd_layer1"] == math.inf


class InjectNaN:
    """Test-only trainer handler: multiplies the loss by NaN at one iteration of one epoch (before backward, so
    the gradients and the weights turn NaN as in a real divergence)."""

    def __init__(self, epoch: int = 2, iteration_in_epoch: int = 2) -> None:
        self.epoch, self.iteration_in_epoch = epoch, iteration_in_epoch

    def attach(self, engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine) -> None:
        in_epoch = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        if engine.state.epoch == self.epoch and in_epoch == self.iteration_in_epoch:
            engine.state.output["loss"] = engine.state.output["loss"] * float("nan")


def test_nan_loss_mid_epoch_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path_factory, tmp_path):
    bundle = tiny_bundle("isic2017", tmp_path)
    out = tmp_path / "out"
    models = out / "models"
    inject = [{"_target_": f"{__name__}.InjectNaN", "epoch": 2, "iteration_in_epoch": 2}]
    with pytest.raises(Exception) as raised:  # MONAI wraps what its run expression raises in a RuntimeError
        run_stage(bundle, "train", dataset_dir=str(dataset_dir(tmp_path_factory, "isic2017")), output_dir=str(out),
                  bundle_root=str(bundle), **{"train#extra_handlers": inject})
    error = find_toolkit_error(raised.value, TrainingError)
    assert error is not None, raised.value
    text, last = str(error), models / "erm_last.pt"
    assert error.epoch == 2 and "epoch 2, iteration" in text and "(iteration 2 of" in text
    assert "not finite at" in text and "loss=nan" in text and "label" not in text.split("Fix:")[0]
    assert str(last) in error.fix and "end of epoch 1" in error.fix
    assert not (models / "model_erm.pt").exists(), "a diverged run must not leave a final model"
    state = torch.load(last, weights_only=True)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"], "the state of epoch 1"
    net = load_weights(network_of(bundle, "train.json"), last)
    assert all(torch.isfinite(p).all() for p in net.state_dict().values() if p.is_floating_point())


# ------------------------------------------------------------------------ 3. one run per output folder
def _write_lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "hostname": socket.gethostname(),
                                                "started": time.time(), "command": "shortcut-kd stage erm"}))


def test_lock_nests_in_one_process_and_is_released_on_exit_and_on_errors(tmp_path):
    folder = tmp_path / "run"
    lock_file = folder / LOCK_NAME
    with OutputLock(folder) as outer:
        info = read_lock(lock_file)
        assert info["pid"] == os.getpid() and info["hostname"] == socket.gethostname() and info["command"]
        with OutputLock(tmp_path / "." / "run"):  # the same folder, spelled differently: re-entrant
            assert read_lock(lock_file) == info
        assert lock_file.is_file() and outer.held, "the inner exit must not release the outer hold"
    assert not lock_file.exists() and not outer.held
    with pytest.raises(RuntimeError, match="boom"):
        with OutputLock(folder):
            raise RuntimeError("boom")
    assert not lock_file.exists()


def test_a_live_other_process_holding_the_folder_is_refused(tmp_path):
    from shortcut_kd.workflows import Experiment
    from shortcut_kd.workflows.runner import run_stage as run_protocol_stage

    out = tmp_path / "run"
    holder = subprocess.Popen(["sleep", "30"])
    try:
        _write_lock(out, holder.pid)
        with pytest.raises(ConfigError, match="output_dir") as e:
            with OutputLock(out):
                pass
        assert f"wait for pid {holder.pid} to finish, or use another --output-dir" in str(e.value)
        assert str(out) in str(e.value)
        settings = from_dict({"dataset": "isic2017", "dataset_dir": str(tmp_path / "no-data"), "output_dir": str(out),
                              "device": "cpu", "num_workers": 0})
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            run_protocol_stage(Experiment(settings), "erm", progress=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], "a refused run must not write anything"
        assert read_lock(out / LOCK_NAME)["pid"] == holder.pid, "the holder's lock must stay"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_crashed_run_is_taken_over(tmp_path, caplog):
    from shortcut_kd.workflows import Experiment
    from shortcut_kd.workflows.runner import run_stage as run_protocol_stage

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    _write_lock(out, dead)
    with caplog.at_level(logging.WARNING, logger="shortcut_kd.workflows.lock"):
        with OutputLock(out):
            assert read_lock(out / LOCK_NAME)["pid"] == os.getpid()
    assert f"stale lock from pid {dead} (crashed run), taking over" in caplog.text
    assert not (out / LOCK_NAME).exists()
    # through the runner: the stale lock is taken over, the stage fails on its data, and the lock is released
    _write_lock(out, dead)
    settings = from_dict({"dataset": "isic2017", "dataset_dir": str(tmp_path / "no-data"), "output_dir": str(out),
                          "device": "cpu", "num_workers": 0})
    with pytest.raises(Exception) as raised:  # MONAI's instantiation error around the toolkit's
        run_protocol_stage(Experiment(settings), "erm", progress=False)
    assert "dataset_dir" in str(find_toolkit_error(raised.value, ConfigError))
    assert not (out / LOCK_NAME).exists()


def test_an_unreadable_lock_is_stale(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("{not json")  # a crash while the lock was being written
    os.utime(out / LOCK_NAME, (time.time() - 60, time.time() - 60))
    with caplog.at_level(logging.WARNING, logger="shortcut_kd.workflows.lock"):
        with OutputLock(out):
            assert read_lock(out / LOCK_NAME)["pid"] == os.getpid()
    assert "stale, unreadable lock" in caplog.text and not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------ 4. typos name the nearest key
def test_settings_typos_name_the_nearest_key():
    with pytest.raises(ConfigError, match="settings.epoch") as e:
        from_dict({"epoch": 3})
    assert "did you mean 'epochs'?" in str(e.value) and "'teacher_epochs'" in str(e.value)  # and the known keys
    with pytest.raises(ConfigError, match="distill.wieght") as e:
        from_dict({"distill": {"wieght": 1}})
    assert "did you mean 'weight'?" in str(e.value)
    with pytest.raises(ConfigError, match="known keys") as e:
        from_dict({"zzzzzz": 1})
    assert "did you mean" not in str(e.value)


def test_run_override_typo_is_refused_before_any_work(tmp_path_factory, tmp_path, capsys):
    from shortcut_kd.cli import main

    bundle = tiny_bundle("isic2017", tmp_path)
    data = dataset_dir(tmp_path_factory, "isic2017")
    out = tmp_path / "out"
    common = ["run", str(bundle), "train", "--dataset-dir", str(data), "--output-dir", str(out)]
    assert main([*common, "--set", "train#trainer#max_epochx=2"]) != 0
    err = capsys.readouterr().err
    assert "train#trainer#max_epochx" in err and "did you mean 'train#trainer#max_epochs'" in err.lower()
    assert not out.exists(), "nothing may run or be written"
    for typo, near in (("dataset_dirr=1", "'dataset_dir'"), ("optimizer#lrr=0.1", "'optimizer#lr'"),
                       ("train#handlers#99={}", "train#handlers#")):
        assert main([*common, "--set", typo]) != 0
        assert near in capsys.readouterr().err, typo
    assert not out.exists()
    # ids that exist, new keys of plain dicts, a component's own arguments, and `::` ids are accepted
    from argparse import ArgumentParser

    from shortcut_kd.workflows.bundle_cli import add_arguments, bundle_overrides

    parser = ArgumentParser()
    add_arguments(parser)
    sets = ["train::trainer::max_epochs=1", "shortcut#overrides#size=0.2", "train#trainer#epoch_length=2",
            'optimizer#_target_="torch.optim.SGD"', "optimizer#momentum=0.9", "network_def#widen_factor=0.5"]
    args = parser.parse_args([str(bundle), "train", *[x for s in sets for x in ("--set", s)]])
    overrides = bundle_overrides(args, bundle, "train")
    assert overrides["optimizer#momentum"] == 0.9 and overrides["train::trainer::max_epochs"] == 1
