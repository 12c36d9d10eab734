"""Network weights on disk: reading state dicts, loading them, and errors that name the file and the fix."""

import pytest
import torch
from torch import nn

from shortcut_kd.errors import DataError
from shortcut_kd.nets import build_network, load_weights, read_state_dict, unwrap

TINY = {"widen_factor": 0.125, "conv1_t_stride": 2, "no_max_pool": True}


def _net(name="resnet10", **kw):
    return build_network(name, 2, 1, 2, **{**TINY, **kw})


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unwrap_looks_through_nested_wrappers():
    net = _net()
    assert unwrap(net) is net
    assert unwrap(nn.DataParallel(net)) is net
    assert unwrap(nn.DataParallel(nn.DataParallel(net))) is net


def test_plain_and_nested_state_dicts(tmp_path):
    source = _net()
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict(), "optimizer": {"state": {}}, "epoch": 3}, tmp_path / "model.pt")
    torch.save({"network": source.state_dict(), "trainer": {"epoch": 2}}, tmp_path / "network.pt")
    for name in ("plain.pt", "model.pt", "network.pt"):
        state = read_state_dict(tmp_path / name)
        assert set(state) == set(source.state_dict())
        target = _net()
        assert not _same_weights(target, source)
        assert load_weights(target, tmp_path / name) is target
        assert _same_weights(target, source), name


def test_missing_file_names_it_and_the_stage_that_writes_it(tmp_path):
    path = tmp_path / "models" / "model_teacher.pt"
    with pytest.raises(DataError, match="not found") as e:
        read_state_dict(path, written_by="the 'teacher' stage (configs/teacher.json)")
    assert e.value.file == str(path) and str(path) in str(e.value)
    assert "run the 'teacher' stage (configs/teacher.json) first" in e.value.fix
    with pytest.raises(DataError, match="not found") as e:
        load_weights(_net(), path)
    assert e.value.file == str(path) and e.value.fix
    with pytest.raises(DataError, match="folder"):
        read_state_dict(tmp_path)


def test_garbage_bytes_are_a_damaged_checkpoint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x13 this is not a torch file \xff\xfe" * 20)
    with pytest.raises(DataError, match="damaged") as e:
        read_state_dict(path)
    assert e.value.file == str(path) and str(path) in str(e.value)
    assert "delete it and rerun the stage that writes it" in e.value.fix
    assert "last good checkpoint" in e.value.fix
    path.write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(DataError, match="damaged"):
        read_state_dict(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="damaged"):
        read_state_dict(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_real_checkpoint_is_a_damaged_checkpoint(tmp_path, keep):
    full = tmp_path / "full.pt"
    torch.save({"network": _net().state_dict(), "epoch": 4}, full)
    read_state_dict(full)  # the intact file reads
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="damaged") as e:
        load_weights(_net(), cut)
    assert e.value.file == str(cut) and "rerun the stage" in e.value.fix
    assert e.value.__cause__ is not None  # torch's own error is kept as the cause


def test_a_file_without_a_state_dict(tmp_path):
    path = tmp_path / "metrics.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(DataError, match="no model weights") as e:
        read_state_dict(path)
    assert e.value.file == str(path) and "'epoch'" in str(e.value) and "state_dict" in e.value.fix
    torch.save([torch.zeros(2)], path)
    with pytest.raises(DataError, match="not a state dict"):
        read_state_dict(path)


def test_wrong_architecture_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "resnet10.pt"
    torch.save(_net().state_dict(), path)
    for other in (_net("resnet18"), _net(widen_factor=0.25)):  # other keys; same keys, other shapes
        with pytest.raises(DataError, match="do not fit") as e:
            load_weights(other, path)
        assert e.value.file == str(path) and str(path) in str(e.value)
        assert "architecture" in e.value.fix and "trained with" in e.value.fix
    # strict=False accepts a partial match (missing keys stay as they are)
    load_weights(_net("resnet18"), path, strict=False)


def test_ddp_wrapped_network_and_frozen(tmp_path):
    source = _net()
    # a checkpoint of the bare network loads into a wrapped one (DataParallel on CPU stands in for DDP)
    torch.save({"model": source.state_dict()}, tmp_path / "model.pt")
    target = _net().train()
    wrapped = nn.DataParallel(target)
    assert load_weights(wrapped, tmp_path / "model.pt", device="cpu") is wrapped
    assert _same_weights(target, source)
    assert target.training and all(p.requires_grad for p in target.parameters())  # left as it was
    frozen = load_weights(_net().train(), tmp_path / "model.pt", frozen=True)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert _same_weights(frozen, source)
