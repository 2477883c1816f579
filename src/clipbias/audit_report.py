"""Report tables of the fairness audit (METHODS §6): reader of one cell's audit folder
(``results/{experiment}/audit/{dataset}/{model}/seed-{seed}/``, written by
:func:`clipbias.stages.audit.audit`) and display tables for ``notebooks/report_audit.ipynb``.

Builders return DataFrames of display strings (V with three decimals, accuracies in %,
changes in percentage points); write them with :func:`clipbias.report.write_table`. Nothing
here needs matplotlib or scipy (report env).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipbias.io import read_csv, read_json
from clipbias.report import format_p, p_phrase
from clipbias.stages.audit import TABLE_KEYS

#: CSV tables of every ``<attribute>/<variant>/`` folder (stages.audit.TABLE_KEYS + TextSpan).
TABLES = (*TABLE_KEYS, "textspan", "textspan_bias")
VARIANT_LABELS = {"split": "locate / evaluate", "single_pool": "single pool"}
CONDITION_LABELS = {
    "baseline": "Before ablation",
    "top_k": "Top-k ablated",
    "greedy": "Greedy set ablated",
    "top_k_transductive": "Top-k (transductive means)",
    "greedy_transductive": "Greedy (transductive means)",
    "top_k_combined": "Top-k, combined ranking (sensitivity)",
}
SET_LABELS = {"top_k": "top-k", "greedy": "greedy", "top_k_combined": "top-k (combined ranking)"}


@dataclass
class AuditResults:
    """One cell's audit: ``summary`` (summary.json), ``info[(attribute, variant)]`` (each
    folder's audit.json) and ``tables[name]`` (every folder's ``name.csv`` concatenated; the
    leading ``attribute, variant`` columns tell them apart)."""

    summary: dict[str, Any]
    info: dict[tuple[str, str], dict[str, Any]]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        return list(self.summary["attributes"])

    @property
    def variants(self) -> list[str]:
        return list(self.summary["variants"])

    def table(self, name: str, variant: str | None = None) -> pd.DataFrame:
        df = self.tables.get(name, pd.DataFrame(columns=["attribute", "variant"]))
        return df if variant is None else df[df["variant"] == variant].reset_index(drop=True)

    def selection(self, attribute: str, variant: str = "split") -> dict[str, Any]:
        return self.info[(attribute, variant)]["selection"]


def read_audit(audit_dir: str | os.PathLike) -> AuditResults:
    """Read an audit folder (:mod:`clipbias.stages.audit` layout)."""
    root = Path(audit_dir)
    summary_path = root / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found: not an audit folder (rule audit)")
    summary = read_json(summary_path)
    info: dict[tuple[str, str], dict[str, Any]] = {}
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in TABLES}
    for attr in summary["attributes"]:
        for variant in summary["variants"]:
            folder = root / attr / variant
            info[(attr, variant)] = read_json(folder / "audit.json")
            for key in TABLES:
                path = folder / f"{key}.csv"
                if path.is_file() and path.stat().st_size > 0:
                    frames[key].append(read_csv(path))
    tables = {k: pd.concat(v, ignore_index=True) for k, v in frames.items() if v}
    return AuditResults(summary, info, tables)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_v(x: Any, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}" if _finite(x) else "n/a"


def fmt_signed(x: Any, digits: int = 3, scale: float = 1.0) -> str:
    return f"{float(x) * scale:+.{digits}f}" if _finite(x) else "n/a"


def fmt_p(x: Any, n_draws: Any = None) -> str:
    """A p-value, never "0" (:func:`clipbias.report.format_p`; ``n_draws``: the random sets
    or resamples it was counted over, ``None`` for an exact test such as McNemar's)."""
    return format_p(x, n_draws)


def heads_str(heads: Sequence[str]) -> str:
    return ", ".join(heads) if heads else "(none)"


# ---------------------------------------------------------------------------------------------
# Published reference numbers
# ---------------------------------------------------------------------------------------------


def published_reference(
    published: pd.DataFrame | None, dataset: str, model_name: str, attribute: str
) -> dict[str, float]:
    """The audit paper's numbers for (dataset, model, attribute) from
    :func:`clipbias.protocols.load_published_numbers`: ``{"baseline": V before,
    "top_k": V after ablating the paper's heads, "acc_change": accuracy change (fraction)}``
    (keys present only when published; METHODS §6: FACET, ViT-L-14, gender)."""
    if published is None or published.empty:
        return {}
    df = published[
        (published["paper"] == "audit")
        & (published["dataset"] == dataset)
        & (published["model"] == model_name)
    ]
    out: dict[str, float] = {}
    ablated = f"ablate_{attribute}_heads"
    for _, r in df.iterrows():
        if r["metric"] == f"cramers_v_{attribute}":
            key = (
                "baseline"
                if r["method"] == "baseline"
                else "top_k"
                if r["method"] == ablated
                else None
            )
            if key:
                out[key] = float(r["value"])
        elif r["metric"] == "acc_change" and r["method"] == ablated:
            out["acc_change"] = float(r["value"])
    return out


# ---------------------------------------------------------------------------------------------
# Table builders
# ---------------------------------------------------------------------------------------------


def outcome_table(
    audit: AuditResults,
    published: pd.DataFrame | None = None,
    dataset: str = "",
    model_name: str = "",
) -> pd.DataFrame:
    """V and accuracy before / after ablation (METHODS §6.7-6.9), one row per attribute,
    variant and condition: the ablated heads, V(pred, attribute), Bergsma's V, V(true class,
    attribute), ΔV with its paired 95 % bootstrap interval, accuracy (%), Δaccuracy (pp),
    McNemar's p, and for the selected sets the share of layer-matched random sets whose ΔV is
    larger (less reduction) and the control's one-sided p. With ``published`` records for
    (dataset, model_name) the paper's V and Δaccuracy are added as reference columns."""
    out = audit.table("outcome")
    delta = audit.table("delta_v")
    rows = []
    any_ref = False
    for _, r in out.iterrows():
        attr, variant, cond = r["attribute"], r["variant"], r["condition"]
        info = audit.info[(attr, variant)]
        sel, ctrl = info["selection"], info["random_control"]
        base_set = cond.removesuffix("_transductive")
        heads = sel.get(base_set, []) if cond != "baseline" else []
        d = delta[
            (delta["attribute"] == attr)
            & (delta["variant"] == variant)
            & (delta["condition"] == cond)
        ]
        d = d.iloc[0] if len(d) else None
        c = ctrl.get(base_set) if cond in ctrl else None
        if c is None and cond == "greedy" and set(sel.get("greedy", [])) == set(sel["top_k"]):
            c = ctrl.get("top_k")  # same set: the control was run once
        row = {
            "Attribute": attr,
            "Variant": VARIANT_LABELS.get(variant, variant),
            "Condition": CONDITION_LABELS.get(cond, cond),
            "Heads": heads_str(heads) if cond != "baseline" else "-",
            "V": fmt_v(r["v"]),
            "V (bias-corr.)": fmt_v(r["v_bc"]),
            "V(true class)": fmt_v(r["v_true"]),
            "ΔV [95 % CI]": "-"
            if d is None
            else f"{fmt_signed(d['delta_v'])} [{fmt_signed(d['ci_low'])}, {fmt_signed(d['ci_high'])}]",
            "Accuracy (%)": f"{100 * float(r['accuracy']):.2f}",
            "ΔAcc (pp)": "-" if cond == "baseline" else fmt_signed(r["delta_acc"], 2, 100.0),
            "McNemar p": "-" if d is None else fmt_p(d["mcnemar_p"]),
            "Random sets beaten (%)": "-"
            if c is None or c.get("frac_beaten") is None
            else f"{100 * float(c['frac_beaten']):.1f}",
            "Control p": "-" if c is None else fmt_p(c.get("p_value"), c.get("n_sets")),
        }
        ref = published_reference(published, dataset, model_name, attr)
        if ref:
            any_ref = True
        row["Paper V"] = fmt_v(ref[cond]) if cond in ref else ""
        row["Paper ΔAcc (pp)"] = (
            fmt_signed(ref["acc_change"], 2, 100.0)
            if cond == "top_k" and "acc_change" in ref
            else ""
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    if not any_ref and len(df):
        df = df.drop(columns=["Paper V", "Paper ΔAcc (pp)"])
    return df


def heads_table(audit: AuditResults, variant: str = "split", top_texts: int = 3) -> pd.DataFrame:
    """The selected heads (top-k ∪ greedy ∪ the combined ranking's top-k of the sensitivity
    row, in ranking order) of every attribute with their scores: signed CAV effect of the
    ranking CAV (within-class d, else d), AUC, bias-variance share and first bias rank of the
    bias-augmented TextSpan, TextSpan flag, share of the set's ΔV when ablated alone, and the
    first ``top_texts`` TextSpan descriptions."""
    scores = audit.table("head_scores", variant)
    ranking = audit.table("ranking", variant)
    ts = audit.table("textspan", variant)
    tsb = audit.table("textspan_bias", variant)
    attrib = audit.table("attribution", variant)
    rows = []
    for attr in audit.attributes:
        if (attr, variant) not in audit.info:
            continue
        sel = audit.selection(attr, variant)
        rank_cav = sel["rank_cav"]
        chosen = list(dict.fromkeys(h for key in SET_LABELS for h in sel.get(key, [])))
        rk = ranking[ranking["attribute"] == attr].set_index("head_id")
        chosen.sort(key=lambda h: float(rk.loc[h, "order"]) if h in rk.index else math.inf)
        sc = scores[(scores["attribute"] == attr) & (scores["cav"] == rank_cav)]
        sc = sc.set_index("head_id")
        for h in chosen:
            sets = [lab for key, lab in SET_LABELS.items() if h in sel.get(key, [])]
            s = sc.loc[h] if h in sc.index else None
            d_col = "d_within" if s is not None and _finite(s["d_within"]) else "d"
            row = {
                "Attribute": attr,
                "Head": h,
                "Sets": ", ".join(sets),
                "Order": str(int(rk.loc[h, "order"])) if h in rk.index else "n/a",
                f"CAV d ({rank_cav})": "n/a" if s is None else fmt_signed(s[d_col], 2),
                "AUC": "n/a" if s is None else fmt_v(s["auc"], 2),
            }
            b = tsb[(tsb["attribute"] == attr) & (tsb["head_id"] == h)] if len(tsb) else tsb
            if len(b):
                b = b.iloc[0]
                row["Bias share"] = fmt_v(b["bias_share"], 2)
                fr = b["first_bias_rank"]
                row["First bias text"] = str(int(fr)) if _finite(fr) else "none"
                row["Flagged"] = "yes" if bool(b["flagged"]) else "no"
            a = attrib[
                (attrib["attribute"] == attr)
                & (attrib["head_id"] == h)
                & (attrib["scope"] == "all")
                & (attrib["set"] == ("top_k" if "top-k" in sets else "greedy"))
            ]
            row["Share of ΔV alone"] = fmt_v(a["share_single"].iloc[0], 2) if len(a) else "n/a"
            if len(ts):
                texts = (
                    ts[(ts["attribute"] == attr) & (ts["head_id"] == h)]
                    .sort_values("rank")["text"]
                    .head(top_texts)
                    .tolist()
                )
                row["TextSpan descriptions"] = "; ".join(texts) if texts else "(not described)"
            rows.append(row)
    return pd.DataFrame(rows)


def control_table(audit: AuditResults) -> pd.DataFrame:
    """Layer-matched random control of every selected set (METHODS §6.9): the set's ΔV and
    Δaccuracy against the distribution over random sets with the same heads per layer."""
    rows = []
    for (attr, variant), info in audit.info.items():
        for name, c in info["random_control"].items():
            sd = c.get("sd")
            rows.append(
                {
                    "Attribute": attr,
                    "Variant": VARIANT_LABELS.get(variant, variant),
                    "Set": SET_LABELS.get(name, name),
                    "Heads": heads_str(c["selected"]),
                    "Random sets": f"{c['n_sets']} ({c['mode']})",
                    "ΔV selected": fmt_signed(c["delta_v"]),
                    "ΔV random mean ± sd": "n/a"
                    if c.get("mean") is None
                    else f"{fmt_signed(c['mean'])} ± {fmt_v(sd) if sd is not None else 'n/a'}",
                    "ΔV random 5-95 %": "n/a"
                    if c.get("p05") is None
                    else f"[{fmt_signed(c['p05'])}, {fmt_signed(c['p95'])}]",
                    "Beaten (%)": "n/a"
                    if c.get("frac_beaten") is None
                    else f"{100 * float(c['frac_beaten']):.1f}",
                    "Rank": "n/a" if c.get("rank") is None else str(c["rank"]),
                    "p": fmt_p(c["p_value"], c.get("n_sets")),
                    "ΔAcc selected (pp)": fmt_signed(c["delta_acc"], 2, 100.0),
                    "ΔAcc random mean (pp)": fmt_signed(c.get("delta_acc_mean"), 2, 100.0),
                }
            )
    return pd.DataFrame(rows)


def transition_rows(transitions: pd.DataFrame, max_classes: int = 10) -> pd.DataFrame:
    """Rows of a transitions table to show: the stereotyped classes (or, without any, the
    ``max_classes`` classes with most changed predictions), then the totals."""
    cls = transitions[transitions["class_index"] >= 0]
    st = cls[cls["stereotyped"].astype(bool)]
    if st.empty:
        st = cls.sort_values(["n_changed", "class_index"], ascending=[False, True]).head(
            max_classes
        )
    tot = transitions[transitions["class_index"] < 0].sort_values("class_index", ascending=False)
    return pd.concat([st, tot], ignore_index=True)


def transitions_table(
    audit: AuditResults, variant: str = "split", conditions: Sequence[str] = ("top_k",)
) -> pd.DataFrame:
    """Prediction transitions after ablation (METHODS §6.10) in the most stereotyped classes
    and in total: wrong→right, right→wrong, wrong→other wrong, share of changed predictions
    that land on the true class."""
    tr = audit.table("transitions", variant)
    rows = []
    for attr in audit.attributes:
        for cond in conditions:
            sub = tr[(tr["attribute"] == attr) & (tr["condition"] == cond)]
            if sub.empty:
                continue
            for _, r in transition_rows(sub).iterrows():
                share = r["share_changed_to_true"]
                rows.append(
                    {
                        "Attribute": attr,
                        "Condition": CONDITION_LABELS.get(cond, cond),
                        "Class": r["class_name"]
                        if r["class_index"] >= 0
                        else f"({r['class_name']})",
                        "Stereotyped": "-"
                        if r["class_index"] < 0
                        else "yes"
                        if bool(r["stereotyped"])
                        else "no",
                        "n": int(r["n"]),
                        "Changed": int(r["n_changed"]),
                        "Wrong→right": int(r["wrong_to_right"]),
                        "Right→wrong": int(r["right_to_wrong"]),
                        "Wrong→other": int(r["wrong_to_other_wrong"]),
                        "To true class (%)": f"{100 * float(share):.1f}"
                        if _finite(share)
                        else "n/a",
                    }
                )
    return pd.DataFrame(rows)


def headline(
    audit: AuditResults, attribute: str, variant: str = "split", condition: str = "top_k"
) -> dict[str, Any] | None:
    """The numbers of the text summary for a selected set (``condition``: ``top_k`` or the
    sensitivity row ``top_k_combined``): V before / after, accuracy change, random-control
    share beaten and p-value; ``None`` when the condition was not run."""
    out = audit.table("outcome", variant)
    o = out[out["attribute"] == attribute].set_index("condition")
    if condition not in o.index:
        return None
    sel = audit.selection(attribute, variant)
    c = audit.info[(attribute, variant)]["random_control"].get(condition, {})
    return {
        "ranking": sel.get("ranking", "combined") if condition == "top_k" else "combined",
        "v_before": float(o.loc["baseline", "v"]),
        "v_after": float(o.loc[condition, "v"]),
        "v_true": float(o.loc["baseline", "v_true"]),
        "delta_acc": float(o.loc[condition, "delta_acc"]),
        "frac_beaten": c.get("frac_beaten"),
        "p_value": c.get("p_value"),
        "n_sets": c.get("n_sets"),
        "heads": list(sel[condition]),
    }


def headline_markdown(audit: AuditResults, variant: str = "split") -> str:
    """One bullet per attribute (the top-k set of the audit's ranking), and a sub-bullet for
    the sensitivity row when there is one."""
    lines = []
    for attr in audit.attributes:
        if (attr, variant) not in audit.info:
            continue
        for condition, prefix in (("top_k", f"- **{attr}** "), ("top_k_combined", "  - ")):
            h = headline(audit, attr, variant, condition)
            if h is None:
                continue
            beaten = (
                "n/a"
                if h["frac_beaten"] is None
                else f"{100 * h['frac_beaten']:.1f} % of {h['n_sets']} layer-matched random sets"
            )
            lines.append(
                f"{prefix}({VARIANT_LABELS.get(variant, variant)}, {h['ranking']} ranking): "
                f"ablating {heads_str(h['heads'])} changes V from {h['v_before']:.3f} to "
                f"{h['v_after']:.3f} (V(true class) = {h['v_true']:.3f}), accuracy by "
                f"{100 * h['delta_acc']:+.2f} pp; a larger reduction than {beaten} "
                f"(p {p_phrase(h['p_value'], h['n_sets'])})."
            )
    return "\n".join(lines)


def value_matrix(
    scores: pd.DataFrame, layers: Sequence[int], n_heads: int, column: str
) -> np.ndarray:
    """[len(layers), n_heads] matrix of ``column`` of a per-head table (NaN where missing)."""
    mat = np.full((len(layers), n_heads), np.nan)
    pos = {int(x): i for i, x in enumerate(layers)}
    for _, r in scores.iterrows():
        li = pos.get(int(r["layer"]))
        if li is not None and 0 <= int(r["head"]) < n_heads:
            mat[li, int(r["head"])] = r[column]
    return mat
