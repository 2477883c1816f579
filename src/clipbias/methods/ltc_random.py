"""LTC-random control (METHODS §4.9, §7.2, §9 #5): mean-ablate |S| random heads and
accept-project |Y| random heads, drawn from the model's last layers (excluding S for the S
draw and Y for the Y draw), many seeded draws; LTC's result is compared with their
distribution.

Vectorised: every head edit is additive in the embedding, so it is additive in the logits.
Per batch, the logit change of ablating, of projecting, and of ablating-then-projecting each
pool head is computed once ([P, n, C]); a draw's logits are the base logits plus the changes
of its heads. The draws (head sets) are the same as drawing one set at a time with
``numpy.random.default_rng(seed)``: first the S draw, then the Y draw, per draw.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from clipbias import metrics
from clipbias.methods.heads import HeadId, all_heads, head_position, head_str, parse_head
from clipbias.methods.ltc import _ablation_values, accept_coefficients, accept_in_subspace

log = logging.getLogger(__name__)

RANDOM_COLUMNS = ["draw", "S", "Y", "avg_acc", "avg_group_acc", "worst_group_acc", "gap"]
RANDOM_METRICS = ("avg_acc", "avg_group_acc", "worst_group_acc", "gap")
# Budget (bytes) for the per-batch logit changes of the pool heads.
_DELTA_BYTES = 256 * 2**20


def draw_head_sets(
    pool: Sequence[HeadId],
    spurious: Iterable[str | HeadId],
    salient: Iterable[str | HeadId],
    n_draws: int,
    seed: int,
) -> list[tuple[list[HeadId], list[HeadId]]]:
    """``n_draws`` pairs (random S', random Y'): |S'| = |S| from ``pool`` minus S, |Y'| = |Y|
    from ``pool`` minus Y, without replacement, ``numpy.random.default_rng(seed)``."""
    s_set = {parse_head(h) for h in spurious}
    y_set = {parse_head(h) for h in salient}
    pool_s = [h for h in pool if h not in s_set]
    pool_y = [h for h in pool if h not in y_set]
    if len(pool_s) < len(s_set) or len(pool_y) < len(y_set):
        raise ValueError("random-head pool is smaller than the head sets")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n_draws)):
        rs = [pool_s[i] for i in rng.choice(len(pool_s), size=len(s_set), replace=False)]
        ry = [pool_y[i] for i in rng.choice(len(pool_y), size=len(y_set), replace=False)]
        out.append((rs, ry))
    return out


def _batch_draw_predictions(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    classifier: np.ndarray,
    sets: Sequence[tuple[list[HeadId], list[HeadId]]],
    pool: Sequence[HeadId],
    q_basis: np.ndarray | None,
    means: np.ndarray | None,
    ablation: str,
    scale_preserving: bool,
    candidates: np.ndarray | None,
) -> np.ndarray:
    """[n_draws, n] predictions of every draw on one batch (see module doc).

    A head's accept projection changes the logits by ``(s - 1) (v W) + d (Q^T W)``
    (:func:`clipbias.methods.ltc.accept_in_subspace`), so one product of the head with
    ``[W | Q]`` gives its ablation and projection changes."""
    w = np.asarray(classifier, dtype=np.float64)
    base = (heads.sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest, np.float64)) @ w
    pos = {h: k for k, h in enumerate(pool)}
    need_y = any(ry for _, ry in sets)
    values = _ablation_values(heads, means, ablation) if any(rs for rs, _ in sets) else None
    n, c = base.shape
    if need_y:
        q = np.asarray(q_basis, dtype=np.float64)
        wq = np.concatenate([w, q], axis=1)  # [D, C + K]
        qw = q.T @ w  # [K, C]
    else:
        wq = w
    d_abl = np.zeros((len(pool), n, c))
    d_acc = np.zeros((len(pool), n, c))
    d_both = np.zeros((len(pool), 1, c))
    for h, k in pos.items():
        li, hh = head_position(h, layers)
        v = heads[:, li, hh, :].astype(np.float64)
        proj = v @ wq  # [n, C (+ K)]: logits and insight projections of the head
        vw = proj[:, :c]
        if values is not None:
            val = values[li, hh].astype(np.float64)
            d_abl[k] = val @ w - vw
        if need_y:
            s_, d_ = accept_coefficients(proj[:, c:], np.einsum("nd,nd->n", v, v), scale_preserving)
            d_acc[k] = (s_[:, None] - 1.0) * vw + d_ @ qw
            if values is not None:
                # ablated, then projected from its ablated value: accept(v) - v on top
                sv, dv, _ = accept_in_subspace(val[None], q, scale_preserving)
                d_both[k, 0] = (sv[0] - 1.0) * (val @ w) + dv[0] @ qw
    out = np.empty((len(sets), n), dtype=np.int64)
    for j, (rs, ry) in enumerate(sets):
        logit = base.copy()
        for h in rs:
            logit += d_abl[pos[h]]
        for h in ry:
            logit += d_acc[pos[h]] if h not in rs else d_both[pos[h]]
        out[j] = _argmax(logit, candidates)
    return out


def _argmax(logit: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
    if candidates is None:
        return np.argmax(logit, axis=1)
    cand = np.asarray(candidates, dtype=np.int64)
    sub = np.take_along_axis(logit, cand, axis=1)
    return cand[np.arange(len(cand)), np.argmax(sub, axis=1)]


def draw_predictions(
    batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    layers: Sequence[int],
    classifier: np.ndarray,
    sets: Sequence[tuple[list[HeadId], list[HeadId]]],
    q_basis: np.ndarray | None,
    means: np.ndarray | None,
    ablation: str = "mean",
    scale_preserving: bool = False,
) -> np.ndarray:
    """[n_draws, N] predictions of every draw over a stream of ``(heads, rest, candidates)``."""
    layers = [int(x) for x in layers]
    pool = list(dict.fromkeys(h for rs, ry in sets for h in (*rs, *ry)))
    if any(ry for _, ry in sets) and q_basis is None:
        raise ValueError("random salient heads need q_basis (insight_basis)")
    parts = []
    for heads, rest, cand in batches:
        n_classes = np.asarray(classifier).shape[1]
        step = max(1, _DELTA_BYTES // (8 * 2 * max(len(pool), 1) * n_classes))
        for s in range(0, len(heads), step):
            sl = slice(s, s + step)
            parts.append(
                _batch_draw_predictions(
                    heads[sl],
                    rest[sl],
                    layers,
                    classifier,
                    sets,
                    pool,
                    q_basis,
                    means,
                    ablation,
                    scale_preserving,
                    None if cand is None else cand[sl],
                )  # fmt: skip
            )
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(sets), 0), np.int64)


def draws_table(
    preds: np.ndarray,
    sets: Sequence[tuple[Sequence[str | HeadId], Sequence[str | HeadId]]],
    labels: np.ndarray,
    groups: np.ndarray | None,
) -> pd.DataFrame:
    """One row per draw: ``draw, S, Y`` (``";"``-joined head ids) and the point metrics."""
    rows = []
    for k, ((rs, ry), p) in enumerate(zip(sets, preds, strict=True)):
        rows.append(
            {
                "draw": k,
                "S": ";".join(head_str(parse_head(h)) for h in rs),
                "Y": ";".join(head_str(parse_head(h)) for h in ry),
                **metrics.point_metrics(p, labels, groups),
            }
        )
    cols = [c for c in RANDOM_COLUMNS if not rows or c in rows[0]]
    return pd.DataFrame(rows, columns=cols)


def ltc_random(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    classifier: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    spurious: Sequence[str | HeadId],
    salient: Sequence[str | HeadId],
    q_basis: np.ndarray | None,
    means: np.ndarray | None,
    n_draws: int = 100,
    seed: int = 42,
    pool_layers: Sequence[int] | None = None,
    ablation: str = "mean",
    scale_preserving: bool = False,
    candidates: np.ndarray | None = None,
) -> pd.DataFrame:
    """LTC-random on in-memory arrays: one row per draw (``draw, S, Y`` and the point
    metrics ``avg_acc`` and, with groups, ``avg_group_acc, worst_group_acc, gap``).

    ``pool_layers`` defaults to the last 4 stored layers (pass the model's last 4 layer
    numbers explicitly if more are stored). Summarise with :func:`random_control_summary`.
    """
    heads = np.asarray(heads)
    layers = [int(x) for x in layers]
    pool_layers = sorted(layers)[-4:] if pool_layers is None else [int(x) for x in pool_layers]
    pool = all_heads(pool_layers, heads.shape[2])
    for h in pool:
        head_position(h, layers)  # raises if a pool layer is not stored
    sets = draw_head_sets(pool, spurious, salient, n_draws, seed)
    preds = draw_predictions(
        iter([(heads, rest, candidates)]), layers, classifier, sets, q_basis, means, ablation,
        scale_preserving,
    )  # fmt: skip
    return draws_table(preds, sets, labels, groups)


def random_metric_rows(draws: pd.DataFrame, split: str, method: str = "ltc_random") -> pd.DataFrame:
    """The rows of the tidy metrics table for a random control: per metric the mean of the
    draws, with the 2.5-97.5 % range of the draws as interval (columns ``method, split,
    metric, value, ci_low, ci_high, n``)."""
    rows = [
        {
            "method": method,
            "split": split,
            "metric": m,
            "value": float(draws[m].mean()),
            "ci_low": float(draws[m].quantile(0.025)),
            "ci_high": float(draws[m].quantile(0.975)),
            "n": len(draws),
        }
        for m in RANDOM_METRICS
        if m in draws
    ]
    return pd.DataFrame(rows)


def random_control_summary(
    draws: pd.DataFrame,
    observed: Mapping[str, float],
    lower_is_better: Iterable[str] = ("gap",),
) -> pd.DataFrame:
    """Summary of random-head draws vs the observed (identified-heads) metrics.

    Columns ``metric, observed, mean, sd, p05, p95, percentile, p_value, n_draws``:
    ``percentile`` = 100 * (#{draw < obs} + 0.5 #{draw = obs}) / n (mid-rank percentile of
    the observed value among the draws); ``p_value`` = (1 + #{draw at least as good as
    obs}) / (n + 1), "good" meaning higher except for metrics in ``lower_is_better``.
    """
    lower = set(lower_is_better)
    rows = []
    for metric, obs in observed.items():
        if metric not in draws.columns:
            continue
        x = draws[metric].to_numpy(dtype=np.float64)
        n = len(x)
        pct = 100.0 * (np.sum(x < obs) + 0.5 * np.sum(x == obs)) / n
        as_good = np.sum(x <= obs) if metric in lower else np.sum(x >= obs)
        rows.append(
            (
                metric,
                float(obs),
                float(x.mean()),
                float(x.std(ddof=1)) if n > 1 else float("nan"),
                float(np.quantile(x, 0.05)),
                float(np.quantile(x, 0.95)),
                float(pct),
                float((1 + as_good) / (n + 1)),
                n,
            )
        )
    cols = ["metric", "observed", "mean", "sd", "p05", "p95", "percentile", "p_value", "n_draws"]
    return pd.DataFrame(rows, columns=cols)


def draw_predictions_per_class(
    batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    layers: Sequence[int],
    classifier: np.ndarray,
    sets: Sequence[tuple[list[HeadId], list[HeadId]]],
    plan: Mapping[int, Mapping],
    means: np.ndarray | None,
    ablation: str = "mean",
) -> np.ndarray:
    """:func:`draw_predictions` with the accept basis of each row's pseudo-class (its
    zero-shot prediction; ``plan`` of :func:`clipbias.methods.ltc.per_class_plan`), as LTC's
    ``insight: per_class``; rows whose class has no basis get only the S draw ablated. The
    random Y heads are the same for every class."""
    no_y = [(rs, []) for rs, _ in sets]
    parts = []
    for heads, rest, cand in batches:
        base = heads.sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest, np.float64)
        pseudo = _argmax(base @ np.asarray(classifier, np.float64), cand)
        out = np.empty((len(sets), len(heads)), dtype=np.int64)
        for c in np.unique(pseudo):
            rows = pseudo == c
            q = (plan.get(int(c)) or {}).get("basis")
            out[:, rows] = draw_predictions(
                iter([(heads[rows], rest[rows], None if cand is None else cand[rows])]),
                layers, classifier, sets if q is not None else no_y, q, means, ablation,
            )  # fmt: skip
        parts.append(out)
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(sets), 0), np.int64)


def predict(
    ctx,
    n_draws: int = 100,
    last_layers: int = 4,
    ablation_stats: str = "locate",
    insight: str = "global",
):  # -> MethodOutput
    """Registered method ``ltc_random``: draws compared with LTC's located S and Y
    (``insight`` as LTC's: one accept basis, or the basis of each image's pseudo-class)."""
    from clipbias.methods.api import MethodOutput
    from clipbias.methods.ltc import INSIGHT, class_plan_from_context, heads_of

    if insight not in INSIGHT:
        raise ValueError(f"insight must be one of {INSIGHT}, got {insight!r}")
    s, y = heads_of(ctx.located["ltc"])
    pool_layers = ctx.last_layers(last_layers)
    if len(pool_layers) < min(int(last_layers), ctx.n_layers):
        raise ValueError(
            f"LTC-random draws from the last {last_layers} layers but only {pool_layers} are "
            "stored; set features.layers to store them"
        )
    pool = all_heads(pool_layers, ctx.features.n_heads)
    sets = draw_head_sets(pool, s, y, n_draws, ctx.seed)
    means = ctx.ablation_means(ablation_stats) if s else None
    batches = ((h, r, ctx.candidates(idx)) for idx, h, r in ctx.batches())
    if insight == "per_class" and y:
        plan = class_plan_from_context(ctx, ctx.located["ltc"], y)
        preds = draw_predictions_per_class(batches, ctx.layers, ctx.classifier, sets, plan, means)
    else:
        q = ctx.basis("accept_pos", "accept_neg") if y else None
        preds = draw_predictions(batches, ctx.layers, ctx.classifier, sets, q, means)
    meta = [
        {"spurious": [head_str(h) for h in rs], "salient": [head_str(h) for h in ry]}
        for rs, ry in sets
    ]
    return MethodOutput(
        None,
        {
            "pool_layers": pool_layers,
            "seed": ctx.seed,
            "spurious": s,
            "salient": y,
            "insight": insight,
        },
        draws=preds,
        draw_meta=meta,
    )
