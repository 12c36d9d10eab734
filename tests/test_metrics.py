"""Metrics of one test set: each value against a hand-computed case, the bootstrap CI, degenerate sets."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from shortcut_kd.evaluation import TEST_ENTRY_KEYS, bootstrap_auc_ci, compute_metrics, evaluate, predict

# 9 samples: 4 positives, 5 negatives; threshold 0.5
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0]
BIAS = [1, 1, 0, 0, 1, 0, 1, 0, 0]
SCORES = [0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.3, 0.1, 0.2]


def test_hand_computed_case():
    m = compute_metrics(LABELS, SCORES, BIAS, n_bootstrap=200)
    # AUC: pairs (pos > neg) + 0.5 ties over 4*5 pairs:
    # 0.9 -> 5, 0.8 -> 5, 0.6 -> 4 (beats 0.55, 0.3, 0.1, 0.2), 0.3 -> 2 + 0.5 (tie with 0.3)
    assert m["auc"] == pytest.approx(16.5 / 20)
    # predictions: positives 1,1,1,0; negatives 1 (0.7), 1 (0.55), 0, 0, 0
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 3 / 5) / 2)
    assert m["tpr_bias"] == pytest.approx(1.0)  # positives with the shortcut: 0.9, 0.8 both found
    assert m["tpr_nobias"] == pytest.approx(0.5)  # without: 0.6 found, 0.3 missed
    assert m["delta_tpr"] == pytest.approx(0.5)
    # groups (label, bias): (1,1) 2/2, (1,0) 1/2, (0,1) [0.7 wrong, 0.3 right] 1/2, (0,0) [0.55 wrong, 0.1, 0.2] 2/3
    assert m["worst_group_accuracy"] == pytest.approx(0.5)
    assert m["n"] == 9
    assert set(m) == set(TEST_ENTRY_KEYS)  # no note: everything is defined
    json.dumps(m, allow_nan=False)


def test_delta_tpr_is_signed_and_threshold_is_inclusive():
    # now the positives without the shortcut are found, those with it missed: ΔTPR = 0 - 1
    m = compute_metrics([1, 1, 1, 1, 0, 0], [0.2, 0.3, 0.5, 0.9, 0.1, 0.6], [1, 1, 0, 0, 0, 1], n_bootstrap=0)
    assert m["tpr_bias"] == 0.0 and m["tpr_nobias"] == 1.0  # score 0.5 counts as positive
    assert m["delta_tpr"] == -1.0
    assert m["auc_ci"] is None  # bootstrap switched off


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(60), np.zeros(140)].astype(int)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # rounding makes ties
    a = compute_metrics(y, s, n_bootstrap=500, seed=3)
    b = compute_metrics(y, s, n_bootstrap=500, seed=3)
    c = compute_metrics(y, s, n_bootstrap=500, seed=4)
    lo, hi = a["auc_ci"]
    assert lo < a["auc"] < hi and 0 <= lo and hi <= 1
    assert a["auc_ci"] == b["auc_ci"]
    assert a["auc_ci"] != c["auc_ci"]
    assert hi - lo < 0.25
    # a wider interval for lower coverage would be wrong
    lo80, hi80 = compute_metrics(y, s, n_bootstrap=500, seed=3, ci=0.8)["auc_ci"]
    assert lo <= lo80 and hi80 <= hi


def test_bootstrap_matches_sklearn_per_resample():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(15), np.zeros(25)].astype(int)
    s = rng.integers(0, 10, size=40) / 10  # many ties
    n_boot = 50
    ci = bootstrap_auc_ci(y, s, n_bootstrap=n_boot, seed=7, ci=0.9)
    # the same stratified draws, one sklearn call each
    draw = np.random.default_rng(7)
    pos, neg = s[y == 1], s[y == 0]
    pi, ni = draw.integers(0, 15, (n_boot, 15)), draw.integers(0, 25, (n_boot, 25))
    aucs = [roc_auc_score(np.r_[np.ones(15), np.zeros(25)], np.r_[pos[p], neg[q]]) for p, q in zip(pi, ni)]
    assert ci == pytest.approx(list(np.quantile(aucs, [0.05, 0.95])))


def test_bootstrap_stratified_with_one_positive():
    y = np.r_[1, np.zeros(50)].astype(int)
    s = np.r_[0.8, np.linspace(0, 1, 50)]
    m = compute_metrics(y, s, n_bootstrap=100)
    assert m["auc_ci"] is not None and m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]


def test_single_class_is_none_not_nan():
    m = compute_metrics([1, 1, 1], [0.9, 0.4, 0.7], [1, 0, 1])
    assert m["auc"] is None and m["auc_ci"] is None
    assert "only positives" in m["note"]
    assert m["accuracy"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["tpr_bias"] == 1.0 and m["tpr_nobias"] == 0.0
    json.dumps(m, allow_nan=False)


def test_conflicting_set_has_no_delta_tpr():
    # conflicting: shortcut on every negative, on no positive
    m = compute_metrics([1, 1, 0, 0], [0.9, 0.2, 0.8, 0.1], [0, 0, 1, 1], n_bootstrap=50)
    assert m["tpr_bias"] is None and m["delta_tpr"] is None
    assert m["tpr_nobias"] == 0.5
    assert "delta_tpr undefined" in m["note"]
    assert m["worst_group_accuracy"] == 0.5


def test_without_bias_flags_groups_are_classes():
    m = compute_metrics([1, 1, 0, 0, 0], [0.9, 0.2, 0.1, 0.1, 0.1], None, n_bootstrap=0)
    assert m["tpr_bias"] is None and m["tpr_nobias"] is None
    assert m["worst_group_accuracy"] == 0.5  # positives 1/2, negatives 3/3


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in length"):
        compute_metrics([1, 0], [0.5])
    with pytest.raises(ValueError, match="0 or 1"):
        compute_metrics([2, 0], [0.5, 0.1])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([1, 0], [np.nan, 0.1])


class _Mean(nn.Module):
    """Two logits (0, 4 * (mean - 0.5)): the positive score grows with the image's mean."""

    def forward(self, x):
        z = 4 * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _batches(means, labels, bias, batch=2):
    out = []
    for i in range(0, len(means), batch):
        sl = slice(i, i + batch)
        out.append({"image": torch.tensor(means[sl]).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).float(),
                    "label": torch.tensor(labels[sl]), "bias": torch.tensor(bias[sl]),
                    "id": [f"s{j}" for j in range(i, min(i + batch, len(means)))]})
    return out


def test_predict_and_evaluate():
    model = _Mean().train()
    means, labels, bias = [0.9, 0.1, 0.7, 0.2, 0.5], [1, 0, 1, 0, 1], [1, 0, 0, 1, 1]
    pred = predict(model, _batches(means, labels, bias))
    assert model.training  # mode restored
    expected = 1 / (1 + np.exp(-4 * (np.array(means) - 0.5)))
    np.testing.assert_allclose(pred["scores"], expected, rtol=1e-5)
    assert pred["labels"].tolist() == labels and pred["bias"].tolist() == bias
    assert pred["ids"].tolist() == ["s0", "s1", "s2", "s3", "s4"]
    res = evaluate(model, {"unbiased": _batches(means, labels, bias), "clean": _batches(means, labels, [0] * 5)},
                   n_bootstrap=20)
    assert set(res) == {"unbiased", "clean"}
    assert res["unbiased"]["auc"] == 1.0 and res["unbiased"]["n"] == 5
    assert res["clean"]["tpr_bias"] is None


def test_predict_rejects_one_logit():
    with pytest.raises(ValueError, match="num_classes=2"):
        predict(nn.Flatten(), [{"image": torch.zeros(2, 1), "label": torch.zeros(2)}])
