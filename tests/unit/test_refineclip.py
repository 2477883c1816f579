"""RefineCLIP phase 1 (METHODS §5.1-5.5, §7.1) on hand-computable decompositions."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from clipbias.methods import refineclip as rc

# --------------------------------------------------------------------------------------------
# A hand-built decomposition: D = 3, classes t_0 = e1, t_1 = e2, one stored layer (layer 5),
# three heads, rest = 0.
#   h0 "causal":   carries the class direction (e1 for class 0, e2 for class 1)
#   h1 "spurious": a large e2 component on the misclassified class-0 samples
#   h2 "constant": (0, 0, .3) on every sample
#
#  s | y | h0          h1           h2          | emb            | pred | set
#  0 | 0 | (.5, 0, 0)  (0, .9, 0)   (0, 0, .3)  | (.5, .9, .3)   | 1    | W (0->1)
#  1 | 0 | (.6, 0, 0)  (0, .1, 0)   (0, 0, .3)  | (.6, .1, .3)   | 0    | C_0
#  2 | 1 | (0, .6, 0)  (0, .1, 0)   (0, 0, .3)  | (0, .7, .3)    | 1    | A_1
#
# DE_D(h1) on sample 0 with h̄_A(h1) = (0, .1, 0):  e' = (.5, .1, .3)
#   Δ(x, 1) = .1/√.35 − .9/√1.15,  Δ(x, 0) = .5/√.35 − .5/√1.15,  DE_D = Δ(x,1) − Δ(x,0)
# h0 replaced by (0, .6, 0) pushes toward class 1 (DE_D > 0); h2 is replaced by itself (0).
# So the ascending DE_D list starts with h1, and DE_C (descending) too: on sample 2, putting
# h̄_W(h1) = (0, .9, 0) raises cos to t_1 only, while h̄_W(h0) = (.5, 0, 0) lowers it.
# --------------------------------------------------------------------------------------------

LAYERS = [5]


@pytest.fixture
def known_case():
    h = np.zeros((3, 1, 3, 3))
    h[0, 0] = [(0.5, 0, 0), (0, 0.9, 0), (0, 0, 0.3)]
    h[1, 0] = [(0.6, 0, 0), (0, 0.1, 0), (0, 0, 0.3)]
    h[2, 0] = [(0, 0.6, 0), (0, 0.1, 0), (0, 0, 0.3)]
    rest = np.zeros((3, 3))
    cls = np.eye(3)[:, :2]
    labels = np.array([0, 0, 1])
    return h, rest, cls, labels


def test_error_directions_by_hand(known_case):
    h, rest, cls, labels = known_case
    preds = rc.zero_shot_predictions(h, rest, cls)
    np.testing.assert_array_equal(preds, [1, 0, 1])
    dirs = rc.error_directions(labels, preds)
    assert len(dirs) == 1
    d = dirs[0]
    assert (d.true, d.pred, d.key) == (0, 1, "0->1")
    np.testing.assert_array_equal(d.wrong, [0])
    np.testing.assert_array_equal(d.correct, [1])
    np.testing.assert_array_equal(d.reference, [2])
    success, locality = rc.phase2_masks(labels, preds)
    np.testing.assert_array_equal(success, [True, False, False])
    np.testing.assert_array_equal(locality, [False, True, True])


def test_phase2_sets_of_the_selected_direction():
    """Eqs. 11-12 name one error type: success on W_{y_e,ŷ_e}, locality on C_{y_e} ∪ A_{ŷ_e}.
    Shots (label, pred): 0:(0,1) 1:(0,0) 2:(1,1) 3:(2,1) 4:(2,2) 5:(0,2); directions 0->1,
    0->2, 2->1."""
    labels = np.array([0, 0, 1, 2, 2, 0])
    preds = np.array([1, 0, 1, 1, 2, 2])
    success, locality = rc.phase2_masks(labels, preds, "2->1")
    np.testing.assert_array_equal(success, [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(locality, [0, 0, 1, 0, 1, 0])  # C_2 = {4}, A_1 = {2}
    success, locality = rc.phase2_masks(labels, preds, "0->1")
    np.testing.assert_array_equal(success, [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(locality, [0, 1, 1, 0, 0, 0])
    success, locality = rc.phase2_masks(labels, preds)  # every direction
    np.testing.assert_array_equal(success, [1, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(locality, [0, 1, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="direction"):
        rc.phase2_masks(labels, preds, "1->0")


def test_replacement_effect_matches_direct_formula():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4, 6))
    contrib = rng.normal(size=(4, 5, 6))
    repl = rng.normal(size=(5, 6))
    text = rng.normal(size=(6, 3))
    text /= np.linalg.norm(text, axis=0)
    got = rc.replacement_effect(emb, contrib, repl, text, "cosine")
    got_dot = rc.replacement_effect(emb, contrib, repl, text, "dot")
    for n in range(4):
        for k in range(5):
            e2 = emb[n] - contrib[n, k] + repl[k]
            for c in range(3):
                t = text[:, c]
                cos = e2 @ t / np.linalg.norm(e2) - emb[n] @ t / np.linalg.norm(emb[n])
                assert got[n, k, c] == pytest.approx(cos, abs=1e-12)
                assert got_dot[n, k, c] == pytest.approx(e2 @ t - emb[n] @ t, abs=1e-12)


def test_known_spurious_head_ranked_first_by_de_c_and_de_d(known_case):
    h, rest, cls, labels = known_case
    res = rc.identify_then_ablate(h, rest, cls, labels, LAYERS, T=3)
    d = res["directions"][0]
    lists = {item["score"]: item for item in d["lists"]}
    assert lists["C"]["heads"][0] == "L5H1"
    assert lists["D"]["heads"][0] == "L5H1"
    # DE_D(h1) by hand (module comment above)
    dd = (0.1 / math.sqrt(0.35) - 0.9 / math.sqrt(1.15)) - (
        0.5 / math.sqrt(0.35) - 0.5 / math.sqrt(1.15)
    )
    row = next(r for r in res["scores"] if r["head"] == "L5H1")
    assert row["DE_D"] == pytest.approx(dd, abs=1e-9)
    assert lists["D"]["values"][0] == pytest.approx(dd, abs=1e-9)
    assert row["DE_C"] > 0
    h0 = next(r for r in res["scores"] if r["head"] == "L5H0")
    h2 = next(r for r in res["scores"] if r["head"] == "L5H2")
    assert h0["DE_D"] > 0 and h0["DE_C"] < 0
    assert h2["DE_D"] == pytest.approx(0.0, abs=1e-12)
    # the selected set ablates the spurious head first
    assert res["selected"]["heads"][0] == "L5H1"
    json.dumps(res)  # JSON-serialisable


def test_zero_ablation_eq5(known_case):
    h, rest, cls, labels = known_case
    out = rc.zero_ablate(h, rest, LAYERS, ["L5H1"])
    np.testing.assert_allclose(out, [[0.5, 0, 0.3], [0.6, 0, 0.3], [0, 0.6, 0.3]])
    out2 = rc.zero_ablate(h, rest, LAYERS, [(5, 1), (5, 2)])
    np.testing.assert_allclose(out2, [[0.5, 0, 0], [0.6, 0, 0], [0, 0.6, 0]])
    np.testing.assert_allclose(rc.zero_ablate(h, rest, LAYERS, []), h.sum((1, 2)) + rest)
    with pytest.raises(ValueError, match="not in the stored layers"):
        rc.zero_ablate(h, rest, LAYERS, ["L4H0"])


# --------------------------------------------------------------------------------------------
# Proposition 1: with the dot product DE_A = −DE_B and DE_C = −DE_D exactly.
# --------------------------------------------------------------------------------------------


def _random_case(seed: int, n_per_cell: int = 3, d: int = 16, n_layers: int = 5, n_heads: int = 4):
    """Random heads; ``rest`` forces each sample's prediction to a chosen class, so W, C and A
    are non-empty for the direction 0->1 (and 1->0)."""
    rng = np.random.default_rng(seed)
    cells = [(0, 0), (0, 1), (1, 1), (1, 0), (2, 2), (2, 1)]  # (true, pred)
    labels, preds = [], []
    for y, p in cells:
        labels += [y] * n_per_cell
        preds += [p] * n_per_cell
    n = len(labels)
    cls = rng.normal(size=(d, 3))
    cls /= np.linalg.norm(cls, axis=0)
    heads = 0.05 * rng.normal(size=(n, n_layers, n_heads, d))
    rest = 5.0 * cls[:, preds].T
    return heads, rest, cls, np.array(labels), np.array(preds)


def test_proposition1_dot_product_identities():
    heads, rest, cls, labels, preds = _random_case(1)
    layers = list(range(8, 13))
    assert np.array_equal(rc.zero_shot_predictions(heads, rest, cls), preds)
    res = rc.identify_then_ablate(heads, rest, cls, labels, layers, similarity="dot")
    assert res["score_layers"] == [9, 10, 11, 12]  # last 4 of the stored layers
    keys = {d["key"] for d in res["directions"]}
    assert keys == {"0->1", "1->0", "2->1"}
    n_checked = 0
    for r in res["scores"]:
        if r["DE_B"] is not None:
            assert r["DE_A"] == pytest.approx(-r["DE_B"], abs=1e-6)
            n_checked += 1
        if r["DE_C"] is not None:
            assert r["DE_C"] == pytest.approx(-r["DE_D"], abs=1e-6)
    assert n_checked == 3 * 16
    # the four candidate lists of one direction: (A) = (B) and (C) = (D) element by element
    d = next(d for d in res["directions"] if d["key"] == "0->1")
    lists = {item["score"]: item["heads"] for item in d["lists"]}
    assert lists["A"] == lists["B"]
    assert lists["C"] == lists["D"]


def test_proposition1_direct_scores_on_arbitrary_sets():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(9, 8))
    contrib = rng.normal(size=(9, 6, 8))
    cls = rng.normal(size=(8, 2))
    cls /= np.linalg.norm(cls, axis=0)
    sc = rc.direct_effect_scores(emb, contrib, cls, 0, 1, [0, 1, 2], [3, 4], [5, 6, 7, 8], "dot")
    np.testing.assert_allclose(sc["A"], -sc["B"], atol=1e-6)
    np.testing.assert_allclose(sc["C"], -sc["D"], atol=1e-6)
    # with the cosine they are only approximately opposite (paper Appendix E)
    cs = rc.direct_effect_scores(emb, contrib, cls, 0, 1, [0, 1, 2], [3, 4], [5, 6, 7, 8])
    assert not np.allclose(cs["A"], -cs["B"], atol=1e-6)


# --------------------------------------------------------------------------------------------
# Empty sets (§5.1 / paper A.2): evaluation set empty -> score skipped; reference set empty ->
# zero vector, i.e. the score measures zero-ablating the head.
# --------------------------------------------------------------------------------------------


def test_empty_reference_set_is_zero_vector_and_empty_evaluation_set_is_skipped():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(4, 5))
    contrib = rng.normal(size=(4, 3, 5))
    cls = np.eye(5)[:, :2]
    sc = rc.direct_effect_scores(emb, contrib, cls, 0, 1, [0, 1], [], [2, 3])
    assert sc["B"] is None  # C empty: DE_B has no samples to average over
    # DE_A with h̄_C = 0: Δ is the effect of zero-ablating the head
    zero = np.zeros((3, 5))
    delta = rc.replacement_effect(emb[[0, 1]], contrib[[0, 1]], zero, cls)
    np.testing.assert_allclose(sc["A"], (delta[..., 0] - delta[..., 1]).mean(0), atol=1e-12)
    sc2 = rc.direct_effect_scores(emb, contrib, cls, 0, 1, [0, 1], [2, 3], [])
    assert sc2["C"] is None
    delta = rc.replacement_effect(emb[[0, 1]], contrib[[0, 1]], zero, cls)
    np.testing.assert_allclose(sc2["D"], (delta[..., 1] - delta[..., 0]).mean(0), atol=1e-12)
    with pytest.raises(ValueError, match="misclassified"):
        rc.direct_effect_scores(emb, contrib, cls, 0, 1, [], [2], [3])


def test_phase1_records_skipped_scores():
    # class 0: one wrong (->1), no correct; class 1: one correct
    h = np.zeros((2, 1, 2, 2))
    h[0, 0] = [(0.2, 0), (0, 0.8)]
    h[1, 0] = [(0, 0.5), (0, 0.5)]
    res = rc.identify_then_ablate(h, np.zeros((2, 2)), np.eye(2), np.array([0, 1]), [0], T=2)
    d = res["directions"][0]
    assert [item["score"] for item in d["lists"]] == ["A", "C", "D"]
    assert "B" in d["skipped"] and "correct" in d["skipped"]["B"]
    assert d["n_correct"] == 0 and d["n_wrong"] == 1 and d["n_reference"] == 1
    row = next(r for r in res["scores"] if r["head"] == "L0H1")
    assert row["DE_B"] is None


def test_no_errors_means_nothing_to_edit():
    h = np.zeros((2, 1, 1, 2))
    h[0, 0, 0] = (1, 0)
    h[1, 0, 0] = (0, 1)
    labels = np.array([0, 1])
    res = rc.identify_then_ablate(h, np.zeros((2, 2)), np.eye(2), labels, [0])
    assert res["directions"] == [] and res["scores"] == [] and res["n_wrong"] == 0
    assert res["selected"]["heads"] == [] and res["selected"]["t"] == 0
    assert res["selected"]["utility"] == pytest.approx(1.0)  # cos 1 to own class, 0 to other
    out = rc.select_on_validation(res, h, np.zeros((2, 2)), np.eye(2), labels, labels, [0])
    assert out["selected"]["heads"] == [] and out["selected"]["validation_worst_group_acc"] == 1
    json.dumps(out)


# --------------------------------------------------------------------------------------------
# Utility (eq. 10) and selection
# --------------------------------------------------------------------------------------------


def test_utility_by_hand():
    # two samples, classes e1/e2, cosine: U = mean_i [cos(e_i, t_yi) − cos(e_i, t_other)]
    emb = np.array([[3.0, 4.0], [1.0, 0.0]])
    cls = np.eye(2)
    labels = np.array([0, 0])
    u = rc.utility(emb, cls, labels)
    assert u == pytest.approx(((0.6 - 0.8) + (1 - 0)) / 2)
    # three classes: the mean over the other two
    cls3 = np.eye(3)
    u3 = rc.utility(np.array([[1.0, 2.0, 2.0]]), cls3, np.array([1]))
    assert u3 == pytest.approx(2 / 3 - (1 / 3 + 2 / 3) / 2)


def test_utility_curve_is_cumulative_ablation(known_case):
    h, rest, cls, labels = known_case
    emb = h.sum((1, 2)) + rest
    contrib = h[:, 0]
    order = np.array([1, 0, 2])
    curve = rc.utility_curve(emb, contrib, cls, labels, order)
    for t in range(1, 4):
        e_t = emb - contrib[:, order[:t]].sum(1)
        assert curve[t - 1] == pytest.approx(rc.utility(e_t, cls, labels))


def test_selection_prefers_max_then_smaller_t_then_list_order():
    curves = [np.array([0.1, 0.3, 0.3]), np.array([0.2, 0.3, 0.25])]
    assert rc.select_max_utility(curves) == (0, 2)  # ties at t=2 across lists -> first list
    curves = [np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.1, 0.0])]
    assert rc.select_max_utility(curves) == (1, 1)  # equal maximum: smaller t wins
    curves = [np.array([0.1, 0.2, 0.5]), np.array([0.3, 0.1, 0.0])]
    assert rc.select_max_utility(curves) == (0, 3)
    with pytest.raises(ValueError):
        rc.select_max_utility([])


def test_phase1_tie_with_a_zero_head_picks_smaller_t():
    # h2 contributes exactly nothing: ablating it after h1 leaves U unchanged -> t = 1
    h = np.zeros((3, 1, 3, 3))
    h[0, 0] = [(0.5, 0, 0), (0, 0.9, 0), (0, 0, 0)]
    h[1, 0] = [(0.6, 0, 0), (0, 0.1, 0), (0, 0, 0)]
    h[2, 0] = [(0, 0.6, 0), (0, 0.1, 0), (0, 0, 0)]
    res = rc.identify_then_ablate(h, np.zeros((3, 3)), np.eye(3)[:, :2], np.array([0, 0, 1]), [5])
    lists = {item["score"]: item for item in res["directions"][0]["lists"]}
    c = lists["C"]
    assert c["heads"][:2] == ["L5H1", "L5H2"]
    assert c["utility"][0] == c["utility"][1]
    sel = res["selected"]
    assert sel["t"] == 1 and sel["heads"] == ["L5H1"]
    assert sel["direction"] == "0->1" and sel["score"] == "A"  # first list reaching the max
    assert sel["utility"] == max(max(item["utility"]) for item in lists.values())


def test_phase1_result_structure_and_table4():
    heads, rest, cls, labels, _ = _random_case(2)
    res = rc.identify_then_ablate(
        heads, rest, cls, labels, list(range(5)), T=15, class_names=["a", "b", "c"]
    )
    text = json.dumps(res)
    assert json.loads(text) == res
    assert res["T"] == 15 and res["similarity"] == "cosine" and res["selection"] == "utility"
    assert res["n_shots"] == len(labels) and res["n_heads"] == 4
    assert res["class_names"] == ["a", "b", "c"]
    table4 = res["table4"]
    for d in res["directions"]:
        assert d["true_name"] == ["a", "b", "c"][d["true_label"]]
        for item in d["lists"]:
            assert len(item["heads"]) == 15 == len(item["utility"]) == len(item["values"])
            assert len(set(item["heads"])) == 15
            assert table4[d["key"]][item["score"]] == item["heads"]
            vals = np.array(item["values"])
            if item["order"] == "descending":
                assert np.all(np.diff(vals) <= 0)
            else:
                assert np.all(np.diff(vals) >= 0)
    assert len(res["scores"]) == 16 * len(res["directions"])
    sel = res["selected"]
    best = max(max(i["utility"]) for d in res["directions"] for i in d["lists"])
    assert sel["utility"] == best
    assert rc.selected_heads(res) == [rc.parse_head(x) for x in sel["heads"]]
    df = rc.scores_frame(res)
    assert list(df.columns[:4]) == ["direction", "head", "layer", "index"]
    assert len(df) == len(res["scores"])


def test_validation_selection_matches_brute_force():
    heads, rest, cls, labels, _ = _random_case(4)
    layers = list(range(5))
    res = rc.identify_then_ablate(heads, rest, cls, labels, layers, T=5)
    # a validation set from the same generator with other noise; groups = label
    vh, vr, _, vl, _ = _random_case(7)
    vr = vr + 0.3 * np.random.default_rng(9).normal(size=vr.shape)
    vg = vl.copy()
    out = rc.select_on_validation(res, vh, vr, cls, vl, vg, layers, choose_t="validation")
    assert out["selection"] == "validation_t" and res["selection"] == "utility"
    # brute force over every list and t
    from clipbias import metrics

    best = None
    for d in res["directions"]:
        for item in d["lists"]:
            for t in range(1, len(item["heads"]) + 1):
                emb = rc.zero_ablate(vh, vr, layers, item["heads"][:t])
                p = metrics.predict(emb, cls)
                key = (
                    metrics.worst_group_accuracy(p, vl, vg),
                    metrics.avg_group_accuracy(p, vl, vg),
                    -t,
                )
                if best is None or key > best[0]:
                    best = (key, item["heads"][:t])
    sel = out["selected"]
    assert (sel["validation_worst_group_acc"], sel["validation_avg_group_acc"]) == best[0][:2]
    assert sel["t"] == -best[0][2]
    assert sel["heads"] == best[1]
    for d in out["directions"]:
        for item in d["lists"]:
            assert len(item["validation_worst_group_acc"]) == len(item["heads"])
    json.dumps(out)
    with pytest.raises(ValueError, match="group"):
        rc.select_on_validation(res, vh, vr, cls, vl, np.full(len(vl), -1), layers)


def _worst_group_case():
    """Ten validation rows, classes t_0 = e1, t_1 = e2, groups 2·y + bg; the minorities 1
    and 2 have one row each (rows 4 and 5), both misclassified, every other row is correct.
    Ablating a head subtracts (1, −1) or (−1, 1) from a row, which flips its prediction:

    ====  ==========================  =====  =====  =====  ======
    set   rows flipped                WG     avg-g  acc    groups 0/1/2/3
    ====  ==========================  =====  =====  =====  ======
    none  --                          0      .5     .8     1, 0, 0, 1
    H0    fix 4, 5; break 0-2, 6-8    .25    .625   .4     .25, 1, 1, .25
    H1    fix 4                       0      .75    .9     1, 1, 0, 1
    H2    nothing (a zero head)
    H3    fix 4, 5; break 0-2         .25    .8125  .7     .25, 1, 1, 1
    ====  ==========================  =====  =====  =====  ======
    """
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 0, 1, 2, 3, 3, 3, 3])
    emb = np.where(((labels == 0) == (groups % 3 == 0))[:, None], [1.0, 0.0], [0.0, 1.0])
    down, up = np.array([1.0, -1.0]), np.array([-1.0, 1.0])  # ablating: toward class 1 / 0
    h = np.zeros((10, 1, 4, 2))
    h[[0, 1, 2, 5], 0, 0] = down
    h[[4, 6, 7, 8], 0, 0] = up
    h[4, 0, 1] = up
    h[[0, 1, 2, 5], 0, 3] = down
    h[4, 0, 3] = up
    rest = emb - h.sum((1, 2))
    return h, rest, np.eye(2), labels, groups


def _phase1_with_lists(lists):
    """A phase-1 result (one direction) whose candidate lists are ``lists`` (score, heads);
    the utility prefers the earlier lists."""
    items = [
        {"score": s, "order": "descending", "heads": hs, "values": [0.0] * len(hs),
         "utility": [1.0 - 0.1 * i] * len(hs)}
        for i, (s, hs) in enumerate(lists)
    ]  # fmt: skip
    sel = {"heads": lists[0][1][:1], "t": 1, "direction": "0->1", "score": lists[0][0],
           "utility": 1.0}  # fmt: skip
    return {
        "selection": "utility",
        "selected": sel,
        "directions": [{"key": "0->1", "lists": items}],
    }


@pytest.mark.parametrize("tie_break", ["avg_group_acc", "avg_acc"])
def test_validation_selection_follows_the_worst_group(tie_break):
    """{H1} is better on average (every group-average and overall accuracy, and the utility)
    but leaves minority group 2 at 0; Ours* takes {H0}, whose worst group is .25. The
    zero head H2 adds nothing, so the tie at t = 2 of the first list goes to t = 1."""
    h, rest, cls, labels, groups = _worst_group_case()
    res = _phase1_with_lists([("A", ["L0H1", "L0H2"]), ("C", ["L0H0"])])
    for batches in ([(0, 10)], [(0, 3), (3, 7), (7, 10)]):
        counts = rc.validation_counts(
            res, ((h[a:b], rest[a:b], labels[a:b], groups[a:b]) for a, b in batches), cls, [0]
        )
        out = rc.select_on_validation_counts(res, counts, tie_break, choose_t="validation")
        sel = out["selected"]
        assert sel["heads"] == ["L0H0"] and sel["score"] == "C" and sel["t"] == 1
        assert sel["validation_worst_group_acc"] == 0.25
        assert sel[f"validation_{tie_break}"] == (0.625 if tie_break == "avg_group_acc" else 0.4)
        first, second = out["directions"][0]["lists"]
        assert first["validation_worst_group_acc"] == [0.0, 0.0]
        want = [0.75, 0.75] if tie_break == "avg_group_acc" else [0.9, 0.9]
        assert first[f"validation_{tie_break}"] == want
        assert out["validation"]["no_ablation_worst_group_acc"] == 0.0
        assert out["validation"]["n"] == 10
    again = rc.select_on_validation(res, h, rest, cls, labels, groups, [0], tie_break, "validation")
    assert again == out


def test_validation_selection_breaks_worst_group_ties_by_average():
    """{H0} and {H3} share the worst group (.25); {H3} has the better group average."""
    h, rest, cls, labels, groups = _worst_group_case()
    res = _phase1_with_lists([("A", ["L0H0"]), ("D", ["L0H3"])])
    for choose_t in ("utility", "validation"):
        out = rc.select_on_validation(res, h, rest, cls, labels, groups, [0], choose_t=choose_t)
        assert out["selected"]["heads"] == ["L0H3"] and out["selected"]["score"] == "D"
        assert out["selected"]["validation_avg_group_acc"] == 0.8125
        json.dumps(out)


def test_ours_star_chooses_the_list_on_validation_and_t_by_utility():
    """Paper Appendix A.2: Ours* selects the *list* on the validation set; t stays the
    utility's. List A = [H1, H3] with utility [.9, .5] keeps t = 1, {H1} (WG 0); list C =
    [H0] gives {H0} (WG .25, avg-g .625): Ours* takes {H0}. Choosing t on validation too
    (``refineclip_star_t``) takes {H1, H3} (fixes rows 4 and 5, breaks 0-2: WG .25, avg-g
    .8125) at t = 2 of list A."""
    h, rest, cls, labels, groups = _worst_group_case()
    res = _phase1_with_lists([("A", ["L0H1", "L0H3"]), ("C", ["L0H0"])])
    res["directions"][0]["lists"][0]["utility"] = [0.9, 0.5]
    out = rc.select_on_validation(res, h, rest, cls, labels, groups, [0])
    assert out["selection"] == "validation" and out["validation"]["choose_t"] == "utility"
    sel = out["selected"]
    assert (sel["heads"], sel["score"], sel["t"]) == (["L0H0"], "C", 1)
    assert sel["validation_worst_group_acc"] == 0.25
    assert sel["validation_avg_group_acc"] == 0.625
    first, second = out["directions"][0]["lists"]
    assert (first["utility_t"], second["utility_t"]) == (1, 1)
    assert first["validation_worst_group_acc"] == [0.0, 0.25]  # the whole curve is kept
    out_t = rc.select_on_validation(res, h, rest, cls, labels, groups, [0], choose_t="validation")
    assert out_t["selection"] == "validation_t"
    sel = out_t["selected"]
    assert (sel["heads"], sel["score"], sel["t"]) == (["L0H1", "L0H3"], "A", 2)
    assert sel["validation_avg_group_acc"] == 0.8125
    with pytest.raises(ValueError, match="choose_t"):
        rc.select_on_validation(res, h, rest, cls, labels, groups, [0], choose_t="test")


def test_ours_star_list_ties_go_to_the_earlier_list():
    """Both lists' utility prefixes ({H3} and {H3, H2}, H2 a zero head) have the same
    validation accuracies: the earlier list wins, with its own utility t."""
    h, rest, cls, labels, groups = _worst_group_case()
    res = _phase1_with_lists([("B", ["L0H2", "L0H3"]), ("D", ["L0H3"])])
    res["directions"][0]["lists"][0]["utility"] = [0.1, 0.9]
    out = rc.select_on_validation(res, h, rest, cls, labels, groups, [0])
    assert (out["selected"]["score"], out["selected"]["t"]) == ("B", 2)


# --------------------------------------------------------------------------------------------
# Candidate-list length (T, T_ratio) and the utility's label (eq. 10)
# --------------------------------------------------------------------------------------------


def test_candidate_length_scales_with_the_scored_heads():
    # the paper: 15 of 4 x 16 = 64 heads (ViT-L/14, ViT-H/14) and 15 of ViT-B/16's 48
    assert rc.candidate_length(15, None, 64) == 15
    assert rc.candidate_length(15, None, 48) == 15
    assert rc.candidate_length(15, None, 10) == 10  # never more than the scored heads
    # the ratio 15/64: 64 -> 15, 48 -> 11.25 -> 11, 16 (the embedded 4 x 4) -> 3.75 -> 4
    r = 15 / 64
    assert [rc.candidate_length(15, r, k) for k in (64, 48, 16, 4, 1)] == [15, 11, 4, 1, 1]
    assert rc.candidate_length(15, r, 128) == 15  # at most T
    assert rc.candidate_length(15, 0.5, 3) == 2  # 1.5 rounds half up
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="T_ratio"):
            rc.candidate_length(15, bad, 16)
    with pytest.raises(ValueError, match="T must"):
        rc.candidate_length(0, None, 16)


def test_phase1_lists_have_the_ratio_length():
    heads, rest, cls, labels, _ = _random_case(2)  # 4 scored layers x 4 heads = 16
    res = rc.identify_then_ablate(heads, rest, cls, labels, list(range(5)), T_ratio=15 / 64)
    assert (res["T"], res["T_ratio"], res["T_used"], res["n_scored_heads"]) == (15, 15 / 64, 4, 16)
    for d in res["directions"]:
        for item in d["lists"]:
            assert len(item["heads"]) == 4 == len(item["utility"])
    assert res["selected"]["t"] <= 4
    full = rc.identify_then_ablate(heads, rest, cls, labels, list(range(5)))
    assert full["T_used"] == 15 and full["T_ratio"] is None
    for d, d_full in zip(res["directions"], full["directions"], strict=True):
        for item, item_full in zip(d["lists"], d_full["lists"], strict=True):
            assert item["heads"] == item_full["heads"][:4]  # the same order, cut at 4


def test_utility_with_the_error_class_by_hand(known_case):
    """eq. 10 as printed: every shot against t_{y_e} of the list's direction (0->1, y_e = 0).
    Without ablation: shot 0 (.5,.9,.3) gives (.5 − .9)/√1.15, shot 1 (.6,.1,.3) gives
    (.6 − .1)/√.46, shot 2 (0,.7,.3), labelled 1, gives (0 − .7)/√.58 (with its own label it
    would count +.7/√.58)."""
    h, rest, cls, labels = known_case
    res = rc.identify_then_ablate(h, rest, cls, labels, LAYERS, utility_label="y_e")
    d = res["directions"][0]
    want = ((0.5 - 0.9) / math.sqrt(1.15) + 0.5 / math.sqrt(0.46) - 0.7 / math.sqrt(0.58)) / 3
    assert d["utility_no_ablation"] == pytest.approx(want, abs=1e-12)
    own = rc.identify_then_ablate(h, rest, cls, labels, LAYERS)
    want_own = want + 2 * 0.7 / math.sqrt(0.58) / 3
    assert own["directions"][0]["utility_no_ablation"] == pytest.approx(want_own, abs=1e-12)
    assert res["utility_label"] == "y_e" and own["utility_label"] == "own"
    emb = h.sum((1, 2)) + rest
    for item in d["lists"]:
        order = [rc.head_position(rc.parse_head(x), LAYERS)[1] for x in item["heads"]]
        curve = rc.utility_curve(emb, h[:, 0], cls, np.zeros(3, dtype=int), order)
        np.testing.assert_allclose(item["utility"], curve, atol=1e-12)
    with pytest.raises(ValueError, match="utility_label"):
        rc.identify_then_ablate(h, rest, cls, labels, LAYERS, utility_label="true")


def test_utility_with_the_error_class_can_choose_another_set():
    """With either label, S* is the candidate of largest utility computed with that label."""
    heads, rest, cls, labels, _ = _random_case(3)
    layers = list(range(5))
    for ul in ("own", "y_e"):
        res = rc.identify_then_ablate(heads, rest, cls, labels, layers, T=6, utility_label=ul)
        sel = res["selected"]
        d = next(x for x in res["directions"] if x["key"] == sel["direction"])
        y = labels if ul == "own" else np.full(len(labels), d["true_label"])
        emb = rc.zero_ablate(heads, rest, layers, sel["heads"])
        assert sel["utility"] == pytest.approx(rc.utility(emb, cls, y), abs=1e-12)
        best = max(max(i["utility"]) for x in res["directions"] for i in x["lists"])
        assert sel["utility"] == best


# --------------------------------------------------------------------------------------------
# Few-shot sampling
# --------------------------------------------------------------------------------------------


def test_sample_shots_deterministic_n_per_class_without_replacement():
    labels = np.repeat([0, 1, 2], [30, 12, 50])
    a = rc.sample_shots(labels, 10, seed=3)
    b = rc.sample_shots(labels, 10, seed=3)
    c = rc.sample_shots(labels, 10, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.unique(a)) == 30
    np.testing.assert_array_equal(np.bincount(labels[a]), [10, 10, 10])
    assert np.all(np.diff(a) > 0)  # sorted indices


def test_sample_shots_pool_and_classes_and_errors():
    labels = np.repeat([0, 1, 2], [5, 5, 5])
    pool = np.zeros(15, dtype=bool)
    pool[[0, 1, 2, 5, 6, 7, 10, 11, 12]] = True
    s = rc.sample_shots(labels, 3, seed=0, pool_mask=pool)
    np.testing.assert_array_equal(s, [0, 1, 2, 5, 6, 7, 10, 11, 12])
    s = rc.sample_shots(labels, 2, seed=0, classes=[2])
    assert set(labels[s]) == {2} and len(s) == 2
    pool2 = pool.copy()
    pool2[[3, 4, 13, 14]] = True  # classes 0 and 2 now have 5 in the pool, class 1 has 3
    assert len(rc.sample_shots(labels, 3, seed=0, pool_mask=pool2)) == 9
    with pytest.raises(ValueError, match="class 1 has only 3"):
        rc.sample_shots(labels, 4, seed=0, pool_mask=pool2)
    with pytest.raises(ValueError, match="class 7"):
        rc.sample_shots(labels, 1, seed=0, classes=[7])
    with pytest.raises(ValueError, match="pool_mask"):
        rc.sample_shots(labels, 1, seed=0, pool_mask=pool[:3])


# --------------------------------------------------------------------------------------------
# Edit success / locality (§7.1)
# --------------------------------------------------------------------------------------------


def test_edit_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 2, 2, 3, 3])
    preds = np.array([0, 1, 1, 1, 2, 0, 3, 3])
    m = rc.edit_metrics(preds, labels, target_classes=[0, 1])
    # target: class 0 1/3, class 1 1/1 -> weighted 2/4, class-average (1/3 + 1)/2
    assert m["edit_success"] == pytest.approx(2 / 4)
    assert m["edit_success_class_avg"] == pytest.approx((1 / 3 + 1) / 2)
    # other: class 2 1/2, class 3 2/2 -> weighted 3/4, class-average 3/4
    assert m["locality"] == pytest.approx(3 / 4)
    assert m["locality_class_avg"] == pytest.approx((0.5 + 1) / 2)
    assert m["n_target"] == 4 and m["n_other"] == 4
    rows = rc.edit_metric_rows("refineclip", "test", preds, labels, [0, 1])
    assert {r["metric"] for r in rows} >= {"edit_success", "locality"}
    assert all(r["method"] == "refineclip" and r["split"] == "test" for r in rows)
    with pytest.raises(ValueError, match="target"):
        rc.edit_metrics(preds, labels, target_classes=[])


def test_group_balanced_shots_by_hand():
    from clipbias.methods.fewshot import group_balanced_shots, shot_index

    # class 0: groups 0 (3 samples) and 1 (one sample, index 3); class 1: groups 2, 3
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3])
    for seed in range(5):
        idx = group_balanced_shots(labels, groups, 2, seed=seed)
        assert len(idx) == 4 and 3 in idx  # the only bias-conflicting sample of class 0
        for c in (0, 1):
            assert sorted(groups[idx][labels[idx] == c]) == [2 * c, 2 * c + 1]
    # 3 shots over 2 groups: the first group gets the extra one
    idx = group_balanced_shots(labels, groups, 3, seed=0)
    assert sorted(groups[idx][labels[idx] == 1]) == [2, 2, 3]
    with pytest.raises(ValueError, match="group 1 has 1 samples for 2"):
        group_balanced_shots(labels, groups, 4, seed=0)
    index = pd.DataFrame(
        {"image_id": [f"i{k}" for k in range(9)], "label": labels, "group": groups}
    )
    shots = shot_index(index, 2, 0, "val", "group_balanced")
    assert "i3" in set(shots["image_id"])
    with pytest.raises(ValueError, match="shot_sampling must be one of"):
        shot_index(index, 2, 0, "val", "stratified")
