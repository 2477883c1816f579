"""Report tables: readers of the result tables (docs/DESIGN.md, "Result tables") and table
builders/writers for the report notebooks.

Readers return plain pandas/JSON objects; builders return DataFrames of display strings
(accuracies in %, 95 % intervals as ``"72.7 [69.1, 76.0]"``); :func:`write_table` writes one
table as CSV, Markdown and LaTeX next to each other. Nothing here needs matplotlib.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipbias.io import atomic_path, read_csv, read_json, rehearsal_banner, write_csv
from clipbias.methods import registry

log = logging.getLogger(__name__)

#: Display names of the registered methods (clipbias.methods.registry), in registry order.
METHOD_LABELS: dict[str, str] = registry.labels()
#: Row order of the main table; methods not listed follow in order of appearance.
METHOD_ORDER: list[str] = list(METHOD_LABELS)

METRIC_LABELS: dict[str, str] = {
    "worst_group_acc": "Worst-group",
    "avg_acc": "Average",
    "avg_group_acc": "Group average",
    "gap": "Gap",
    "overall_bias": "Overall bias",
    "top10_bias": "Top-10 bias",
    "counter_acc": "Counter",
    "common_acc": "Common",
    "common_counter_gap": "Common - counter",
    "worst10_counter_acc": "Worst-10 counter",
    "maxskew_uniform@1000": "MaxSkew@1000",
    "maxskew_empirical@1000": "MaxSkew@1000 (empirical prior)",
    "protected_v": "Cramér's V",
    "protected_v_excess": "V excess",
    "edit_success": "Edit success",
    "locality": "Locality",
}


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def read_metrics(*paths: str | os.PathLike) -> pd.DataFrame:
    """Concatenate tidy metric CSVs (``method, split, metric, value, ci_low, ci_high``, ...).

    Rows repeated across files (e.g. ``zero_shot`` in both ``zero_shot.csv`` and the
    per-model table) are kept once, the first file winning.
    """
    frames = [read_csv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates(subset=["method", "split", "metric"], keep="first").reset_index(
        drop=True
    )


def frequency_frame(ltc: Mapping[str, Any]) -> pd.DataFrame:
    """``ltc.json["frequencies"]`` as a DataFrame with ``f_wrong-f_correct`` and
    ``f_correct-f_wrong`` columns added."""
    df = pd.DataFrame(ltc["frequencies"])
    df["f_wrong-f_correct"] = df["f_wrong"] - df["f_correct"]
    df["f_correct-f_wrong"] = -df["f_wrong-f_correct"]
    return df


def located(ltc: Mapping[str, Any], key: str = "spurious") -> list[str]:
    """Head ids (``"L3H1"``) of ``ltc.json[key]`` (``spurious`` or ``salient``), in order."""
    return [x["head"] for x in ltc.get(key, [])]


def group_names_from(dataset_meta: str | os.PathLike | Mapping[str, Any] | None) -> list[str]:
    """``dataset.json["group_names"]`` (path or parsed dict); ``[]`` when absent."""
    if dataset_meta is None:
        return []
    meta = dataset_meta if isinstance(dataset_meta, Mapping) else read_json(dataset_meta)
    return list(meta.get("group_names") or [])


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def format_ci(value: float, low: float, high: float, digits: int = 1, scale: float = 100.0) -> str:
    """``"72.7 [69.1, 76.0]"`` (values scaled by ``scale``; NaN interval -> value only)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    v = f"{value * scale:.{digits}f}"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return v
    return f"{v} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def format_p(p: Any, n_resamples: Any = None, sides: int = 1, digits: int = 3) -> str:
    """A p-value for a table, never "0".

    ``n_resamples``: the number of bootstrap resamples or permutation/random draws the p-value
    was counted over (``None``: an exact test). Such a p-value moves in steps of
    ``sides / n_resamples`` (a two-sided bootstrap p = 2 min(P(d* <= 0), P(d* >= 0)) has
    ``sides=2``), so 0 means "below the first step" and prints as ``"< 0.002"`` (1,000
    resamples, two-sided). An exact test's 0 is a floating-point underflow: ``"< 1e-300"``.
    Missing values print ``"n/a"``.
    """
    try:
        p = float(p)
    except (TypeError, ValueError):
        return "n/a"
    if not np.isfinite(p):
        return "n/a"
    if p > 0:
        return f"{p:.{digits}g}"
    if n_resamples is None:
        return "< 1e-300"
    try:
        n = float(n_resamples)
    except (TypeError, ValueError):
        n = float("nan")
    if not (np.isfinite(n) and n > 0):  # a table written without its resample count
        return "below the resolution of its resamples"
    return f"< {sides / n:.{digits}g}"


def p_phrase(p: Any, n_resamples: Any = None, sides: int = 1) -> str:
    """:func:`format_p` to follow a "p" in a sentence: ``"= 0.01"`` or ``"< 0.002"``."""
    text = format_p(p, n_resamples, sides)
    return text if text.startswith("<") else f"= {text}"


#: What the brackets and ranges of a table mean; :func:`caption` joins the chosen ones.
INTERVALS: dict[str, str] = {
    "bootstrap": "[ ] = 95 % stratified bootstrap interval (percentile; images resampled "
    "within their group)",
    "paired": "[ ] of a Δ = 95 % paired bootstrap interval of the difference (both methods "
    "on the same resampled images, resampled within their group)",
    "paired_v": "ΔV [ ] = 95 % paired bootstrap interval (V before and after on the same "
    "resampled images, resampled within class × attribute value)",
    "random_range": "LTC-random shows the mean of its draws, and its brackets are the "
    "2.5-97.5 % range of its draws (not an interval of the mean)",
    "random_draws": "Random 5-95 % = the 5th to 95th percentile of the random draws; "
    "p = (1 + draws at least as good) / (draws + 1)",
    "random_sets": "ΔV random 5-95 % = the 5th to 95th percentile over random head sets with "
    "as many heads in each layer as the selected set; p = (1 + sets lowering V at least as "
    "much) / (sets + 1)",
    "sd_seeds": "± = sd over seeds",
    "range_seeds": "[ ] after a mean = min, max over seeds",
    "t_seeds": "the [ ] of a Δ over seeds = t-based 95 % interval of the mean gain over seeds",
    "none": "No intervals (point values)",
}
#: Standard notes of captions (:func:`caption` ``notes`` may name them by key).
NOTES: dict[str, str] = {
    "p_paired": "p: McNemar's exact test for the average accuracy, the two-sided "
    "paired-bootstrap p for the worst group; '< x' = below the resolution 2/n_boot of its "
    "resamples",
    "p_mcnemar": "p: McNemar's exact test of the average accuracy on the same images",
    "published": "Published / Paper columns: the papers' numbers as printed, with the "
    "papers' own models and runs (not this experiment's)",
}


def random_controls(methods: Sequence[str], methods_df: pd.DataFrame | None = None) -> list[str]:
    """The ids among ``methods`` that are random controls (registry ``control_of``; an id's
    registry name from ``methods.csv`` when given, else the id itself)."""
    names: dict[str, str] = {}
    if methods_df is not None and len(methods_df) and {"method", "name"} <= set(methods_df):
        names = dict(zip(methods_df["method"], methods_df["name"], strict=True))
    out = []
    for m in dict.fromkeys(methods):
        spec = registry.METHODS.get(str(names.get(m, m)))
        if spec is not None and spec.control_of:
            out.append(m)
    return out


def caption(
    title: str,
    *,
    cell: str | None = None,
    split: str | None = None,
    units: str | None = None,
    intervals: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """One table caption that says what the numbers are: ``"{cell}: {title}. Split: test.
    Units: accuracy in %. [ ] = 95 % stratified bootstrap interval (...). {notes}."``

    ``split``: the split the numbers come from (free text such as ``"test (effects), val
    (selection)"`` allowed); ``units``: e.g. ``"accuracy in %"``; ``intervals``: keys of
    :data:`INTERVALS` (unknown keys are an error, so a caption never names an interval kind
    that is not defined); ``notes``: more sentences, or keys of :data:`NOTES`. The report
    notebooks pass every table's caption through here, so split, units and intervals are
    said alike everywhere."""
    bad = [k for k in intervals if k not in INTERVALS]
    if bad:
        raise ValueError(f"unknown interval kind(s) {bad}; known: {sorted(INTERVALS)}")
    parts = [f"{cell}: {title}" if cell else title]
    if split:
        parts.append(f"Split: {split}")
    if units:
        parts.append(f"Units: {units}")
    parts += [INTERVALS[k] for k in dict.fromkeys(intervals)]
    parts += [NOTES.get(n, n) for n in notes if n]
    return " ".join(p.rstrip(".") + "." for p in parts)


def method_label(method: str, labels: Mapping[str, str] | None = None) -> str:
    """Display name of a method id (registry label; ids of aliased methods as they are)."""
    labels = METHOD_LABELS if labels is None else labels
    return labels.get(method, method)


def ordered_methods(methods: Sequence[str], order: Sequence[str] | None = None) -> list[str]:
    """Unique ``methods`` in ``order`` (default :data:`METHOD_ORDER`), unknown ones last."""
    order = METHOD_ORDER if order is None else list(order)
    seen = list(dict.fromkeys(methods))
    return [m for m in order if m in seen] + [m for m in seen if m not in order]


def select_split(df: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """Rows of ``split``; with ``None``: the only split, else ``test`` (else the commonest)."""
    if split is not None:
        return df[df["split"] == split]
    splits = df["split"].dropna().unique()
    if len(splits) > 1:
        counts = df["split"].value_counts()
        chosen = "test" if "test" in splits else counts.index[0]
        log.info("metrics hold splits %s; using %r", list(splits), chosen)
        return df[df["split"] == chosen]
    return df


# ---------------------------------------------------------------------------------------------
# Table builders
# ---------------------------------------------------------------------------------------------


def main_table(
    metrics_df: pd.DataFrame,
    methods: Sequence[str] | None = None,
    split: str | None = None,
    metrics: Sequence[str] = ("worst_group_acc", "avg_acc", "gap"),
    digits: int = 1,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The papers' main-table layout: one row per method, columns Worst-group / Average / Gap.

    Values are in % with the 95 % interval, e.g. ``"72.7 [69.1, 76.0]"``; Average is the
    sample-weighted accuracy (``avg_acc``) and Gap = Average - Worst-group. ``methods``
    selects and orders rows (default: every method in :data:`METHOD_ORDER` order). Missing
    metrics show ``"n/a"``. The first column ``Method`` holds display names.
    """
    df = select_split(metrics_df, split)
    methods = ordered_methods(df["method"].tolist()) if methods is None else list(methods)
    rows = []
    for m in methods:
        sub = df[df["method"] == m].set_index("metric")
        if sub.empty:
            log.warning("main_table: no rows for method %r", m)
        row = {"Method": method_label(m, labels)}
        for k in metrics:
            if k in sub.index:
                r = sub.loc[k]
                row[METRIC_LABELS.get(k, k)] = format_ci(
                    float(r["value"]), float(r["ci_low"]), float(r["ci_high"]), digits
                )
            else:
                row[METRIC_LABELS.get(k, k)] = "n/a"
        rows.append(row)
    return pd.DataFrame(rows, columns=["Method", *(METRIC_LABELS.get(k, k) for k in metrics)])


def _diff_cell(paired: pd.DataFrame | None, method: str, baseline: str, digits: int) -> str:
    if paired is None:
        return "–"
    sel = paired[
        (paired["method"] == method)
        & (paired["baseline"] == baseline)
        & (paired["metric"] == "worst_group_acc")
    ]
    if sel.empty:
        return "–"
    r = sel.iloc[0]
    d = format_ci(float(r["diff"]), float(r["ci_low"]), float(r["ci_high"]), digits)
    return d if d.startswith("-") else f"+{d}"


def _published_cell(published: pd.DataFrame | None, dataset: str, name: str, digits: int) -> str:
    """The papers' numbers of ``name`` on ``dataset``: "WG 84.2 / Acc 93.6 (paper, model)"."""
    if published is None or not dataset:
        return ""
    sel = published[(published["dataset"] == dataset) & (published["method"] == name)]
    out = []
    for (paper, model), g in sel.groupby(["paper", "model"], sort=False, dropna=False):
        vals = []
        for metric, short in (
            ("worst_group_acc", "WG"),
            ("avg_acc", "Avg"),
            ("avg_adj_acc", "Avg-adj"),
        ):
            row = g[g["metric"] == metric]
            if len(row):
                vals.append(f"{short} {100 * float(row['value'].iloc[0]):.{digits}f}")
        if vals:
            out.append(f"{' / '.join(vals)} ({paper}, {model})")
    return "; ".join(out)


#: Columns of :func:`protocol_table` taken from ``methods.csv`` (label use, METHODS §10.7).
LABEL_USE_COLUMNS = {
    "level": "Level",
    "classes": "Class labels",
    "attribute": "Attribute (fit)",
    "attribute_test": "Attribute (test)",
}


def protocol_table(
    metrics_df: pd.DataFrame,
    paired_df: pd.DataFrame | None,
    methods_df: pd.DataFrame,
    split: str | None = None,
    dataset: str = "",
    published: pd.DataFrame | None = None,
    digits: int = 1,
) -> pd.DataFrame:
    """The comparison of METHODS §10.8: every method of the cell in its block (oracle
    attributes on the locate split / inferred attributes / label-free, then the marked oracle
    upper bound), with its level and label use (``methods.csv``), worst-group and average
    accuracy (%, 95 % interval), the worst-group difference from zero-shot and from LTC
    (paired 95 % interval, ``paired.csv``), and the papers' numbers for the dataset with
    their model (``published``, :func:`clipbias.protocols.load_published_numbers`)."""
    df = select_split(metrics_df, split)
    paired = None
    if paired_df is not None and len(paired_df):
        paired = select_split(paired_df, split) if "split" in paired_df.columns else paired_df
    info = methods_df.set_index("method")
    order = list(registry.BLOCKS)
    present = [m for m in ordered_methods(df["method"].tolist()) if m in info.index]
    present.sort(key=lambda m: order.index(info.loc[m, "block"]))
    rows = []
    for m in present:
        sub = df[df["method"] == m].set_index("metric")
        i = info.loc[m]
        label = str(i["label"]) if "label" in i and isinstance(i["label"], str) else m
        row = {"Block": registry.BLOCKS[i["block"]], "Method": label}
        for col, name in LABEL_USE_COLUMNS.items():
            v = i.get(col)
            row[name] = registry.LEVELS.get(v, v) if col == "level" else v
        for k in ("worst_group_acc", "avg_acc"):
            row[METRIC_LABELS[k]] = (
                format_ci(*sub.loc[k, ["value", "ci_low", "ci_high"]].astype(float), digits=digits)
                if k in sub.index
                else "n/a"
            )
        row["Δ Worst-group vs zero-shot"] = _diff_cell(paired, m, registry.REFERENCE_METHOD, digits)
        row["Δ Worst-group vs LTC"] = _diff_cell(paired, m, "ltc", digits)
        row["Published (paper, model)"] = _published_cell(
            published, dataset, i.get("name", m), digits
        )
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(
    metrics_df: pd.DataFrame,
    group_names: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    split: str | None = None,
    digits: int = 1,
) -> pd.DataFrame:
    """Per-group accuracy (%, with interval): one row per method, one column per group (a
    dataset without groups: one ``Groups`` column saying so)."""
    df = select_split(metrics_df, split)
    if not df["metric"].astype(str).str.startswith("acc_group_").any():
        methods = ordered_methods(df["method"].tolist()) if methods is None else list(methods)
        return pd.DataFrame(
            {"Method": [method_label(m) for m in methods], "Groups": "none in this dataset"}
        )
    df = df[df["metric"].str.startswith("acc_group_")].copy()
    df["gid"] = df["metric"].str.slice(len("acc_group_")).astype(int)
    methods = ordered_methods(df["method"].tolist()) if methods is None else list(methods)
    gids = sorted(df["gid"].unique())
    names = [group_label(g, group_names, df) for g in gids]
    rows = []
    for m in methods:
        sub = df[df["method"] == m].set_index("gid")
        row = {"Method": method_label(m)}
        for g, name in zip(gids, names, strict=True):
            row[name] = (
                format_ci(*sub.loc[g, ["value", "ci_low", "ci_high"]].astype(float), digits=digits)
                if g in sub.index
                else "n/a"
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=["Method", *names])


def group_label(gid: int, group_names: Sequence[str] | None, df: pd.DataFrame | None = None) -> str:
    """Name of group ``gid``: ``group_names[gid]``, else the tidy table's ``group_name``."""
    if group_names and 0 <= gid < len(group_names):
        return str(group_names[gid])
    if df is not None and "group_name" in df.columns:
        names = df.loc[df["metric"] == f"acc_group_{gid}", "group_name"].dropna()
        if len(names) and str(names.iloc[0]):
            return str(names.iloc[0])
    return f"group {gid}"


def heads_table(
    ltc_json: Mapping[str, Any],
    textspan_df: pd.DataFrame | None = None,
    top_k: int = 3,
    ground_truth_df: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Located heads with their LTC score and top-``top_k`` TextSpan descriptions.

    One row per head of ``spurious`` (Set ``S``, Score = F_W - F_C) then ``salient`` (Set
    ``Y``, Score = F_C - F_W), in the order of ``ltc.json``. ``Descriptions`` joins the first ``top_k`` TextSpan texts by
    rank with ``"; "`` (``"(not described)"`` when the head was outside the TextSpan layers).
    With ``ground_truth_df`` (planted benchmark) a ``GT rank`` column gives the head's rank
    by absolute planted effect.
    """
    rows = []
    for key, tag in (("spurious", "S"), ("salient", "Y")):
        for x in ltc_json.get(key, []):
            row = {"Set": tag, "Head": x["head"], "Score": f"{x['score']:.3f}"}
            if textspan_df is not None:
                sub = textspan_df[textspan_df["head_id"] == x["head"]].sort_values("rank")
                texts = sub["text"].head(top_k).tolist()
                row["Descriptions"] = "; ".join(texts) if texts else "(not described)"
            if ground_truth_df is not None:
                gt = ground_truth_df[ground_truth_df["head_id"] == x["head"]]
                row["GT rank"] = str(int(gt["rank"].iloc[0])) if len(gt) else "n/a"
            rows.append(row)
    cols = ["Set", "Head", "Score"]
    if textspan_df is not None:
        cols.append("Descriptions")
    if ground_truth_df is not None:
        cols.append("GT rank")
    return pd.DataFrame(rows, columns=cols)


def precision_at_k(ground_truth_df: pd.DataFrame, heads: Sequence[str], k: int | None = None):
    """Fraction of ``heads`` among the top-``k`` ground-truth heads (``k`` = len(heads)).

    Returns NaN when ``heads`` is empty.
    """
    k = len(heads) if k is None else int(k)
    if k == 0:
        return float("nan")
    top = set(ground_truth_df.sort_values("rank")["head_id"].head(k))
    return sum(h in top for h in heads) / k


def random_summary_table(summary_df: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Display version of ``random_summary.csv``: the observed method vs its random draws."""
    rows = []
    for _, r in summary_df.iterrows():
        observed = method_label(r.get("observed_method", "ltc"))
        rows.append(
            {
                "Metric": METRIC_LABELS.get(r["metric"], r["metric"]),
                "Observed": f"{observed}: {100 * r['observed']:.{digits}f}",
                "Random mean ± sd": f"{100 * r['mean']:.{digits}f} ± {100 * r['sd']:.{digits}f}",
                "Random 5-95 %": f"[{100 * r['p05']:.{digits}f}, {100 * r['p95']:.{digits}f}]",
                "Percentile": f"{r['percentile']:.1f}",
                "p-value": format_p(r["p_value"], r["n_draws"]),
                "Draws": str(int(r["n_draws"])),
            }
        )
    cols = ["Metric", "Observed", "Random mean ± sd", "Random 5-95 %", "Percentile", "p-value"]
    return pd.DataFrame(rows, columns=[*cols, "Draws"])


def paired_table(paired_df: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Display version of ``paired.csv``: each method minus zero-shot (points, 95 % paired
    bootstrap interval) for worst-group and average accuracy, with the p-values."""
    if "split" in paired_df.columns:
        paired_df = select_split(paired_df, None)
    paired_df = vs_baseline(paired_df)
    rows = []
    for m in ordered_methods(paired_df["method"].tolist()):
        sub = paired_df[paired_df["method"] == m].set_index("metric")
        row = {"Method": method_label(m)}
        for k in ("worst_group_acc", "avg_acc"):
            if k not in sub.index:
                continue
            r = sub.loc[k]
            d = format_ci(float(r["diff"]), float(r["ci_low"]), float(r["ci_high"]), digits)
            row[f"Δ {METRIC_LABELS[k]}"] = d if d.startswith("-") else f"+{d}"
            exact = r["test"] == "mcnemar_exact"
            test = "McNemar" if exact else "bootstrap"
            n_boot = None if exact else r.get("n_boot", float("nan"))
            row[f"p ({METRIC_LABELS[k]}, {test})"] = format_p(r["p_value"], n_boot, sides=2)
        rows.append(row)
    return pd.DataFrame(rows)


def vs_baseline(paired_df: pd.DataFrame, baseline: str = registry.REFERENCE_METHOD) -> pd.DataFrame:
    """Rows of ``paired.csv`` against ``baseline`` (files without a baseline column: all)."""
    if "baseline" not in paired_df.columns:
        return paired_df
    return paired_df[paired_df["baseline"] == baseline]


def seeds_table(summary_df: pd.DataFrame, digits: int = 1, rank: bool = False) -> pd.DataFrame:
    """Display version of ``summary_over_seeds.csv``: mean ± sd [min, max] per method and
    metric (%), and on how many seeds the method beat zero-shot; with the per-seed paired
    gains (``gain_*`` columns), the mean worst-group gain over zero-shot with its t-based
    95 % interval over seeds. ``rank``: rows ordered by mean worst-group gain (zero-shot
    first), else in report order."""
    rows = []
    methods = ordered_methods(summary_df["method"].tolist())
    if rank and "gain_mean" in summary_df.columns:
        wg = summary_df[summary_df["metric"] == "worst_group_acc"].set_index("method")
        methods.sort(
            key=lambda m: (
                m != registry.REFERENCE_METHOD,
                -(wg["gain_mean"].get(m, float("-inf")) if m in wg.index else float("-inf")),
            )
        )
    for m in methods:
        sub = summary_df[summary_df["method"] == m].set_index("metric")
        row = {"Method": method_label(m)}
        for k in ("worst_group_acc", "avg_acc"):
            if k not in sub.index:
                continue
            r = sub.loc[k]
            sd = f" ± {100 * r['sd']:.{digits}f}" if np.isfinite(r["sd"]) else ""
            row[METRIC_LABELS[k]] = (
                f"{100 * r['mean']:.{digits}f}{sd} "
                f"[{100 * r['min']:.{digits}f}, {100 * r['max']:.{digits}f}]"
            )
            if m != registry.REFERENCE_METHOD:
                row[f"{METRIC_LABELS[k]} > zero-shot"] = (
                    f"{int(r['n_better_than_zero_shot'])}/{int(r['n_seeds'])}"
                )
            if k == "worst_group_acc" and "gain_mean" in r and m != registry.REFERENCE_METHOD:
                g = format_ci(float(r["gain_mean"]), float(r["gain_ci_low"]),
                              float(r["gain_ci_high"]), digits)  # fmt: skip
                row["Δ Worst-group vs zero-shot (t 95 % over seeds)"] = (
                    g if g.startswith("-") else f"+{g}"
                )
        rows.append(row)
    return pd.DataFrame(rows)


#: Metrics shown as they are (not as %): MaxSkew (a log ratio) and Cramér's V (0-1).
RAW_METRICS = (
    "maxskew_uniform@1000", "maxskew_empirical@1000", "protected_v", "protected_v_excess",
)  # fmt: skip
GRID_CAPTION = (
    "Mean over seeds on the evaluation split (± sd over seeds when there are several); "
    "accuracies, gaps and biases in %, MaxSkew@1000 as log ratio, Cramér's V in [0, 1]; "
    "n/a: the method has no such row; a reason after n/a: the metric cannot be computed on "
    "this data"
)


def grid_main_table(
    summaries: Sequence[Mapping[str, Any]],
    metric_names: Sequence[str] = ("worst_group_acc", "avg_acc"),
    digits: int = 1,
) -> pd.DataFrame:
    """One row per method, one column per (dataset, model, metric): mean over seeds (± sd
    with several seeds), in % except :data:`RAW_METRICS`. ``summaries``: ``{"dataset",
    "model", "path"}`` of each cell's ``summary_over_seeds.csv``, and optionally ``metrics``,
    the cell's own table metrics (default ``metric_names``)."""
    cols: dict[str, dict[str, str]] = {}
    methods: list[str] = []
    for cell in summaries:
        df = read_csv(cell["path"]).set_index(["method", "metric"])
        methods += df.index.get_level_values(0).tolist()
        for k in cell.get("metrics") or metric_names:
            col = f"{cell['dataset']} / {cell['model']}: {METRIC_LABELS.get(k, k)}"
            cols[col] = {}
            scale, d = (1.0, digits + 2) if k in RAW_METRICS else (100.0, digits)
            for (m, metric), r in df.iterrows():
                if metric != k:
                    continue
                if not np.isfinite(r["mean"]):
                    note = r.get("note") if isinstance(r.get("note"), str) else ""
                    cols[col][m] = f"n/a: {note}" if note else "n/a"
                    continue
                sd = f" ± {scale * r['sd']:.{d}f}" if np.isfinite(r["sd"]) else ""
                cols[col][m] = f"{scale * r['mean']:.{d}f}{sd}"
    rows = [
        {"Method": method_label(m), **{c: v.get(m, "n/a") for c, v in cols.items()}}
        for m in ordered_methods(methods)
    ]
    return pd.DataFrame(rows, columns=["Method", *cols])


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _md_cell(x: Any) -> str:
    s = "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, index: bool = False) -> str:
    """GitHub-flavoured pipe table (no ``tabulate`` needed); numbers right-aligned."""
    d = df.reset_index() if index else df
    header = [_md_cell(c) for c in d.columns]
    numeric = [pd.api.types.is_numeric_dtype(d[c]) for c in d.columns]
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "−": r"$-$",
}


def latex_escape(s: Any) -> str:
    s = "" if s is None or (isinstance(s, float) and np.isnan(s)) else str(s)
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(
    df: pd.DataFrame, caption: str | None = None, label: str | None = None, index: bool = False
) -> str:
    """A booktabs ``tabular`` (wrapped in ``table`` when ``caption``/``label`` is given).

    Written directly (no jinja2/Styler), every cell escaped; needs ``\\usepackage{booktabs}``.
    """
    d = df.reset_index() if index else df
    numeric = [pd.api.types.is_numeric_dtype(d[c]) for c in d.columns]
    spec = "".join("r" if n else "l" for n in numeric)
    body = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in d.columns) + r" \\",
        r"\midrule",
    ]
    for row in d.itertuples(index=False):
        body.append(" & ".join(latex_escape(x) for x in row) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(body) + "\n"
    out = [r"\begin{table}[t]", r"\centering"]
    if caption is not None:
        out.append(rf"\caption{{{latex_escape(caption)}}}")
    if label is not None:
        out.append(rf"\label{{{label}}}")
    return "\n".join(out + body + [r"\end{table}"]) + "\n"


def write_table(
    df: pd.DataFrame,
    stem: str | os.PathLike,
    caption: str | None = None,
    label: str | None = None,
    index: bool = False,
) -> dict[str, Path]:
    """Write ``stem.csv``, ``stem.md`` and ``stem.tex`` (atomically); returns the paths.

    The caption goes with every file: ``# `` comment lines above the CSV header
    (:func:`clipbias.io.read_csv` skips them), a paragraph above the Markdown table, the LaTeX
    ``\\caption``. In a rehearsal's folder (:func:`clipbias.io.rehearsal_banner`) the banner
    comes first in all three."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {ext: stem.with_name(stem.name + "." + ext) for ext in ("csv", "md", "tex")}
    banner = rehearsal_banner(paths["csv"])
    write_csv(df, paths["csv"], comments=[caption] if caption else [], index=index)
    head = "".join(f"**{t}**\n\n" if t == banner else f"{t}\n\n" for t in (banner, caption) if t)
    with atomic_path(paths["md"]) as tmp:
        Path(tmp).write_text(head + to_markdown(df, index=index))
    tex_caption = " ".join(t for t in (banner, caption) if t) or None
    with atomic_path(paths["tex"]) as tmp:
        Path(tmp).write_text(to_latex(df, caption=tex_caption, label=label, index=index))
    log.info("wrote table %s.{csv,md,tex}", stem)
    return paths


#: LTC located-heads files -> the reference list names of METHODS Appendix B they compare to
REFERENCE_LISTS = {
    ("ltc", "spurious"): "S_true_groups",
    ("ltc", "salient"): "Y_true_groups",
    ("ltc_full", "spurious"): "S_ltc_full",
    ("ltc_full", "salient"): "Y_ltc_full",
}


def reference_heads_table(
    located: Mapping[str, Mapping[str, Any]],
    dataset: str,
    model_name: str,
    pretrained: str | None,
) -> pd.DataFrame:
    """Located LTC heads vs the reference lists of METHODS Appendix B (regression fixtures,
    acceptance: Jaccard >= 0.5 for the same weights, METHODS §4.12).

    ``located``: ``{"ltc": ltc.json, "ltc_full": ltc_full.json}`` (parsed). One row per list
    with columns ``List, Located, Reference, Jaccard, Verdict``; the verdict says why there
    is none when the reference has no list for this dataset/model or was computed with other
    weights (e.g. the planted benchmark, or ``openai`` weights).
    """
    from clipbias.protocols import compare_with_reference

    rows = []
    for (kind, key), list_name in REFERENCE_LISTS.items():
        if kind not in located:
            continue
        heads = [x["head"] for x in located[kind].get(key, [])]
        try:
            c = compare_with_reference(heads, dataset, model_name, list_name, pretrained)
        except KeyError:
            rows.append(
                {
                    "List": list_name,
                    "Located": ", ".join(heads) or "(none)",
                    "Reference": "n/a",
                    "Jaccard": "n/a",
                    "Verdict": f"no reference list for {dataset} / {model_name}",
                }
            )
            continue
        if not c["comparable"]:
            verdict = f"not comparable: reference computed with {c['weights']}"
        else:
            verdict = "pass" if c["passes"] else f"fail (< {c['threshold']})"
        rows.append(
            {
                "List": list_name,
                "Located": ", ".join(c["located"]) or "(none)",
                "Reference": ", ".join(c["reference"]),
                "Jaccard": f"{c['jaccard']:.2f}",
                "Verdict": verdict,
            }
        )
    return pd.DataFrame(rows, columns=["List", "Located", "Reference", "Jaccard", "Verdict"])


# ---------------------------------------------------------------------------------------------
# RefineCLIP (notebooks/report_refineclip.ipynb)
# ---------------------------------------------------------------------------------------------

#: Registry name -> the method key of RefineCLIP's tables in ``published_numbers.yaml``.
REFINECLIP_PAPER_METHODS: dict[str, str] = {
    "zero_shot": "base",
    "tip_adapter": "tip_adapter",
    "tip_adapter_f": "tip_adapter_train",
    "textspan_ablation": "textspan",
    "refineclip": "refineclip_phase1",
    "refineclip_star": "refineclip_phase1_val",
    "refineclip_classifier": "refineclip_phase1_classifier",
}
#: Baselines shown beside the RefineCLIP family (paper Tables 1, 2, 6).
REFINECLIP_BASELINES = ("zero_shot", "tip_adapter", "tip_adapter_f", "textspan_ablation")


def _info_name(method: str, info: Mapping[str, Mapping[str, Any]] | None) -> str:
    return str((info or {}).get(method, {}).get("name") or method)


def refineclip_label(method: str, info: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Display name of a configured id: the registry label, with the shots for aliased ids
    ("RefineCLIP phase 1 (n = 20)"; "(n = 10, target classes)" when the shots come from the
    edit targets only, ``shot_classes: edit_targets``) and "linear probe" for
    ``refineclip_classifier`` without ablation (Table 6's "Original CLIP" row)."""
    name = _info_name(method, info)
    entry = (info or {}).get(method, {})
    if name == "refineclip_classifier" and entry.get("ablate") is False:
        return "Linear probe (no ablation)"
    if method != name and name in METHOD_LABELS and entry.get("n_per_class"):
        shots = f"n = {entry['n_per_class']}"
        if entry.get("shot_classes") == "edit_targets":
            shots += ", target classes"
        return f"{METHOD_LABELS[name]} ({shots})"
    return method_label(method) if method in METHOD_LABELS else method


def refineclip_rows(methods: Sequence[str], info: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The ids of ``methods`` shown in the RefineCLIP tables: zero-shot and the few-shot
    baselines first, then the RefineCLIP family, each in configuration order."""
    methods = list(dict.fromkeys(methods))
    names = {m: _info_name(m, info) for m in methods}
    base = [m for b in REFINECLIP_BASELINES for m in methods if names[m] == b]
    family = [
        m for m in methods if m not in base and registry.METHODS.get(names[m]) is not None
        and registry.METHODS[names[m]].family == "refineclip"
    ]  # fmt: skip
    return base + family


def paper_table(reference_table: str | None) -> tuple[str, str] | None:
    """``"refineclip:3"`` -> ``("refineclip", "Table 3")``; empty -> None."""
    if not reference_table:
        return None
    paper, _, number = str(reference_table).partition(":")
    if not number.isdigit():
        raise ValueError(f"reference_table must look like 'refineclip:1', got {reference_table!r}")
    return paper, f"Table {number}"


def paper_method_key(
    method: str, info: Mapping[str, Mapping[str, Any]] | None, table: str
) -> str | None:
    """The published-numbers key of a configured method id in a RefineCLIP table, or None."""
    name = _info_name(method, info)
    entry = (info or {}).get(method, {})
    if name == "refineclip" and table == "Table 3" and entry.get("n_per_class"):
        return f"refineclip_phase1_n{int(entry['n_per_class'])}"
    if name == "refineclip_classifier" and entry.get("ablate") is False:
        return "original_clip"
    if table != "Table 3" and entry.get("n_per_class") not in (None, 10):
        return None  # Tables 1, 2 and 6 use 10 shots per class
    return REFINECLIP_PAPER_METHODS.get(name)


def published_reference(
    reference_table: str | None, model: str, published: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Published rows of the reference table for ``model`` (open_clip name, e.g. ViT-B-16),
    indexed by (method key, metric); empty without a reference table."""
    ref = paper_table(reference_table)
    if ref is None:
        return pd.DataFrame()
    if published is None:
        from clipbias.protocols import load_published_numbers

        published = load_published_numbers()
    paper, table = ref
    sub = published[
        (published["paper"] == paper)
        & (published["table"] == table)
        & (published["model"] == model)
    ]
    if sub.empty:
        log.warning("no published numbers of %s %s for model %s", paper, table, model)
    return sub.set_index(["method", "metric"])


def _paper_cell(ref: pd.DataFrame, key: str | None, metric: str, digits: int = 1) -> str:
    if key is None or ref.empty or (key, metric) not in ref.index:
        return "–"
    r = ref.loc[(key, metric)]
    if isinstance(r, pd.DataFrame):
        r = r.iloc[0]
    if isinstance(r.get("printed"), str) and r["printed"]:
        return str(r["printed"])
    sd = r.get("sd")
    text = f"{100 * float(r['value']):.{digits}f}"
    return text + (f" ± {100 * float(sd):.{digits}f}" if sd is not None and np.isfinite(sd) else "")


def refineclip_main_table(
    metrics_df: pd.DataFrame,
    paired_df: pd.DataFrame | None,
    info: Mapping[str, Mapping[str, Any]],
    reference_table: str | None = None,
    model: str = "",
    split: str | None = None,
    digits: int = 1,
    published: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """RefineCLIP's Table 1/2/6 layout: average-group and worst-group accuracy (%, 95 %
    interval) of zero-shot, the few-shot baselines and the RefineCLIP family; the worst-group
    difference from zero-shot with its paired interval and the McNemar p of the average
    accuracy; with a reference table, the paper's numbers for the same model."""
    df = select_split(metrics_df, split)
    ref = published_reference(reference_table, model, published)
    table = paper_table(reference_table)
    paired = (
        vs_baseline(paired_df).set_index(["method", "metric"])
        if paired_df is not None and len(paired_df)
        else None
    )
    rows = []
    for m in refineclip_rows(df["method"].tolist(), info):
        sub = df[df["method"] == m].set_index("metric")
        row = {"Method": refineclip_label(m, info)}
        for k, col in (("avg_group_acc", "Avg-group"), ("worst_group_acc", "Worst-group")):
            row[col] = (
                format_ci(*sub.loc[k, ["value", "ci_low", "ci_high"]].astype(float), digits=digits)
                if k in sub.index
                else "n/a"
            )
        d_col, p_col = "Δ Worst-group vs zero-shot", "p (Average, McNemar)"
        row[d_col], row[p_col] = "–", "–"
        if paired is not None and (m, "worst_group_acc") in paired.index:
            r = paired.loc[(m, "worst_group_acc")]
            d = format_ci(float(r["diff"]), float(r["ci_low"]), float(r["ci_high"]), digits)
            row[d_col] = d if d.startswith("-") else f"+{d}"
        if paired is not None and (m, "avg_acc") in paired.index:
            row[p_col] = format_p(paired.loc[(m, "avg_acc"), "p_value"])
        if table is not None:
            key = paper_method_key(m, info, table[1])
            row["Paper Avg."] = _paper_cell(ref, key, "avg_group_acc", digits)
            row["Paper Wst."] = _paper_cell(ref, key, "worst_group_acc", digits)
        rows.append(row)
    return pd.DataFrame(rows)


def refineclip_stability_table(
    summary_df: pd.DataFrame,
    info: Mapping[str, Mapping[str, Any]],
    reference_table: str | None = None,
    model: str = "",
    digits: int = 1,
    published: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """RefineCLIP's Table 3 layout from ``summary_over_seeds.csv``: mean ± sd over the
    sampling seeds of the average-group and worst-group accuracy (%), one row per method (the
    shots per class of each), with the paper's numbers when a reference table is given."""
    ref = published_reference(reference_table, model, published)
    table = paper_table(reference_table)
    s = summary_df.set_index(["method", "metric"])
    rows = []
    for m in refineclip_rows(summary_df["method"].tolist(), info):
        row = {"Method": refineclip_label(m, info)}
        n = (info or {}).get(m, {}).get("n_per_class")
        row["Shots per class"] = str(n) if n else "–"
        seeds = 0
        for k, col in (
            ("avg_group_acc", "Avg. (mean ± sd)"),
            ("worst_group_acc", "Wst. (mean ± sd)"),
        ):
            if (m, k) not in s.index:
                row[col] = "n/a"
                continue
            r = s.loc[(m, k)]
            sd = f" ± {100 * r['sd']:.{digits}f}" if np.isfinite(r["sd"]) else ""
            row[col] = f"{100 * r['mean']:.{digits}f}{sd}"
            seeds = int(r["n_seeds"])
        row["Seeds"] = str(seeds)
        if table is not None:
            key = paper_method_key(m, info, table[1])
            row["Paper Avg."] = _paper_cell(ref, key, "avg_group_acc", digits)
            row["Paper Wst."] = _paper_cell(ref, key, "worst_group_acc", digits)
        rows.append(row)
    return pd.DataFrame(rows)


def _paper_head(head: str) -> str:
    from clipbias.methods.heads import parse_head

    layer, h = parse_head(head)
    return f"(L{layer}, H{h})"


def refineclip_heads_table(phase1: Mapping[str, Any]) -> pd.DataFrame:
    """RefineCLIP's Table 4 layout: the candidate lists (A)-(D) of every error direction,
    heads as "(L23, H2)" by rank; "*" marks heads common to all of the direction's lists, "†"
    the selected heads S* (of the selected list)."""
    sel = phase1.get("selected") or {}
    rows = []
    for d in phase1.get("directions", []):
        lists = {x["score"]: x["heads"] for x in d["lists"]}
        common = set.intersection(*map(set, lists.values())) if lists else set()
        name = f"{d.get('true_name') or d['true_label']} → {d.get('pred_name') or d['pred_label']}"
        depth = max((len(v) for v in lists.values()), default=0)
        for i in range(depth):
            row = {"Direction": name, "Rank": str(i + 1)}
            for s in ("A", "B", "C", "D"):
                heads = lists.get(s)
                if heads is None:
                    row[f"({s})"] = "skipped" if i == 0 else ""
                    continue
                if i >= len(heads):
                    row[f"({s})"] = ""
                    continue
                h = heads[i]
                mark = "*" if h in common else ""
                if sel.get("direction") == d["key"] and sel.get("score") == s and i < sel["t"]:
                    mark += "†"
                row[f"({s})"] = _paper_head(h) + mark
            rows.append(row)
    cols = ["Direction", "Rank", "(A)", "(B)", "(C)", "(D)"]
    return pd.DataFrame(rows, columns=cols)


def refineclip_edit_table(
    metrics_df: pd.DataFrame,
    info: Mapping[str, Mapping[str, Any]] | None = None,
    split: str | None = None,
    digits: int = 1,
) -> pd.DataFrame:
    """Edit success (accuracy on the target classes) and locality (accuracy on the others),
    sample-weighted and class-averaged (%), per method (METHODS §7.1); zero-shot gives the
    pre-edit values. Empty when the dataset sets no edit targets."""
    df = select_split(metrics_df, split)
    keys = {
        "edit_success": "Edit success",
        "edit_success_class_avg": "Edit success (class avg.)",
        "locality": "Locality",
        "locality_class_avg": "Locality (class avg.)",
    }
    df = df[df["metric"].isin(keys)]
    rows = []
    for m in refineclip_rows(df["method"].tolist(), info or {}) or ordered_methods(
        df["method"].tolist()
    ):
        sub = df[df["method"] == m].set_index("metric")["value"]
        row = {"Method": refineclip_label(m, info)}
        for k, col in keys.items():
            row[col] = f"{100 * float(sub[k]):.{digits}f}" if k in sub.index else "n/a"
        rows.append(row)
    return pd.DataFrame(rows, columns=["Method", *keys.values()])


# ---------------------------------------------------------------------------------------------
# Planted ground truth
# ---------------------------------------------------------------------------------------------


def planted_truth(
    path: str | os.PathLike, attribute: str = "background", kind: str | None = None
) -> tuple[pd.DataFrame, str]:
    """Per-head ground truth of ``attribute`` from ``ground_truth/{cell}/heads.csv`` and its
    kind: ``kind=None`` = the causal margin rows when the dataset has twins, else the
    associative ones (:func:`clipbias.ground_truth.truth_view`); or exactly ``kind`` (e.g.
    ``"output"``: empty frame when the table has none)."""
    from clipbias.ground_truth import truth_view

    table = read_csv(path)
    if kind is None:
        return truth_view(table, attribute)
    rows = table[(table["attribute"] == attribute) & (table["kind"] == kind)]
    return rows.sort_values("rank").reset_index(drop=True), kind


def mentions(text: str, words: Sequence[str]) -> bool:
    """Does ``text`` contain one of ``words`` as a whole word (case-insensitive)?"""
    tokens = set(text.lower().replace(",", " ").replace(".", " ").split())
    return bool(tokens & {w.lower() for w in words})


def textspan_completeness(
    textspan_df: pd.DataFrame,
    truths: pd.DataFrame | Mapping[str, pd.DataFrame],
    words: Sequence[str],
    n_heads: int = 3,
    top_k: int = 5,
) -> pd.DataFrame:
    """TextSpan completeness check on the planted benchmark (issue 11): among the heads
    TextSpan described, the ``n_heads`` with the largest and the ``n_heads`` with the smallest
    |ground-truth effect|, and how much of their first ``top_k`` TextSpan texts name one of
    ``words`` (the dataset's ``spurious_words``): the share of texts, and the share of the
    variance those texts explain (``ve``; a head's later texts explain little).

    ``truths``: one per-head truth (:func:`planted_truth`) or ``{ranking label: truth}`` (e.g.
    the causal margin effect and the output sensitivity); empty truths are skipped. Columns
    ``Ranked by``, ``Heads`` (top / bottom), ``Head ids``, ``Texts``, ``Naming a background
    word`` (fraction of texts), ``Variance share naming one``."""
    if isinstance(truths, pd.DataFrame):
        truths = {"|effect|": truths}
    described = set(textspan_df["head_id"])
    rows = []
    for by, truth in truths.items():
        if truth is None or truth.empty:
            continue
        ranked = truth[truth["head_id"].isin(described)].sort_values(
            ["abs_effect", "layer", "head"], ascending=[False, True, True]
        )
        if len(ranked) < 2 * n_heads:
            raise ValueError(
                f"{len(ranked)} described heads with ground truth ({by}); need {2 * n_heads} "
                "for the check"
            )
        for label, ids in (
            (f"top {n_heads}", ranked["head_id"].head(n_heads).tolist()),
            (f"bottom {n_heads}", ranked["head_id"].tail(n_heads).tolist()),
        ):
            top = pd.concat(
                [
                    textspan_df[textspan_df["head_id"] == h].sort_values("rank").head(top_k)
                    for h in ids
                ]
            )
            named = np.array([mentions(t, words) for t in top["text"]], dtype=bool)
            ve = top["ve"].to_numpy(dtype=float) if "ve" in top else None
            rows.append(
                {
                    "Ranked by": by,
                    "Heads": label,
                    "Head ids": ", ".join(ids),
                    "Texts": len(top),
                    "Naming a background word": round(float(named.mean()), 3)
                    if len(top)
                    else float("nan"),
                    "Variance share naming one": round(float(ve[named].sum() / ve.sum()), 3)
                    if ve is not None and ve.sum() > 0
                    else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def locator_scores_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Display version of ``locator_scores.csv``."""
    rows = []
    for _, r in scores.iterrows():
        rows.append(
            {
                "Locator": f"{r['locator']} ({r['variant']})"
                if r["variant"] != r["locator"]
                else r["locator"],
                "Attribute": f"{r['attribute']} ({r['kind']})",
                "Layers": str(r["layers_searched"]),
                "Selected": str(r["selected"]) if isinstance(r["selected"], str) else "(none)",
                "Truth top-|S|": str(r["truth_top"]) if isinstance(r["truth_top"], str) else "",
                "Precision@|S|": "n/a"
                if not np.isfinite(r["precision_at_k"])
                else f"{r['precision_at_k']:.2f}",
                "Has top-1": f"{'yes' if bool(r['contains_top1']) else 'no'} ({r['top1_head']})",
                "Spearman": "n/a"
                if not np.isfinite(r["spearman"])
                else f"{r['spearman']:.2f} (p {p_phrase(r['spearman_p'])}, n={int(r['n_scored'])})",
            }
        )
    return pd.DataFrame(rows)
