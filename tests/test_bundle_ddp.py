"""``configs/multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on CPU (gloo): the distillation
stage merged from three configs runs through ``python -m monai.bundle run``, the two ranks train on
disjoint shards, and only rank 0 logs and saves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_bundles import dataset_dir, run_stage, tiny_bundle


def test_multi_gpu_distill_two_ranks_disjoint_shards(tmp_path_factory, tmp_path):
    data = dataset_dir(tmp_path_factory, "isic2017")
    bundle = tiny_bundle("isic2017", tmp_path)
    out = tmp_path / "out"
    configs = bundle / "configs"
    for stage in ("train", "teacher"):  # the teacher starts from the ERM model
        run_stage(bundle, stage, dataset_dir=str(data), output_dir=str(out), bundle_root=str(bundle))
    # a fourth config that appends a handler recording the ids each rank trains on
    (configs / "record_ids.json").write_text(json.dumps({"+train#extra_handlers": [
        {"_target_": "shortcut_kd.workflows.bundle.SampleIdRecorder", "output_dir": "$@output_dir + '/seen_ids'"}]}))
    files = [str(configs / f) for f in ("train.json", "distill.json", "multi_gpu_train.json", "record_ids.json")]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", str(files), "--meta_file", str(configs / "metadata.json"),
           "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
           "--dataset_dir", str(data), "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    seen = [json.loads((out / "seen_ids" / f"seen_ids_rank{r}.json").read_text()) for r in (0, 1)]
    train_ids = {it["id"] for it in json.loads((out / "splits" / "train_biased.json").read_text())}
    assert list(seen[0]) == list(seen[1]) == ["1", "2"]
    for epoch in ("1", "2"):
        a, b = set(seen[0][epoch]), set(seen[1][epoch])
        assert a and not a & b, f"epoch {epoch}: the ranks share samples"
        assert len(a) == len(b) == len(seen[0][epoch]) and (a | b) <= train_ids
        assert len(a | b) == 2 * (len(train_ids) // 2)
    assert seen[0]["1"] != seen[0]["2"], "the sampler reshuffles every epoch"

    last = torch.load(out / "models" / "kd_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"] and last["distillation"]
    assert (out / "models" / "model.pt").is_file()
    writers = {p.name.split(".")[-2] for p in (out / "tensorboard" / "kd").glob("events.out.tfevents.*")}
    assert len(writers) == 1, f"TensorBoard events from more than one process: {writers}"
