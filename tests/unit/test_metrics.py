"""Metrics (METHODS §7) checked against independent numpy / pandas / scipy computations."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clipbias import metrics


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    n = 600
    labels = rng.integers(0, 2, n)
    place = rng.integers(0, 2, n)
    groups = 2 * labels + place
    # group-dependent accuracy
    p_ok = np.array([0.95, 0.6, 0.5, 0.9])[groups]
    preds = np.where(rng.random(n) < p_ok, labels, 1 - labels)
    return preds, labels, groups


def test_point_metrics_match_pandas(toy):
    preds, labels, groups = toy
    df = pd.DataFrame({"ok": preds == labels, "g": groups})
    by_group = df.groupby("g")["ok"].mean()
    acc = metrics.group_accuracies(preds, labels, groups)
    assert list(acc) == [0, 1, 2, 3]
    np.testing.assert_allclose(list(acc.values()), by_group.to_numpy())
    assert metrics.worst_group_accuracy(preds, labels, groups) == pytest.approx(by_group.min())
    assert metrics.avg_overall_accuracy(preds, labels) == pytest.approx(df["ok"].mean())
    assert metrics.avg_group_accuracy(preds, labels, groups) == pytest.approx(by_group.mean())
    pm = metrics.point_metrics(preds, labels, groups)
    assert pm["gap"] == pytest.approx(df["ok"].mean() - by_group.min())
    w = [0.7, 0.05, 0.05, 0.2]
    assert metrics.avg_adjusted_accuracy(preds, labels, groups, w) == pytest.approx(
        np.average(by_group.to_numpy(), weights=w)
    )


def test_negative_groups_only_count_overall():
    preds = np.array([0, 1, 1, 0])
    labels = np.array([0, 1, 0, 0])
    groups = np.array([-1, -1, 0, 0])
    assert metrics.group_accuracies(preds, labels, groups) == {0: 0.5}
    assert metrics.avg_overall_accuracy(preds, labels) == 0.75
    no_groups = metrics.point_metrics(preds, labels, np.full(4, -1))
    assert set(no_groups) == {"avg_acc"}


def test_predict_with_and_without_candidates():
    emb = np.array([[1.0, 0.0, 0.0], [0.0, 0.2, 1.0]])
    cls = np.eye(3)
    np.testing.assert_array_equal(metrics.predict(emb, cls), [0, 2])
    # sample 0 among {2, 0}: class 0; sample 1 among {0, 1}: class 1 (global ids returned)
    np.testing.assert_array_equal(metrics.predict(emb, cls, np.array([[2, 0], [0, 1]])), [0, 1])


def test_evaluate_predictions_table(toy):
    preds, labels, groups = toy
    names = ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]
    df = metrics.evaluate_predictions(preds, labels, groups, names, "zs", "test", n_boot=1000)
    assert list(df.columns[:6]) == ["method", "split", "metric", "value", "ci_low", "ci_high"]
    assert list(df["metric"]) == [
        "avg_acc", "avg_group_acc", "worst_group_acc", "gap",
        "acc_group_0", "acc_group_1", "acc_group_2", "acc_group_3",
    ]  # fmt: skip
    assert (df["method"] == "zs").all() and (df["split"] == "test").all()
    assert list(df["group_name"].iloc[4:]) == names
    assert df["n"].iloc[4:].sum() == len(labels)
    # every CI contains its point estimate
    assert (df["ci_low"] <= df["value"] + 1e-12).all()
    assert (df["value"] <= df["ci_high"] + 1e-12).all()
    pm = metrics.point_metrics(preds, labels, groups)
    for k, v in pm.items():
        assert df.set_index("metric").loc[k, "value"] == pytest.approx(v)


def test_bootstrap_seeded_and_reproducible(toy):
    preds, labels, groups = toy
    a = metrics.evaluate_predictions(preds, labels, groups, n_boot=500, seed=7)
    b = metrics.evaluate_predictions(preds, labels, groups, n_boot=500, seed=7)
    c = metrics.evaluate_predictions(preds, labels, groups, n_boot=500, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"], c["ci_low"])


def test_bootstrap_indices_stratified_keep_group_sizes(toy):
    _, _, groups = toy
    idx = metrics.bootstrap_indices(len(groups), 50, seed=1, groups=groups)
    assert idx.shape == (50, len(groups))
    for row in idx:
        np.testing.assert_array_equal(np.bincount(groups[row]), np.bincount(groups))


def test_bootstrap_ci_agrees_with_scipy():
    # one stratum: our percentile CI of the accuracy should match scipy.stats.bootstrap
    rng = np.random.default_rng(3)
    correct = rng.random(2000) < 0.8
    preds = correct.astype(int)
    labels = np.ones(2000, dtype=int)
    res = metrics.bootstrap_metrics(preds, labels, None, n_boot=4000, seed=0)
    _, lo, hi = res["avg_acc"]
    ref = stats.bootstrap(
        (correct.astype(float),), np.mean, n_resamples=4000, method="percentile",
        confidence_level=0.95, random_state=np.random.default_rng(1),
    ).confidence_interval  # fmt: skip
    assert lo == pytest.approx(ref.low, abs=4e-3)
    assert hi == pytest.approx(ref.high, abs=4e-3)


def test_unstratified_matches_stratified_shape(toy):
    preds, labels, groups = toy
    df = metrics.evaluate_predictions(preds, labels, groups, n_boot=200, stratified=False)
    assert df["ci_low"].notna().all()


def test_adjusted_average_row(toy):
    preds, labels, groups = toy
    w = {0: 0.73, 1: 0.04, 2: 0.01, 3: 0.22}
    df = metrics.evaluate_predictions(preds, labels, groups, n_boot=100, group_weights=w)
    v = df.set_index("metric").loc["avg_adj_acc", "value"]
    assert v == pytest.approx(metrics.avg_adjusted_accuracy(preds, labels, groups, w))


def test_paired_bootstrap(toy):
    preds, labels, groups = toy
    same = metrics.paired_bootstrap_difference(preds, preds, labels, groups, n_boot=300)
    assert np.allclose(same[["diff", "ci_low", "ci_high"]].to_numpy(), 0.0)
    better = np.where(groups == 1, labels, preds)  # fixes group 1 errors
    d = metrics.paired_bootstrap_difference(better, preds, labels, groups, n_boot=500, seed=2)
    d = d.set_index("metric")
    pa = metrics.point_metrics(better, labels, groups)
    pb = metrics.point_metrics(preds, labels, groups)
    assert d.loc["avg_acc", "diff"] == pytest.approx(pa["avg_acc"] - pb["avg_acc"])
    assert d.loc["acc_group_1", "ci_low"] > 0
    # groups other than 1 are untouched: their paired difference is exactly zero
    assert d.loc["acc_group_0", "ci_low"] == 0 and d.loc["acc_group_0", "ci_high"] == 0
    assert (d["ci_low"] <= d["diff"] + 1e-12).all() and (d["diff"] <= d["ci_high"] + 1e-12).all()


def test_mcnemar_against_binomtest():
    rng = np.random.default_rng(5)
    a = rng.random(300) < 0.7
    b = rng.random(300) < 0.6
    out = metrics.mcnemar_exact(a, b)
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert (out["b"], out["c"], out["n_discordant"]) == (n01, n10, n01 + n10)
    assert out["pvalue"] == pytest.approx(stats.binomtest(n01, n01 + n10, 0.5).pvalue)
    assert metrics.mcnemar_exact(a, a)["pvalue"] == 1.0
