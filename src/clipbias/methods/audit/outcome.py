"""Outcome tables of an ablation (METHODS §6.7-6.8, §7.2): accuracy and Cramér's V per
condition (:func:`outcome_summary`), per-class accuracy per attribute value
(:func:`per_class_accuracy`), and ΔV with paired bootstrap intervals next to the accuracy
change and McNemar's test (:func:`delta_v_table`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ... import metrics
from .ablation import accuracy
from .params import DEFAULT_SEED, DEFAULTS

#: Columns of :func:`outcome_summary`, :func:`per_class_accuracy`, :func:`delta_v_table`.
OUTCOME_COLUMNS = (
    "condition attribute n n_valid accuracy v v_bc v_true v_true_bc delta_v delta_v_bc delta_acc"
).split()
PER_CLASS_COLUMNS = (
    "condition attribute class_index class_name value value_name n n_correct accuracy"
).split()
DELTA_COLUMNS = (
    "condition attribute v_before v_after delta_v ci_low ci_high p_boot n n_boot "
    "acc_before acc_after delta_acc mcnemar_p bias_correction"
).split()


def outcome_summary(
    preds: Mapping[str, np.ndarray],
    labels: np.ndarray,
    attrs: Mapping[str, np.ndarray],
    n_classes: int,
    baseline: str = "baseline",
) -> pd.DataFrame:
    """Accuracy and Cramér's V per condition and attribute (METHODS §6.7-6.8).

    ``preds`` maps condition (e.g. ``"baseline"``, ``"top_k"``) -> predictions [N];
    ``attrs`` maps attribute -> codes [N]. Columns :data:`OUTCOME_COLUMNS`: ``n`` images,
    ``n_valid`` with a valid attribute value, top-1 ``accuracy`` over all ``n``, ``v`` /
    ``v_bc`` (Bergsma) = V(pred, attr), ``v_true`` / ``v_true_bc`` = V(true class, attr), and
    the changes against the ``baseline`` condition (NaN when it is absent).
    """
    y = np.asarray(labels, dtype=np.int64)
    rows = []
    for attr_name, a in attrs.items():
        base = None
        if baseline in preds:
            base = metrics.cramers_v_table(preds[baseline], y, a, n_classes)
            base_acc = accuracy(preds[baseline], y)
        for cond, p in preds.items():
            t = metrics.cramers_v_table(p, y, a, n_classes)
            acc = accuracy(p, y)
            rows.append(
                (
                    cond,
                    attr_name,
                    len(y),
                    t["n"],
                    acc,
                    t["v"],
                    t["v_bc"],
                    t["v_true"],
                    t["v_true_bc"],
                    t["v"] - base["v"] if base else np.nan,
                    t["v_bc"] - base["v_bc"] if base else np.nan,
                    acc - base_acc if base else np.nan,
                )
            )
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


def per_class_accuracy(
    preds: Mapping[str, np.ndarray],
    labels: np.ndarray,
    attrs: Mapping[str, np.ndarray],
    class_names: Sequence[str] | None = None,
    value_names: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Per-class accuracy per attribute value, per condition (METHODS §6.7), long format.

    Columns :data:`PER_CLASS_COLUMNS`; one row per (condition, attribute, true class, value)
    cell with at least one image; unknown values (-1) are left out.
    """
    y = np.asarray(labels, dtype=np.int64)
    rows = []
    for attr_name, a in attrs.items():
        a = np.asarray(a, dtype=np.int64)
        keep = a >= 0
        cells = np.unique(np.stack([y[keep], a[keep]], axis=1), axis=0)
        names_v = (value_names or {}).get(attr_name)
        for cond, p in preds.items():
            ok = np.asarray(p) == y
            for c, v in cells:
                m = keep & (y == c) & (a == v)
                rows.append(
                    (
                        cond,
                        attr_name,
                        int(c),
                        str(class_names[c]) if class_names is not None else str(c),
                        int(v),
                        str(names_v[v]) if names_v is not None else str(v),
                        int(m.sum()),
                        int(ok[m].sum()),
                        float(ok[m].mean()),
                    )
                )
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


def delta_v_table(
    pred_before: np.ndarray,
    preds_after: Mapping[str, np.ndarray],
    labels: np.ndarray,
    attrs: Mapping[str, np.ndarray],
    n_boot: int = DEFAULTS["n_boot"],
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
    bias_correction: bool = False,
) -> pd.DataFrame:
    """ΔV = V_after − V_before with paired, class × attribute stratified bootstrap intervals
    (:func:`clipbias.metrics.delta_v_bootstrap`; METHODS §6.8, §7.2), plus the accuracy
    change over all images and McNemar's exact p-value for it. Columns
    :data:`DELTA_COLUMNS`, one row per (condition, attribute)."""
    y = np.asarray(labels, dtype=np.int64)
    acc_b = accuracy(pred_before, y)
    rows = []
    for attr_name, a in attrs.items():
        for cond, p in preds_after.items():
            r = metrics.delta_v_bootstrap(
                pred_before, p, y, a, n_boot, seed, level, bias_correction
            )
            acc_a = accuracy(p, y)
            mc = metrics.mcnemar_exact(np.asarray(p) == y, np.asarray(pred_before) == y)
            rows.append(
                (
                    cond,
                    attr_name,
                    r["v_before"],
                    r["v_after"],
                    r["delta_v"],
                    r["ci_low"],
                    r["ci_high"],
                    r["p_boot"],
                    r["n"],
                    r["n_boot"],
                    acc_b,
                    acc_a,
                    acc_a - acc_b,
                    mc["pvalue"],
                    bool(bias_correction),
                )
            )
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def outcome_tables(
    preds: Mapping[str, np.ndarray],
    labels: np.ndarray,
    attribute: str,
    attr: np.ndarray,
    value_names: Sequence[str],
    n_classes: int,
    class_names: Sequence[str] | None = None,
    n_boot: int = DEFAULTS["n_boot"],
    seed: int = DEFAULT_SEED,
    bias_correction: bool = DEFAULTS["bias_correction"],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(:func:`outcome_summary`, :func:`per_class_accuracy`, :func:`delta_v_table`) of the
    conditions ``preds`` (``"baseline"`` = before ablation, the reference of every change) of
    one attribute with codes ``attr`` naming ``value_names``."""
    attrs = {attribute: attr}
    names = {attribute: [str(v) for v in value_names]}
    after = {c: p for c, p in preds.items() if c != "baseline"}
    return (
        outcome_summary(preds, labels, attrs, n_classes),
        per_class_accuracy(preds, labels, attrs, class_names, names),
        delta_v_table(preds["baseline"], after, labels, attrs, n_boot, seed, 0.95, bias_correction),
    )
