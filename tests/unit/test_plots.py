"""clipbias.plots and clipbias.report on the committed report fixture (tests/data/report_fixture)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from clipbias import plots, report
from clipbias.io import REHEARSAL_BANNER, read_csv
from clipbias.methods import registry

FIX = "tests/data/report_fixture"
CELL = "planted/planted-vit-tiny/seed-42"
CELL_DIR = "planted/planted-vit-tiny"


@pytest.fixture(scope="module")
def fx(request):
    root = request.config.rootpath / FIX
    heads = root / "heads" / CELL
    met = root / "metrics" / CELL
    metrics = report.read_metrics(met / "metrics.csv")
    return {
        "root": root,
        "dataset_dir": root / "data" / "planted" / "seed-42",
        "metrics": metrics,
        "zero_shot": metrics[metrics["method"] == "zero_shot"],
        "paired": pd.read_csv(met / "paired.csv"),
        "ltc": report.read_json(heads / "ltc.json"),
        "textspan": pd.read_csv(heads / "textspan.csv"),
        "draws": pd.read_csv(met / "random_draws.csv"),
        "summary": pd.read_csv(met / "random_summary.csv"),
        "seeds": pd.read_csv(root / "metrics" / CELL_DIR / "summary_over_seeds.csv"),
        "per_seed": pd.concat(
            [
                pd.read_csv(root / "metrics" / CELL_DIR / f"seed-{s}" / "metrics.csv").assign(
                    seed=s
                )
                for s in (42, 1, 2)
            ]
        ),
        "gt": report.planted_truth(root / "ground_truth" / CELL / "heads.csv")[0],
        "train_log": root / "models" / CELL / "train_log.json",
        "group_names": report.group_names_from(
            root / "data" / "planted" / "seed-42" / "dataset.json"
        ),
    }


def assert_written(fig, stem):
    assert isinstance(fig, Figure)
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    assert png.stat().st_size > 1000
    assert pdf.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    # no leftovers from the atomic writes
    assert not list(stem.parent.glob(".*.partial"))


# ------------------------------------------------------------------------------- figures


@pytest.mark.parametrize("value, panels", [("f_wrong-f_correct", 1), ("frequencies", 2)])
def test_head_heatmap(fx, tmp_path, value, panels):
    ltc = fx["ltc"]
    out = tmp_path / f"heat_{value}"
    fig = plots.head_heatmap(
        report.frequency_frame(ltc), ltc["layers"], ltc["n_heads"], ltc, value, out=out
    )
    assert_written(fig, out)
    # F_C - F_W is the exact negative of F_W - F_C: one panel; F_C and F_W: two
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == panels
    # S and Y marks are drawn as text in the cells
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("S") == panels * len(ltc["spurious"])
    assert texts.count("Y") == panels * len(ltc["salient"])


def test_head_heatmap_draws_and_explains_the_threshold(fx, tmp_path):
    """The fixture: 14 active heads, so κ = 1/14; S heads lie above +κ, Y heads below −κ,
    and both thresholds are lines on the colour bar."""
    ltc = fx["ltc"]
    assert ltc["n_active"] == 14 and ltc["kappa"] == pytest.approx(1 / 14)
    fig = plots.head_heatmap(
        report.frequency_frame(ltc), ltc["layers"], ltc["n_heads"], ltc, out=tmp_path / "h"
    )
    (cbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    levels = sorted(line.get_ydata()[0] for line in cbar.get_lines())
    assert levels == pytest.approx([-1 / 14, 1 / 14])
    assert {t.get_text() for t in cbar.texts} == {"+κ", "−κ"}
    note = fig.legends[0].get_title().get_text().replace("\n", " ")
    assert "κ = 1/n_active = 1/14 = 0.071" in note and "split 'val'" in note
    assert "(κ = 0.071)" in fig.get_suptitle()
    # the threshold stays on the colour bar when every |F_W - F_C| is below it
    flat = report.frequency_frame(ltc).assign(f_wrong=0.0, f_correct=0.01)
    fig = plots.head_heatmap(flat, ltc["layers"], 4, ltc, out=tmp_path / "flat")
    (cbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert cbar.get_ylim()[1] > 1 / 14
    # no active head: κ is undefined and the figure says so
    none = dict(ltc, kappa=None, n_active=0, spurious=[], salient=[])
    fig = plots.head_heatmap(flat, ltc["layers"], 4, none, out=tmp_path / "none")
    assert "κ is undefined" in fig.legends[0].get_title().get_text().replace("\n", " ")


def test_head_heatmap_accepts_plain_head_lists_and_rejects_bad_value(fx, tmp_path):
    ltc = fx["ltc"]
    freq = pd.DataFrame(ltc["frequencies"])[["layer", "index", "f_correct", "f_wrong"]]
    located = {"spurious": ["L3H1"], "salient": []}
    fig = plots.head_heatmap(freq, ltc["layers"], 4, located, out=tmp_path / "h.png")
    assert_written(fig, tmp_path / "h")  # ".png" suffix is dropped from the stem
    with pytest.raises(ValueError, match="value must be"):
        plots.head_heatmap(freq, ltc["layers"], 4, located, "nope", out=tmp_path / "x")


def test_group_accuracy_all_methods(fx, tmp_path):
    out = tmp_path / "groups"
    fig = plots.group_accuracy(fx["metrics"], out, group_names=fx["group_names"])
    assert_written(fig, out)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    # registry order: zero-shot first, then the baselines, LTC and its variants
    grouped = fx["metrics"][fx["metrics"]["metric"] == "acc_group_0"]["method"]
    assert labels == [report.method_label(m) for m in report.ordered_methods(grouped)]
    assert labels[0] == "Zero-shot" and labels.index("LTC") > labels.index("RoboShot")
    assert "LTC-random (mean of draws)" not in labels  # no per-group rows
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [*fx["group_names"], "worst group"]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == len(labels)  # one worst group per method


def test_group_accuracy_single_method_uses_table_group_names(fx, tmp_path):
    out = tmp_path / "zs"
    fig = plots.group_accuracy(fx["zero_shot"], out)  # names from the group_name column
    assert_written(fig, out)
    labels = [t.get_text().replace("\n", " ") for t in fig.axes[0].get_xticklabels()]
    assert labels == fx["group_names"]


def test_random_distribution(fx, tmp_path):
    v = fx["metrics"].set_index(["method", "metric"])["value"]
    out = tmp_path / "rand"
    fig = plots.random_distribution(
        fx["draws"], v["ltc", "worst_group_acc"], v["zero_shot", "worst_group_acc"], out=out
    )
    assert_written(fig, out)
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    pct = fx["summary"].set_index("metric").loc["worst_group_acc", "percentile"]
    assert f"percentile {pct:.0f}" in legend
    assert "Zero-shot" in legend and "n = 100" in legend


def test_midrank_percentile_matches_summary(fx):
    summary = fx["summary"].set_index("metric")
    for metric in ["avg_acc", "worst_group_acc", "gap"]:
        got = plots.midrank_percentile(fx["draws"][metric], summary.loc[metric, "observed"])
        assert got == pytest.approx(summary.loc[metric, "percentile"])
    assert plots.midrank_percentile([1, 2, 3, 4], 2.0) == pytest.approx(37.5)


def test_textspan_figure(fx, tmp_path):
    out = tmp_path / "ts"
    fig = plots.textspan_table_figure(fx["textspan"], fx["ltc"], out, top_k=2)
    assert_written(fig, out)
    texts = [t.get_text() for t in fig.axes[0].texts]
    first = fx["textspan"].query("head_id == 'L3H1' and rank == 1")["text"].iloc[0]
    assert any(t.startswith(f"1. {first}") for t in texts)
    fig = plots.textspan_table_figure(fx["textspan"], ["L9H9"], tmp_path / "ts2")
    assert "(not described)" in [t.get_text() for t in fig.axes[0].texts]


def test_sample_grid(fx, tmp_path):
    out = tmp_path / "grid"
    fig = plots.sample_grid(fx["dataset_dir"], out, per_group=3)
    assert_written(fig, out)
    assert len(fig.axes) == 4 * 3
    rows = [fig.axes[i * 3].get_ylabel() for i in range(4)]
    assert rows[0] == "circle on land" and rows[1] == "circle on water\n(minority)"
    assert all(len(ax.images) == 1 for ax in fig.axes)


def test_training_curve(fx, tmp_path):
    out = tmp_path / "train"
    fig = plots.training_curve(fx["train_log"], out)
    assert_written(fig, out)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == list(range(1, 11))


def test_located_vs_ground_truth(fx, tmp_path):
    out = tmp_path / "gt"
    fig = plots.located_vs_ground_truth(fx["gt"], fx["ltc"], out)
    assert_written(fig, out)
    ax = fig.axes[0]
    assert "precision@|S| 2/2 = 1.00" in ax.get_title()
    assert "S holds the top ground-truth head L3H1" in ax.get_title()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == fx["gt"].sort_values("rank")["head_id"].tolist()


def test_located_vs_ground_truth_says_when_the_locator_misses_or_selects_nothing(fx, tmp_path):
    """The fixture's top ground-truth head is L3H1; S = [L2H0] misses it, S = [] is empty."""
    assert fx["gt"].sort_values("rank")["head_id"].iloc[0] == "L3H1"
    ltc = fx["ltc"]
    miss = dict(ltc, spurious=[x for x in ltc["spurious"] if x["head"] == "L2H0"])
    title = plots.located_vs_ground_truth(fx["gt"], miss, tmp_path / "m").axes[0].get_title()
    assert "precision@|S| 0/1 = 0.00" in title
    assert "S misses the top ground-truth head L3H1" in title
    empty = dict(ltc, spurious=[])
    title = plots.located_vs_ground_truth(fx["gt"], empty, tmp_path / "e").axes[0].get_title()
    assert "LTC selected no spurious head (S is empty)" in title and "L3H1" in title


# ------------------------------------------------------------------------------- tables


@pytest.fixture
def tiny_metrics():
    rows = [
        ("ltc", "test", "avg_acc", 0.9, 0.88, 0.92),
        ("ltc", "test", "worst_group_acc", 0.727, 0.691, 0.760),
        ("ltc", "test", "gap", 0.173, 0.15, 0.2),
        ("ltc", "test", "acc_group_0", 0.95, 0.9, 0.99),
        ("ltc", "test", "acc_group_1", 0.727, 0.691, 0.760),
        ("zero_shot", "test", "avg_acc", 0.8, 0.78, 0.82),
        ("zero_shot", "test", "worst_group_acc", 0.5, 0.45, 0.55),
        ("zero_shot", "test", "acc_group_0", 0.99, 0.98, 1.0),
        ("zero_shot", "test", "acc_group_1", 0.5, 0.45, 0.55),
        ("my_method", "test", "avg_acc", 0.85, np.nan, np.nan),
        ("zero_shot", "val", "avg_acc", 0.1, 0.0, 0.2),
    ]
    return pd.DataFrame(rows, columns=["method", "split", "metric", "value", "ci_low", "ci_high"])


def test_main_table_values_and_layout(tiny_metrics):
    t = report.main_table(tiny_metrics, split="test")
    assert list(t.columns) == ["Method", "Worst-group", "Average", "Gap"]
    # METHOD_ORDER: zero-shot first, LTC after the baselines, unknown methods last
    assert t["Method"].tolist() == ["Zero-shot", "LTC", "my_method"]
    ltc = t.set_index("Method").loc["LTC"]
    assert ltc["Worst-group"] == "72.7 [69.1, 76.0]"
    assert ltc["Average"] == "90.0 [88.0, 92.0]"
    assert ltc["Gap"] == "17.3 [15.0, 20.0]"
    zs = t.set_index("Method").loc["Zero-shot"]
    assert zs["Gap"] == "n/a"
    assert t.set_index("Method").loc["my_method", "Average"] == "85.0"  # no interval
    # default split: "test" is chosen when several are present
    assert report.main_table(tiny_metrics).equals(t)
    t2 = report.main_table(tiny_metrics, methods=["ltc"], split="test", digits=2)
    assert t2["Worst-group"].tolist() == ["72.70 [69.10, 76.00]"]


def test_format_ci():
    assert report.format_ci(0.7272, 0.6911, 0.76) == "72.7 [69.1, 76.0]"
    assert report.format_ci(float("nan"), 0.1, 0.2) == "n/a"


def test_group_table(tiny_metrics):
    t = report.group_table(tiny_metrics, ["land", "water"], split="test")
    assert list(t.columns) == ["Method", "land", "water"]
    assert t.set_index("Method").loc["Zero-shot", "water"] == "50.0 [45.0, 55.0]"


def test_heads_table(fx):
    ltc = fx["ltc"]
    t = report.heads_table(ltc, fx["textspan"], top_k=2, ground_truth_df=fx["gt"])
    n_s, n_y = len(ltc["spurious"]), len(ltc["salient"])
    assert t["Set"].tolist() == ["S"] * n_s + ["Y"] * n_y
    assert t["Head"].tolist() == report.located(ltc, "spurious") + report.located(ltc, "salient")
    row = t.iloc[0]
    texts = fx["textspan"].query("head_id == @row.Head").sort_values("rank")["text"].tolist()
    assert row["Descriptions"] == "; ".join(texts[:2])
    assert row["GT rank"] == "1"
    assert row["Score"] == f"{ltc['spurious'][0]['score']:.3f}"
    bare = report.heads_table({"spurious": [{"head": "L9H9", "score": 0.5}]}, fx["textspan"])
    assert bare["Descriptions"].tolist() == ["(not described)"]
    assert list(report.heads_table(ltc).columns) == ["Set", "Head", "Score"]


def test_precision_at_k(fx):
    assert report.precision_at_k(fx["gt"], ["L3H1", "L2H0"]) == 1.0
    assert report.precision_at_k(fx["gt"], ["L3H1", "L0H0"]) == 0.5
    assert np.isnan(report.precision_at_k(fx["gt"], []))


def test_markdown_and_latex():
    df = pd.DataFrame({"Method": ["a|b", "c_d"], "Acc (%)": ["72.7 [69.1, 76.0]", "50 ± 1"]})
    md = report.to_markdown(df)
    lines = md.strip().splitlines()
    assert lines[0] == "| Method | Acc (%) |"
    assert lines[1] == "| --- | --- |"
    assert lines[2] == "| a\\|b | 72.7 [69.1, 76.0] |"
    num = report.to_markdown(pd.DataFrame({"x": [1.5]}))
    assert "| ---: |" in num
    tex = report.to_latex(df)
    assert tex.startswith("\\begin{tabular}{ll}\n\\toprule\n")
    assert "Method & Acc (\\%) \\\\" in tex
    assert "c\\_d & 50 $\\pm$ 1 \\\\" in tex
    assert tex.rstrip().endswith("\\end{tabular}")
    wrapped = report.to_latex(df, caption="Main 100%", label="tab:main")
    assert "\\caption{Main 100\\%}" in wrapped and "\\label{tab:main}" in wrapped
    assert wrapped.rstrip().endswith("\\end{table}")


def test_write_table(fx, tmp_path):
    t = report.main_table(fx["metrics"])
    paths = report.write_table(t, tmp_path / "sub" / "main_table", caption="Main")
    assert sorted(p.name for p in paths.values()) == [
        "main_table.csv",
        "main_table.md",
        "main_table.tex",
    ]
    # the caption travels with every file: CSV comment line, Markdown paragraph, LaTeX caption
    assert paths["csv"].read_text().startswith("# Main\n")
    assert read_csv(paths["csv"]).equals(t)
    md = paths["md"].read_text().splitlines()
    assert md[0] == "Main" and md[1] == ""
    assert len(md) == 2 + 2 + len(t)
    assert "| LTC-random (mean of draws) |" in md[-1]
    assert "\\caption{Main}" in paths["tex"].read_text()
    assert "REHEARSAL" not in paths["md"].read_text()


def test_write_table_in_a_rehearsal_folder_says_so(fx, tmp_path):
    t = report.main_table(fx["metrics"])
    folder = tmp_path / "results" / "ltc_waterbirds-rehearsal" / "tables"
    paths = report.write_table(t, folder / "main_table", caption="Main")
    csv = paths["csv"].read_text().splitlines()
    assert csv[0] == f"# {REHEARSAL_BANNER}" and csv[1] == "# Main"
    assert read_csv(paths["csv"]).equals(t)
    assert paths["md"].read_text().startswith(f"**{REHEARSAL_BANNER}**\n\nMain\n\n")
    assert f"\\caption{{{REHEARSAL_BANNER.replace('—', '—')} Main}}" in paths["tex"].read_text()


def test_random_summary_table(fx):
    t = report.random_summary_table(fx["summary"])
    assert t["Metric"].tolist() == ["Average", "Group average", "Worst-group", "Gap"]
    assert t.loc[2, "Draws"] == "100"


def test_read_metrics_dedupes(fx, tmp_path):
    met = fx["root"] / "metrics" / CELL / "metrics.csv"
    fx["zero_shot"].to_csv(tmp_path / "zs.csv", index=False)
    both = report.read_metrics(tmp_path / "zs.csv", met)
    assert not both.duplicated(["method", "split", "metric"]).any()
    assert set(both["method"]) == set(fx["metrics"]["method"])


def test_paired_table(fx):
    t = report.paired_table(fx["paired"]).set_index("Method")
    assert "Zero-shot" not in t.index and "LTC" in t.index
    row = fx["paired"].query("method == 'ltc' and metric == 'worst_group_acc'").iloc[0]
    assert t.loc["LTC", "Δ Worst-group"].startswith(f"{100 * row['diff']:+.1f} [")
    assert "McNemar" in " ".join(t.columns)
    # LTC beats zero-shot's worst group in every one of the 200 resamples: the two-sided
    # bootstrap p is 0 in the file and "< 2/200" in the table
    assert row["p_value"] == 0 and row["n_boot"] == 200
    assert t.loc["LTC", "p (Worst-group, bootstrap)"] == "< 0.01"
    assert not t.isin(["0", "0.0"]).any().any()


def test_format_p():
    assert report.format_p(0.0123456) == "0.0123"
    assert report.format_p(0.05, 200, sides=2) == "0.05"
    # a resampling p of 0 is below its first step: sides / n
    assert report.format_p(0.0, 1000) == "< 0.001"
    assert report.format_p(0.0, 1000, sides=2) == "< 0.002"
    assert report.format_p(0, 200, sides=2) == "< 0.01"
    # an exact test's 0 is an underflow; a file without its resample count says so
    assert report.format_p(0.0) == "< 1e-300"
    assert report.format_p(0.0, float("nan")) == "below the resolution of its resamples"
    assert report.format_p(None) == report.format_p(float("nan")) == "n/a"
    assert report.p_phrase(0.0, 1000) == "< 0.001" and report.p_phrase(0.25) == "= 0.25"


def test_caption_names_split_units_and_intervals():
    c = report.caption(
        "main table", cell="planted / m (seed 42)", split="test", units="accuracy in %",
        intervals=["bootstrap", "random_range"], notes=["p_paired", "One more."],
    )  # fmt: skip
    assert c.startswith("planted / m (seed 42): main table. Split: test. Units: accuracy in %. ")
    assert report.INTERVALS["bootstrap"] in c and report.INTERVALS["random_range"] in c
    assert "2.5-97.5 % range of its draws" in c
    assert report.NOTES["p_paired"] in c and c.endswith("One more.")
    with pytest.raises(ValueError, match="unknown interval kind"):
        report.caption("x", intervals=["bootsrap"])


def test_random_controls():
    assert report.random_controls(["zero_shot", "ltc", "ltc_random"]) == ["ltc_random"]
    # an aliased id is looked up by its registry name in methods.csv
    methods = pd.DataFrame({"method": ["ltc", "my_draws"], "name": ["ltc", "ltc_random"]})
    assert report.random_controls(["ltc", "my_draws"], methods) == ["my_draws"]
    assert report.random_controls(["ltc", "my_draws"]) == []


def test_seeds_table_and_scatter(fx, tmp_path):
    t = report.seeds_table(fx["seeds"]).set_index("Method")
    assert t.loc["LTC", "Worst-group > zero-shot"].endswith("/3")
    assert "±" in t.loc["LTC", "Worst-group"]
    fig = plots.seeds_scatter(fx["per_seed"], tmp_path / "seeds")
    assert_written(fig, tmp_path / "seeds")
    n_methods = fx["per_seed"]["method"].nunique()
    assert len(fig.axes[0].get_yticklabels()) == n_methods


def test_seeds_table_ranks_by_mean_worst_group_gain(fx):
    t = report.seeds_table(fx["seeds"], rank=True)
    assert t["Method"].iloc[0] == "Zero-shot"
    wg = fx["seeds"].query("metric == 'worst_group_acc' and method != 'zero_shot'")
    best = wg.sort_values("gain_mean", ascending=False)["method"].iloc[0]
    assert t["Method"].iloc[1] == report.method_label(best)
    col = "Δ Worst-group vs zero-shot (t 95 % over seeds)"
    assert t[col].iloc[1].startswith("+") and "[" in t[col].iloc[1]


def test_protocol_table_and_method_plane(fx, tmp_path):
    methods = pd.read_csv(fx["root"] / "metrics" / CELL / "methods.csv")
    from clipbias.protocols import load_published_numbers

    t = report.protocol_table(fx["metrics"], fx["paired"], methods, dataset="waterbirds",
                              published=load_published_numbers())  # fmt: skip
    assert t["Block"].iloc[0] == registry.BLOCKS["reference"]
    ltc = t.set_index("Method").loc["LTC"]
    assert ltc["Block"] == registry.BLOCKS["oracle_a"] and ltc["Level"] == "head-level"
    assert ltc["Class labels"] == "GT" and ltc["Δ Worst-group vs LTC"] == "–"
    assert ltc["Δ Worst-group vs zero-shot"].startswith("+")
    # blocks in protocol order, the label-free block after the oracle-a one
    order = [list(registry.BLOCKS.values()).index(b) for b in t["Block"]]
    assert order == sorted(order)
    # published reference columns with the paper's model (PRISM's Orth-Cali on Waterbirds)
    oc = t.set_index("Method").loc["Ortho-Cali", "Published (paper, model)"]
    assert "WG 68.8" in oc and "prism, ViT-L-14" in oc
    fig = plots.method_plane(fx["metrics"], methods, tmp_path / "plane")
    assert_written(fig, tmp_path / "plane")
    with pytest.raises(ValueError, match="no method"):
        plots.method_plane(fx["metrics"], methods.head(0), tmp_path / "empty")


def test_grid_main_table(fx):
    path = fx["root"] / "metrics" / CELL_DIR / "summary_over_seeds.csv"
    t = report.grid_main_table([{"dataset": "planted", "model": "tiny", "path": path}])
    assert list(t.columns) == ["Method", "planted / tiny: Worst-group", "planted / tiny: Average"]
    assert t["Method"].iloc[0] == "Zero-shot" and "±" in t.iloc[0, 1]


def test_note_figure(tmp_path):
    assert_written(plots.note_figure("nothing configured", tmp_path / "n"), tmp_path / "n")


def test_reference_heads_table():
    ltc = {"spurious": [{"head": "L10H10"}, {"head": "L11H6"}], "salient": [{"head": "L11H5"}]}
    t = report.reference_heads_table({"ltc": ltc}, "waterbirds", "ViT-B-16", "laion2b_s34b_b88k")
    s = t.set_index("List").loc["S_true_groups"]
    assert s["Reference"] == "L10H10, L11H3" and s["Jaccard"] == "0.33"  # 1 of 3 heads shared
    assert s["Verdict"] == "fail (< 0.5)"
    y = t.set_index("List").loc["Y_true_groups"]  # L11H5 of L11H5, L10H2: 1 / 2
    assert y["Jaccard"] == "0.50" and y["Verdict"] == "pass"
    other = report.reference_heads_table({"ltc": ltc}, "waterbirds", "ViT-B-16", "openai")
    assert other["Verdict"].str.startswith("not comparable").all()
    planted = report.reference_heads_table({"ltc": ltc}, "planted", "planted-vit-tiny", "train")
    assert planted["Verdict"].str.startswith("no reference list").all()


def test_group_figures_and_tables_of_a_dataset_without_groups(tmp_path):
    """ImageNet-A's edit task has no groups (group -1): no acc_group_* rows, no worst group.
    The report's group figure says so instead of failing (the rehearsal's first run of
    refineclip_edit_imagenet_a failed in report_method here), and the tables keep their
    columns."""
    metrics = pd.DataFrame(
        {
            "method": ["zero_shot", "refineclip"],
            "split": "test",
            "metric": "avg_acc",
            "value": [0.5, 0.6],
            "ci_low": [0.4, 0.5],
            "ci_high": [0.6, 0.7],
            "group_name": "",
        }
    )
    fig = plots.group_accuracy(metrics, tmp_path / "g", split="test")
    assert any("no groups" in t.get_text() for t in fig.texts)
    assert (tmp_path / "g.png").is_file()
    table = report.group_table(metrics, split="test")
    assert table["Method"].tolist() == ["Zero-shot", "RefineCLIP phase 1"]
    main = report.main_table(metrics, split="test")
    assert main.loc[0, "Worst-group"] == "n/a" and main.loc[0, "Average"].startswith("50.0")
