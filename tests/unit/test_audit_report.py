"""Audit report tables (clipbias.audit_report) and figures (clipbias.plots.audit_*) on the
audit stage's output in the report fixture (tests/data/make_report_fixture.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import REPO

from clipbias import audit_report as ar
from clipbias import plots
from clipbias.protocols import load_published_numbers

CELL = "planted/planted-vit-tiny/seed-42"
AUDIT = REPO / "tests/data/report_fixture/audit" / CELL


@pytest.fixture(scope="module")
def audit():
    return ar.read_audit(AUDIT)


def test_read_audit_concatenates_every_folder(audit):
    assert audit.attributes == ["colour"] and audit.variants == ["split", "single_pool"]
    out = audit.table("outcome")
    for variant in audit.variants:
        part = pd.read_csv(AUDIT / "colour" / variant / "outcome.csv")
        pd.testing.assert_frame_equal(audit.table("outcome", variant), part)
    assert len(out) == sum(len(audit.table("outcome", v)) for v in audit.variants)
    assert audit.selection("colour")["top_k"][0] == "L3H1"
    with pytest.raises(FileNotFoundError, match="not an audit folder"):
        ar.read_audit(AUDIT / "colour")


def test_published_reference_of_the_audit_paper():
    pub = load_published_numbers()
    ref = ar.published_reference(pub, "facet", "ViT-L-14", "gender")
    assert ref == pytest.approx({"baseline": 0.381, "top_k": 0.362, "acc_change": 0.0042})
    assert ar.published_reference(pub, "facet", "ViT-L-14", "age") == {}
    assert ar.published_reference(pub, "planted", "planted-vit-tiny", "colour") == {}


def test_outcome_table_values_and_reference_columns(audit):
    t = ar.outcome_table(audit)
    assert "Paper V" not in t.columns  # no published numbers for the planted benchmark
    raw = audit.table("outcome")
    assert len(t) == len(raw)
    base = t[(t["Variant"] == "locate / evaluate") & (t["Condition"] == "Before ablation")]
    v0 = raw[(raw["variant"] == "split") & (raw["condition"] == "baseline")]["v"].iloc[0]
    assert base["V"].iloc[0] == f"{v0:.3f}"
    top = t[(t["Variant"] == "locate / evaluate") & (t["Condition"] == "Top-k ablated")].iloc[0]
    ctrl = audit.info[("colour", "split")]["random_control"]["top_k"]
    assert top["Heads"] == ", ".join(ctrl["selected"])
    assert top["Random sets beaten (%)"] == f"{100 * ctrl['frac_beaten']:.1f}"
    assert top["ΔV [95 % CI]"].startswith(f"{ctrl['delta_v']:+.3f} [")
    # reference columns when the paper published numbers for (dataset, model, attribute)
    pub = pd.DataFrame(
        [
            {"paper": "audit", "dataset": "planted", "model": "m", "metric": "cramers_v_colour",
             "method": "baseline", "value": 0.4},
            {"paper": "audit", "dataset": "planted", "model": "m", "metric": "cramers_v_colour",
             "method": "ablate_colour_heads", "value": 0.3},
            {"paper": "audit", "dataset": "planted", "model": "m", "metric": "acc_change",
             "method": "ablate_colour_heads", "value": 0.0042},
        ]
    )  # fmt: skip
    t2 = ar.outcome_table(audit, pub, "planted", "m").set_index(["Variant", "Condition"])
    assert t2.loc[("locate / evaluate", "Before ablation"), "Paper V"] == "0.400"
    assert t2.loc[("locate / evaluate", "Top-k ablated"), "Paper V"] == "0.300"
    assert t2.loc[("locate / evaluate", "Top-k ablated"), "Paper ΔAcc (pp)"] == "+0.42"
    assert t2.loc[("locate / evaluate", "Greedy set ablated"), "Paper V"] == ""
    # the sensitivity row: the combined ranking's top-k, its ΔV, control p and Δaccuracy
    sens = t[t["Condition"] == "Top-k, combined ranking (sensitivity)"]
    assert list(sens["Variant"]) == ["locate / evaluate", "single pool"]
    row, ctrl = sens.iloc[0], audit.info[("colour", "split")]["random_control"]["top_k_combined"]
    assert row["Heads"] == ", ".join(audit.selection("colour")["top_k_combined"])
    assert row["Control p"] == ar.fmt_p(ctrl["p_value"])
    assert row["ΔV [95 % CI]"].startswith(f"{ctrl['delta_v']:+.3f} [")


def test_heads_control_and_transition_tables(audit):
    heads = ar.heads_table(audit, "split")
    sel = audit.selection("colour")
    assert sel["ranking"] == "cav"  # the default; the combined ranking's top-k beside it
    assert set(heads["Head"]) == set(sel["top_k"]) | set(sel["greedy"]) | set(sel["top_k_combined"])
    assert heads["Head"].iloc[0] == "L3H1"
    assert heads["Sets"].iloc[0].startswith("top-k, greedy")
    assert heads["Order"].astype(int).is_monotonic_increasing
    assert heads["TextSpan descriptions"].str.len().gt(0).all()
    assert heads["Flagged"].isin(["yes", "no"]).all()  # TextSpan beside every head
    ctrl = ar.control_table(audit)
    n_sets = sum(len(i["random_control"]) for i in audit.info.values())
    assert len(ctrl) == n_sets
    assert set(ctrl["Set"]) == {"top-k", "greedy", "top-k (combined ranking)"}
    tr = ar.transitions_table(audit)
    raw = audit.table("transitions", "split")
    total = raw[(raw["condition"] == "top_k") & (raw["class_index"] == -1)].iloc[0]
    row = tr[tr["Class"] == "(all)"].iloc[0]
    assert row["Changed"] == total["n_changed"] and row["Stereotyped"] == "-"
    assert row["Wrong→right"] + row["Right→wrong"] + row["Wrong→other"] == row["Changed"]
    md = ar.headline_markdown(audit)
    assert "**colour**" in md and "layer-matched random sets" in md
    assert "(locate / evaluate, cav ranking)" in md
    assert (
        "  - (locate / evaluate, combined ranking): ablating " + ", ".join(sel["top_k_combined"])
        in md
    )


def test_transition_rows_fall_back_to_the_most_changed_classes():
    df = pd.DataFrame(
        {
            "class_index": [0, 1, 2, -1],
            "class_name": ["a", "b", "c", "all"],
            "stereotyped": [False, False, False, False],
            "n_changed": [1, 5, 3, 9],
        }
    )
    rows = ar.transition_rows(df, max_classes=2)
    assert rows["class_name"].tolist() == ["b", "c", "all"]


def test_audit_figures(audit, tmp_path):
    info = audit.info[("colour", "split")]
    controls = {"colour": info["random_control"]["top_k"]}
    plots.audit_random_control(audit.table("random_draws", "split"), controls,
                               out=tmp_path / "rc")  # fmt: skip
    summary = json.loads((AUDIT / "summary.json").read_text())
    plots.audit_cav_heatmap(audit.table("head_scores", "split"), {"colour": info["selection"]},
                            summary["stored_layers"], summary["n_heads"], out=tmp_path / "hm")  # fmt: skip
    plots.audit_transitions(audit.table("transitions", "split"), out=tmp_path / "tr")
    for stem in ("rc", "hm", "tr"):
        for ext in ("png", "pdf"):
            assert (tmp_path / f"{stem}.{ext}").stat().st_size > 1000
    with pytest.raises(ValueError, match="no random-control"):
        plots.audit_random_control(
            audit.table("random_draws"), {"colour": None}, out=tmp_path / "x"
        )
    with pytest.raises(ValueError, match="no transitions"):
        plots.audit_transitions(audit.table("transitions"), out=tmp_path / "x", condition="zz")


def test_control_without_layer_matched_sets(audit, tmp_path):
    """A layer holding more than half of its heads in the set: no random set, no p-value."""
    c = {"selected": ["L3H0", "L3H1", "L3H2"], "mode": "enumerate", "n_sets": 0,
         "v_before": 0.5, "v_selected": 0.45, "delta_v": -0.05, "delta_acc": 0.0,
         "rank": None, "p_value": None, "frac_beaten": None, "mean": None, "sd": None,
         "p05": None, "p95": None, "delta_acc_mean": None}  # fmt: skip
    info = {
        ("colour", "split"): {**audit.info[("colour", "split")], "random_control": {"top_k": c}}
    }
    row = ar.control_table(ar.AuditResults(audit.summary, info, audit.tables)).iloc[0]
    assert (row["Rank"], row["p"], row["Beaten (%)"]) == ("n/a", "n/a", "n/a")
    draws = audit.table("random_draws", "split").iloc[:0]
    plots.audit_random_control(draws, {"colour": c}, out=tmp_path / "rc")
    assert (tmp_path / "rc.png").stat().st_size > 1000
