"""The use-based layer measure: a model that merges a shortcut into its label features shows an
aligned-vs-conflicting gap from that layer on; one that only encodes the shortcut, kept apart, shows none —
though the shortcut is equally decodable from both."""

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_kd.evaluation.layer_probes import probe_layers
from shortcut_kd.evaluation.shortcut_use import format_use_table, plot_shortcut_use, shortcut_use, uptake_depth


class _TwoLayer(nn.Module):
    """Input [signal, shortcut, noise, noise]; ``early`` copies it; ``late`` either merges the shortcut into
    the signal (``merge=True``: [signal + 2 shortcut, noise], the shortcut no longer apart) or keeps the two
    apart ([signal, shortcut]); ``head`` reads the first late feature."""

    def __init__(self, merge: bool) -> None:
        super().__init__()
        self.early = nn.Linear(4, 4, bias=False)
        self.late = nn.Linear(4, 2, bias=False)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.early.weight.copy_(torch.eye(4))
            merged, apart = [[1.0, 2.0, 0, 0], [0.0, 0.0, 1.0, 0]], [[1.0, 0.0, 0, 0], [0.0, 1.0, 0, 0]]
            self.late.weight.copy_(torch.tensor(merged if merge else apart))
            self.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.late(self.early(x)))


def _batches(n, seed, bias_of):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    bias = bias_of(label, rng)
    x = np.stack([label + rng.normal(0, 0.7, n), bias + rng.normal(0, 0.1, n), rng.normal(0, 1, n),
                  rng.normal(0, 1, n)], 1).astype(np.float32)
    return [{"image": torch.from_numpy(x[i:i + 50]), "label": torch.from_numpy(label[i:i + 50]),
             "bias": torch.from_numpy(bias[i:i + 50])} for i in range(0, n, 50)]


def _sets(seed=0):
    return (_batches(400, seed, lambda y, rng: rng.integers(0, 2, len(y))),  # bias-free: independent
            _batches(300, seed + 1, lambda y, rng: y.copy()),               # aligned
            _batches(300, seed + 2, lambda y, rng: 1 - y))                  # conflicting


def test_use_separates_a_model_that_uses_the_shortcut_from_one_that_only_encodes_it(tmp_path):
    fit, aligned, conflicting = _sets()
    uses = shortcut_use(_TwoLayer(merge=True), ["early", "late"], fit, aligned, conflicting, model_name="uses")
    encodes = shortcut_use(_TwoLayer(merge=False), ["early", "late"], fit, aligned, conflicting,
                           model_name="encodes")
    by = {(r["model"], r["tap"]): r for r in uses + encodes}
    assert [r["tap"] for r in uses] == ["early", "late", "output"]
    assert by[("uses", "late")]["use"] > 0.3 and by[("uses", "output")]["use"] > 0.3
    assert all(abs(r["use"]) < 0.06 for r in encodes)
    assert abs(by[("uses", "early")]["use"]) < 0.06  # the early layer keeps the two apart in both
    assert uptake_depth(uses) == {"tap": "late", "depth": 1, "relative_depth": 0.5}
    assert uptake_depth(encodes) is None and uptake_depth(encodes, include_output=True) is None
    # decodability cannot tell them apart: the shortcut is decodable at every layer of both
    for merge in (True, False):
        rows = probe_layers(_TwoLayer(merge), ["early", "late"], fit[:4], fit[4:], targets=("bias",))
        assert all(r["auc"] > 0.9 for r in rows)
    table = format_use_table(uses + encodes)
    assert "`uses` aligned / conflicting / use" in table and "| `late` |" in table
    assert plot_shortcut_use(uses + encodes, tmp_path / "use.png").stat().st_size > 0
    with pytest.raises(ValueError, match="several models"):
        uptake_depth(uses + encodes)


def test_study_summary_compares_localized_with_diffuse_and_keeps_a_native_bias_apart(tmp_path):
    """``summarise_layer_use``: ERM's uptake depth of a localized vs a diffuse shortcut per seed; a dataset's own
    bias is reported as ``native``, not forced into either kind."""
    import json

    from shortcut_kd.study.config import read_study
    from shortcut_kd.study.layer_use import summarise_layer_use

    study = tmp_path / "s.yaml"
    study.write_text("name: s\npipelines:\n  - {dataset: chexpert, preset: demo_chexpert, synthetic_n: 100, "
                     "shortcuts: [tag, noise]}\n  - {dataset: simba, preset: demo_simba, synthetic_n: 100, "
                     "shortcuts: [native]}\nmethods: [erm]\nseeds: [0]\ntuning: {seeds: [100], trials: 1}\n")
    cfg = read_study(study)

    def rows(first_used: int) -> list[dict]:
        return [{"model": "erm", "tap": f"layer{d + 1}", "depth": d, "relative_depth": d / 4,
                 "use": 0.5 if d >= first_used else 0.0} for d in range(4)]

    for shortcut, first in (("tag", 1), ("noise", 3), ("native", 0)):
        folder = tmp_path / "cells" / ("simba" if shortcut == "native" else "chexpert") / shortcut / "seed0"
        folder.mkdir(parents=True)
        (folder / "layer_use.json").write_text(json.dumps({"rows": rows(first), "methods": ["erm"]}))
    summary = summarise_layer_use(cfg, tmp_path)
    assert summary["cells"]["simba/native"]["kind"] == "native"
    (comparison,) = summary["localized_vs_diffuse"]
    assert (comparison["localized"], comparison["diffuse"], comparison["answer"]) == ("tag", "noise",
                                                                                      "localized earlier")
    (pair,) = comparison["seeds"]
    assert pair["seed"] == 0 and pair["localized"] < pair["diffuse"]


class _ShortcutHead(nn.Module):
    """Logits [shortcut, signal + 3 shortcut]: the model's decision (logit 1 − logit 0 = signal + 2 shortcut)
    relies on the shortcut, yet a probe refitted on the two logits could cancel it (logit 1 − 3 logit 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Identity()
        self.head = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 1.0, 0, 0], [1.0, 3.0, 0, 0]]))

    def forward(self, x):
        return self.head(self.early(x))


def test_output_row_scores_the_models_own_decision_not_a_refitted_probe():
    from sklearn.metrics import roc_auc_score

    fit, aligned, conflicting = _sets()
    model = _ShortcutHead()
    (early, output) = shortcut_use(model, ["early"], fit, aligned, conflicting)
    assert output["tap"] == "output" and output["n_fit"] == 0

    def own_auc(batches):
        with torch.no_grad():
            score = torch.cat([model(b["image"]).softmax(1)[:, 1] for b in batches]).numpy()
        return roc_auc_score(torch.cat([b["label"] for b in batches]).numpy(), score)

    assert output["auc_aligned"] == pytest.approx(own_auc(aligned))
    assert output["auc_conflicting"] == pytest.approx(own_auc(conflicting))
    assert output["use"] > 0.3  # the decision uses the shortcut
    assert abs(early["use"]) < 0.06  # the input keeps signal and shortcut apart


def test_an_order_measured_on_some_seeds_only_is_not_claimed(tmp_path):
    import json

    from shortcut_kd.study.config import read_study
    from shortcut_kd.study.layer_use import summarise_layer_use

    study = tmp_path / "s.yaml"
    study.write_text("name: s\npipelines:\n  - {dataset: chexpert, preset: demo_chexpert, synthetic_n: 100, "
                     "shortcuts: [tag, noise]}\nmethods: [erm]\nseeds: [0, 1]\ntuning: {seeds: [100], trials: 1}\n")
    used_from = {("tag", 0): 1, ("noise", 0): 3, ("tag", 1): 1, ("noise", 1): None}  # seed 1: no noise uptake
    for (shortcut, seed), first in used_from.items():
        folder = tmp_path / "cells" / "chexpert" / shortcut / f"seed{seed}"
        folder.mkdir(parents=True)
        rows = [{"model": "erm", "tap": f"layer{d + 1}", "depth": d,
                 "use": 0.5 if first is not None and d >= first else 0.0} for d in range(4)]
        (folder / "layer_use.json").write_text(json.dumps({"rows": rows, "methods": ["erm"]}))
    (comparison,) = summarise_layer_use(read_study(study), tmp_path)["localized_vs_diffuse"]
    assert comparison["earlier"] == 1 and comparison["answer"] == "not established: ordered on 1 of 2 seeds"
