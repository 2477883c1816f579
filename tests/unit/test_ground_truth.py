import numpy as np
import pandas as pd
import pytest

import clipbias.ground_truth as gt
from clipbias.ground_truth import (
    GT_COLUMNS,
    associative_head_table,
    causal_head_table,
    causal_total_effect,
    head_attribute_table,
    head_margins,
    margin_directions,
    planted_ground_truth_tables,
    true_class_margins,
    twin_orientation,
    twin_pairs,
)


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


# ------------------------------------------------------------------------- causal (twins)


def _twin_toy():
    """4 pairs, 2 classes, D = 2, one stored layer (number 5) with 2 heads.

    classifier t0 = e0, t1 = e1, so d_0 = e0 - e1 and d_1 = e1 - e0. Head 0 carries the
    attribute: it adds 0.5 * d_y when the image has class y's associated value (class 0 ->
    value 0, class 1 -> value 1), else nothing; head 1 is the same in both images of a pair.
    """
    classifier = np.eye(2)
    labels = np.array([0, 0, 1, 1])
    orig_value = np.array([0, 1, 0, 1])  # pair 0: orig associated; pair 1: twin associated; ...
    twin_value = 1 - orig_value
    associated = [0, 1]
    d = margin_directions(classifier).T  # [C, D]
    heads = np.zeros((4, 1, 2, 2))
    twins = np.zeros((4, 1, 2, 2))
    for i, y in enumerate(labels):
        heads[i, 0, 0] = 0.5 * d[y] * (orig_value[i] == associated[y])
        twins[i, 0, 0] = 0.5 * d[y] * (twin_value[i] == associated[y])
        heads[i, 0, 1] = twins[i, 0, 1] = [0.3 * i, -0.1]
    return heads, twins, classifier, labels, orig_value, twin_value, associated


def test_margin_directions_and_true_class_margins():
    w = np.eye(3)
    np.testing.assert_allclose(margin_directions(w)[:, 0], [1, -0.5, -0.5])
    heads = np.zeros((2, 1, 1, 3))
    heads[:, 0, 0] = [[2, 0, 4], [2, 0, 4]]
    # y = 0: 2 - (0 + 4) / 2 = 0; y = 2: 4 - (2 + 0) / 2 = 3
    np.testing.assert_allclose(true_class_margins(heads, w, np.array([0, 2]))[:, 0, 0], [0, 3])
    # binary: t_y - t_other
    np.testing.assert_allclose(margin_directions(np.eye(2)), [[1, -1], [-1, 1]])


def test_twin_orientation_binary_and_three_values():
    # binary: orig associated -> -1, twin associated -> +1
    o = twin_orientation(
        np.array([0, 1, 1, 0]), np.array([1, 0, 0, 1]), np.array([0, 0, 1, 1]), [0, 1]
    )
    assert o.tolist() == [-1, 1, -1, 1]
    # three values, twin = next value; class 0 associated with 2: 1 -> 2 is +1, 2 -> 0 is -1,
    # 0 -> 1 involves no associated value -> 0
    o = twin_orientation(np.array([1, 2, 0]), np.array([2, 0, 1]), np.array([0, 0, 0]), [2])
    assert o.tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="associated"):
        twin_orientation(np.array([0]), np.array([1]), np.array([3]), [0, 1])


def test_causal_head_table_by_hand():
    heads, twins, classifier, labels, ov, tv, assoc = _twin_toy()
    orient = twin_orientation(ov, tv, labels, assoc)
    assert orient.tolist() == [-1, 1, 1, -1]
    df = causal_head_table(heads, twins, [5], classifier, labels, orient, n_boot=100, seed=0)
    assert list(df.columns) == GT_COLUMNS
    assert df["head_id"].tolist() == ["L5H0", "L5H1"]
    assert (df["kind"] == "causal").all() and (df["attribute"] == "background").all()
    # head 0: in every pair the associated side has margin 0.5 * |d_y|^2 = 0.5 * 2 = 1, the
    # other 0; oriented towards the associated side the change is +1 in every pair
    np.testing.assert_allclose(df["effect"], [1.0, 0.0], atol=1e-12)
    # all pairs equal -> every bootstrap mean is the same
    np.testing.assert_allclose(df["ci_low"], df["effect"], atol=1e-12)
    np.testing.assert_allclose(df["ci_high"], df["effect"], atol=1e-12)
    assert df["rank"].tolist() == [1, 2]
    np.testing.assert_allclose(df["abs_effect"], np.abs(df["effect"]))


def test_causal_sign_head_against_the_stereotype_and_zero_pairs_dropped():
    heads, twins, classifier, labels, ov, tv, assoc = _twin_toy()
    # a head pushing *against* the class when the attribute is associated: negative effect
    heads[:, 0, 1], twins[:, 0, 1] = -2 * heads[:, 0, 0], -2 * twins[:, 0, 0]
    orient = twin_orientation(ov, tv, labels, assoc)
    orient[0] = 0  # a pair with no associated side is left out
    heads[0] = 99.0  # ... and cannot influence the result
    df = causal_head_table(heads, twins, [5], classifier, labels, orient, n_boot=50)
    np.testing.assert_allclose(df["effect"], [1.0, -2.0], atol=1e-12)
    assert df.set_index("head_id")["rank"].to_dict() == {"L5H1": 1, "L5H0": 2}


def test_causal_bootstrap_ci_over_pairs():
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 2, n)
    classifier = np.eye(3, 2)
    heads = rng.normal(0, 0.1, (n, 2, 2, 3))
    twins = heads + rng.normal(0, 0.05, heads.shape)
    orient = rng.choice([-1, 1], n)
    d = margin_directions(classifier).T
    twins[:, 1, 0] += 0.3 * orient[:, None] * d[labels]  # moves the margin by 0.3 * 2 = 0.6
    df = causal_head_table(heads, twins, [7, 8], classifier, labels, orient, n_boot=300, seed=1)
    top = df.sort_values("rank").iloc[0]
    assert top["head_id"] == "L8H0"
    assert top["effect"] == pytest.approx(0.6, abs=0.02)
    assert top["ci_low"] < top["effect"] < top["ci_high"]
    assert top["ci_high"] - top["ci_low"] < 0.05
    assert (df["ci_low"] <= df["effect"]).all() and (df["effect"] <= df["ci_high"]).all()
    again = causal_head_table(heads, twins, [7, 8], classifier, labels, orient, n_boot=300, seed=1)
    pd.testing.assert_frame_equal(df, again)


def test_causal_total_effect_is_sum_of_changed_components():
    heads, twins, classifier, labels, ov, tv, assoc = _twin_toy()
    orient = twin_orientation(ov, tv, labels, assoc)
    rest = np.tile([0.2, 0.7], (4, 1))
    twin_rest = rest.copy()
    twin_rest[:, 0] += 0.25 * orient  # the rest moves class-0 margin by +-0.25 (and class 1's)
    emb = heads.sum((1, 2)) + rest
    twin_emb = twins.sum((1, 2)) + twin_rest
    tot = causal_total_effect(emb, twin_emb, classifier, labels, orient, attribute="colour")
    assert list(tot.columns) == GT_COLUMNS
    row = tot.iloc[0]
    assert (row["head_id"], row["layer"], row["head"], row["rank"]) == ("total", -1, -1, 0)
    assert row["attribute"] == "colour" and row["kind"] == "causal"
    # head 0 gives +1 everywhere; the rest gives +0.25 for class 0 (d_0 = e0 - e1) and
    # -0.25 for class 1 -> mean 1
    assert row["effect"] == pytest.approx(1.0)
    heads_only = causal_head_table(heads, twins, [5], classifier, labels, orient)
    same = causal_total_effect(heads.sum((1, 2)), twins.sum((1, 2)), classifier, labels, orient)
    assert same["effect"].item() == pytest.approx(heads_only["effect"].sum())


def test_causal_input_validation():
    heads, twins, classifier, labels, ov, tv, assoc = _twin_toy()
    orient = twin_orientation(ov, tv, labels, assoc)
    with pytest.raises(ValueError, match="twin_heads"):
        causal_head_table(heads, twins[:3], [5], classifier, labels, orient)
    with pytest.raises(ValueError, match="orientation"):
        causal_head_table(heads, twins, [5], classifier, labels, np.zeros(4, int))
    with pytest.raises(ValueError, match="orientation"):
        causal_head_table(heads, twins, [5], classifier, labels, orient * 2)
    with pytest.raises(ValueError, match="layer"):
        causal_head_table(heads, twins, [5, 6], classifier, labels, orient)


def test_twin_pairs_aligns_sources():
    index = pd.DataFrame(
        {
            "image_id": ["t0", "t1", "t1|background", "t0|background", "t0|protected"],
            "split": ["test", "test", "twin_background", "twin_background", "twin_protected"],
        }
    )
    orig, twin = twin_pairs(index, "background")
    assert orig.tolist() == [1, 0] and twin.tolist() == [2, 3]
    orig, twin = twin_pairs(index, "protected")
    assert orig.tolist() == [0] and twin.tolist() == [4]
    bad = index.copy()
    bad.loc[2, "image_id"] = "t9|background"
    with pytest.raises(ValueError, match="no source row"):
        twin_pairs(bad, "background")
    with pytest.raises(ValueError, match="twin_splits"):
        twin_pairs(index.iloc[:2], "background")


def test_associative_table_matches_earlier_statistic_for_binary():
    rng = np.random.default_rng(3)
    n, d = 200, 4
    labels = rng.integers(0, 2, n)
    values = rng.integers(0, 2, n)
    classifier = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    heads = rng.normal(0, 0.2, (n, 1, 3, d))
    heads[:, 0, 2] += 0.4 * (values == labels)[:, None] * margin_directions(classifier).T[labels]
    new = associative_head_table(heads, [4], classifier, labels, values, [0, 1], n_boot=100)
    old = head_attribute_table(heads, [4], classifier, labels, values, n_boot=100)
    assert list(new.columns) == GT_COLUMNS and (new["kind"] == "associative").all()
    np.testing.assert_allclose(new["effect"], old["effect"], atol=1e-12)
    assert new.sort_values("rank")["head_id"].iloc[0] == "L4H2"
    assert (new["ci_low"] <= new["effect"]).all() and (new["effect"] <= new["ci_high"]).all()


def test_associative_three_values_associated_vs_rest():
    classifier = np.eye(2)
    labels = np.array([0, 0, 0, 1, 1])
    values = np.array([2, 0, 1, 0, -1])  # class 0 associated with 2; class 1 lacks "rest"
    heads = np.zeros((5, 1, 1, 2))
    heads[:, 0, 0] = [[3, 0], [1, 0], [0, 1], [5, 5], [0, 0]]
    # class 0 margins (e0 - e1): 3, 1, -1 -> 3 - mean(1, -1) = 3; class 1 skipped
    df = associative_head_table(heads, [0], classifier, labels, values, [2, 0], n_boot=10)
    assert df["effect"].item() == pytest.approx(3.0)


def _planted_meta():
    return {
        "classes": ["circle", "triangle"],
        "attributes": {"background": ["land", "water"], "colour": ["red", "yellow"]},
        "spurious_attribute": "background",
        "protected_attribute": "colour",
        "majority_background": {"circle": "land", "triangle": "water"},
        "associated_colour": {"circle": "red", "triangle": "yellow"},
    }


def test_planted_ground_truth_tables_from_index():
    """4 test images, their background and colour twins (index order shuffled). Head 0 adds
    0.5 d_y when the background is class y's majority background, head 1 when the colour is
    y's associated colour; the rest adds 0.1 d_y for the colour too."""
    meta = _planted_meta()
    d = margin_directions(np.eye(2)).T  # [C, D]
    base = pd.DataFrame(
        {
            "image_id": [f"t{i}" for i in range(4)],
            "split": "test",
            "label": [0, 0, 1, 1],
            "attr_background": [0, 1, 0, 1],
            "attr_colour": [1, 0, 0, 1],
        }
    )
    bg = base.assign(
        image_id=base["image_id"] + "|background",
        split="twin_background",
        attr_background=1 - base["attr_background"],
    )
    col = base.assign(
        image_id=base["image_id"] + "|protected",
        split="twin_protected",
        attr_colour=1 - base["attr_colour"],
    )
    index = pd.concat([col, base, bg]).sample(frac=1, random_state=0).reset_index(drop=True)
    y = index["label"].to_numpy()
    heads = np.zeros((len(index), 1, 3, 2))
    heads[:, 0, 0] = 0.5 * d[y] * (index["attr_background"].to_numpy() == y)[:, None]
    heads[:, 0, 1] = 0.5 * d[y] * (index["attr_colour"].to_numpy() == y)[:, None]
    heads[:, 0, 2] = 0.2
    rest = 0.1 * d[y] * (index["attr_colour"].to_numpy() == y)[:, None]
    table, total = planted_ground_truth_tables(index, heads, rest, [11], np.eye(2), meta, n_boot=20)
    assert list(table.columns) == GT_COLUMNS and list(total.columns) == GT_COLUMNS
    causal = table[table["kind"] == "causal"].set_index(["attribute", "head_id"])["effect"]
    # the associated side has margin 0.5 * |d_y|^2 = 1 for the carrying head
    np.testing.assert_allclose(causal["background"][["L11H0", "L11H1", "L11H2"]], [1, 0, 0])
    np.testing.assert_allclose(causal["colour"][["L11H0", "L11H1", "L11H2"]], [0, 1, 0])
    tot = total.set_index("attribute")["effect"]
    assert tot["background"] == pytest.approx(1.0) and tot["colour"] == pytest.approx(1.2)
    assoc = table[table["kind"] == "associative"]
    assert set(assoc["attribute"]) == {"background", "colour"} and len(assoc) == 6
    # each (kind, attribute) block is ranked on its own
    for _, g in table.groupby(["kind", "attribute"]):
        assert sorted(g["rank"]) == [1, 2, 3]
    assert table["kind"].tolist()[:6] == ["causal"] * 6
    # without twins only the associative rows remain
    only = index[index["split"] == "test"]
    keep = only.index.to_numpy()
    t2, tot2 = planted_ground_truth_tables(only, heads[keep], rest[keep], [11], np.eye(2), meta)
    assert set(t2["kind"]) == {"associative"} and len(tot2) == 0
    with pytest.raises(ValueError, match="regenerate"):
        planted_ground_truth_tables(
            index, heads, rest, [11], np.eye(2), {**meta, "associated_colour": None}
        )


# ------------------------------------------------------------------ locator scoring


def _truth(kind="causal", attribute="background"):
    # 2 layers x 2 heads; |effect| order: L1H0 (4), L0H1 (3), L1H1 (2), L0H0 (1)
    rows = [
        ("L0H0", 0, 0, 1.0),
        ("L0H1", 0, 1, -3.0),
        ("L1H0", 1, 0, 4.0),
        ("L1H1", 1, 1, 2.0),
    ]
    df = pd.DataFrame(rows, columns=["head_id", "layer", "head", "effect"])
    df["abs_effect"] = df["effect"].abs()
    df["rank"] = df["abs_effect"].rank(ascending=False).astype(int)
    df["attribute"] = attribute
    df["kind"] = kind
    df["ci_low"] = df["effect"] - 0.1
    df["ci_high"] = df["effect"] + 0.1
    return df[gt.GT_COLUMNS]


def test_score_selection_by_hand():
    truth = _truth()
    res = gt.score_selection(truth, ["L1H0", "L1H1"])
    # top-2 by |effect| = L1H0, L0H1: one of the two selected heads is in it
    assert res["truth_top"] == "L1H0;L0H1"
    assert res["precision_at_k"] == pytest.approx(0.5)
    assert res["contains_top1"] and res["top1_head"] == "L1H0"
    # searched only in layer 1: top-2 there is L1H0, L1H1 -> precision 1
    res = gt.score_selection(truth, ["L1H0", "L1H1"], layers=[1])
    assert res["precision_at_k"] == pytest.approx(1.0)
    # scores in the order of the signed effect: Spearman 1; reversed: -1
    signed = {"L0H0": 0.2, "L0H1": -0.5, "L1H0": 0.9, "L1H1": 0.3}
    res = gt.score_selection(truth, ["L1H0"], signed, truth_column="effect")
    assert res["spearman"] == pytest.approx(1.0) and res["n_scored"] == 4
    res = gt.score_selection(
        truth, ["L1H0"], {k: -v for k, v in signed.items()}, truth_column="effect"
    )
    assert res["spearman"] == pytest.approx(-1.0)
    # empty selection: precision undefined, not 0
    assert np.isnan(gt.score_selection(truth, [])["precision_at_k"])
    with pytest.raises(ValueError, match="not in the ground truth"):
        gt.score_selection(truth, ["L9H9"])


def test_truth_view_prefers_causal_and_drops_total():
    table = pd.concat([_truth("associative"), _truth("causal")], ignore_index=True)
    total = _truth().head(1).assign(head_id="total", layer=-1, head=-1, rank=0)
    view, kind = gt.truth_view(pd.concat([table, total]), "background")
    assert kind == "causal" and len(view) == 4 and (view["kind"] == "causal").all()
    view, kind = gt.truth_view(_truth("associative"), "background")
    assert kind == "associative"
    with pytest.raises(ValueError, match="no ground truth for attribute 'colour'"):
        gt.truth_view(table, "colour")


def test_score_locators_reads_ltc_and_audit_files():
    truth = pd.concat([_truth(), _truth(attribute="colour")], ignore_index=True)
    ltc = {
        "variant": "ltc",
        "spurious": [{"head": "L1H0", "layer": 1, "index": 0, "score": 0.5}],
        "salient": [],
        "frequencies": [
            {"head": h, "layer": int(h[1]), "index": int(h[3]), "f_correct": c, "f_wrong": w}
            for h, c, w in [
                ("L0H0", 0.1, 0.2),
                ("L0H1", 0.6, 0.1),
                ("L1H0", 0.0, 0.9),
                ("L1H1", 0.1, 0.4),
            ]
        ],
    }
    audit = {
        "method": "fairness_audit",
        "layers": [1],
        "attributes": {
            "colour": {
                "values": ["red", "yellow"],
                "rank_cav": "cav",
                "k": 1,
                "split": {"top_k": ["L1H1"], "greedy": ["L1H0"]},
            },  # fmt: skip
            "gender": {
                "values": ["a", "b"],
                "rank_cav": "cav",
                "k": 1,
                "split": {"top_k": ["L1H1"], "greedy": ["L1H1"]},
            },  # fmt: skip
        },
    }
    df = gt.score_locators(truth, {"ltc": ltc, "audit": audit})
    assert list(df.columns) == gt.SCORE_COLUMNS
    row = df[df["locator"] == "ltc"].iloc[0]
    assert row["attribute"] == "background" and row["precision_at_k"] == 1.0
    # F_W - F_C = 0.1, -0.5, 0.9, 0.3: same order as the signed effect
    assert row["spearman"] == pytest.approx(1.0)
    aud = df[df["locator"] == "audit"].set_index("variant")
    # gender has no planted ground truth: left out
    assert set(aud["attribute"]) == {"colour"}
    # in layer 1 the top-1 is L1H0: greedy hits it, top_k does not
    assert aud.loc["split/greedy", "precision_at_k"] == 1.0
    assert aud.loc["split/top_k", "precision_at_k"] == 0.0
    assert aud.loc["split/greedy", "contains_top1"]


def test_textspan_completeness_counts_background_words():
    from clipbias.report import textspan_completeness

    truth = _truth()  # |effect| order L1H0, L0H1, L1H1, L0H0
    ts = pd.DataFrame(
        [(h, r, t) for h, texts in {
            "L1H0": ["grass field", "a circle"],
            "L0H1": ["waves", "sand, shore"],
            "L1H1": ["a red shape", "a circle"],
            "L0H0": ["a triangle", "on the grass"],
        }.items() for r, t in enumerate(texts, 1)],
        columns=["head_id", "rank", "text"],
    )  # fmt: skip
    df = textspan_completeness(ts, truth, ["grass", "waves", "sand"], n_heads=2, top_k=2)
    assert df["Head ids"].tolist() == ["L1H0, L0H1", "L1H1, L0H0"]
    # top: 3 of 4 texts name a background word ("sand, shore" counts); bottom: 1 of 4
    assert df["Naming a background word"].tolist() == [0.75, 0.25]
    assert df["Variance share naming one"].isna().all()  # no ve column
    with pytest.raises(ValueError, match="need 6"):
        textspan_completeness(ts, truth, ["grass"], n_heads=3)
    # two rankings, and the share of explained variance: L1H0's background text explains
    # 0.6 of its 0.8, L0H1's both texts; bottom: L0H0's "on the grass" explains 0.1 of 0.5
    ts["ve"] = [0.6, 0.2, 0.3, 0.1, 0.5, 0.3, 0.4, 0.1]
    reverse = truth.assign(abs_effect=-truth["abs_effect"])
    df = textspan_completeness(
        ts, {"margin": truth, "output": reverse, "none": truth.iloc[:0]},
        ["grass", "waves", "sand"], n_heads=2, top_k=2,
    )  # fmt: skip
    assert df["Ranked by"].tolist() == ["margin", "margin", "output", "output"]
    assert df["Head ids"].tolist()[2:] == ["L0H0, L1H1", "L0H1, L1H0"]
    np.testing.assert_allclose(
        df["Variance share naming one"],
        [(0.6 + 0.4) / 1.2, 0.1 / 1.3, 0.1 / 1.3, 1.0 / 1.2],
        atol=1e-3,
    )


def test_output_sensitivity_by_hand():
    """A head that encodes only a balanced binary background (±v, |v| = 1) moves by 2v under
    the twin swap: ||Δ||² = 4, 2 tr Cov = 2, sensitivity 2; a head the swap leaves alone: 0;
    a head that also carries independent noise of equal variance: 4 / (2 · 2) = 1."""
    from clipbias.ground_truth import head_spread, output_sensitivity

    bg = np.array([0, 1, 0, 1])
    sign = (2 * bg - 1).astype(float)
    noise = np.array([1.0, 1.0, -1.0, -1.0])  # independent of bg, variance 1
    heads = np.zeros((4, 1, 3, 2))
    heads[:, 0, 0, 0] = sign  # background only
    heads[:, 0, 1, 1] = noise  # the swap does not touch it
    heads[:, 0, 2, 0], heads[:, 0, 2, 1] = sign, noise  # background + noise
    twins = heads.copy()
    twins[:, 0, 0, 0] = -sign
    twins[:, 0, 2, 0] = -sign
    t = output_sensitivity(heads, twins, [5], n_boot=10, seed=0)
    got = dict(zip(t["head_id"], t["effect"], strict=True))
    assert got == pytest.approx({"L5H0": 2.0, "L5H1": 0.0, "L5H2": 1.0})
    assert set(t["kind"]) == {"output"} and t.loc[t["rank"] == 1, "head_id"].item() == "L5H0"
    # every pair moves head 0 by the same amount: the bootstrap CI collapses onto the effect
    row = t[t["head_id"] == "L5H0"].iloc[0]
    assert row["ci_low"] == pytest.approx(2.0) and row["ci_high"] == pytest.approx(2.0)
    np.testing.assert_allclose(
        head_spread(heads.sum(0), np.sum(heads**2, axis=(0, 3)), 4), [[2.0, 2.0, 4.0]]
    )
