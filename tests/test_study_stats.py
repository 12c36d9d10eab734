"""Study statistics: the paired bootstraps against hand-computed cases, win/tie/loss, rank tests and the CD figure."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shortcut_kd.study.stats import (
    mean_sd, paired_bootstrap_auc, plot_critical_difference, pooled_paired_bootstrap_auc, rank_comparison, win_tie_loss,
)

# 16 positives, 16 negatives (powers of two keep the ROC's steps exact in floating point). Model A separates them
# perfectly (AUC 1). Model B gives the positives and the negatives the same multiset of scores, so over the
# 16 x 16 pairs wins and losses balance and ties count one half: AUC 0.5 exactly.
LABELS = np.array([1] * 16 + [0] * 16)
PERFECT = np.concatenate([np.linspace(0.6, 1.0, 16), np.linspace(0.0, 0.4, 16)])
CHANCE = np.concatenate([np.linspace(0.0, 1.0, 16), np.linspace(0.0, 1.0, 16)[::-1]])
N = len(LABELS)


def test_paired_bootstrap_hand_computed_case():
    r = paired_bootstrap_auc(LABELS, PERFECT, CHANCE, n_bootstrap=500, seed=3)
    assert r["auc_a"] == 1.0 and r["auc_b"] == 0.5 and r["diff"] == 0.5
    low, high = r["ci"]
    assert 0.0 <= low <= r["diff"] <= high <= 1.0
    assert low < high  # B's resampled AUC varies
    # A is perfect in every replicate and B reaches AUC 1 in none, so no difference is <= 0: the smallest p
    assert r["p_value"] == pytest.approx(2 / 501)
    assert (r["n"], r["n_bootstrap"]) == (N, 500)
    # swapping the models mirrors everything
    s = paired_bootstrap_auc(LABELS, CHANCE, PERFECT, n_bootstrap=500, seed=3)
    assert s["diff"] == -0.5 and s["ci"] == pytest.approx([-high, -low]) and s["p_value"] == r["p_value"]


def test_identical_models_give_zero_difference_and_p_one():
    scores = np.random.default_rng(0).random(N)
    r = paired_bootstrap_auc(LABELS, scores, scores.copy(), n_bootstrap=300)
    assert r["diff"] == 0.0 and r["ci"] == [0.0, 0.0] and r["p_value"] == 1.0
    assert r["auc_a"] == r["auc_b"] == pytest.approx(roc_auc_score(LABELS, scores))


def test_bootstrap_is_paired():
    # B = A plus a tiny shift on one negative: unpaired resampling would spread the difference far beyond it
    rng = np.random.default_rng(1)
    a = rng.random(N)
    b = a.copy()
    b[-1] = b[LABELS == 1].max() + 1.0  # one negative moved above every positive
    r = paired_bootstrap_auc(LABELS, a, b, n_bootstrap=300)
    # per replicate the difference is (pairs that negative loses in A) / 256 for each copy drawn: never negative,
    # and 0 exactly when it is not drawn, in about (15/16)^16 = 36 % of the replicates
    assert r["diff"] > 0 and r["ci"][0] == 0.0 and r["p_value"] > 0.5


def test_stratified_resampling_keeps_both_classes():
    # 2 positives among 50: unstratified resampling would draw no positive in ~13 % of the replicates
    labels = np.array([1, 1] + [0] * 48)
    rng = np.random.default_rng(2)
    r = paired_bootstrap_auc(labels, rng.random(50), rng.random(50), n_bootstrap=400)
    assert all(math.isfinite(v) for v in [r["diff"], *r["ci"], r["p_value"]])
    assert 0.0 < r["p_value"] <= 1.0


def test_determinism_with_the_seed():
    rng = np.random.default_rng(4)
    a, b = rng.random(N), rng.random(N)
    r1 = paired_bootstrap_auc(LABELS, a, b, n_bootstrap=300, seed=7)
    assert r1 == paired_bootstrap_auc(LABELS, a, b, n_bootstrap=300, seed=7)
    assert r1["ci"] != paired_bootstrap_auc(LABELS, a, b, n_bootstrap=300, seed=8)["ci"]


@pytest.mark.parametrize("labels, a, b, match", [
    ([1, 0, 1], [0.1, 0.2], [0.1, 0.2, 0.3], "lengths 3, 2, 3"),
    ([1, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], "both classes"),
    ([1, 0, 2], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], "0 or 1"),
    ([1, 0, 1], [0.1, np.nan, 0.3], [0.1, 0.2, 0.3], "scores_a has 1 non-finite"),
    ([1, 0, 1], [0.1, 0.2, 0.3], [np.inf, 0.2, 0.3], "scores_b has 1 non-finite"),
])
def test_invalid_inputs_are_named(labels, a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_auc(labels, a, b, n_bootstrap=10)


def test_invalid_bootstrap_count_and_empty_groups():
    with pytest.raises(ValueError, match="n_bootstrap"):
        paired_bootstrap_auc(LABELS, PERFECT, CHANCE, n_bootstrap=0)
    with pytest.raises(ValueError, match="empty"):
        pooled_paired_bootstrap_auc([])
    with pytest.raises(ValueError, match="group 1: .*both classes"):
        pooled_paired_bootstrap_auc([(LABELS, PERFECT, CHANCE), ([1, 1], [0.1, 0.2], [0.3, 0.4])])


def test_pooled_equals_single_for_one_group():
    rng = np.random.default_rng(5)
    a, b = rng.random(N), rng.random(N)
    single = paired_bootstrap_auc(LABELS, a, b, n_bootstrap=300, seed=11)
    pooled = pooled_paired_bootstrap_auc([(LABELS, a, b)], n_bootstrap=300, seed=11)
    assert pooled == {**single, "n_groups": 1}


def test_pooled_takes_the_mean_over_groups():
    rng = np.random.default_rng(6)
    labels2 = np.array([1] * 10 + [0] * 30)
    a2, b2 = rng.random(40), rng.random(40)
    first = paired_bootstrap_auc(LABELS, PERFECT, CHANCE, n_bootstrap=300)
    second = paired_bootstrap_auc(labels2, a2, b2, n_bootstrap=300)
    pooled = pooled_paired_bootstrap_auc([(LABELS, PERFECT, CHANCE), (labels2, a2, b2)], n_bootstrap=300)
    assert pooled["diff"] == pytest.approx((first["diff"] + second["diff"]) / 2)
    assert pooled["auc_a"] == pytest.approx((first["auc_a"] + second["auc_a"]) / 2)
    assert pooled["auc_b"] == pytest.approx((first["auc_b"] + second["auc_b"]) / 2)
    assert pooled["n"] == N + 40 and pooled["n_groups"] == 2
    low, high = pooled["ci"]
    assert low <= pooled["diff"] <= high
    # the same group twice: every replicate averages two independent resamples of it, so the centre stays put
    twice = pooled_paired_bootstrap_auc([(labels2, a2, b2)] * 2, n_bootstrap=300)
    assert twice["diff"] == pytest.approx(second["diff"]) and twice["ci"] != second["ci"]
    # identical models in every group: no difference in any replicate
    same = pooled_paired_bootstrap_auc([(LABELS, a2[:N], a2[:N]), (labels2, b2, b2)], n_bootstrap=100)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0


def test_win_tie_loss():
    comparisons = [
        {"diff": 0.1, "p_value": 0.01},  # win
        {"diff": 0.1, "p_value": 0.05},  # tie: p must be < alpha
        {"diff": -0.2, "p_value": 0.001},  # loss
        {"diff": 0.0, "p_value": 0.001},  # tie: no difference
        {"diff": -0.05, "p_value": 0.5},  # tie
    ]
    assert win_tie_loss(comparisons) == {"win": 1, "tie": 3, "loss": 1}
    assert win_tie_loss(comparisons, alpha=0.1) == {"win": 2, "tie": 2, "loss": 1}
    assert win_tie_loss([]) == {"win": 0, "tie": 0, "loss": 0}
    with pytest.raises(ValueError, match="comparison 0"):
        win_tie_loss([{"diff": None, "p_value": 0.1}])


def _table(n_blocks):
    # "kd" always best; "erm" and "mixup" alternate second and third
    return {f"isic2017/patch/seed{i}": {"kd": 0.9, "erm": 0.7 + 0.02 * (i % 2), "mixup": 0.71 - 0.02 * (i % 2)}
            for i in range(n_blocks)}


def test_rank_comparison_one_method_always_best():
    r = rank_comparison(_table(10))
    assert r["methods"] == ["kd", "erm", "mixup"] and len(r["blocks"]) == 10 and r["dropped"] == {}
    assert r["average_ranks"] == {"kd": 1.0, "erm": 2.5, "mixup": 2.5}
    # Friedman by hand: 12 N / (k (k + 1)) * sum_j (R_j - (k + 1) / 2)^2 = 12 * 10 / 12 * (1 + 0.25 + 0.25) = 15
    assert r["friedman"]["statistic"] == pytest.approx(15.0)
    assert r["friedman"]["p_value"] < 0.05
    assert r["reason"] is None
    p = r["nemenyi_p"]
    assert p["kd"]["kd"] == 1.0 and p["kd"]["erm"] == pytest.approx(p["erm"]["kd"])
    assert p["kd"]["erm"] < 0.05 and p["erm"]["mixup"] == pytest.approx(1.0)


def test_critical_difference_formula():
    r = rank_comparison(_table(10), alpha=0.05)
    # k = 3, N = 10: CD = q_0.05 * sqrt(k (k + 1) / (6 N)) with q_0.05 = 2.343 (Demsar 2006, table 5)
    assert r["critical_difference"] == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 10)), abs=1e-3)
    assert rank_comparison(_table(10), alpha=0.1)["critical_difference"] < r["critical_difference"]


def test_ties_get_the_average_rank():
    table = {"a": {"m1": 0.8, "m2": 0.8, "m3": 0.6}, "b": {"m1": 0.9, "m2": 0.7, "m3": 0.7}}
    r = rank_comparison(table)
    # block a: m1, m2 share ranks 1-2 -> 1.5 each, m3 3; block b: m1 1, m2 and m3 share 2-3 -> 2.5 each
    assert r["average_ranks"] == {"m1": 1.25, "m2": 2.0, "m3": 2.75}


def test_method_missing_in_a_block_is_dropped_and_reported():
    table = _table(4)
    table["isic2017/patch/seed2"].pop("mixup")
    table["isic2017/patch/seed3"]["erm"] = None
    table["isic2017/patch/seed0"]["groupdro"] = 0.5
    r = rank_comparison(table)
    assert r["methods"] == ["kd"]
    assert r["dropped"] == {"erm": ["isic2017/patch/seed3"], "mixup": ["isic2017/patch/seed2"],
                            "groupdro": ["isic2017/patch/seed1", "isic2017/patch/seed2", "isic2017/patch/seed3"]}
    assert r["friedman"] is None and r["nemenyi_p"] is None and r["critical_difference"] is None
    assert "3 methods" in r["reason"]


def test_too_few_blocks_or_all_ties():
    assert "2 blocks" in rank_comparison(_table(1))["reason"]
    ties = {f"s{i}": {"x": 0.5, "y": 0.5, "z": 0.5} for i in range(3)}
    r = rank_comparison(ties)
    assert r["friedman"] is None and r["average_ranks"] == {"x": 2.0, "y": 2.0, "z": 2.0}
    with pytest.raises(ValueError, match="alpha"):
        rank_comparison(ties, alpha=1.5)


def test_plot_critical_difference_writes_a_png(tmp_path):
    path = plot_critical_difference(rank_comparison(_table(10)), tmp_path / "figs" / "cd.png")
    assert path == tmp_path / "figs" / "cd.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["cd.png"]  # no temporary file left
    with pytest.raises(ValueError, match="Nemenyi"):
        plot_critical_difference(rank_comparison(_table(1)), tmp_path / "none.png")


def test_mean_sd():
    assert mean_sd([1.0, None, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert mean_sd([4.0, None]) == {"mean": 4.0, "sd": None, "n": 1}
    assert mean_sd([None]) == {"mean": None, "sd": None, "n": 0}
