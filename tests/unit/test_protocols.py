"""Per-dataset protocol metrics, reference head lists and published numbers (hand-computed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clipbias.methods import parse_head
from clipbias.protocols import (
    TIDY_COLUMNS,
    compare_with_reference,
    counteranimal_metrics,
    counteranimal_worst_classes,
    genderbias_bias,
    genderbias_occupation_bias,
    genderbias_top_occupations,
    jaccard,
    load_published_numbers,
    load_reference_heads,
    maxskew_empirical,
    maxskew_uniform,
    reference_heads,
    retrieval_skew,
)


def _value(df: pd.DataFrame, metric: str, group: str = "") -> float:
    sel = df[(df["metric"] == metric) & (df["group_name"] == group)]
    assert len(sel) == 1, (metric, group, df)
    return float(sel["value"].iloc[0])


# --------------------------------------------------------------------------- GenderBias-VL

OCC = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
GEN = [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]  # 0 female, 1 male
COR = [1, 1, 1, 0, 1, 0, 1, 0, 1, 1]


def test_genderbias_bias_by_hand():
    table = genderbias_occupation_bias(COR, OCC, GEN)
    # occ 0: female 2/2, male 1/2 -> 0.5; occ 1: 1/2 vs 1/2 -> 0; occ 2 has no male image
    assert table["occupation"].tolist() == [0, 1]
    assert table["acc_female"].tolist() == [1.0, 0.5]
    assert table["acc_male"].tolist() == [0.5, 0.5]
    assert table["bias"].tolist() == [0.5, 0.0]
    assert genderbias_top_occupations(COR, OCC, GEN, k=1) == [0]
    assert genderbias_top_occupations(COR, OCC, GEN, k=5) == [0, 1]

    df = genderbias_bias(COR, OCC, GEN, top_occupations=[0], class_names=["a", "b", "c"], k=1)
    assert list(df.columns) == TIDY_COLUMNS
    assert _value(df, "overall_bias") == 0.25
    assert _value(df, "top1_bias") == 0.5
    # the paper's k = 10 on data with 2 occupations: the metric keeps its name, NaN + why
    ten = genderbias_bias(COR, OCC, GEN, top_occupations=[0, 1]).set_index("metric")
    assert np.isnan(ten.loc["top10_bias", "value"])
    assert ten.loc["top10_bias", "note"] == "2 occupations with both genders < 10"
    assert _value(df, "occupation_bias", "a") == 0.5
    assert _value(df, "occupation_bias", "b") == 0.0
    with pytest.raises(ValueError, match="top occupations \\[2\\] have no images of both"):
        genderbias_bias(COR, OCC, GEN, top_occupations=[2])


def test_retrieval_skew_by_hand():
    occ = [0, 0, 0, 0, 1, 1, 1, 1]
    gen = [0, 0, 1, 1, 0, 0, 1, 1]
    score = [0.9, 0.1, 0.8, 0.7, 0.9, 0.8, 0.1, 0.2]
    df = retrieval_skew(score, occ, gen, top_occupations=[1], k=2, min_images=4)
    # occ 0: top 2 = one female, one male -> log(0.5 / 0.5) = 0
    # occ 1: top 2 = two females -> max(log(1 / 0.5), log((1/2) / 0.5)) = log 2 (zero -> 1/k)
    assert _value(df, "retrieval_skew", "0") == pytest.approx(0.0)
    assert _value(df, "retrieval_skew", "1") == pytest.approx(math.log(2))
    assert _value(df, "retrieval_skew_all") == pytest.approx(math.log(2) / 2)
    assert _value(df, "retrieval_skew_top1") == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="at least 10 images"):
        retrieval_skew(score, occ, gen)


# --------------------------------------------------------------------------- MaxSkew


def test_maxskew_uniform_by_hand():
    attr = [0, 0, 0, 1, 1, 1]
    scores = np.array([[6, 1], [5, 2], [4, 3], [3, 4], [2, 5], [1, 6]], float)
    df = maxskew_uniform(scores, attr, n_values=2, k=4, concepts=["good", "evil"])
    # top 4 of "good": 3 of value 0, 1 of value 1 -> log(0.75 / 0.5); "evil" mirrored
    assert _value(df, "maxskew_uniform@4", "good") == pytest.approx(math.log(1.5))
    assert _value(df, "maxskew_uniform@4", "evil") == pytest.approx(math.log(1.5))
    assert _value(df, "maxskew_uniform@4", "mean") == pytest.approx(math.log(1.5))
    # a value absent from the top k is log 0 = -inf and never the max
    one = maxskew_uniform(scores[:, 0], attr, n_values=2, k=2)
    assert _value(one, "maxskew_uniform@2", "mean") == pytest.approx(math.log(2))
    # unknown attributes are left out before ranking
    left = maxskew_uniform([9, 6, 5, 4], [-1, 0, 1, 1], n_values=2, k=2)
    assert _value(left, "maxskew_uniform@2", "0") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="larger than the number of images"):
        maxskew_uniform(scores, attr, k=7)


def test_maxskew_empirical_by_hand():
    attr = [0, 0, 0, 0, 1, 1]  # prior 2/3, 1/3
    score = [6, 5, 4, 3, 2, 1]
    df = maxskew_empirical(score, attr, n_values=2, k=3)
    # top 3 all value 0: log(1 / (2/3)) = log 1.5; value 1 absent -> 1/k: log((1/3)/(1/3)) = 0
    assert _value(df, "maxskew_empirical@3", "mean") == pytest.approx(math.log(1.5))
    uni = maxskew_uniform(score, attr, n_values=2, k=3)
    assert _value(uni, "maxskew_uniform@3", "mean") == pytest.approx(math.log(2))


# --------------------------------------------------------------------------- CounterAnimal


def test_counteranimal_by_hand():
    lc, cc = [0, 0, 1, 1, 2, 2], [1, 1, 1, 0, 1, 1]  # per class 1, 0.5, 1; overall 5/6
    ln, cn = [0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 0, 0, 1, 1, 1, 0]  # 0.5, 0, 0.75; overall 1/2
    # drops 0.5, 0.5, 0.25 -> classes 0 and 1 (tie: smaller index first)
    worst = counteranimal_worst_classes(cc, lc, cn, ln, k=2)
    assert worst == [0, 1]
    df = counteranimal_metrics(cc, lc, cn, ln, worst, k=2)
    assert _value(df, "common_acc") == pytest.approx(5 / 6)
    assert _value(df, "counter_acc") == pytest.approx(0.5)
    # not "gap": that name is the split's group gap (avg - worst group) in metrics.csv
    assert _value(df, "common_counter_gap") == pytest.approx(5 / 6 - 0.5)
    assert "gap" not in set(df["metric"])
    assert _value(df, "worst2_counter_acc") == pytest.approx(0.25)  # 1 right of 4 images
    assert _value(df, "worst2_common_acc") == pytest.approx(0.75)  # mean of 1 and 0.5
    with pytest.raises(ValueError, match="no counter image belongs"):
        counteranimal_metrics(cc, lc, cn, ln, [7])


# --------------------------------------------------------------------------- reference heads


def test_jaccard_by_hand():
    assert jaccard(["L1H1", "L2H2"], ["L2H2", "L3H3"]) == pytest.approx(1 / 3)
    assert jaccard([(1, 1), (2, 2)], ["L1H1", "L2H2"]) == 1.0
    assert jaccard([], []) == 1.0
    assert jaccard(["L1H1"], []) == 0.0


def test_compare_with_reference():
    assert reference_heads("waterbirds", "B16", "S_true_groups") == ["L10H10", "L11H3"]
    r = compare_with_reference([(10, 10), (11, 6)], "waterbirds", "ViT-B-16", "S_true_groups")
    assert r["jaccard"] == pytest.approx(1 / 3) and r["passes"] is False
    assert r["intersection"] == ["L10H10"]
    assert r["only_located"] == ["L11H6"] and r["only_reference"] == ["L11H3"]
    ok = compare_with_reference(
        ["L10H10", "L11H3", "L11H6"], "waterbirds", "ViT-B-16", "S_true_groups",
        pretrained="laion2b_s34b_b88k",
    )  # fmt: skip
    assert ok["jaccard"] == pytest.approx(2 / 3) and ok["passes"] is True
    other = compare_with_reference(["L10H10"], "waterbirds", "B16", "S_true_groups", "openai")
    assert other["comparable"] is False and other["passes"] is None
    with pytest.raises(KeyError, match="no reference list 'S_true_groups' for dataset 'facet'"):
        reference_heads("facet", "L14", "S_true_groups")


def test_reference_heads_file_is_consistent():
    data = load_reference_heads()
    shape = {"ViT-B-16": (12, 12), "ViT-L-14": (24, 16), "ViT-H-14": (32, 16)}
    assert set(data["weights"]) == set(shape)
    n_lists = 0
    for dataset, models in data["heads"].items():
        for model, lists in models.items():
            n_layers, n_heads = shape[model]
            for name, heads in lists.items():
                assert name in data["lists"], (dataset, model, name)
                ids = [parse_head(h) for h in heads]
                assert len(set(ids)) == len(ids), (dataset, model, name)
                assert all(0 <= l < n_layers and 0 <= h < n_heads for l, h in ids)
                n_lists += 1
    assert n_lists >= 40
    # Appendix B spot checks (GenderBias S heads, LTC-full H14) and RefineCLIP Table 4
    assert reference_heads("genderbias_vl", "H14", "S") == ["L31H7", "L31H12", "L29H11", "L30H7"]
    assert len(reference_heads("waterbirds", "L14", "refineclip_AB")) == 15
    common = set(reference_heads("waterbirds", "L14", "refineclip_common"))
    assert common <= set(reference_heads("waterbirds", "L14", "refineclip_AB"))
    assert common <= set(reference_heads("waterbirds", "L14", "refineclip_CD"))


# --------------------------------------------------------------------------- published numbers


def test_published_numbers_loader():
    df = load_published_numbers()
    assert list(df.columns[:7]) == [
        "paper", "table", "dataset", "model", "method", "metric", "value",
    ]  # fmt: skip
    key = ["paper", "table", "dataset", "model", "method", "metric"]
    assert not df.duplicated(key).any()
    assert set(df["paper"]) == {"refineclip", "ltc", "audit", "tie", "prism", "sage"}
    frac = df[df["unit"] == "fraction"]
    assert frac["value"].between(0, 1).all()

    def one(**kw) -> pd.Series:
        sel = df
        for k, v in kw.items():
            sel = sel[sel[k] == v]
        assert len(sel) == 1, kw
        return sel.iloc[0]

    row = one(table="Table 1", model="ViT-B-16", method="base", metric="avg_group_acc")
    assert row["value"] == pytest.approx(0.728)
    row = one(table="Table 3", model="ViT-B-16", method="refineclip_phase1_n10",
              metric="avg_group_acc")  # fmt: skip
    assert row["value"] == pytest.approx(0.798) and row["sd"] == pytest.approx(0.012)
    assert row["printed"] == "79.8.8 ± 1.2"
    assert one(table="Table 2", method="refineclip_phase1", metric="worst_group_acc")[
        "value"
    ] == pytest.approx(0.564)
    assert one(table="Table 6", method="original_clip", metric="avg_group_acc")[
        "value"
    ] == pytest.approx(0.804)
    v = df[(df["paper"] == "audit") & (df["metric"] == "cramers_v_gender")]
    assert sorted(v["value"]) == [0.362, 0.381] and set(v["unit"]) == {"ratio"}
    jtt = one(paper="ltc", method="probe_jtt_ltc", metric="worst_group_acc")
    assert jtt["value"] == pytest.approx(0.864)
    assert one(paper="ltc", table="abstract")["qualifier"] == ">"
    prism = one(paper="prism", dataset="waterbirds", method="prism", metric="worst_group_acc")
    assert prism["value"] == pytest.approx(0.842) and prism["model"] == "ViT-L-14"
    tie = one(paper="tie", dataset="waterbirds", method="tie_oracle", metric="worst_group_acc")
    assert tie["value"] == pytest.approx(0.788)
    with pytest.raises(ValueError, match="unknown unit"):
        load_published_numbers([{"paper": "x", "value": 1, "unit": "furlongs"}])
