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

import numpy as np
import pandas as pd
from scipy import stats

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
    p = 1.0 if n == 0 else float(stats.binomtest(b, n, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "n_discordant": n, "pvalue": p}
