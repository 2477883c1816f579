"""Mechanistic fairness audit (METHODS §6) on hand-built decompositions."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from clipbias import metrics
from clipbias.methods import audit, ltc
from clipbias.methods.textspan import augment_pool

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------------------------
# A hand-built decomposition. D = 8: dims 0-2 are the class directions (classifier columns
# e0, e1, e2), dim 3 is the attribute direction u, dims 4-7 are noise. rest = e_y + noise.
# Every head adds small noise; ONE carrier head adds (2a - 1)(u + push e0): images with
# a = 1 are pushed toward class 0, images with a = 0 away from it. So predictions depend on
# the attribute (V(pred, a) > V(true, a)), the carrier's CAV projection separates the two
# values, and mean-ablating it (mean ~ 0) removes the push.
# --------------------------------------------------------------------------------------------

VALUES = ["v0", "v1"]


def make_case(n=400, n_heads=4, layers=(9, 10, 11), carrier=(11, 1), push=0.7, seed=0):
    rng = np.random.default_rng(seed)
    d, n_cls = 8, 3
    y = rng.integers(0, n_cls, n)
    a = (rng.random(n) < np.array([0.6, 0.5, 0.4])[y]).astype(np.int64)
    heads = rng.normal(0, 0.08, (n, len(layers), n_heads, d)).astype(np.float32)
    li, h = list(layers).index(carrier[0]), carrier[1]
    sign = (2 * a - 1).astype(np.float32)
    heads[:, li, h, 3] += sign * 1.0
    heads[:, li, h, 0] += sign * push
    rest = rng.normal(0, 0.3, (n, d)).astype(np.float32)
    rest[np.arange(n), y] += 1.0
    classifier = np.zeros((d, n_cls), dtype=np.float32)
    classifier[np.arange(n_cls), np.arange(n_cls)] = 1.0
    # raw text embeddings per value: +-3u around a shared component (dim 4) plus noise
    text = {}
    for v, s in zip(VALUES, (-1.0, 1.0), strict=True):
        e = rng.normal(0, 0.3, (5, d))
        e[:, 3] += 3.0 * s
        e[:, 4] += 2.0
        text[v] = e
    return {
        "heads": heads,
        "rest": rest,
        "classifier": classifier,
        "layers": list(layers),
        "labels": y,
        "attr": a,
        "text": text,
        "carrier": f"L{carrier[0]}H{carrier[1]}",
        "n_heads": n_heads,
    }


@pytest.fixture(scope="module")
def case():
    return make_case()


@pytest.fixture(scope="module")
def cavs(case):
    return audit.zero_shot_cavs(case["text"], axis=["v1", "v0"])


def _scores(case, cavs):
    proj = audit.head_projections(case["heads"], cavs[0].vector)
    return audit.cav_head_scores(
        proj, case["layers"], case["attr"], case["labels"], 1, 0, 10, cavs[0].name
    )


# ------------------------------------------------------------------------------- texts


def test_facet_text_file_validates():
    spec = yaml.safe_load((REPO / "config/texts/facet.yaml").read_text())
    texts = audit.audit_texts(spec)
    assert set(texts) == {"gender", "age"}
    assert list(texts["gender"]["values"]) == ["masculine", "feminine"]
    assert texts["gender"]["axis"] == ["masculine", "feminine"]
    assert list(texts["age"]["values"]) == ["young", "middle", "older"]
    assert texts["age"]["axis"] == ["young", "older"]
    for entry in texts.values():
        assert all(len(t) >= 5 for t in entry["values"].values())
        assert len(entry["bias_texts"]) >= 20
        counts = {len(t) for t in entry["bias_texts_by_value"].values()}
        assert len(counts) == 1  # balanced
    table = audit.text_table(texts)
    assert list(table.columns) == audit.TEXT_TABLE_COLUMNS
    n_expected = sum(
        sum(map(len, e["values"].values())) + len(e["bias_texts"]) for e in texts.values()
    )
    assert len(table) == n_expected
    assert set(table["role"]) == {"concept", "bias"}


def _spec(**override):
    entry = {
        "values": {"x": [f"x text {i}" for i in range(5)], "z": [f"z text {i}" for i in range(5)]},
        "bias_texts": [f"bias {i}" for i in range(20)],
    }
    entry.update(override)
    return {"protected_attributes": {"colour": entry}}


def test_audit_texts_list_form_and_default_axis():
    texts = audit.audit_texts(_spec())
    assert texts["colour"]["axis"] == ["x", "z"]
    assert texts["colour"]["bias_texts_by_value"] is None
    assert len(texts["colour"]["bias_texts"]) == 20


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"attributes": {}}, "protected_attributes"),
        (_spec(values={"x": ["a"] * 1}), ">= 2 value"),
        (_spec(values={"x": ["a", "b", "c", "d"], "z": list("abcde")}), ">= 5"),
        (_spec(bias_texts=["b"] * 2), "more than once"),
        (_spec(bias_texts=[f"b{i}" for i in range(19)]), ">= 20"),
        (_spec(axis=["x", "q"]), "not in values"),
        (_spec(axis=["x", "x"]), "two different"),
        (_spec(bias_text=[]), "unknown key"),
        (
            _spec(bias_texts={"x": [f"a{i}" for i in range(14)], "z": [f"b{i}" for i in range(8)]}),
            "balanced",
        ),
        (
            _spec(
                bias_texts={"x": [f"a{i}" for i in range(10)], "q": [f"b{i}" for i in range(10)]}
            ),
            "not in values",
        ),
        (
            _spec(values={v: [f"{v}{i}" for i in range(5)] for v in ("a", "b", "c")}),
            "give 'axis",
        ),
    ],
)
def test_audit_texts_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        audit.audit_texts(spec)


def test_value_codes_and_recode():
    assert audit.value_codes(["fem", "masc"], ["masc", "fem", "nb"]) == {"fem": 1, "masc": 0}
    with pytest.raises(ValueError, match="not a dataset value"):
        audit.value_codes(["female"], ["masc", "fem"])
    np.testing.assert_array_equal(
        audit.recode_attr(np.array([0, 1, 2, 3, -1, 1]), [1, 0]), [1, 0, -1, -1, -1, 0]
    )


# ------------------------------------------------------------------------------- CAVs


def test_zero_shot_cavs_by_hand():
    emb = {"a": np.array([[2.0, 0, 0], [0, 2.0, 0]]), "b": np.array([[0, 0, 3.0]])}
    # phi_a = normalise((e1 + e2) / 2) = (1, 1, 0)/sqrt2; phi_b = e3
    # axis = normalise(phi_a - phi_b) = (1/sqrt2, 1/sqrt2, -1) / sqrt2 = (1/2, 1/2, -1/sqrt2)
    (cav,) = audit.zero_shot_cavs(emb)
    assert cav.name == "a_vs_b" and cav.kind == "axis"
    np.testing.assert_allclose(cav.vector, [0.5, 0.5, -1 / math.sqrt(2)])
    # three values: one-vs-rest v_c = normalise(phi_c - (phi_a + phi_b) / 2)
    emb["c"] = np.array([[0, 0, -1.0], [0, 0, -5.0]])  # phi_c = -e3
    cavs = audit.zero_shot_cavs(emb, axis=["a", "c"])
    assert [c.name for c in cavs] == ["a_vs_c", "a_vs_rest", "b_vs_rest", "c_vs_rest"]
    phi_a = np.array([1, 1, 0]) / math.sqrt(2)
    mean_ab = (phi_a + np.array([0, 0, 1.0])) / 2
    expect = np.array([0, 0, -1.0]) - mean_ab
    np.testing.assert_allclose(cavs[3].vector, expect / np.linalg.norm(expect))
    assert cavs[3].negative == ("a", "b")
    np.testing.assert_allclose(
        cavs[0].vector, (phi_a + [0, 0, 1]) / np.linalg.norm(phi_a + [0, 0, 1])
    )
    json.dumps([c.to_dict() for c in cavs])
    with pytest.raises(ValueError, match="axis"):
        audit.zero_shot_cavs(emb)


def test_cav_head_scores_by_hand():
    # one layer, one head; pos = [1, 2, 3], neg = [0, 1]
    # pooled var = (2 * 1 + 1 * 0.5) / 3 = 5/6; d = (2 - 0.5) / sqrt(5/6)
    # AUC: pairs (pos > neg) + ties/2 = (1 + .5 + 2 + 2) / 6 = 11/12
    proj = np.array([1.0, 2, 3, 0, 1]).reshape(5, 1, 1)
    attr = np.array([1, 1, 1, 0, 0])
    labels = np.zeros(5, dtype=int)
    df = audit.cav_head_scores(proj, [7], attr, labels, 1, 0, min_per_group=2, cav_name="t")
    row = df.iloc[0]
    assert row["head_id"] == "L7H0" and row["n_pos"] == 3 and row["n_neg"] == 2
    assert row["d"] == pytest.approx(1.5 / math.sqrt(5 / 6))
    assert row["auc"] == pytest.approx(11 / 12)
    u = stats.mannwhitneyu([1, 2, 3], [0, 1]).statistic
    assert row["auc"] == pytest.approx(u / 6)
    # one class only: the within-class scores equal the global ones
    assert row["d_within"] == pytest.approx(row["d"])
    assert row["auc_within"] == pytest.approx(row["auc"])


def test_within_class_scores_remove_class_confounding():
    # the head encodes the class only; the attribute correlates with the class.
    # Globally d is large, but inside each class the two values look alike.
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    a = np.where(rng.random(400) < np.where(y == 1, 0.6, 0.2), 1, 0)
    proj = (2.0 * y + rng.normal(0, 0.5, 400)).reshape(400, 1, 1)
    df = audit.cav_head_scores(proj, [0], a, y, 1, 0, min_per_group=10)
    assert df["d"].iloc[0] > 0.5
    assert abs(df["d_within"].iloc[0]) < 0.3
    assert df["n_classes_within"].iloc[0] == 2 and df["n_within"].iloc[0] == 400
    # weights n_class: recompute by hand
    ds, ws = [], []
    for c in (0, 1):
        pc, nc = proj[(y == c) & (a == 1), 0, 0], proj[(y == c) & (a == 0), 0, 0]
        sd = math.sqrt(
            ((len(pc) - 1) * pc.var(ddof=1) + (len(nc) - 1) * nc.var(ddof=1))
            / (len(pc) + len(nc) - 2)
        )
        ds.append((pc.mean() - nc.mean()) / sd)
        ws.append(len(pc) + len(nc))
    assert df["d_within"].iloc[0] == pytest.approx(np.average(ds, weights=ws))
    # a class below min_per_group is skipped
    df2 = audit.cav_head_scores(proj, [0], a, y, 1, 0, min_per_group=60)
    assert df2["n_classes_within"].iloc[0] == 1


def test_cav_scores_rank_the_carrier_first(case, cavs):
    df = _scores(case, cavs)
    assert len(df) == 12
    top = df.sort_values("abs_d_within", ascending=False)
    assert top["head_id"].iloc[0] == case["carrier"]
    assert top["abs_d_within"].iloc[0] > 5 * top["abs_d_within"].iloc[1]
    assert df.set_index("head_id").loc[case["carrier"], "auc"] > 0.99


def test_stereotype_logit_score_points_at_the_carrier(case):
    preds = metrics.predict(case["heads"].sum((1, 2)) + case["rest"], case["classifier"])
    sums = audit.stereotype_sums(
        case["heads"], case["classifier"], case["labels"], case["attr"], preds
    )
    df = audit.stereotype_logit_table(*sums, case["layers"])
    assert df.sort_values("stereo_logit", ascending=False)["head_id"].iloc[0] == case["carrier"]
    assert df["n_images"].iloc[0] > 0
    # the class map: class 0 is over-represented for a = 1 (P(a=1|0) = 0.6 > overall 0.5)
    smap = audit.stereotyped_class_map(case["labels"], case["attr"], 3)
    assert smap[0, 1] and not smap[0, 0] and smap[2, 0]


# ------------------------------------------------------------------------------- TextSpan


def test_bias_textspan_flags_the_carrier(case):
    rng = np.random.default_rng(5)
    general = [f"general {i}" for i in range(30)]
    gen_emb = rng.normal(0, 1, (30, 8))
    gen_emb[:, 3] *= 0.05  # general texts hardly touch the attribute direction
    bias = [f"bias {i}" for i in range(4)]
    bias_emb = np.zeros((4, 8))
    bias_emb[:, 3] = [1, -1, 1, -1]
    bias_emb[:, 0] = [0.6, -0.6, 0.5, -0.5]
    texts, is_bias = augment_pool(general, bias)
    emb = np.concatenate([gen_emb, bias_emb])
    assert is_bias.sum() == 4 and texts[-4:] == bias
    table, st = audit.bias_textspan(case["heads"], case["layers"], texts, emb, bias, m=5, rank=None)
    st = st.set_index("head_id")
    assert st.loc[case["carrier"], "first_bias_rank"] == 1
    assert bool(st.loc[case["carrier"], "flagged"])
    assert st["bias_share"].idxmax() == case["carrier"]
    with pytest.raises(ValueError, match="not in the pool"):
        audit.bias_textspan(case["heads"], case["layers"], general, gen_emb, bias, m=2)


# ------------------------------------------------------------------------------- ranking


def test_rank_heads_cav_default_and_combined_variant():
    scores = pd.DataFrame(
        {
            "cav": "c",
            "layer": [0, 1, 1, 1],
            "head": [0, 0, 1, 2],
            "head_id": ["L0H0", "L1H0", "L1H1", "L1H2"],
            "abs_d_within": [9.0, 3.0, 2.0, 1.0],
        }
    )
    bias = pd.DataFrame(
        {
            "layer": [1, 1, 1],
            "head": [0, 1, 2],
            "bias_share": [0.1, 0.5, 0.2],
            "flagged": [False, False, True],
        }
    )
    r = audit.rank_heads(scores, bias, [0, 1], terminal_layers=1, ranking="combined")
    cand = r[r["candidate"]].set_index("head_id")
    # L0H0 is outside the terminal layer: not a candidate despite the largest score
    assert not r.set_index("head_id").loc["L0H0", "candidate"]
    assert pd.isna(r.set_index("head_id").loc["L0H0", "order"])
    # ranks among candidates: cav (3, 2, 1) -> 1, 2, 3; textspan (.1, .5, .2) -> 3, 1, 2
    assert cand["rank_cav"].to_dict() == {"L1H0": 1, "L1H1": 2, "L1H2": 3}
    assert cand["rank_textspan"].to_dict() == {"L1H0": 3, "L1H1": 1, "L1H2": 2}
    assert cand["combined_rank"].to_dict() == {"L1H0": 2, "L1H1": 1.5, "L1H2": 2.5}
    # combined (METHODS §6.6 item 2): flagged L1H2 first, then combined rank
    assert r[r["candidate"]]["head_id"].tolist() == ["L1H2", "L1H1", "L1H0"]
    assert audit.select_top_k(r, 2) == ["L1H2", "L1H1"]
    r2 = audit.rank_heads(
        scores, bias, [0, 1], terminal_layers=1, flagged_first=False, ranking="combined"
    )
    assert audit.select_top_k(r2, 3) == ["L1H1", "L1H0", "L1H2"]
    # the default (item 5): |within-class d| alone, the TextSpan columns filled beside it
    r_cav = audit.rank_heads(scores, bias, [0, 1], terminal_layers=1)
    assert audit.select_top_k(r_cav, 3) == ["L1H0", "L1H1", "L1H2"]
    cols = ["rank_cav", "bias_share", "flagged", "rank_textspan", "combined_rank"]
    pd.testing.assert_frame_equal(
        r_cav[r_cav["candidate"]].set_index("head_id")[cols],
        cand[cols].loc[["L1H0", "L1H1", "L1H2"]],
    )
    # without TextSpan: cav rank only, whichever ranking
    for ranking in ("cav", "combined"):
        r3 = audit.rank_heads(scores, None, [0, 1], terminal_layers=2, ranking=ranking)
        assert audit.select_top_k(r3, 4) == ["L0H0", "L1H0", "L1H1", "L1H2"]
    with pytest.raises(ValueError, match="only 3 candidate"):
        audit.select_top_k(r, 4)
    with pytest.raises(ValueError, match="ranking must be one of"):
        audit.rank_heads(scores, bias, [0, 1], ranking="textspan")


def test_selection_includes_the_carrier(case, cavs):
    ranking = audit.rank_heads(_scores(case, cavs), None, case["layers"])
    top = audit.select_top_k(ranking, 4)
    assert top[0] == case["carrier"]
    means = ltc.head_means(case["heads"])
    eng = audit.LogitDeltas.from_heads(
        case["heads"], case["rest"], case["classifier"], case["layers"],
        ranking["head_id"], means,
    )  # fmt: skip
    chosen, trace = audit.greedy_select(ranking, eng, case["labels"], case["attr"])
    assert chosen[0] == case["carrier"] and 1 <= len(chosen) <= 4
    assert list(trace.columns) == audit.GREEDY_COLUMNS
    assert trace["accepted"].iloc[0] and trace["v_drop"].iloc[0] >= 0.002
    if len(trace) > len(chosen):  # the first rejected head stopped the search
        assert not trace["accepted"].iloc[-1]


def test_greedy_accuracy_guard():
    # a head that lowers V but costs accuracy is refused
    c = make_case(push=0.7)
    ranking = pd.DataFrame({"head_id": [c["carrier"]], "candidate": [True], "order": [1]})
    means = ltc.head_means(c["heads"])
    eng = audit.LogitDeltas.from_heads(
        c["heads"], c["rest"], c["classifier"], c["layers"], [c["carrier"]], means
    )
    chosen, trace = audit.greedy_select(ranking, eng, c["labels"], c["attr"], max_acc_drop=-1.0)
    assert chosen == [] and not trace["accepted"].iloc[0]
    chosen, _ = audit.greedy_select(ranking, eng, c["labels"], c["attr"], min_drop=10.0)
    assert chosen == []


# ------------------------------------------------------------------------------- ablation


def test_logit_deltas_equal_ltc_mean_ablation(case):
    h, r, T, layers = case["heads"], case["rest"], case["classifier"], case["layers"]
    means = ltc.head_means(h[:200])
    pool = ["L11H1", "L10H0", "L9H3", "L11H2"]
    eng = audit.LogitDeltas.from_heads(h, r, T, layers, pool, means)
    for s in ([], ["L11H1"], ["L10H0", "L9H3", "L11H2"], pool):
        ablated = ltc.ablate_heads(h, layers, s, means)
        ref = (ablated.sum((1, 2), dtype=np.float64) + r) @ T
        np.testing.assert_allclose(eng.logits(s), ref, atol=1e-5)
        np.testing.assert_array_equal(eng.predict(s), np.argmax(ref, axis=1))
    with pytest.raises(ValueError, match="not in the ablation pool"):
        eng.predict(["L9H0"])
    # a subset of rows (mask or indices) equals the engine on the copied rows
    mask = np.arange(len(h)) % 3 == 0
    np.testing.assert_allclose(audit.mean_heads(h, mask), ltc.head_means(h[mask]), atol=1e-7)
    np.testing.assert_allclose(audit.mean_heads(h, np.flatnonzero(mask)), ltc.head_means(h[mask]))
    sub = audit.LogitDeltas.from_heads(h, r, T, layers, pool, means, rows=mask)
    ref = audit.LogitDeltas.from_heads(h[mask], r[mask], T, layers, pool, means)
    np.testing.assert_allclose(sub.logits(pool[:2]), ref.logits(pool[:2]), atol=1e-6)
    assert sub.n == mask.sum()


def test_ablating_the_carrier_lowers_v(case):
    means = ltc.head_means(case["heads"])
    eng = audit.LogitDeltas.from_heads(
        case["heads"], case["rest"], case["classifier"], case["layers"], [case["carrier"]], means
    )
    before, after = eng.predict(), eng.predict([case["carrier"]])
    y, a = case["labels"], case["attr"]
    assert metrics.cramers_v(after, a) < metrics.cramers_v(before, a) - 0.1
    assert np.mean(after == y) > np.mean(before == y)
    out = audit.outcome_summary({"baseline": before, "top_k": after}, y, {"g": a}, 3)
    assert list(out.columns) == audit.OUTCOME_COLUMNS
    row = out.set_index("condition").loc["top_k"]
    assert row["delta_v"] < -0.1 and row["delta_acc"] > 0
    assert row["v_true"] == pytest.approx(metrics.cramers_v(y, a))
    pc = audit.per_class_accuracy(
        {"baseline": before}, y, {"g": a}, ["c0", "c1", "c2"], {"g": VALUES}
    )
    assert len(pc) == 6 and pc["n"].sum() == len(y)
    cell = pc[(pc["class_index"] == 1) & (pc["value"] == 1)].iloc[0]
    m = (y == 1) & (a == 1)
    assert cell["value_name"] == "v1" and cell["accuracy"] == pytest.approx(np.mean(before[m] == 1))
    dt = audit.delta_v_table(before, {"top_k": after}, y, {"g": a}, n_boot=100, seed=0)
    assert list(dt.columns) == audit.DELTA_COLUMNS
    assert dt["ci_high"].iloc[0] < 0 and dt["delta_acc"].iloc[0] > 0


def test_locate_evaluate_split_is_stratified_and_seeded():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 1001)
    a = rng.integers(-1, 2, 1001)
    s = audit.locate_evaluate_split(y, a, 0.5, seed=3)
    np.testing.assert_array_equal(s, audit.locate_evaluate_split(y, a, 0.5, seed=3))
    assert not np.array_equal(s, audit.locate_evaluate_split(y, a, 0.5, seed=4))
    for c in range(4):
        for v in (-1, 0, 1):
            m = (y == c) & (a == v)
            assert abs(int(s[m].sum()) - m.sum() / 2) <= 0.5 + 1e-9
    s30 = audit.locate_evaluate_split(y, a, 0.3, seed=1)
    assert abs(s30.mean() - 0.3) < 0.02
    with pytest.raises(ValueError, match="locate_fraction"):
        audit.locate_evaluate_split(y, a, 1.0)


# ------------------------------------------------------------------------------- control


def test_layer_matched_sets_enumerates_495():
    sel = ["L23H0", "L23H1", "L23H2", "L23H3"]
    sets, info = audit.layer_matched_sets(sel, 16)
    assert info["mode"] == "enumerate" and info["n_possible"] == 495 == len(sets)
    assert info["per_layer"] == {"L23": 4}
    assert len(set(sets)) == 495
    for s in sets:
        assert len(s) == 4 and all(lyr == 23 and h >= 4 for lyr, h in s)


def test_layer_matched_sets_mixed_layers_and_sampling():
    sel = ["L22H0", "L23H5", "L23H6"]
    sets, info = audit.layer_matched_sets(sel, 16)
    assert info["n_possible"] == math.comb(15, 1) * math.comb(14, 2) == len(sets)
    # 3 + 3 heads in two 16-head layers: C(13, 3)^2 = 81,796 > 10,000 -> 1,000 draws
    sel = ["L22H0", "L22H1", "L22H2", "L23H0", "L23H1", "L23H2"]
    sets, info = audit.layer_matched_sets(sel, 16, seed=9)
    assert info["mode"] == "sample" and info["n_possible"] == 286**2
    assert len(sets) == 1000 == info["n_sets"]
    again, _ = audit.layer_matched_sets(sel, 16, seed=9)
    assert sets == again
    for s in sets:
        assert sorted(lyr for lyr, _ in s) == [22, 22, 22, 23, 23, 23]
        assert all(h >= 3 for _, h in s) and len(set(s)) == 6
    assert len(set(sets)) > 990  # almost all distinct
    assert audit.layer_matched_sets(sel, 16, max_enumerate=100_000)[1]["mode"] == "enumerate"


def test_random_control_small_model_ranks_the_carrier_first(case):
    # 3 layers x 4 heads: one head in a 4-head layer has only 3 layer-matched alternatives,
    # so p can be no smaller than 1/4 here; the carrier still beats every one of them.
    means = ltc.head_means(case["heads"])
    pool = [f"L{lyr}H{h}" for lyr in case["layers"] for h in range(4)]
    eng = audit.LogitDeltas.from_heads(
        case["heads"], case["rest"], case["classifier"], case["layers"], pool, means
    )
    draws, summ = audit.random_control(eng, case["labels"], case["attr"], [case["carrier"]], 4)
    assert summ["mode"] == "enumerate" and summ["n_sets"] == 3 == len(draws)
    assert summ["rank"] == 1 and summ["frac_beaten"] == 1.0
    assert summ["p_value"] == pytest.approx(1 / 4)
    assert case["carrier"] not in ";".join(draws["heads"])
    json.dumps(summ, allow_nan=False)


@pytest.fixture(scope="module")
def wide_case():
    # 3 layers x 16 heads (a ViT-L-sized layer), carrier in the last layer
    return make_case(n=400, n_heads=16, layers=(9, 10, 11), carrier=(11, 5), seed=1)


def test_random_control_without_layer_matched_sets_is_undefined(case):
    # 3 of the 4 heads of layer 11: no other 3-head set exists in that layer
    means = ltc.head_means(case["heads"])
    pool = [f"L11H{h}" for h in range(4)]
    eng = audit.LogitDeltas.from_heads(case["heads"], case["rest"], case["classifier"], case["layers"],
                            pool, means)  # fmt: skip
    draws, summ = audit.random_control(eng, case["labels"], case["attr"], pool[:3], 4)
    assert summ["n_sets"] == 0 and draws.empty
    assert summ["rank"] is None and summ["p_value"] is None and summ["frac_beaten"] is None
    assert summ["delta_v"] is not None
    json.dumps(summ, allow_nan=False)


def test_random_control_beats_495_layer_matched_sets(wide_case):
    c = wide_case
    cav = audit.zero_shot_cavs(c["text"], axis=["v1", "v0"])
    proj = audit.head_projections(c["heads"], cav[0].vector)
    scores = audit.cav_head_scores(proj, c["layers"], c["attr"], c["labels"], 1, 0)
    ranking = audit.rank_heads(scores, None, c["layers"], terminal_layers=1)
    top = audit.select_top_k(ranking, 4)
    assert top[0] == c["carrier"] and all(h.startswith("L11") for h in top)
    means = ltc.head_means(c["heads"])
    pool = [f"L11H{h}" for h in range(16)]
    eng = audit.LogitDeltas.from_heads(
        c["heads"], c["rest"], c["classifier"], c["layers"], pool, means
    )
    draws, summ = audit.random_control(eng, c["labels"], c["attr"], top, 16)
    assert summ["mode"] == "enumerate" and summ["n_possible"] == 495 == len(draws)
    assert list(draws.columns) == audit.CONTROL_COLUMNS
    assert summ["delta_v"] < 0 and summ["p_value"] <= 0.05 and summ["frac_beaten"] >= 0.95
    # p = (1 + #{dV' <= dV_S}) / (R + 1), by hand from the draws
    dv = draws["delta_v"].to_numpy()
    assert summ["p_value"] == pytest.approx((1 + np.sum(dv <= summ["delta_v"])) / 496)
    # draws: a seeded sample when there are more than max_enumerate sets
    d2, s2 = audit.random_control(
        eng, c["labels"], c["attr"], top, 16, max_enumerate=100, n_draws=200, seed=3
    )
    assert s2["mode"] == "sample" and len(d2) == 200 and s2["p_value"] <= 0.05
    # each draw's delta is the ablation of exactly those heads
    row = draws.iloc[17]
    p = eng.predict(row["heads"].split(";"))
    assert row["delta_v"] == pytest.approx(
        metrics.cramers_v(p, c["attr"]) - metrics.cramers_v(eng.predict(), c["attr"])
    )


# ------------------------------------------------------------------------------- §6.10


def test_prediction_transitions_by_hand():
    #            0  1  2  3  4  5  6  7
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    before = np.array([0, 1, 1, 2, 1, 0, 2, 2])
    after = np.array([0, 0, 2, 0, 0, 1, 0, 2])
    # class 0: s0 right->right, s1 wrong->right, s2 wrong->other wrong (1 -> 2),
    #          s3 wrong->right; class 1: s4 right->wrong, s5 wrong->right, s6 wrong->wrong
    #          (2 -> 0, changed); class 2: s7 unchanged right
    df = audit.prediction_transitions(before, after, labels, class_names=["a", "b", "c"])
    assert list(df.columns) == audit.TRANSITION_COLUMNS
    t = df.set_index("class_name")
    # n, n_changed, wrong_to_right, right_to_wrong, wrong_to_other_wrong, right / wrong unchanged
    assert t.loc["a", audit.TRANSITION_COLUMNS[2:9]].tolist() == [4, 3, 2, 0, 1, 1, 0]
    assert t.loc["a", "share_changed_to_true"] == pytest.approx(2 / 3)
    assert t.loc[
        "b", ["n_changed", "wrong_to_right", "right_to_wrong", "wrong_to_other_wrong"]
    ].tolist() == [3, 1, 1, 1]
    assert math.isnan(t.loc["c", "share_changed_to_true"])
    assert t.loc["all", ["n", "n_changed", "wrong_to_right"]].tolist() == [8, 6, 3]
    assert t.loc["all", "share_changed_to_true"] == pytest.approx(0.5)
    only = audit.prediction_transitions(before, after, labels, classes=[1])
    assert only["class_index"].tolist() == [1, -1] and only["n"].tolist() == [3, 3]


def test_stereotyped_classes_by_hand():
    # class 0: value 0 acc 1.0 (10/10), value 1 acc 0.5 (5/10) -> gap 0.5
    # class 1: value 0 acc 0.8, value 1 acc 0.7 -> gap 0.1
    # class 2: only value 0 -> not eligible
    labels = np.repeat([0, 0, 1, 1, 2], 10)
    attr = np.repeat([0, 1, 0, 1, 0], 10)
    pred = labels.copy()
    pred[15:20] = 1  # class 0 / value 1: 5 wrong
    pred[20:22] = 0  # class 1 / value 0: 2 wrong
    pred[30:33] = 0  # class 1 / value 1: 3 wrong
    df = audit.stereotyped_classes(pred, labels, attr, 3, top=1, min_per_group=10)
    t = df.set_index("class_index")
    assert t.loc[0, "acc_gap"] == pytest.approx(0.5) and t.loc[1, "acc_gap"] == pytest.approx(0.1)
    assert t.loc[0, "rank"] == 1 and t.loc[1, "rank"] == 2 and pd.isna(t.loc[2, "rank"])
    assert t["selected"].tolist() == [True, False, False] and not t.loc[2, "eligible"]
    assert t.loc[0, "class_v"] == pytest.approx(metrics.cramers_v(pred[:20], attr[:20]))
    dv = audit.stereotyped_classes(pred, labels, attr, 3, top=1, disparity="class_v")
    assert dv["disparity"].equals(dv["class_v"])


def test_head_attribution_shares(case):
    means = ltc.head_means(case["heads"])
    sel = [case["carrier"], "L9H0"]
    eng = audit.LogitDeltas.from_heads(
        case["heads"], case["rest"], case["classifier"], case["layers"], sel, means
    )
    df = audit.head_attribution(eng, case["labels"], case["attr"], sel, class_subset=[0])
    assert list(df.columns) == audit.ATTRIBUTION_COLUMNS
    assert set(df["scope"]) == {"all", "stereotyped"}
    row = df[(df["scope"] == "all") & (df["head_id"] == case["carrier"])].iloc[0]
    y, a = case["labels"], case["attr"]
    v0 = metrics.cramers_v(eng.predict(), a)
    assert row["delta_v_set"] == pytest.approx(metrics.cramers_v(eng.predict(sel), a) - v0)
    assert row["delta_v_single"] == pytest.approx(
        metrics.cramers_v(eng.predict([case["carrier"]]), a) - v0
    )
    assert row["share_single"] == pytest.approx(row["delta_v_single"] / row["delta_v_set"])
    assert row["share_single"] > 0.8 and row["share_loo"] > 0.8
    st = df[df["scope"] == "stereotyped"].iloc[0]
    m = y == 0
    assert st["n"] == m.sum()
    v0s = metrics.cramers_v(eng.predict()[m], a[m])
    assert st["delta_v_set"] == pytest.approx(metrics.cramers_v(eng.predict(sel)[m], a[m]) - v0s)


# ------------------------------------------------------------------------------- end to end


def test_audit_attribute_end_to_end(case, cavs):
    split = audit.locate_evaluate_split(case["labels"], case["attr"], seed=0)
    res = audit.audit_attribute(
        case["heads"], case["rest"], case["classifier"], case["layers"],
        case["labels"], case["attr"], cavs, VALUES,
        attribute="g", is_locate=split, class_names=["c0", "c1", "c2"],
        n_boot=50, top_classes=2,
    )  # fmt: skip
    sel = res["selection"]
    assert sel["top_k"][0] == case["carrier"] and len(sel["top_k"]) == 4
    assert sel["greedy"][0] == case["carrier"]
    assert sel["split"] == {
        "single_pool": False,
        "n_locate": int(split.sum()),
        "n_evaluate": int((~split).sum()),
    }
    out = res["outcome"].set_index("condition")
    assert {"baseline", "top_k", "greedy", "top_k_transductive"} <= set(out.index)
    assert out.loc["top_k", "v"] < out.loc["baseline", "v"]
    assert out.loc["top_k", "accuracy"] >= out.loc["baseline", "accuracy"] - 0.01
    assert (out["n"] == (~split).sum()).all()
    ctrl = res["random_control"]["top_k"]
    assert ctrl["rank"] == 1 and ctrl["delta_v"] < 0
    for key in ("head_scores", "ranking", "outcome", "per_class", "delta_v", "random_draws",
                "attribution", "stereotyped_classes", "transitions", "greedy_trace",
                "stereotype_logit"):  # fmt: skip
        assert res[key].columns[0] == "attribute" and (res[key]["attribute"] == "g").all()
    t = res["transitions"]
    assert set(t["class_index"]) >= {-1, -2}
    assert t["stereotyped"].sum() >= 2
    json.dumps({k: res[k] for k in ("selection", "cavs", "random_control")}, allow_nan=False)
    # single pool: locate = evaluate = all images, no transductive rows
    res1 = audit.audit_attribute(
        case["heads"], case["rest"], case["classifier"], case["layers"],
        case["labels"], case["attr"], cavs, VALUES, n_boot=0, greedy=False,
    )  # fmt: skip
    assert res1["selection"]["split"]["single_pool"]
    assert set(res1["outcome"]["condition"]) == {"baseline", "top_k"}
    with pytest.raises(ValueError, match="value_names"):
        audit.audit_attribute(
            case["heads"], case["rest"], case["classifier"], case["layers"],
            case["labels"], case["attr"], cavs, ["x", "y"],
        )  # fmt: skip


def test_cav_ranking_reports_the_combined_ranking_as_a_sensitivity_row(case, cavs):
    """METHODS §6.6 item 5: the heads are ranked by the CAV score; the combined ranking's top-k
    (item 2) is evaluated beside them (outcome, ΔV, layer-matched control), and is the top-k
    itself with ranking="combined"."""
    ids = [(lyr, h) for lyr in case["layers"] for h in range(case["n_heads"])]
    # TextSpan flags L10H2 and gives the carrier the smallest bias share: the combined
    # ranking puts L10H2 first and, ranks (1 + 12) / 2, leaves the carrier out of its top 4
    share = {f"L{lyr}H{h}": 0.1 for lyr, h in ids} | {"L10H2": 0.9, case["carrier"]: 0.0}
    bias = pd.DataFrame(
        {
            "layer": [lyr for lyr, _ in ids],
            "head": [h for _, h in ids],
            "head_id": list(share),
            "bias_share": list(share.values()),
            "flagged": [hid == "L10H2" for hid in share],
        }
    )
    split = audit.locate_evaluate_split(case["labels"], case["attr"], seed=0)
    args = (case["heads"], case["rest"], case["classifier"], case["layers"], case["labels"],
            case["attr"], cavs, VALUES)  # fmt: skip
    kw = {"attribute": "g", "is_locate": split, "bias_stats": bias, "n_boot": 20,
          "n_draws": 50, "greedy": False}  # fmt: skip
    res = audit.audit_attribute(*args, **kw)
    sel = res["selection"]
    assert sel["ranking"] == "cav" and sel["top_k"][0] == case["carrier"]
    combined = sel["top_k_combined"]
    assert combined[0] == "L10H2" and case["carrier"] not in combined and len(combined) == 4
    # the row = mean-ablating those heads on the evaluate half with locate means, by hand
    ev = ~split
    means = ltc.head_means(case["heads"][split])
    emb = ltc.ltc_correct(
        case["heads"][ev], case["rest"][ev], case["layers"], combined, [], None, means
    )
    pred = metrics.predict(emb, case["classifier"])
    out = res["outcome"].set_index("condition")
    assert list(out.index) == ["baseline", "top_k", "top_k_transductive", "top_k_combined"]
    assert out.loc["top_k_combined", "v"] == pytest.approx(
        metrics.cramers_v(pred, case["attr"][ev])
    )
    assert out.loc["top_k_combined", "accuracy"] == pytest.approx(
        np.mean(pred == case["labels"][ev])
    )
    assert out.loc["top_k", "v"] < out.loc["top_k_combined", "v"]  # the carrier matters
    assert "top_k_combined" in set(res["delta_v"]["condition"])
    assert res["random_control"]["top_k_combined"]["selected"] == combined
    assert "top_k_combined" in set(res["random_draws"]["set"])
    assert set(res["attribution"]["set"]) == {"top_k"}
    # the combined ranking as the audit's ranking: that set is the top-k, no sensitivity row
    res_c = audit.audit_attribute(*args, **kw, ranking="combined")
    assert res_c["selection"]["ranking"] == "combined"
    assert res_c["selection"]["top_k"] == combined and "top_k_combined" not in res_c["selection"]
    assert "top_k_combined" not in set(res_c["outcome"]["condition"])
    assert list(res_c["random_control"]) == ["top_k"]
    # without TextSpan statistics there is no combined ranking to report
    res_n = audit.audit_attribute(*args, **{**kw, "bias_stats": None})
    assert (
        res_n["selection"]["top_k"] == sel["top_k"] and "top_k_combined" not in res_n["selection"]
    )
    with pytest.raises(ValueError, match="unknown audit option"):
        audit.audit_attribute(*args, **kw, rankng="cav")


def test_audit_three_values(case, cavs):
    # an age-like attribute: three values, the carrier encodes value 2 vs 0 (1 in between)
    rng = np.random.default_rng(40)  # not make_case's seed: a3 must not copy the labels
    c = make_case(seed=4)
    a3 = rng.integers(0, 3, len(c["labels"]))
    li = c["layers"].index(11)
    sign = (a3 - 1).astype(np.float32)
    c["heads"][:, li, 1, 3] = sign + rng.normal(0, 0.08, len(a3))
    c["heads"][:, li, 1, 0] = 0.7 * sign
    text = {}
    for v, s in zip(["young", "middle", "older"], (-1.0, 0.0, 1.0), strict=True):
        e = rng.normal(0, 0.3, (5, 8))
        e[:, 3] += 3.0 * s
        e[:, 4] += 2.0
        text[v] = e
    cav3 = audit.zero_shot_cavs(text, axis=["older", "young"])
    assert [x.name for x in cav3] == [
        "older_vs_young", "young_vs_rest", "middle_vs_rest", "older_vs_rest"
    ]  # fmt: skip
    res3 = audit.audit_attribute(
        c["heads"], c["rest"], c["classifier"], c["layers"], c["labels"], a3, cav3,
        ["young", "middle", "older"], attribute="age", n_boot=20, n_draws=50,
    )  # fmt: skip
    assert res3["selection"]["top_k"][0] == "L11H1"
    assert set(res3["head_scores"]["cav"]) == {x.name for x in cav3}
    out = res3["outcome"].set_index("condition")
    assert out.loc["top_k", "v"] < out.loc["baseline", "v"]
