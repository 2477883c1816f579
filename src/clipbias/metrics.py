"""Evaluation metrics and statistical reporting (METHODS §7).

All accuracies are fractions in [0, 1]. Group ids are non-negative integers; samples whose
group is negative (``-1`` = "dataset has no groups") count towards the overall accuracy but
not towards any group metric.

Metric names used in the tidy tables:

| metric | definition |
|---|---|
| ``avg_acc`` | Avg_overall: sample-weighted accuracy over all samples |
| ``avg_group_acc`` | Avg_group: unweighted mean of the group accuracies |
| ``avg_adj_acc`` | Avg_adj: group accuracies weighted by given (training-split) proportions |
| ``worst_group_acc`` | WG = min over groups |
| ``gap`` | Avg_overall - WG |
| ``acc_group_<g>`` | accuracy of group id ``g`` (integer id; the name is in ``group_name``) |

Bootstrap confidence intervals resample samples with replacement *within each group*
(stratified, so no group disappears and group sizes are fixed), use the percentile method and
a seeded :class:`numpy.random.Generator`. Resampling is vectorised with one index matrix per
stratum, so 1,000 resamples of 10k samples take a small fraction of a second.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# scipy.stats is imported inside the functions that need it: importing it costs 1.5-2.5 s (on
# 2 cores), and most rules import this module only for predict/accuracy helpers.

log = logging.getLogger(__name__)

TIDY_COLUMNS = ["method", "split", "metric", "value", "ci_low", "ci_high", "group_name", "n"]


# ---------------------------------------------------------------------------------------------
# Point estimates
# ---------------------------------------------------------------------------------------------


def logits(embeddings: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """Cosine-style logits ``embeddings @ classifier`` ([N, D] x [D, C] -> [N, C])."""
    return np.asarray(embeddings) @ np.asarray(classifier)


def predict(
    embeddings: np.ndarray, classifier: np.ndarray, candidates: np.ndarray | None = None
) -> np.ndarray:
    """Zero-shot predictions ``argmax_c <e, t_c>`` as int64 [N].

    ``candidates`` ([N, k] int, optional) restricts each sample to its own classifier columns
    (GenderBias two-way classification); the returned ids are then global class indices.
    """
    s = logits(embeddings, classifier)
    if candidates is None:
        return np.argmax(s, axis=1).astype(np.int64)
    cand = np.asarray(candidates, dtype=np.int64)
    sub = np.take_along_axis(s, cand, axis=1)
    return cand[np.arange(len(cand)), np.argmax(sub, axis=1)]


def _group_ids(groups: np.ndarray) -> np.ndarray:
    g = np.asarray(groups, dtype=np.int64)
    return np.unique(g[g >= 0])


def group_accuracies(preds: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[int, float]:
    """Accuracy per (non-negative) group id, ``{g: acc_g}`` in increasing id order."""
    correct = np.asarray(preds) == np.asarray(labels)
    groups = np.asarray(groups, dtype=np.int64)
    return {int(g): float(correct[groups == g].mean()) for g in _group_ids(groups)}


def worst_group_accuracy(preds: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    acc = group_accuracies(preds, labels, groups)
    return float(min(acc.values())) if acc else float("nan")


def avg_overall_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def avg_group_accuracy(preds: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    acc = group_accuracies(preds, labels, groups)
    return float(np.mean(list(acc.values()))) if acc else float("nan")


def avg_adjusted_accuracy(
    preds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    group_weights: Mapping[int, float] | Sequence[float],
) -> float:
    """Group accuracies weighted by ``group_weights`` (e.g. training-split proportions).

    Weights are renormalised over the groups present.
    """
    acc = group_accuracies(preds, labels, groups)
    w = _weights_dict(group_weights)
    tot = sum(w.get(g, 0.0) for g in acc)
    return float(sum(w.get(g, 0.0) * a for g, a in acc.items()) / tot)


def _weights_dict(group_weights: Mapping[int, float] | Sequence[float]) -> dict[int, float]:
    if isinstance(group_weights, Mapping):
        return {int(k): float(v) for k, v in group_weights.items()}
    return {i: float(v) for i, v in enumerate(group_weights)}


def point_metrics(
    preds: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, float]:
    """``avg_acc`` and, when groups exist, ``avg_group_acc``, ``worst_group_acc``, ``gap``."""
    out = {"avg_acc": avg_overall_accuracy(preds, labels)}
    if groups is not None and len(_group_ids(groups)):
        out["avg_group_acc"] = avg_group_accuracy(preds, labels, groups)
        out["worst_group_acc"] = worst_group_accuracy(preds, labels, groups)
        out["gap"] = out["avg_acc"] - out["worst_group_acc"]
    return out


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def _strata(groups: np.ndarray | None, n: int, stratified: bool) -> list[np.ndarray]:
    if groups is None or not stratified:
        return [np.arange(n)]
    groups = np.asarray(groups, dtype=np.int64)
    return [np.flatnonzero(groups == g) for g in np.unique(groups)]


def bootstrap_indices(
    n: int,
    n_boot: int,
    seed: int | np.random.Generator = 42,
    groups: np.ndarray | None = None,
    stratified: bool = True,
) -> np.ndarray:
    """Index matrix [n_boot, n] of resamples with replacement.

    With ``stratified`` and ``groups``, each group (every distinct value, including ``-1``) is
    resampled within itself; columns keep the original group sizes (column order groups the
    strata together, so use it only through ``x[idx]``).
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for members in _strata(groups, n, stratified):
        pos = rng.integers(0, len(members), size=(n_boot, len(members)))
        blocks.append(members[pos])
    dtype = np.int32 if n < 2**31 else np.int64
    return np.concatenate(blocks, axis=1).astype(dtype, copy=False)


def _metrics_from_counts(
    n_correct: np.ndarray,
    sizes: np.ndarray,
    ids: np.ndarray,
    group_weights: Mapping[int, float] | Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Metrics from per-stratum correct counts ``n_correct`` [B, S] and sizes [B, S] or [S].

    ``ids`` [S] are the stratum group ids; strata with negative id count only towards
    ``avg_acc``. Empty strata give NaN accuracies (ignored by the group aggregates).
    """
    n_correct = np.atleast_2d(n_correct).astype(np.float64)
    sizes = np.broadcast_to(np.asarray(sizes, dtype=np.float64), n_correct.shape)
    out: dict[str, np.ndarray] = {"avg_acc": n_correct.sum(axis=1) / sizes.sum(axis=1)}
    keep = np.asarray(ids) >= 0
    if not keep.any():
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        accs = n_correct[:, keep] / sizes[:, keep]  # [B, G]
    gids = np.asarray(ids)[keep]
    for j, g in enumerate(gids):
        out[f"acc_group_{int(g)}"] = accs[:, j]
    out["avg_group_acc"] = np.nanmean(accs, axis=1)
    out["worst_group_acc"] = np.nanmin(accs, axis=1)
    out["gap"] = out["avg_acc"] - out["worst_group_acc"]
    if group_weights is not None:
        w = _weights_dict(group_weights)
        wv = np.array([w.get(int(g), 0.0) for g in gids])
        present = ~np.isnan(accs)
        out["avg_adj_acc"] = (np.where(present, accs, 0.0) @ wv) / (present @ wv)
    return out


def _stratum_ids(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [S], codes [n]): distinct group values (``-1`` for no groups) and each sample's."""
    if groups is None:
        return np.array([-1]), np.zeros(n, dtype=np.int64)
    ids, codes = np.unique(np.asarray(groups, dtype=np.int64), return_inverse=True)
    return ids, codes


def _point_counts(
    corrects: Sequence[np.ndarray], groups: np.ndarray | None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    n = len(corrects[0])
    ids, codes = _stratum_ids(groups, n)
    sizes = np.bincount(codes, minlength=len(ids))
    counts = [np.bincount(codes, weights=c, minlength=len(ids))[None, :] for c in corrects]
    return counts, sizes, ids


def _boot_counts(
    corrects: Sequence[np.ndarray],
    groups: np.ndarray | None,
    n_boot: int,
    seed: int | np.random.Generator,
    stratified: bool,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-stratum correct counts [B, S] for each correctness vector on shared resamples.

    Returns (counts per vector, sizes [S] or [B, S], stratum ids [S]). All vectors use the
    same resampled indices (paired bootstrap).
    """
    n = len(corrects[0])
    rng = np.random.default_rng(seed)
    ids, codes = _stratum_ids(groups, n)
    if stratified:
        counts = [np.empty((n_boot, len(ids))) for _ in corrects]
        sizes = np.bincount(codes, minlength=len(ids))
        for s in range(len(ids)):
            members = np.flatnonzero(codes == s)
            pos = rng.integers(0, len(members), size=(n_boot, len(members)))
            for c, out in zip(corrects, counts, strict=True):
                out[:, s] = c[members][pos].sum(axis=1)
        return counts, sizes, ids
    idx = rng.integers(0, n, size=(n_boot, n))
    rc = codes[idx]
    offs = (np.arange(n_boot)[:, None] * len(ids) + rc).ravel()
    size_b = np.bincount(offs, minlength=n_boot * len(ids)).reshape(n_boot, len(ids))
    counts = [
        np.bincount(offs, weights=c[idx].ravel(), minlength=n_boot * len(ids)).reshape(
            n_boot, len(ids)
        )
        for c in corrects
    ]
    return counts, size_b, ids


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = samples[~np.isnan(samples)]
    if s.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_metrics(
    preds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 42,
    level: float = 0.95,
    stratified: bool = True,
    group_weights: Mapping[int, float] | Sequence[float] | None = None,
) -> dict[str, tuple[float, float, float]]:
    """``{metric: (value, ci_low, ci_high)}`` with percentile bootstrap intervals."""
    correct = (np.asarray(preds) == np.asarray(labels)).astype(np.float64)
    g = None if groups is None else np.asarray(groups, dtype=np.int64)
    (cnt,), sizes, ids = _point_counts([correct], g)
    point = {
        k: float(v[0]) for k, v in _metrics_from_counts(cnt, sizes, ids, group_weights).items()
    }
    out = {k: (v, float("nan"), float("nan")) for k, v in point.items()}
    if n_boot <= 0:
        return out
    (bc,), bsizes, ids = _boot_counts([correct], g, n_boot, seed, stratified)
    boot = _metrics_from_counts(bc, bsizes, ids, group_weights)
    for k, v in point.items():
        lo, hi = _percentile_ci(boot[k], level)
        out[k] = (v, lo, hi)
    return out


def _metric_order(keys: Sequence[str]) -> list[str]:
    head = ["avg_acc", "avg_group_acc", "avg_adj_acc", "worst_group_acc", "gap"]
    first = [k for k in head if k in keys]
    groups = sorted((k for k in keys if k.startswith("acc_group_")), key=lambda s: int(s[10:]))
    return first + groups


def evaluate_predictions(
    preds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    group_names: Sequence[str] | Mapping[int, str] | None = None,
    method: str = "",
    split: str = "",
    n_boot: int = 2000,
    seed: int = 42,
    level: float = 0.95,
    stratified: bool = True,
    group_weights: Mapping[int, float] | Sequence[float] | None = None,
) -> pd.DataFrame:
    """Tidy metric table for one (method, split).

    Columns ``method, split, metric, value, ci_low, ci_high, group_name, n``: one row per
    metric (``avg_acc``, ``avg_group_acc``, [``avg_adj_acc`` if ``group_weights``],
    ``worst_group_acc``, ``gap``, then ``acc_group_<g>`` per group id ``g``). ``group_name``
    is the name of group ``g`` (from ``group_names``, indexed by group id) on the per-group
    rows and empty elsewhere; ``n`` is the number of samples the metric is computed on.
    """
    labels = np.asarray(labels)
    g = None if groups is None else np.asarray(groups, dtype=np.int64)
    res = bootstrap_metrics(preds, labels, g, n_boot, seed, level, stratified, group_weights)
    if isinstance(group_names, Mapping):
        names = {int(k): str(v) for k, v in group_names.items()}
    elif group_names is not None:
        names = dict(enumerate(map(str, group_names)))
    else:
        names = {}
    n_grouped = int((g >= 0).sum()) if g is not None else 0
    rows = []
    for k in _metric_order(list(res)):
        v, lo, hi = res[k]
        if k.startswith("acc_group_"):
            gid = int(k[10:])
            gname, n = names.get(gid, str(gid)), int((g == gid).sum())
        else:
            gname = ""
            n = len(labels) if k == "avg_acc" or k == "gap" else n_grouped
        rows.append((method, split, k, v, lo, hi, gname, n))
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def paired_bootstrap_difference(
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 42,
    level: float = 0.95,
    stratified: bool = True,
) -> pd.DataFrame:
    """Paired bootstrap of metric differences ``a - b`` on the same samples.

    Both methods are evaluated on the *same* resampled indices. Returns columns
    ``metric, value_a, value_b, diff, ci_low, ci_high, p_boot`` where ``ci_*`` bound
    ``diff`` (percentile method) and ``p_boot`` is the two-sided bootstrap p-value
    ``min(1, 2 * min(P(diff* <= 0), P(diff* >= 0)))``.
    """
    labels = np.asarray(labels)
    ca = (np.asarray(preds_a) == labels).astype(np.float64)
    cb = (np.asarray(preds_b) == labels).astype(np.float64)
    g = None if groups is None else np.asarray(groups, dtype=np.int64)
    (pca, pcb), sizes, ids = _point_counts([ca, cb], g)
    pa = _metrics_from_counts(pca, sizes, ids)
    pb = _metrics_from_counts(pcb, sizes, ids)
    (bca, bcb), bsizes, ids = _boot_counts([ca, cb], g, n_boot, seed, stratified)
    ba = _metrics_from_counts(bca, bsizes, ids)
    bb = _metrics_from_counts(bcb, bsizes, ids)
    rows = []
    for k in _metric_order(list(pa)):
        d = ba[k] - bb[k]
        d = d[~np.isnan(d)]
        lo, hi = _percentile_ci(d, level)
        p = min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))) if d.size else float("nan")
        va, vb = float(pa[k][0]), float(pb[k][0])
        rows.append((k, va, vb, va - vb, lo, hi, float(p)))
    return pd.DataFrame(
        rows, columns=["metric", "value_a", "value_b", "diff", "ci_low", "ci_high", "p_boot"]
    )


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test on paired correctness vectors.

    ``b`` = #(a correct, b wrong), ``c`` = #(a wrong, b correct); two-sided
    ``scipy.stats.binomtest(b, b + c, 0.5)``. With no discordant pairs the p-value is 1.
    Returns ``{"b", "c", "n_discordant", "pvalue"}``.
    """
    a = np.asarray(correct_a, dtype=bool)
    bvec = np.asarray(correct_b, dtype=bool)
    b = int(np.sum(a & ~bvec))
    c = int(np.sum(~a & bvec))
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "n_discordant": 0, "pvalue": 1.0}
    from scipy import stats

    p = float(stats.binomtest(b, n, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "n_discordant": n, "pvalue": p}


# ---------------------------------------------------------------------------------------------
# Cramér's V between predictions and a protected attribute (METHODS §6.8, §7.2, §9 #19)
# ---------------------------------------------------------------------------------------------


def _int_vector(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer codes (class or attribute indices)")
    return arr.astype(np.int64)


def _valid_pred_attr(
    pred: np.ndarray, attr: np.ndarray, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Checked int64 copies of ``pred`` and ``attr`` restricted to samples with ``attr >= 0``."""
    p = _int_vector(pred, "pred")
    a = _int_vector(attr, "attr")
    if p.shape != a.shape:
        raise ValueError(f"pred ({p.size}) and attr ({a.size}) must have the same length")
    if p.size and p.min() < 0:
        raise ValueError("pred holds negative class indices; pass predicted class ids >= 0")
    if n_classes is not None and p.size and p.max() >= n_classes:
        raise ValueError(
            f"pred holds class index {int(p.max())} but n_classes = {n_classes}; "
            "pass the number of classifier columns"
        )
    keep = a >= 0
    if not keep.any():
        raise ValueError("no sample has a valid attribute value (attr >= 0); nothing to tabulate")
    return p[keep], a[keep]


def cramers_v_counts(table: np.ndarray, bias_correction: bool = False) -> float:
    """Cramér's V of a contingency table of counts (METHODS §6.8).

    Empty rows and columns are dropped first, so ``r`` is the number of non-empty predicted
    classes and ``c`` the number of attribute values present. χ² is Pearson's statistic from
    ``scipy.stats.chi2_contingency(correction=False)`` and

        V = sqrt(χ² / (n · (min(r, c) − 1))).

    With ``bias_correction`` Bergsma's (2013) estimator is returned instead:
    φ² = χ²/n, φ̃² = max(0, φ² − (c−1)(r−1)/(n−1)), r̃ = r − (r−1)²/(n−1),
    c̃ = c − (c−1)²/(n−1), Ṽ = sqrt(φ̃² / min(r̃ − 1, c̃ − 1)).

    V is undefined (NaN) when fewer than two rows or two columns are non-empty, and the
    corrected V also when ``min(r̃ − 1, c̃ − 1) <= 0`` (tiny n).
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"a contingency table is 2-D, got shape {t.shape}")
    if t.size and t.min() < 0:
        raise ValueError("contingency counts must be non-negative")
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    r, c = t.shape
    if min(r, c) < 2:
        return float("nan")
    from scipy import stats

    chi2 = stats.chi2_contingency(t, correction=False).statistic
    return float(_v_from_chi2(chi2, t.sum(), r, c, bias_correction))


def _v_from_chi2(chi2, n, r, c, bias_correction: bool):
    """V (or Bergsma's corrected V) from Pearson's χ², n and the numbers of non-empty rows r
    and columns c (scalars or arrays, r, c >= 2); NaN where the corrected denominator <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if not bias_correction:
            return np.sqrt(chi2 / (n * (np.minimum(r, c) - 1)))
        phi2 = np.maximum(0.0, chi2 / n - (c - 1) * (r - 1) / (n - 1))
        r_t = r - (r - 1) ** 2 / (n - 1)
        c_t = c - (c - 1) ** 2 / (n - 1)
        denom = np.minimum(r_t - 1.0, c_t - 1.0)
        return np.where(denom > 0, np.sqrt(phi2 / np.where(denom > 0, denom, 1.0)), np.nan)


def cramers_v_batch(tables: np.ndarray, bias_correction: bool = False) -> np.ndarray:
    """Cramér's V of every table in a stack of contingency counts ``[B, r, c]`` -> ``[B]``.

    The same statistic as :func:`cramers_v_counts` (empty rows and columns dropped per table,
    Pearson's χ² without continuity correction, NaN for fewer than two non-empty rows or
    columns; Bergsma's estimator with ``bias_correction``), computed for all tables at once
    with numpy. The bootstrap loops call it for thousands of small tables, where one
    ``scipy.stats.chi2_contingency`` call per table cost ~0.4 ms of argument checking each;
    ``tests/unit/test_cramers_v.py`` checks it against :func:`cramers_v_counts` (scipy).
    """
    t = np.asarray(tables, dtype=np.float64)
    if t.ndim != 3:
        raise ValueError(f"a stack of contingency tables is 3-D [B, r, c], got shape {t.shape}")
    if t.size and t.min() < 0:
        raise ValueError("contingency counts must be non-negative")
    rs = t.sum(axis=2)  # [B, r]
    cs = t.sum(axis=1)  # [B, c]
    n = rs.sum(axis=1)  # [B]
    r = (rs > 0).sum(axis=1)
    c = (cs > 0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = rs[:, :, None] * cs[:, None, :] / n[:, None, None]
        terms = np.where(expected > 0, (t - expected) ** 2 / expected, 0.0)
    v = _v_from_chi2(terms.sum(axis=(1, 2)), n, r, c, bias_correction)
    return np.where(np.minimum(r, c) >= 2, v, np.nan)


def contingency_table(
    pred: np.ndarray, attr: np.ndarray, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of (predicted class, attribute value) over samples with ``attr >= 0``.

    Built with ``scipy.stats.contingency.crosstab``: returns ``(classes [r], values [c],
    counts [r, c])`` with only the predicted classes and attribute values that occur.
    ``n_classes`` (optional) checks that every prediction is a valid class index.
    """
    from scipy import stats

    p, a = _valid_pred_attr(pred, attr, n_classes)
    res = stats.contingency.crosstab(p, a)
    (rows, cols), counts = res.elements, res.count
    return np.asarray(rows), np.asarray(cols), np.asarray(counts)


def cramers_v(
    pred: np.ndarray,
    attr: np.ndarray,
    bias_correction: bool = False,
    n_classes: int | None = None,
) -> float:
    """Cramér's V between predicted class and protected attribute (METHODS §6.8).

    Rows = non-empty predicted classes, columns = attribute values present; samples with
    ``attr < 0`` (unknown / excluded values) are left out. ``bias_correction`` gives
    Bergsma's corrected V (see :func:`cramers_v_counts`). NaN when fewer than two classes
    are predicted or fewer than two attribute values occur. Pass true labels as ``pred`` for
    the reference value V(true class, attribute).
    """
    _, _, counts = contingency_table(pred, attr, n_classes)
    return cramers_v_counts(counts, bias_correction)


def cramers_v_table(
    pred: np.ndarray,
    labels: np.ndarray,
    attr: np.ndarray,
    n_classes: int | None = None,
) -> dict[str, float | int]:
    """V(pred, attr), its bias-corrected version, and the reference V(true class, attr)
    (METHODS §6.8, §9 #19; a perfect classifier gives ``v == v_true``).

    Returns a JSON-serialisable dict ``{"n", "n_excluded", "n_rows", "n_values", "v", "v_bc",
    "v_true", "v_true_bc"}``: ``n`` samples with ``attr >= 0``, ``n_excluded`` samples with
    ``attr < 0``, ``n_rows`` non-empty predicted classes, ``n_values`` attribute values present.
    """
    a = _int_vector(attr, "attr")
    lab = _int_vector(labels, "labels")
    if lab.shape != a.shape:
        raise ValueError(f"labels ({lab.size}) and attr ({a.size}) must have the same length")
    rows, cols, counts = contingency_table(pred, a, n_classes)
    _, _, counts_true = contingency_table(lab, a, n_classes)
    return {
        "n": int(counts.sum()),
        "n_excluded": int(np.sum(a < 0)),
        "n_rows": int(len(rows)),
        "n_values": int(len(cols)),
        "v": cramers_v_counts(counts),
        "v_bc": cramers_v_counts(counts, bias_correction=True),
        "v_true": cramers_v_counts(counts_true),
        "v_true_bc": cramers_v_counts(counts_true, bias_correction=True),
    }


def _coded_tables(pred: np.ndarray, attr_code: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Contingency counts [..., n_rows, n_cols] of integer codes; ``pred`` may be [B, n]."""
    flat = pred * n_cols + attr_code
    if flat.ndim == 1:
        return np.bincount(flat, minlength=n_rows * n_cols).reshape(n_rows, n_cols)
    b = flat.shape[0]
    offs = (np.arange(b, dtype=np.int64)[:, None] * (n_rows * n_cols) + flat).ravel()
    return np.bincount(offs, minlength=b * n_rows * n_cols).reshape(b, n_rows, n_cols)


_DV_CHUNK = 200


def delta_v_bootstrap(
    pred_before: np.ndarray,
    pred_after: np.ndarray,
    labels: np.ndarray,
    attr: np.ndarray,
    n_boot: int = 2000,
    seed: int = 42,
    level: float = 0.95,
    bias_correction: bool = False,
) -> dict[str, float | int | bool]:
    """ΔV = V(pred_after, attr) − V(pred_before, attr) with a paired bootstrap interval
    (METHODS §6.8, §7.2).

    Samples with ``attr < 0`` are dropped; the rest are resampled with replacement within
    each (true class × attribute value) cell, and both V's are computed on the *same*
    resampled indices. The interval is the percentile interval of the resampled ΔV at
    ``level``; ``p_boot`` = min(1, 2·min(P(ΔV* <= 0), P(ΔV* >= 0))) (two-sided). Resamples
    are drawn in blocks of ``_DV_CHUNK`` from one seeded generator (bounded memory).

    Returns ``{"v_before", "v_after", "delta_v", "ci_low", "ci_high", "p_boot", "n",
    "n_boot", "level", "bias_correction"}``.
    """
    pb = _int_vector(pred_before, "pred_before")
    pa = _int_vector(pred_after, "pred_after")
    lab = _int_vector(labels, "labels")
    a = _int_vector(attr, "attr")
    if not (pb.shape == pa.shape == lab.shape == a.shape):
        raise ValueError("pred_before, pred_after, labels and attr must have the same length")
    keep = a >= 0
    if not keep.any():
        raise ValueError("no sample has a valid attribute value (attr >= 0)")
    pb, pa, lab, a = pb[keep], pa[keep], lab[keep], a[keep]
    if min(pb.min(), pa.min(), lab.min()) < 0:
        raise ValueError("predictions and labels must be class indices >= 0")
    vals, a_code = np.unique(a, return_inverse=True)
    n_cols = len(vals)
    n_rows = int(max(pb.max(), pa.max())) + 1
    v_before = cramers_v_counts(_coded_tables(pb, a_code, n_rows, n_cols), bias_correction)
    v_after = cramers_v_counts(_coded_tables(pa, a_code, n_rows, n_cols), bias_correction)
    out: dict[str, float | int | bool] = {
        "v_before": v_before,
        "v_after": v_after,
        "delta_v": v_after - v_before,
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "p_boot": float("nan"),
        "n": int(len(a)),
        "n_boot": int(n_boot),
        "level": float(level),
        "bias_correction": bool(bias_correction),
    }
    if n_boot <= 0:
        return out
    cells = lab * n_cols + a_code
    rng = np.random.default_rng(seed)
    deltas = np.empty(int(n_boot))
    done = 0
    while done < n_boot:
        b = min(_DV_CHUNK, int(n_boot) - done)
        idx = bootstrap_indices(len(a), b, rng, groups=cells)
        tb = _coded_tables(pb[idx], a_code[idx], n_rows, n_cols)
        ta = _coded_tables(pa[idx], a_code[idx], n_rows, n_cols)
        deltas[done : done + b] = cramers_v_batch(ta, bias_correction) - cramers_v_batch(
            tb, bias_correction
        )
        done += b
    lo, hi = _percentile_ci(deltas, level)
    d = deltas[~np.isnan(deltas)]
    p = min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))) if d.size else float("nan")
    out.update(ci_low=lo, ci_high=hi, p_boot=float(p))
    return out


def protected_v_rows(
    method: str,
    split: str,
    pred: np.ndarray,
    labels: np.ndarray,
    attr: np.ndarray,
    attribute: str,
    n_boot: int = 1000,
    seed: int = 42,
) -> list[dict[str, Any]]:
    """Tidy metric rows of a method's protected-attribute bias (METHODS §6.8):
    ``protected_v`` = V(pred, attr) and ``protected_v_excess`` = V(pred, attr) −
    V(true class, attr) with a paired, class × value-stratified bootstrap interval
    (:func:`delta_v_bootstrap` with the true classes as the "before" predictions). On a test
    split balanced over class × value V(true) = 0, so the excess is the bias the model adds.
    ``group_name`` holds the attribute's name; samples with ``attr < 0`` are left out. V is
    biased upwards in small samples (and V(true) is fixed under the stratified resampling),
    so with few images and a small V the percentile interval can lie above the estimate;
    V is NaN when every image gets the same prediction; ``note`` then says so (the table's
    completeness check counts a NaN with a note as reported)."""
    d = delta_v_bootstrap(labels, pred, labels, attr, n_boot=n_boot, seed=seed)
    known = np.asarray(attr) >= 0
    note = ""
    if np.unique(np.asarray(pred)[known]).size < 2:
        note = "V undefined: the method predicts the same class for every image"
    base = {"method": method, "split": split, "group_name": attribute, "n": int(d["n"]),
            "note": note}  # fmt: skip
    nan = float("nan")
    return [
        {**base, "metric": "protected_v", "value": float(d["v_after"]), "ci_low": nan,
         "ci_high": nan},
        {**base, "metric": "protected_v_excess", "value": float(d["delta_v"]),
         "ci_low": float(d["ci_low"]), "ci_high": float(d["ci_high"])},
    ]  # fmt: skip
