"""Single-head and class-level analysis (METHODS §6.10): each selected head's share of ΔV alone
and left out (:func:`head_attribution`), the most stereotyped classes
(:func:`stereotyped_classes`) and the prediction transitions after ablation
(:func:`prediction_transitions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ... import metrics
from ..heads import HeadId, head_str, parse_head
from .ablation import LogitDeltas, VCalc, accuracy
from .params import DEFAULTS

ATTRIBUTION_COLUMNS = [
    "scope",
    "layer",
    "head",
    "head_id",
    "n",
    "delta_v_set",
    "delta_v_single",
    "share_single",
    "delta_v_loo",
    "share_loo",
    "delta_acc_single",
    "delta_acc_loo",
]


def head_attribution(
    engine: LogitDeltas,
    labels: np.ndarray,
    attr: np.ndarray,
    selected: Sequence[str | HeadId],
    class_subset: Sequence[int] | None = None,
    bias_correction: bool = False,
) -> pd.DataFrame:
    """Single-head and leave-one-out shares of ΔV of the selected set S (METHODS §6.10).

    For every h ∈ S: ΔV({h}) and ``share_single`` = ΔV({h}) / ΔV(S); ΔV(S ∖ {h}) and
    ``share_loo`` = (ΔV(S) − ΔV(S ∖ {h})) / ΔV(S) (the part of the set's reduction lost
    without h); Δacc of both. Scope ``"all"`` over every image of ``engine``; with
    ``class_subset`` also scope ``"stereotyped"``: V and accuracy over images whose true
    class is in the subset. Columns :data:`ATTRIBUTION_COLUMNS`.
    """
    y = np.asarray(labels, dtype=np.int64)
    sel = [head_str(parse_head(h)) for h in selected]
    scopes: list[tuple[str, np.ndarray | None]] = [("all", None)]
    if class_subset is not None:
        scopes.append(("stereotyped", np.isin(y, np.asarray(class_subset, dtype=np.int64))))
    p0, p_s = engine.predict(), engine.predict(sel)
    single = {h: engine.predict([h]) for h in sel}
    loo = {h: engine.predict([g for g in sel if g != h]) for h in sel}
    rows = []
    for scope, mask in scopes:
        m = np.ones(len(y), dtype=bool) if mask is None else mask
        vcalc = VCalc(attr, engine.base.shape[1], m)
        v0, acc0 = vcalc(p0, bias_correction), accuracy(p0, y, m)
        dv_s = vcalc(p_s, bias_correction) - v0
        for h in sel:
            dv1 = vcalc(single[h], bias_correction) - v0
            dvl = vcalc(loo[h], bias_correction) - v0
            with np.errstate(invalid="ignore", divide="ignore"):
                share1 = dv1 / dv_s if dv_s != 0 else math.nan
                sharel = (dv_s - dvl) / dv_s if dv_s != 0 else math.nan
            layer, hh = parse_head(h)
            rows.append(
                (
                    scope,
                    layer,
                    hh,
                    h,
                    int(m.sum()),
                    dv_s,
                    dv1,
                    share1,
                    dvl,
                    sharel,
                    accuracy(single[h], y, m) - acc0,
                    accuracy(loo[h], y, m) - acc0,
                )
            )
    return pd.DataFrame(rows, columns=ATTRIBUTION_COLUMNS)


STEREOTYPED_COLUMNS = [
    "class_index",
    "class_name",
    "n",
    "n_values_eligible",
    "acc_gap",
    "class_v",
    "disparity",
    "eligible",
    "rank",
    "selected",
]


def stereotyped_classes(
    pred: np.ndarray,
    labels: np.ndarray,
    attr: np.ndarray,
    n_classes: int,
    top: int = DEFAULTS["top_classes"],
    disparity: str = DEFAULTS["disparity"],
    min_per_group: int = DEFAULTS["min_per_group"],
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The most stereotyped classes (METHODS §6.10, RECON).

    Per true class, over images with a valid attribute value: ``acc_gap`` = max − min of the
    per-value accuracies among values with >= ``min_per_group`` images (|acc_a − acc_b| for
    two values), and ``class_v`` = V(pred, attr) among the class's images. A class is
    ``eligible`` with >= 2 such values. ``disparity`` (``"acc_gap"`` or ``"class_v"``) ranks
    the eligible classes (rank 1 = largest; NaN last); the first ``top`` are ``selected``.
    Columns :data:`STEREOTYPED_COLUMNS`, rows in rank order then class index.
    """
    if disparity not in ("acc_gap", "class_v"):
        raise ValueError(f"disparity must be 'acc_gap' or 'class_v', got {disparity!r}")
    p = np.asarray(pred, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    keep = a >= 0
    rows = []
    for c in np.unique(y[keep]):
        m = keep & (y == c)
        accs = []
        for v in np.unique(a[m]):
            mv = m & (a == v)
            if mv.sum() >= min_per_group:
                accs.append(float(np.mean(p[mv] == c)))
        n_el = len(accs)
        gap = max(accs) - min(accs) if n_el >= 2 else math.nan
        cv = metrics.cramers_v(p[m], a[m], n_classes=n_classes) if n_el >= 2 else math.nan
        name = str(class_names[c]) if class_names is not None else str(c)
        rows.append((int(c), name, int(m.sum()), n_el, gap, cv))
    df = pd.DataFrame(rows, columns=STEREOTYPED_COLUMNS[:6])
    df["disparity"] = df[disparity]
    df["eligible"] = df["n_values_eligible"] >= 2
    df = df.sort_values(["disparity", "class_index"], ascending=[False, True], na_position="last")
    ranks = np.where(df["eligible"] & df["disparity"].notna(), np.arange(1, len(df) + 1), 0)
    df["rank"] = pd.array([int(r) if r > 0 else pd.NA for r in ranks], dtype="Int64")
    df["selected"] = df["rank"].fillna(0).between(1, top)
    return df.reset_index(drop=True)[STEREOTYPED_COLUMNS]


TRANSITION_COLUMNS = [
    "class_index",
    "class_name",
    "n",
    "n_changed",
    "wrong_to_right",
    "right_to_wrong",
    "wrong_to_other_wrong",
    "right_unchanged",
    "wrong_unchanged",
    "share_changed_to_true",
]


def prediction_transitions(
    pred_before: np.ndarray,
    pred_after: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Prediction transitions after ablation per true class (METHODS §6.10).

    Counts wrong→right, right→wrong, wrong→other-wrong (changed to another wrong class), and
    the unchanged right / wrong images; ``share_changed_to_true`` = wrong→right / n_changed
    (the share of changed predictions that land on the true class; NaN without changes).
    One row per class in ``classes`` (default: every true class present) and a final total
    row over those classes with ``class_index`` −1 and ``class_name`` ``"all"``. Columns
    :data:`TRANSITION_COLUMNS`.
    """
    b = np.asarray(pred_before, dtype=np.int64)
    af = np.asarray(pred_after, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if not (b.shape == af.shape == y.shape):
        raise ValueError("pred_before, pred_after and labels must have the same length")
    cls = np.unique(y) if classes is None else np.asarray(classes, dtype=np.int64)

    def counts(m: np.ndarray) -> tuple[int, ...]:
        rb, ra = b[m] == y[m], af[m] == y[m]
        changed = b[m] != af[m]
        w2r = int(np.sum(~rb & ra))
        r2w = int(np.sum(rb & ~ra))
        w2w = int(np.sum(~rb & ~ra & changed))
        return (
            int(m.sum()),
            int(changed.sum()),
            w2r,
            r2w,
            w2w,
            int(np.sum(rb & ra)),
            int(np.sum(~rb & ~ra & ~changed)),
        )

    rows = []
    for c in cls:
        cnt = counts(y == c)
        name = str(class_names[c]) if class_names is not None else str(int(c))
        rows.append((int(c), name, *cnt))
    cnt = counts(np.isin(y, cls))
    rows.append((-1, "all", *cnt))
    df = pd.DataFrame(rows, columns=TRANSITION_COLUMNS[:-1])
    df["share_changed_to_true"] = df["wrong_to_right"] / df["n_changed"].replace(0, np.nan)
    return df[TRANSITION_COLUMNS]


def attribution_table(
    engine: LogitDeltas,
    labels: np.ndarray,
    attr: np.ndarray,
    sets: dict[str, Sequence[str | HeadId]],
    class_subset: Sequence[int] | None = None,
    bias_correction: bool = DEFAULTS["bias_correction"],
) -> pd.DataFrame:
    """:func:`head_attribution` of every named head set, with a leading ``set`` column."""
    frames = [
        head_attribution(engine, labels, attr, s, class_subset, bias_correction).assign(set=name)
        for name, s in sets.items()
    ]
    return pd.concat(frames, ignore_index=True)[["set", *ATTRIBUTION_COLUMNS]]


def transition_table(
    baseline: np.ndarray,
    after: dict[str, np.ndarray],
    labels: np.ndarray,
    stereotyped: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """:func:`prediction_transitions` from ``baseline`` to every condition of ``after``:
    columns ``condition`` + :data:`TRANSITION_COLUMNS` + ``stereotyped`` (the class is one of
    ``stereotyped``); per condition the class rows, the total row (``class_index`` −1,
    "all") and, with stereotyped classes, their total (−2, "stereotyped")."""
    frames = []
    for cond, pred in after.items():
        parts = [prediction_transitions(baseline, pred, labels, None, class_names)]
        parts[0]["stereotyped"] = parts[0]["class_index"].isin(stereotyped)
        if len(stereotyped):
            sub = prediction_transitions(baseline, pred, labels, stereotyped, class_names)
            total = sub[sub["class_index"] == -1].assign(
                class_index=-2, class_name="stereotyped", stereotyped=True
            )
            parts.append(total)
        frames.append(pd.concat(parts, ignore_index=True).assign(condition=cond))
    out = pd.concat(frames, ignore_index=True)
    return out[["condition", *TRANSITION_COLUMNS, "stereotyped"]]
