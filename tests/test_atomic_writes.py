"""Every write is atomic: a write that fails part-way (here: the disk fills after a few bytes) raises, leaves the
previous file byte for byte, and leaves no temporary file behind — JSON, text, checkpoints, the per-epoch resume
state and ``predictions.csv``."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from shortcut_kd.io import save_torch, write_json, write_text


class DiskFull:
    """Patch a writer so that it writes the first few bytes of its output and then fails with ENOSPC."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def on_text(self):
        real = Path.write_text

        def partial(path, data, *args, **kwargs):
            real(path, data[: max(1, len(data) // 3)], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        self.monkeypatch.setattr(Path, "write_text", partial)

    def on_torch(self):
        def partial(obj, f, *args, **kwargs):
            f.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device")

        self.monkeypatch.setattr(torch, "save", partial)


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


@pytest.mark.parametrize("kind", ["json", "text"])
def test_a_failed_text_write_keeps_the_previous_file(tmp_path, monkeypatch, kind):
    path = tmp_path / ("results.json" if kind == "json" else "report.md")
    writer = write_json if kind == "json" else write_text
    old = {"auc": 0.9} if kind == "json" else "# the previous report\n"
    writer(path, old)
    before = path.read_bytes()
    DiskFull(monkeypatch).on_text()
    with pytest.raises(OSError, match="No space left"):
        writer(path, {"auc": 0.1, "more": list(range(100))} if kind == "json" else "# new\n" * 100)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, path.name) == []
    if kind == "json":
        assert json.loads(path.read_text()) == old


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_torch(path, {"w": torch.ones(3)})
    before = path.read_bytes()
    DiskFull(monkeypatch).on_torch()
    with pytest.raises(OSError, match="No space left"):
        save_torch(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before and _leftovers(tmp_path, path.name) == []
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_a_failed_resume_state_write_keeps_the_last_good_epoch(tmp_path, monkeypatch):
    """The handler that saves ``<stage>_last.pt`` after every epoch: a failing save leaves the last good one."""
    from ignite.engine import Engine

    from shortcut_kd.workflows.bundle import ResumableCheckpoint

    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    handler = ResumableCheckpoint(tmp_path, {"model": net}, stage="erm")
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    last = tmp_path / "erm_last.pt"
    before = last.read_bytes()
    with torch.no_grad():
        net.weight.zero_()
    DiskFull(monkeypatch).on_torch()
    with pytest.raises(OSError, match="No space left"):
        handler(engine)
    monkeypatch.undo()
    assert last.read_bytes() == before and _leftovers(tmp_path, last.name) == []
    state = torch.load(last, weights_only=False)
    assert state["trainer"]["iteration"] == 1 and state["model"]["weight"].abs().sum() > 0


def test_a_failed_predictions_write_keeps_the_previous_csv(tmp_path, monkeypatch):
    """``predictions.csv`` is written in one atomic step at the end: a failure leaves the previous table whole."""
    from shortcut_kd.workflows import inference

    out = tmp_path / "predictions.csv"
    out.write_text("file,probability,predicted_label,status,reason\na.png,0.9,1,ok,\n")
    before = out.read_bytes()
    inputs = inference.InferenceInputs(files=["b.png", "c.png"], failures=[{"file": "c.png", "reason": "truncated"}])
    writer = inference.PredictionWriter(out, inputs)
    writer.probabilities["b.png"] = 0.2
    DiskFull(monkeypatch).on_text()
    with pytest.raises(OSError, match="No space left"):
        writer.write()
    assert out.read_bytes() == before and _leftovers(tmp_path, out.name) == []
