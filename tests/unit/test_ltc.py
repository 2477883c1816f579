"""LTC locate / correct (METHODS §4.3-4.8) on tiny hand-computable cases."""

import json

import numpy as np
import pytest

from clipbias.methods import ltc

# --------------------------------------------------------------------------------------------
# A hand-built locate split: 2 classes (t_0 = e1, t_1 = e2), 1 stored layer (layer 11),
# 3 heads, D = 2, rest = 0. With two classes y' is always the other class, so
# delta_h = <c_h, t_pred - t_other>.
#
#  s | y | h0        h1        h2        | emb         | pred | ok | delta (h0, h1, h2) | top
#  0 | 0 | (1, 0)    (.5, 0)   (0, .2)   | (1.5, .2)   | 0    | C  | ( 1,  .5, -.2)      | h0
#  1 | 1 | (0, 1)    (0, .3)   (.1, 0)   | (.1, 1.3)   | 1    | C  | ( 1,  .3, -.1)      | h0
#  2 | 0 | (.2, 0)   (.6, 0)   (0, .1)   | (.8, .1)    | 0    | C  | (.2,  .6, -.1)      | h1
#  3 | 0 | (.1, 0)   (0, 0)    (0, .9)   | (.1, .9)    | 1    | W  | (-.1,  0,  .9)      | h2
#  4 | 1 | (0, .1)   (0, 0)    (.8, 0)   | (.8, .1)    | 0    | W  | (-.1,  0,  .8)      | h2
#  5 | 1 | (0, .1)   (.7, 0)   (0, 0)    | (.7, .1)    | 0    | W  | (-.1, .7,   0)      | h1
#
# groups: samples 0-4 are in minority groups {1, 2}; sample 5 is in majority group 0.
#
# variant "groups": C = {0, 1, 2}, W = {3, 4}
#   F_C = (2/3, 1/3, 0), F_W = (0, 0, 1); n_active = 3, kappa = 1/3
#   F_W - F_C = (-2/3, -1/3, 1)  -> S = [h2] (score 1)
#   F_C - F_W = (2/3, 1/3, -1)   -> Y = [h0] (score 2/3); h1 has exactly kappa: not > kappa
# variant "full":   C = {0, 1, 2}, W = {3, 4, 5}
#   F_W = (0, 1/3, 2/3); F_W - F_C = (-2/3, 0, 2/3) -> S = [h2] (2/3), Y = [h0] (2/3)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def locate_case():
    h = np.zeros((6, 1, 3, 2), dtype=np.float32)
    h[0, 0] = [(1, 0), (0.5, 0), (0, 0.2)]
    h[1, 0] = [(0, 1), (0, 0.3), (0.1, 0)]
    h[2, 0] = [(0.2, 0), (0.6, 0), (0, 0.1)]
    h[3, 0] = [(0.1, 0), (0, 0), (0, 0.9)]
    h[4, 0] = [(0, 0.1), (0, 0), (0.8, 0)]
    h[5, 0] = [(0, 0.1), (0.7, 0), (0, 0)]
    rest = np.zeros((6, 2), dtype=np.float32)
    cls = np.eye(2, dtype=np.float32)
    labels = np.array([0, 1, 0, 0, 1, 1])
    groups = np.array([1, 2, 1, 1, 2, 0])
    return h, rest, cls, labels, groups


def test_head_margins_by_hand(locate_case):
    h, rest, cls, labels, _ = locate_case
    delta, preds, contrast = ltc.head_margins(h, rest, cls, labels)
    np.testing.assert_array_equal(preds, [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(contrast, [1, 0, 1, 0, 1, 1])
    expected = [
        [1, 0.5, -0.2], [1, 0.3, -0.1], [0.2, 0.6, -0.1],
        [-0.1, 0, 0.9], [-0.1, 0, 0.8], [-0.1, 0.7, 0],
    ]  # fmt: skip
    np.testing.assert_allclose(delta[:, 0, :], expected, atol=1e-6)
    np.testing.assert_array_equal(ltc.top_heads(delta), [0, 0, 1, 2, 2, 1])


def test_head_margins_runner_up_with_three_classes():
    # one head carries everything: emb = (0.5, 0.2, 0.4), label 0 -> correct, y' = 2
    h = np.array([[[[0.5, 0.2, 0.4]]]], dtype=np.float32)
    delta, preds, contrast = ltc.head_margins(h, np.zeros((1, 3)), np.eye(3), np.array([0]))
    assert preds[0] == 0 and contrast[0] == 2
    assert delta[0, 0, 0] == pytest.approx(0.5 - 0.4)
    # wrong prediction: label 1 -> y' = y = 1
    delta, preds, contrast = ltc.head_margins(h, np.zeros((1, 3)), np.eye(3), np.array([1]))
    assert preds[0] == 0 and contrast[0] == 1
    assert delta[0, 0, 0] == pytest.approx(0.5 - 0.2)
    # per-sample candidates {1, 2}: prediction 2, label 1 -> wrong, contrast 1
    d, p, c = ltc.head_margins(h, np.zeros((1, 3)), np.eye(3), np.array([1]), np.array([[1, 2]]))
    assert (p[0], c[0]) == (2, 1) and d[0, 0, 0] == pytest.approx(0.4 - 0.2)


def test_contrastive_selection_by_hand():
    winners = np.array([0, 0, 1, 2, 2])
    mask_c = np.array([1, 1, 1, 0, 0], dtype=bool)
    n_c = ltc.head_counts(winners, mask_c, 3)
    n_w = ltc.head_counts(winners, ~mask_c, 3)
    np.testing.assert_array_equal(n_c, [2, 1, 0])
    np.testing.assert_array_equal(n_w, [0, 0, 2])
    np.testing.assert_allclose(ltc.head_frequencies(winners, mask_c, 3), [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(ltc.head_frequencies(winners, ~mask_c, 3), [0, 0, 1])
    s, y, kappa, n_act = ltc.contrastive_selection(n_c, n_w)
    assert (list(s), list(y), n_act) == ([2], [0], 3)
    assert kappa == pytest.approx(1 / 3)
    # ordering: several heads pass, sorted by score; |C| = 0 means F_C = 0
    s, y, _, _ = ltc.contrastive_selection(np.zeros(4, int), np.array([1, 5, 0, 4]))
    assert list(s) == [1, 3] and list(y) == []  # F_W = (.1, .5, 0, .4), kappa = 1/3
    # nothing active
    s, y, kappa, n_act = ltc.contrastive_selection(np.zeros(3, int), np.zeros(3, int))
    assert len(s) == len(y) == n_act == 0 and np.isinf(kappa)
    with pytest.raises(TypeError, match="head_counts"):
        ltc.contrastive_selection(np.array([0.5, 0.5]), np.array([1.0, 0.0]))


# A score exactly at kappa is never selected (S and Y need F_W - F_C > kappa, resp. F_C - F_W
# > kappa), whatever the float rounding of the frequencies. Counts per head (3 heads):
#   correct c = (0, 1, 1), |C| = 2;  wrong w = (2, 1, 3), |W| = 6;  n_active = 3, kappa = 1/3
#   F_C = (0, 1/2, 1/2), F_W = (1/3, 1/6, 1/2)
#   F_W - F_C = (1/3, -1/3, 0):  head 0 sits exactly on kappa -> S = []
#   F_C - F_W = (-1/3, 1/3, 0):  head 1 sits exactly on kappa -> Y = []
# In float64, 1/2 - 1/6 = 0.33333333333333337 > 1/3 (0.3333333333333333): comparing float
# frequencies put head 1 into Y, while 1/3 - 0 = 1/3 kept head 0 out of S. The reference's
# float32 decides such ties by its own rounding too. In integers the test is
# n_act * (w |C| - c |W|) > |W| |C|: head 0: 3 * (2*2 - 0*6) = 12 = 6*2, not >.
def test_contrastive_selection_exactly_at_kappa():
    c, w = np.array([0, 1, 1]), np.array([2, 1, 3])
    s, y, kappa, n_act = ltc.contrastive_selection(c, w)
    assert (list(s), list(y), n_act) == ([], [], 3)
    assert kappa == 1 / 3
    # the same counts with C and W swapped: nothing in S either
    s, y, _, _ = ltc.contrastive_selection(w, c)
    assert (list(s), list(y)) == ([], [])
    # one more wrong sample on head 0 lifts it just above kappa:
    # w = (3, 1, 3), |W| = 7: F_W - F_C = 3/7 > 1/3
    s, y, _, _ = ltc.contrastive_selection(c, np.array([3, 1, 3]))
    assert list(s) == [0]
    # through locate_from_winners: wrong samples win heads 0, 0, 1, 2, 2, 2; correct 1, 2
    winners = np.array([0, 0, 1, 2, 2, 2, 1, 2])
    labels = np.zeros(8, dtype=int)
    preds = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    res = ltc.locate_from_winners(winners, preds, labels, [5], 3, variant="full")
    assert (res["S"], res["Y"], res["n_active"]) == ([], [], 3)
    assert (res["n_correct"], res["n_wrong"]) == (2, 6)


# Tied scores are ordered as the reference's get_impt_heads does:
# sorted(zip(scores, flat_ids), reverse=True), i.e. the larger flat id (later layer, then
# later head) first. Counts over 4 heads (layers [10, 11], 2 heads each):
#   wrong w = (2, 0, 0, 2), |W| = 4;  correct c = (0, 4, 0, 0), |C| = 4;  n_active = 3
#   F_W - F_C = (1/2, -1, 0, 1/2) > 1/3 for flat ids 0 and 3 (tied) -> S = [3, 0]
#   F_C - F_W = (-1/2, 1, 0, -1/2)                                  -> Y = [1]
def test_tied_heads_are_ordered_as_the_reference():
    s, y, kappa, n_act = ltc.contrastive_selection(np.array([0, 4, 0, 0]), np.array([2, 0, 0, 2]))
    assert (list(s), list(y), n_act) == ([3, 0], [1], 3)
    winners = np.array([0, 0, 3, 3, 1, 1, 1, 1])
    preds = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    res = ltc.locate_from_winners(winners, preds, np.zeros(8, int), [10, 11], 2, variant="full")
    assert [x["head"] for x in res["S"]] == ["L11H1", "L10H0"]
    assert [x["score"] for x in res["S"]] == [0.5, 0.5]
    # a higher score still comes first: one more win of L10H0 among the wrong samples
    res = ltc.locate_from_winners(
        np.append(winners, 0), np.append(preds, 1), np.zeros(9, int), [10, 11], 2, variant="full"
    )
    assert [x["head"] for x in res["S"]] == ["L10H0", "L11H1"]
    # the non-contrastive count orders ties the same way: F = (3, 0, 3, 1) / 7 vs 1/3
    ids, thr, n_act = ltc.noncontrastive_selection(np.array([3, 0, 3, 1]))
    assert (list(ids), n_act) == ([2, 0], 3) and thr == pytest.approx(1 / 3)


def test_noncontrastive_selection_exactly_at_threshold():
    # counts (1, 1, 2), total 4, n_active 3: F = (1/4, 1/4, 1/2) vs 1/3 -> head 2 only;
    # counts (1, 2, 3), total 6: F = (1/6, 1/3, 1/2), head 1 exactly on 1/3 -> not selected
    assert list(ltc.noncontrastive_selection(np.array([1, 1, 2]))[0]) == [2]
    assert list(ltc.noncontrastive_selection(np.array([1, 2, 3]))[0]) == [2]
    with pytest.raises(TypeError, match="head_counts"):
        ltc.noncontrastive_selection(np.array([0.25, 0.75]))


def test_locate_ltc_groups_and_full(locate_case):
    h, rest, cls, labels, groups = locate_case
    res = ltc.locate_ltc(h, rest, cls, labels, [11], groups, minority_groups=[1, 2])
    assert res["S"] == [{"head": "L11H2", "score": pytest.approx(1.0)}]
    assert res["Y"] == [{"head": "L11H0", "score": pytest.approx(2 / 3)}]
    assert res["kappa"] == pytest.approx(1 / 3) and res["n_active"] == 3
    assert (res["n_correct"], res["n_wrong"], res["n_samples"]) == (3, 2, 6)
    assert res["F_C"] == pytest.approx({"L11H0": 2 / 3, "L11H1": 1 / 3, "L11H2": 0.0})
    assert res["F_W"] == pytest.approx({"L11H0": 0.0, "L11H1": 0.0, "L11H2": 1.0})
    assert ltc.located_heads(res, "S") == [(11, 2)]
    json.dumps(res)  # serialisable

    full = ltc.locate_ltc(h, rest, cls, labels, [11], variant="full")
    assert full["variant"] == "full" and full["minority_groups"] is None
    assert (full["n_correct"], full["n_wrong"]) == (3, 3)
    assert full["F_W"] == pytest.approx({"L11H0": 0.0, "L11H1": 1 / 3, "L11H2": 2 / 3})
    assert full["S"] == [{"head": "L11H2", "score": pytest.approx(2 / 3)}]
    assert full["Y"] == [{"head": "L11H0", "score": pytest.approx(2 / 3)}]


def test_select_samples_masks(locate_case):
    _, _, _, labels, groups = locate_case
    preds = np.array([0, 1, 0, 1, 0, 0])
    c, w = ltc.select_samples(preds, labels, groups, [1, 2])
    assert list(np.flatnonzero(c)) == [0, 1, 2] and list(np.flatnonzero(w)) == [3, 4]
    c, w = ltc.select_samples(preds, labels, groups, variant="full", sample_mask=[1, 0, 1, 1, 0, 1])
    assert list(np.flatnonzero(c)) == [0, 2] and list(np.flatnonzero(w)) == [3, 5]
    with pytest.raises(ValueError):
        ltc.select_samples(preds, labels, None, [1, 2], variant="groups")


def test_noncontrastive(locate_case):
    h, rest, cls, labels, _ = locate_case
    # correct samples 0, 1, 2 with winners h0, h0, h1: F = (2/3, 1/3, 0), threshold 1/2
    res = ltc.locate_noncontrastive(h, rest, cls, labels, [11])
    assert res["heads"] == [{"head": "L11H0", "score": pytest.approx(2 / 3)}]
    assert res["threshold"] == pytest.approx(0.5) and res["n_samples"] == 3
    assert ltc.locate_noncontrastive(h, rest, cls, labels, [11], exclude=["L11H0"])["heads"] == []


def test_worst_gender_mask():
    # occupation 0: gender 0 acc 1.0, gender 1 acc 0.0 (bias 1)  -> keep gender 1
    # occupation 1: gender 0 acc 0.5, gender 1 acc 1.0 (bias .5) -> keep gender 0
    # occupation 2: only gender 0 -> skipped
    correct = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1])
    occ = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    gen = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(
        ltc.worst_gender_mask(correct, occ, gen, top_k=10), [0, 0, 1, 1, 1, 1, 0, 0, 0]
    )
    np.testing.assert_array_equal(
        ltc.worst_gender_mask(correct, occ, gen, top_k=1), [0, 0, 1, 1, 0, 0, 0, 0, 0]
    )


def test_infer_groups():
    emb = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5]])
    attr = np.array([[2.0, 0.0], [0.0, 3.0]])  # columns: land, water (unnormalised)
    g, s = ltc.infer_groups(emb, attr, np.array([0, 0, 1]))
    np.testing.assert_array_equal(s, [0, 1, 0])
    np.testing.assert_array_equal(g, [0, 1, 2])


# --------------------------------------------------------------------------------------------
# Ablation
# --------------------------------------------------------------------------------------------


def test_mean_ablation_replaces_by_reference_mean():
    rng = np.random.default_rng(0)
    heads = rng.standard_normal((4, 2, 3, 5)).astype(np.float32)
    ref = rng.standard_normal((7, 2, 3, 5)).astype(np.float32)
    means = ltc.head_means(ref)
    np.testing.assert_allclose(means, ref.mean(0), rtol=1e-6)
    out = ltc.ablate_heads(heads, [10, 11], [(11, 2), "L10H0"], means)
    np.testing.assert_allclose(
        out[:, 1, 2], np.broadcast_to(ref[:, 1, 2].mean(0), (4, 5)), rtol=1e-6
    )
    np.testing.assert_allclose(
        out[:, 0, 0], np.broadcast_to(ref[:, 0, 0].mean(0), (4, 5)), rtol=1e-6
    )
    np.testing.assert_array_equal(out[:, 0, 1:], heads[:, 0, 1:])
    np.testing.assert_array_equal(out[:, 1, :2], heads[:, 1, :2])
    zero = ltc.ablate_heads(heads, [10, 11], [(11, 2)], mode="zero")
    assert not zero[:, 1, 2].any()
    with pytest.raises(ValueError):
        ltc.ablate_heads(heads, [10, 11], [(9, 0)], means)


def test_mean_ablation_identity_for_one_image_reference():
    rng = np.random.default_rng(1)
    heads = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    rest = rng.standard_normal((1, 4)).astype(np.float32)
    means = ltc.head_means(heads)
    out = ltc.ablate_heads(heads, [0, 1], ltc.all_heads([0, 1], 3), means)
    np.testing.assert_array_equal(out, heads)
    emb = ltc.ltc_correct(heads, rest, [0, 1], [(0, 1), (1, 2)], [], None, means)
    np.testing.assert_allclose(emb, heads.sum((1, 2)) + rest, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Accept / reject updates
# --------------------------------------------------------------------------------------------


def test_accept_update_by_hand_2d():
    # v = (3, 4), q = (1, 0): cos = 3/5; v + .6 q = (3.6, 4); norm = sqrt(28.96) = 5.38145
    out = ltc.accept_update(np.array([3.0, 4.0]), np.array([[1.0], [0.0]]))
    np.testing.assert_allclose(out, [3.6 / np.sqrt(28.96), 4 / np.sqrt(28.96)])
    assert np.linalg.norm(out) == pytest.approx(1.0)


def test_accept_update_by_hand_3d_two_steps():
    # v = (1, 0, 1), q1 = e1, q2 = e2
    # step 1: cos = 1/sqrt2 -> (1 + 1/sqrt2, 0, 1), norm sqrt((1 + 1/sqrt2)^2 + 1)
    # step 2: cos(v, e2) = 0 -> unchanged (already unit)
    a = 1 + 1 / np.sqrt(2)
    n = np.sqrt(a**2 + 1)
    out = ltc.accept_update(np.array([[1.0, 0.0, 1.0]]), np.eye(3)[:, :2])
    np.testing.assert_allclose(out, [[a / n, 0, 1 / n]])
    # a small head orthogonal to every q is just rescaled to unit norm
    out = ltc.accept_update(np.array([0.0, 0.0, 0.02]), np.eye(3)[:, :2])
    np.testing.assert_allclose(out, [0, 0, 1])
    # scale-preserving variant keeps the original norm
    out = ltc.accept_update(np.array([0.0, 0.0, 0.02]), np.eye(3)[:, :2], scale_preserving=True)
    np.testing.assert_allclose(out, [0, 0, 0.02])
    # zero rows stay zero
    np.testing.assert_array_equal(ltc.accept_update(np.zeros((2, 3)), np.eye(3)[:, :1]), 0)


def test_reject_update_by_hand():
    # v = (3, 4), q = e1: cos = .6 -> (2.4, 4), norm sqrt(21.76)
    out = ltc.reject_update(np.array([3.0, 4.0]), np.array([[1.0], [0.0]]))
    np.testing.assert_allclose(out, [2.4 / np.sqrt(21.76), 4 / np.sqrt(21.76)])
    # for a unit vector the rejection is the exact orthogonal projection (then renormalised)
    out = ltc.reject_update(np.array([0.6, 0.8]), np.array([[1.0], [0.0]]))
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-12)


def test_insight_basis_sign_invariance_and_orthonormality():
    rng = np.random.default_rng(3)
    pos = rng.standard_normal((3, 8)) * 5  # unnormalised text embeddings
    neg = rng.standard_normal((3, 8)) * 5
    q = ltc.insight_basis(pos, neg)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    # first column is along u_1 (Gram-Schmidt order = pair order)
    u1 = pos[0] - neg[0]
    assert abs(q[:, 0] @ u1) == pytest.approx(np.linalg.norm(u1))
    v = rng.standard_normal((5, 8))
    swapped = ltc.insight_basis(neg, pos)  # u -> -u in every pair
    np.testing.assert_allclose(ltc.accept_update(v, q), ltc.accept_update(v, swapped), atol=1e-12)
    np.testing.assert_allclose(ltc.reject_update(v, q), ltc.reject_update(v, swapped), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ltc.accept_update(v, q), axis=1), 1.0)
    # order of pairs matters in general
    q_rev = ltc.insight_basis(pos[::-1], neg[::-1])
    assert not np.allclose(ltc.accept_update(v, q), ltc.accept_update(v, q_rev))


def test_ltc_correct_matches_manual_composition():
    rng = np.random.default_rng(4)
    heads = (0.1 * rng.standard_normal((6, 2, 3, 5))).astype(np.float32)
    rest = rng.standard_normal((6, 5)).astype(np.float32)
    ref = (0.1 * rng.standard_normal((9, 2, 3, 5))).astype(np.float32)
    means = ltc.head_means(ref)
    q = ltc.insight_basis(rng.standard_normal((2, 5)), rng.standard_normal((2, 5)))
    S, Y = [(7, 1)], ["L8H0", (8, 2)]
    emb = ltc.ltc_correct(heads, rest, [7, 8], S, Y, q, means)
    manual = ltc.ablate_heads(heads, [7, 8], S, means).astype(np.float64)
    for li, hh in [(1, 0), (1, 2)]:
        manual[:, li, hh] = ltc.accept_update(manual[:, li, hh], q)
    np.testing.assert_allclose(emb, manual.sum((1, 2)) + rest, atol=1e-5)
    assert emb.dtype == np.float32 and emb.shape == (6, 5)
    # switches
    unit = ltc.ltc_correct(heads, rest, [7, 8], S, Y, q, means, renormalize_after_edit=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    sp = ltc.ltc_correct(heads, rest, [7, 8], [], Y, q, scale_preserving=True)
    manual = heads.astype(np.float64).copy()
    for li, hh in [(1, 0), (1, 2)]:
        manual[:, li, hh] = ltc.accept_update(manual[:, li, hh], q, scale_preserving=True)
    np.testing.assert_allclose(sp, manual.sum((1, 2)) + rest, atol=1e-5)
    # no edits -> the original embedding
    np.testing.assert_allclose(
        ltc.ltc_correct(heads, rest, [7, 8], [], [], None), heads.sum((1, 2)) + rest, atol=1e-6
    )
    with pytest.raises(ValueError):
        ltc.ltc_correct(heads, rest, [7, 8], S, [], None, None)  # mean ablation needs means


@pytest.mark.parametrize("scale", [False, True])
def test_accept_in_subspace_equals_the_sequential_update(scale):
    """s * v + Q d reproduces the K sequential steps of accept_update (METHODS §4.7)."""
    rng = np.random.default_rng(11)
    v = rng.standard_normal((50, 16)) * rng.uniform(0.01, 3.0, (50, 1))
    v[3] = 0.0  # zero rows stay zero
    q = ltc.insight_basis(rng.standard_normal((5, 16)), rng.standard_normal((5, 16)))
    s, d, b = ltc.accept_in_subspace(v, q, scale)
    np.testing.assert_allclose(b, v @ q, atol=1e-12)
    np.testing.assert_allclose(s[:, None] * v + d @ q.T, ltc.accept_update(v, q, scale), atol=1e-10)
    assert s[3] == 0 and not d[3].any()
    with pytest.raises(ValueError, match="orthonormal"):
        ltc.accept_in_subspace(v, 2 * q)


# --------------------------------------------------------------------------------------------
# The reference's multi-class path (METHODS §4.4, §4.7-4.8; main_bg.py counteranimal branch)
# --------------------------------------------------------------------------------------------


# Per-class pieces from per-sample results, one stored layer (7) with 3 heads, 3 classes:
#   class 0: preds 0 0 0 1 1 2, winners of its correct samples 0 0 1 -> counts (2, 1, 0),
#            n_act 2, F = (2/3, 1/3, 0) > 1/2 for head 0 -> Y_0 = [L7H0]; wrong preds
#            {1: 2, 2: 1} -> partner 1
#   class 1: preds 1 1 0 2, correct winners 2 2 -> counts (0, 0, 2), n_act 1: F = 1 is not
#            > 1 -> Y_1 = []; wrong preds {0: 1, 2: 1} tie -> the smaller id, partner 0
#   class 2: preds 2 2 2, correct winners 1 1 0 -> F = (1/3, 2/3, 0) > 1/2 for head 1, but
#            L7H1 is in S (excluded) -> Y_2 = []; no wrong prediction -> partner None
def test_per_class_locate_by_hand():
    labels = np.array([0] * 6 + [1] * 4 + [2] * 3)
    preds = np.array([0, 0, 0, 1, 1, 2, 1, 1, 0, 2, 2, 2, 2])
    winners = np.array([0, 0, 1, 2, 2, 2, 2, 2, 0, 0, 1, 1, 0])
    out = ltc.per_class_locate(winners, preds, labels, [7], 3, ["a", "b", "c"], exclude=["L7H1"])
    assert [(c["class"], c["n_samples"], c["n_correct"], c["partner"]) for c in out] == [
        ("a", 6, 3, "b"), ("b", 4, 2, "a"), ("c", 3, 3, None),
    ]  # fmt: skip
    assert out[0]["salient"] == [{"head": "L7H0", "score": pytest.approx(2 / 3)}]
    assert out[1]["salient"] == [] and out[2]["salient"] == []
    # without the exclusion class 2 keeps L7H1
    out = ltc.per_class_locate(winners, preds, labels, [7], 3, ["a", "b", "c"])
    assert [x["head"] for x in out[2]["salient"]] == ["L7H1"]
    # locate_from_winners adds them when it knows the class names, S excluded
    res = ltc.locate_from_winners(winners, preds, labels, [7], 3, variant="full",
                                  class_names=["a", "b", "c"])  # fmt: skip
    assert [c["class"] for c in res["by_class"]] == ["a", "b", "c"]
    s = {x["head"] for x in res["S"]}
    assert all(x["head"] not in s for c in res["by_class"] for x in c["salient"])
    with pytest.raises(ValueError, match="class names"):
        ltc.per_class_locate(winners, preds, labels, [7], 3, ["a", "b"])


def test_per_class_plan_statuses():
    by_class = [
        {"class": "a", "partner": "b", "salient": [{"head": "L7H0"}]},
        {"class": "b", "partner": "a", "salient": []},
        {"class": "c", "partner": None, "salient": [{"head": "L7H2"}]},
        {"class": "d", "partner": "a", "salient": [{"head": "L7H2"}]},
    ]
    q = np.eye(4)[:, :1]
    plan = ltc.per_class_plan(by_class, ["a", "b", "c", "d"], {frozenset("ab"): q}, ["L7H1"])
    assert {c: p["status"] for c, p in plan.items()} == {
        0: "ok", 1: "fallback_heads", 2: "no_partner", 3: "no_texts",
    }  # fmt: skip
    assert plan[0]["salient"] == ["L7H0"] and plan[0]["basis"] is q
    assert plan[1]["salient"] == ["L7H1"] and plan[1]["basis"] is q  # the located Y instead
    assert plan[2]["salient"] == [] and plan[2]["basis"] is None
    assert plan[3]["salient"] == [] and plan[3]["basis"] is None
    with pytest.raises(ValueError, match="not a classifier class"):
        ltc.per_class_plan([{"class": "z", "partner": None}], ["a"], {}, [])


def test_class_bases_group_rows_by_pair():
    rows = [("a", "b", "p1", "n1"), ("c", "d", "p2", "n2"), ("b", "a", "p3", "n3")]
    e = np.eye(4)
    pos, neg = np.stack([e[0], e[2], 2 * e[1]]), np.stack([e[3], e[3], e[3]])
    bases = ltc.class_bases(rows, pos, neg)
    assert set(bases) == {frozenset("ab"), frozenset("cd")}
    np.testing.assert_allclose(bases[frozenset("ab")], ltc.insight_basis(pos[[0, 2]], neg[[0, 2]]))
    assert bases[frozenset("cd")].shape == (4, 1)
    with pytest.raises(ValueError, match="re-encode"):
        ltc.class_bases(rows, pos[:2], neg[:2])


# One global pair list against per-class pairs, 4 classes t_c = e_c in D = 4, two images per
# class. rest = 0.3 e_y; one salient head (layer 0, head 0) c = 0.1 e_y + 0.05 e_0 (it also
# leans to class 0). Zero-shot: class y scores 0.4 (0.45 for y = 0), every image correct.
# Global pairs (e0, e1), (e2, e3): q1 = (e0 - e1)/√2, q2 = (e2 - e3)/√2. For y = 2:
#   cos(c, q1) = 0.05/√2 / 0.1118 = 0.3162; v = c + 0.3162 q1 = (0.2736, -0.2236, 0.1, 0)
#   -> /0.36723 = (0.7450, -0.6089, 0.2723, 0); cos(v, q2) = 0.19255
#   -> (0.7450, -0.6089, 0.4085, -0.1362) / 1.05411 = (0.7068, -0.5776, 0.3875, -0.1292)
#   logits rest + v: class 0 0.7068 > class 2 0.3 + 0.3875 = 0.6875 -> predicted 0.
# y = 3 likewise (0.7068 > 0.6875): the first pair pushes classes 2 and 3 to class 0.
# y = 0: c = 0.15 e0, cos(c, q1) = 0.7071 -> class 0; y = 1: cos(c, q1) = -0.3162,
#   v = (-0.4727, 0.8812, 0, 0) -> class 1. Global: predictions 0 0 1 1 0 0 0 0.
# Per class (pseudo-class = zero-shot = y; partners 0 <-> 1, 2 <-> 3, each with its pair):
#   y = 2: q = (e2 - e3)/√2, cos(c, q) = 0.6325, v = (0.05, 0, 0.5472, -0.4472)/0.70847
#   = (0.0706, 0, 0.7724, -0.6312): class 2 scores 1.0724 -> 2. Every image stays correct.
def test_per_class_insight_keeps_the_decision_the_global_list_collapses():
    e = np.eye(4)
    y = np.repeat(np.arange(4), 2)
    heads = (0.1 * e[y] + 0.05 * e[0])[:, None, None, :]
    rest = 0.3 * e[y]
    cls = e  # [D, C]
    zero_shot = np.argmax((heads.sum((1, 2)) + rest) @ cls, 1)
    np.testing.assert_array_equal(zero_shot, y)
    q_global = ltc.insight_basis(np.stack([e[0], e[2]]), np.stack([e[1], e[3]]))
    glob = ltc.ltc_correct(heads, rest, [0], [], ["L0H0"], q_global)
    np.testing.assert_array_equal(np.argmax(glob @ cls, 1), [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(glob[4], [0.7068, -0.5776, 0.3 + 0.3875, -0.1292], atol=1e-4)
    bases = ltc.class_bases(
        [("c0", "c1", "p", "n"), ("c2", "c3", "p", "n")],
        np.stack([e[0], e[2]]), np.stack([e[1], e[3]]),
    )  # fmt: skip
    by_class = [
        {"class": f"c{k}", "partner": f"c{k ^ 1}", "salient": [{"head": "L0H0"}]} for k in range(4)
    ]
    plan = ltc.per_class_plan(by_class, [f"c{k}" for k in range(4)], bases, [])
    per = ltc.ltc_correct_per_class(heads, rest, [0], [], zero_shot, plan)
    np.testing.assert_array_equal(np.argmax(per @ cls, 1), y)
    np.testing.assert_allclose(per[4], [0.0706, 0, 0.3 + 0.7724, -0.6312], atol=1e-4)
    # rows of a class without a plan are left as they are (no S here)
    none = ltc.ltc_correct_per_class(heads, rest, [0], [], np.full(8, 9), plan)
    np.testing.assert_allclose(none, heads.sum((1, 2)) + rest, atol=1e-7)


def test_insight_choices_agree_with_the_registry():
    from clipbias.methods import registry

    assert ltc.INSIGHT == registry.INSIGHT


def test_class_insight_pairs_parse_and_reject_bad_entries():
    from clipbias.methods.texts import class_insight_pairs, method_texts

    spec = {"general_pool": False, "class_insight_pairs": [
        {"classes": ["a", "b"], "accept": [["p1", "n1"], ["p2", "n2"]]},
        {"classes": ["c", "a"], "accept": [["p3", "n3"]]},
    ]}  # fmt: skip
    assert class_insight_pairs(spec) == [
        ("a", "b", "p1", "n1"), ("a", "b", "p2", "n2"), ("c", "a", "p3", "n3"),
    ]  # fmt: skip
    roles = method_texts(spec)
    assert roles["class_accept_pos"] == ["p1", "p2", "p3"]
    assert roles["class_accept_neg"] == ["n1", "n2", "n3"]
    assert (
        class_insight_pairs({}) == []
        and method_texts({"general_pool": False})["class_accept_pos"] == []
    )
    for bad, msg in [
        ({"classes": ["a"], "accept": [["p", "n"]]}, "two different classes"),
        ({"classes": ["a", "a"], "accept": [["p", "n"]]}, "two different classes"),
        ({"classes": ["a", "b"], "accept": []}, "needs accept"),
        ({"classes": ["a", "b"], "accept": [["p"]]}, "needs accept"),
    ]:
        with pytest.raises(ValueError, match=msg):
            class_insight_pairs({"class_insight_pairs": [bad]})
    twice = {"class_insight_pairs": [{"classes": ["a", "b"], "accept": [["p", "n"]]},
                                     {"classes": ["b", "a"], "accept": [["q", "m"]]}]}  # fmt: skip
    with pytest.raises(ValueError, match="twice"):
        class_insight_pairs(twice)
