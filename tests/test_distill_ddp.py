"""Under DDP the student's probes (outside the DDP wrapper) stay identical on every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Events
from test_distill import _data, _loader, _net, _probes, _trainer

from shortcut_kd.distill import LayerwiseDistillationHandler


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        teacher, student = _net(), _net()
        probes = _probes(teacher, ["layer1", "layer4"])
        torch.manual_seed(100 + rank)  # different random probe initialisations on each rank
        kd = LayerwiseDistillationHandler(teacher, ["layer1", "layer4"], teacher_probes=probes,
                                          init_student_probes="random", weights=10.0)
        student = torch.nn.parallel.DistributedDataParallel(student)
        # each rank trains on its own data, as under a DistributedSampler
        trainer = _trainer(student, _loader(_data(8, seed=rank, shift=2.0 * rank)), [kd])
        initial = {}
        # runs after the handler's set-up (which goes first on STARTED): the probes every rank starts from
        trainer.add_event_handler(Events.STARTED, lambda _: initial.update(
            {k: v.detach().clone() for k, v in kd.state_dict().items()}))
        trainer.run()
        torch.save({"final": kd.state_dict(), "initial": initial}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_student_probes_stay_in_sync_across_ranks(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for when in ("initial", "final"):
        a, b = saved[0][when], saved[1][when]
        assert a and a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=f"{when} {key} differs between the ranks")
    changed = [k for k in saved[0]["final"] if not torch.equal(saved[0]["final"][k], saved[0]["initial"][k])]
    assert changed, "the student probes did not train"
    assert any("student" in k for k in changed)
