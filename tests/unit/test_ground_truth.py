import numpy as np
import pytest

from clipbias.ground_truth import head_attribute_table, head_margins


def _toy():
    # 4 images, one per class x attribute cell; 1 stored layer (number 3), 2 heads, D = 2.
    labels = np.array([0, 0, 1, 1])
    attribute = np.array([0, 1, 0, 1])
    classifier = np.eye(2, dtype=np.float32)  # t0 = e0, t1 = e1 -> margin direction (-1, 1)
    heads = np.zeros((4, 1, 2, 2), dtype=np.float32)
    heads[:, 0, 0] = [[0, 0], [0, 2], [1, 0], [0, 1]]  # margins 0, 2, -1, 1
    heads[:, 0, 1] = [[1, 1], [1, 1], [2, 2], [2, 2]]  # margins 0 everywhere
    return heads, classifier, labels, attribute


def test_hand_computed_binary():
    heads, classifier, labels, attribute = _toy()
    np.testing.assert_allclose(head_margins(heads, classifier, labels)[:, 0, 0], [0, 2, -1, 1])
    df = head_attribute_table(heads, [3], classifier, labels, attribute, n_boot=200, seed=0)
    assert list(df.columns) == [
        "layer",
        "head",
        "head_id",
        "effect",
        "abs_effect",
        "ci_low",
        "ci_high",
        "rank",
    ]
    assert len(df) == 2
    assert df["head_id"].tolist() == ["L3H0", "L3H1"]
    # head 0: class 0: 2 - 0 = 2; class 1: 1 - (-1) = 2 -> mean 2
    np.testing.assert_allclose(df["effect"], [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(df["abs_effect"], [2.0, 0.0], atol=1e-12)
    # one image per cell: every resample is the same -> degenerate CI at the point estimate
    np.testing.assert_allclose(df["ci_low"], df["effect"], atol=1e-12)
    np.testing.assert_allclose(df["ci_high"], df["effect"], atol=1e-12)
    assert df["rank"].tolist() == [1, 2]


def test_negative_effect_ranks_by_abs_and_ci_brackets():
    rng = np.random.default_rng(0)
    n, d = 400, 4
    labels = np.repeat([0, 1], n // 2)
    attribute = np.tile([0, 1], n // 2)
    classifier = np.eye(d, 2)
    heads = rng.normal(0, 0.1, (n, 2, 3, d))
    heads[attribute == 1, 1, 2, 0] += 0.5  # pushes towards class 0 when attribute = 1
    df = head_attribute_table(heads, [10, 11], classifier, labels, attribute, n_boot=300)
    top = df.sort_values("rank").iloc[0]
    assert top["head_id"] == "L11H2"
    assert top["effect"] == pytest.approx(-0.5, abs=0.05)
    assert top["ci_low"] < top["effect"] < top["ci_high"] < 0
    assert sorted(df["rank"]) == list(range(1, 7))
    assert (df["ci_low"] <= df["effect"]).all() and (df["effect"] <= df["ci_high"]).all()
    # seeded bootstrap is reproducible
    df2 = head_attribute_table(heads, [10, 11], classifier, labels, attribute, n_boot=300)
    np.testing.assert_array_equal(df["ci_low"], df2["ci_low"])


def test_multiclass_margin_uses_true_class_vs_mean_of_others():
    classifier = np.eye(3)
    labels = np.array([0, 1, 2, 0])
    heads = np.zeros((4, 1, 1, 3))
    heads[:, 0, 0] = [[3, 0, 0], [3, 0, 0], [0, 2, 4], [0, 2, 4]]
    # y=0: 3 - 0; y=1: 0 - 1.5; y=2: 4 - 1; y=0: 0 - 3
    np.testing.assert_allclose(head_margins(heads, classifier, labels)[:, 0, 0], [3, -1.5, 3, -3])
    attribute = np.array([0, 0, 0, 1])
    df = head_attribute_table(heads, [0], classifier, labels, attribute, n_boot=10)
    # only class 0 has both attribute values: -3 - 3
    assert df["effect"].item() == pytest.approx(-6.0)


def test_input_validation():
    heads, classifier, labels, attribute = _toy()
    with pytest.raises(ValueError):
        head_attribute_table(heads, [1, 2], classifier, labels, attribute)
    with pytest.raises(ValueError):
        head_attribute_table(heads, [1], classifier, labels, np.zeros(4))
