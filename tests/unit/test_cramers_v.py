"""Cramér's V (METHODS §6.8) against direct scipy computations and hand-computed tables."""

import numpy as np
import pytest
from scipy import stats

from clipbias import metrics


def _samples_from_table(table):
    """(pred, attr) arrays whose contingency table is ``table`` (row i = class i)."""
    pred, attr = [], []
    for i, row in enumerate(np.asarray(table)):
        for j, cnt in enumerate(row):
            pred += [i] * int(cnt)
            attr += [j] * int(cnt)
    return np.array(pred), np.array(attr)


def _direct_v(table):
    t = np.asarray(table, dtype=float)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0]
    chi2 = stats.chi2_contingency(t, correction=False)[0]
    return np.sqrt(chi2 / (t.sum() * (min(t.shape) - 1)))


@pytest.mark.parametrize("shape", [(5, 2), (7, 3), (42, 2), (3, 3)])
def test_agrees_with_chi2_contingency_on_random_tables(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        table = rng.integers(1, 40, size=shape)
        pred, attr = _samples_from_table(table)
        perm = rng.permutation(len(pred))
        v = metrics.cramers_v(pred[perm], attr[perm])
        assert v == pytest.approx(_direct_v(table), rel=1e-12)
        assert v == pytest.approx(
            stats.contingency.association(table, method="cramer", correction=False), rel=1e-12
        )


def test_empty_rows_are_dropped():
    # predicted classes 0, 3, 7 out of 10; rows 1, 2, 4-6, 8, 9 are empty
    compact = np.array([[12, 3], [4, 9], [6, 6]])
    pred, attr = _samples_from_table(compact)
    pred = np.array([0, 3, 7])[pred]
    full = np.zeros((10, 2), dtype=int)
    full[[0, 3, 7]] = compact
    expected = _direct_v(compact)
    assert metrics.cramers_v(pred, attr, n_classes=10) == pytest.approx(expected)
    assert metrics.cramers_v_counts(full) == pytest.approx(expected)
    rows, cols, counts = metrics.contingency_table(pred, attr, n_classes=10)
    np.testing.assert_array_equal(rows, [0, 3, 7])
    np.testing.assert_array_equal(cols, [0, 1])
    np.testing.assert_array_equal(counts, compact)


def test_unknown_attribute_values_are_excluded():
    pred, attr = _samples_from_table([[10, 2], [3, 11]])
    noisy_pred = np.concatenate([pred, [0, 1, 1, 1]])
    noisy_attr = np.concatenate([attr, [-1, -1, -1, -1]])
    assert metrics.cramers_v(noisy_pred, noisy_attr) == pytest.approx(metrics.cramers_v(pred, attr))
    tab = metrics.cramers_v_table(noisy_pred, noisy_pred, noisy_attr)
    assert tab["n"] == 26 and tab["n_excluded"] == 4


def test_perfect_association_is_one():
    # 2 attribute values, 4 classes: classes 0, 1 only value 0, classes 2, 3 only value 1
    pred, attr = _samples_from_table([[5, 0], [7, 0], [0, 4], [0, 9]])
    assert metrics.cramers_v(pred, attr) == pytest.approx(1.0)
    # 3 values, 3 classes, one-to-one
    pred3, attr3 = _samples_from_table(np.diag([6, 8, 5]))
    assert metrics.cramers_v(pred3, attr3) == pytest.approx(1.0)
    # Bergsma: [[10, 0], [0, 10]]: phi2~ = 1 - 1/19 = 18/19, r~ - 1 = c~ - 1 = 18/19 -> 1
    pd_, at_ = _samples_from_table([[10, 0], [0, 10]])
    assert metrics.cramers_v(pd_, at_, bias_correction=True) == pytest.approx(1.0)


def test_independence_gives_zero():
    # an exact outer-product table has chi2 = 0
    table = np.outer([10, 20, 30], [2, 3])
    pred, attr = _samples_from_table(table)
    assert metrics.cramers_v(pred, attr) == pytest.approx(0.0, abs=1e-12)
    assert metrics.cramers_v(pred, attr, bias_correction=True) == 0.0
    rng = np.random.default_rng(1)
    p = rng.integers(0, 5, 20000)
    a = rng.integers(0, 3, 20000)
    assert metrics.cramers_v(p, a) < 0.03


def test_bergsma_correction_by_hand():
    # [[20, 10], [10, 20]], n = 60: E = 15, chi2 = 4 * 25/15 = 20/3, phi2 = 1/9, V = 1/3.
    # phi2~ = 1/9 - 1/59 = 50/531; r~ - 1 = c~ - 1 = 1 - 1/59 = 58/59;
    # V~^2 = (50/531) * (59/58) = 25/261.
    pred, attr = _samples_from_table([[20, 10], [10, 20]])
    assert metrics.cramers_v(pred, attr) == pytest.approx(1 / 3)
    assert metrics.cramers_v(pred, attr, bias_correction=True) == pytest.approx(np.sqrt(25 / 261))
    # 2 classes x 3 values [[10, 5, 5], [5, 10, 5]], n = 40: E = (7.5, 7.5, 5) per row,
    # chi2 = 4 * 2.5^2 / 7.5 = 10/3, phi2 = 1/12, min(r, c) - 1 = 1, V = sqrt(1/12).
    # phi2~ = 1/12 - 2*1/39 = 5/156; r~ - 1 = 1 - 1/39 = 38/39; c~ - 1 = 2 - 4/39 = 74/39;
    # V~^2 = (5/156) / (38/39) = 5/152.
    pred, attr = _samples_from_table([[10, 5, 5], [5, 10, 5]])
    assert metrics.cramers_v(pred, attr) == pytest.approx(np.sqrt(1 / 12))
    assert metrics.cramers_v(pred, attr, bias_correction=True) == pytest.approx(np.sqrt(5 / 152))


def test_three_values_uses_min_r_c_minus_one():
    # 4 classes x 3 values: denominator n * 2
    table = np.array([[30, 5, 5], [5, 30, 5], [5, 5, 30], [10, 10, 10]])
    pred, attr = _samples_from_table(table)
    chi2 = stats.chi2_contingency(table, correction=False)[0]
    assert metrics.cramers_v(pred, attr) == pytest.approx(np.sqrt(chi2 / (table.sum() * 2)))


def test_degenerate_tables_are_nan():
    assert np.isnan(metrics.cramers_v(np.zeros(10, int), np.arange(10) % 2))  # one class
    assert np.isnan(metrics.cramers_v(np.arange(10) % 3, np.zeros(10, int)))  # one value


def test_bad_input_errors():
    with pytest.raises(ValueError, match="same length"):
        metrics.cramers_v(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="n_classes"):
        metrics.cramers_v(np.array([0, 5]), np.array([0, 1]), n_classes=3)
    with pytest.raises(ValueError, match="valid attribute"):
        metrics.cramers_v(np.array([0, 1]), np.array([-1, -1]))
    with pytest.raises(ValueError, match="integer"):
        metrics.cramers_v(np.array([0.5, 1.0]), np.array([0, 1]))


def test_cramers_v_table_reference_value():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 500)
    attr = np.where(rng.random(500) < 0.2 + 0.2 * labels, 1, 0)
    tab = metrics.cramers_v_table(labels, labels, attr, n_classes=4)
    assert tab["v"] == pytest.approx(tab["v_true"])  # a perfect classifier: V(pred) = V(true)
    assert tab["v_true"] == pytest.approx(metrics.cramers_v(labels, attr))
    assert tab["v_bc"] < tab["v"]
    assert tab["n_rows"] == 4 and tab["n_values"] == 2 and tab["n"] == 500


def _biased_preds(seed=0, n=1200):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    attr = rng.integers(0, 2, n)
    # before: attr == 1 pushes 30 % of samples to class 0; after: that push is gone
    before = np.where((attr == 1) & (rng.random(n) < 0.3), 0, labels)
    after = labels.copy()
    return before, after, labels, attr


def test_delta_v_bootstrap_paired_interval():
    before, after, labels, attr = _biased_preds()
    res = metrics.delta_v_bootstrap(before, after, labels, attr, n_boot=300, seed=7)
    assert res["v_before"] == pytest.approx(metrics.cramers_v(before, attr))
    assert res["v_after"] == pytest.approx(metrics.cramers_v(after, attr))
    assert res["delta_v"] == pytest.approx(res["v_after"] - res["v_before"])
    assert res["ci_low"] <= res["delta_v"] <= res["ci_high"] < 0
    assert res["p_boot"] < 0.01 and res["n"] == len(attr) and res["n_boot"] == 300
    assert metrics.delta_v_bootstrap(before, after, labels, attr, n_boot=300, seed=7) == res
    other = metrics.delta_v_bootstrap(before, after, labels, attr, n_boot=300, seed=8)
    assert other["ci_low"] != res["ci_low"] and other["delta_v"] == res["delta_v"]
    # identical predictions: every paired resample gives exactly 0
    same = metrics.delta_v_bootstrap(before, before, labels, attr, n_boot=50, seed=1)
    assert same["delta_v"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


def test_delta_v_bootstrap_stratifies_by_class_and_attribute():
    before, after, labels, attr = _biased_preds(n=400)
    attr[:20] = -1  # excluded
    idx_cells = labels[attr >= 0] * 2 + attr[attr >= 0]
    res = metrics.delta_v_bootstrap(before, after, labels, attr, n_boot=20, seed=3)
    assert res["n"] == 380
    # every resample keeps the cell sizes: check with the same generator stream
    rng = np.random.default_rng(3)
    idx = metrics.bootstrap_indices(380, 20, rng, groups=idx_cells)
    for row in idx:
        np.testing.assert_array_equal(
            np.bincount(idx_cells[row], minlength=6), np.bincount(idx_cells, minlength=6)
        )


def test_protected_v_rows_by_hand():
    """Test set balanced over class x attribute: V(true class, attr) = 0. A classifier that
    predicts the attribute instead of the class has V(pred, attr) = 1, excess 1 (no spread:
    every resample is a diagonal table); one that predicts the class exactly has excess 0."""
    from clipbias.metrics import protected_v_rows

    labels = np.array([0, 0, 1, 1] * 25)
    attr = np.array([0, 1, 0, 1] * 25)
    rows = protected_v_rows("m", "test", attr.copy(), labels, attr, "colour", n_boot=50, seed=0)
    got = {r["metric"]: r for r in rows}
    assert set(got) == {"protected_v", "protected_v_excess"}
    assert got["protected_v"]["value"] == pytest.approx(1.0)
    ex = got["protected_v_excess"]
    assert ex["value"] == pytest.approx(1.0) and ex["ci_low"] == pytest.approx(1.0)
    assert ex["group_name"] == "colour" and ex["n"] == 100
    exact = protected_v_rows("m", "test", labels.copy(), labels, attr, "colour", n_boot=50)
    assert [r["value"] for r in exact] == pytest.approx([0.0, 0.0])
    # samples without an attribute value (attr < 0) are left out
    attr2 = attr.copy()
    attr2[:4] = -1
    rows2 = protected_v_rows("m", "test", attr.copy(), labels, attr2, "colour", n_boot=0)
    assert rows2[0]["n"] == 96 and np.isnan(rows2[1]["ci_low"])


def test_protected_v_of_a_constant_prediction_is_nan_with_a_note():
    """V(pred, attr) of a method that predicts one class for every image is 0 / 0 (one row
    of the contingency table): NaN, and the rows say why, so the table-completeness check
    counts the metric as reported (found on a folder dataset with a weakly trained model)."""
    from clipbias.metrics import protected_v_rows

    labels = np.array([0, 0, 1, 1] * 10)
    attr = np.array([0, 1, 0, 1] * 10)
    rows = protected_v_rows("m", "test", np.zeros(40, int), labels, attr, "colour", n_boot=20)
    assert all(np.isnan(r["value"]) for r in rows)
    assert all("same class" in r["note"] for r in rows)
    fine = protected_v_rows("m", "test", labels.copy(), labels, attr, "colour", n_boot=20)
    assert [r["note"] for r in fine] == ["", ""]


@pytest.mark.parametrize("bias_correction", [False, True])
def test_batched_v_equals_scipy_per_table(bias_correction):
    """cramers_v_batch (numpy, all tables at once) == cramers_v_counts (scipy χ², one table at
    a time), including tables with empty rows/columns, a single non-empty row or column (NaN)
    and tiny n (Bergsma's denominator <= 0 gives NaN)."""
    rng = np.random.default_rng(11)
    tables = rng.integers(0, 6, size=(300, 5, 3))
    tables[rng.random(300) < 0.3, 2, :] = 0  # an empty predicted class
    tables[rng.random(300) < 0.2, :, 1] = 0  # an absent attribute value
    tables[0] = 0
    tables[0, 1] = [3, 4, 5]  # one row only: NaN
    tables[1] = 0
    tables[1, :, 0] = [1, 2, 0, 0, 3]  # one column only: NaN
    tables[2] = 0
    tables[2, 0, 0] = tables[2, 1, 1] = 1  # n = 2
    got = metrics.cramers_v_batch(tables, bias_correction)
    want = np.array([metrics.cramers_v_counts(t, bias_correction) for t in tables])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:2]).all()
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-12)


def test_delta_v_bootstrap_equals_per_table_loop():
    """The batched bootstrap draws the same resamples and gives the same ΔV* as computing
    every resampled table with scipy one by one (the pre-batching code)."""
    before, after, labels, attr = _biased_preds(seed=4, n=500)
    res = metrics.delta_v_bootstrap(before, after, labels, attr, n_boot=450, seed=9)
    rng = np.random.default_rng(9)
    cells = labels * 2 + attr
    deltas = []
    for b in (200, 200, 50):  # the _DV_CHUNK blocks
        for row in metrics.bootstrap_indices(len(attr), b, rng, groups=cells):
            deltas.append(
                metrics.cramers_v(after[row], attr[row]) - metrics.cramers_v(before[row], attr[row])
            )
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    assert res["ci_low"] == pytest.approx(lo, abs=1e-12)
    assert res["ci_high"] == pytest.approx(hi, abs=1e-12)
