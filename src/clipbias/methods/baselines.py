"""Baselines compared with LTC on the same stored decomposition (METHODS §4.9-4.10).

* zero-shot predictions;
* Ortho-Cali (debiased text classifier, §4.10);
* RoboShot on the full embedding (reject then accept, or accept only);
* TextSpan-ablation (mean-ablate heads whose TextSpan texts mention the spurious attribute);
* Ablate-only, LTC-no-ablate;
* LTC-random: random head sets of the sizes of S and Y from the last layers, many draws.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import metrics
from . import HeadId, all_heads, head_position, head_str, parse_head
from .ltc import _normalise, accept_update, corrected_embeddings, ltc_correct, reject_update

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Zero-shot
# ---------------------------------------------------------------------------------------------


def zero_shot_embeddings(heads: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Σ ĉ_k = heads.sum((1, 2)) + rest, [N, D] float32."""
    emb = np.asarray(heads).sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest)
    return emb.astype(np.float32)


def zero_shot_predictions(
    heads: np.ndarray,
    rest: np.ndarray,
    classifier: np.ndarray,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Zero-shot predictions [N] int64 from the re-summed embedding."""
    return metrics.predict(zero_shot_embeddings(heads, rest), classifier, candidates)


# ---------------------------------------------------------------------------------------------
# Ortho-Cali (§4.10)
# ---------------------------------------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ortho_cali_projection(
    spurious_emb: np.ndarray,
    candidate_emb: np.ndarray | None = None,
    pairs: Sequence[tuple[int, int]] = (),
    lam: float = 1000.0,
) -> np.ndarray:
    """Calibrated projection Π = P0 G^{-1} [D, D] (METHODS §4.10, steps 1-3).

    ``spurious_emb`` A [n, D] and ``candidate_emb`` Z [M, D] are L2-normalised here.
    P0 = I - B B^T with B an orthonormal basis of A's row space (SVD, n components;
    numerically null components dropped). M = mean over ``pairs`` (i, j) of
    (z_i - z_j)(z_i - z_j)^T (zero without pairs); G = λ M + I.
    """
    a = _unit_rows(spurious_emb)
    d = a.shape[1]
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    keep = s > s.max() * 1e-10
    b = vt[keep].T  # [D, n']
    p0 = np.eye(d) - b @ b.T
    m = np.zeros((d, d))
    pairs = list(pairs)
    if pairs:
        if candidate_emb is None:
            raise ValueError("pairs given without candidate embeddings")
        z = _unit_rows(candidate_emb)
        diffs = np.stack([z[i] - z[j] for i, j in pairs])  # [P, D]
        m = diffs.T @ diffs / len(pairs)
    g = lam * m + np.eye(d)
    return p0 @ np.linalg.inv(g)


def ortho_cali(
    classifier: np.ndarray,
    spurious_emb: np.ndarray,
    candidate_emb: np.ndarray | None = None,
    pairs: Sequence[tuple[int, int]] = (),
    lam: float = 1000.0,
    orientation: str = "original",
    renormalize: bool = True,
) -> np.ndarray:
    """Ortho-Cali debiased classifier [D, C] (METHODS §4.10).

    Row-vector convention: ``orientation="original"`` maps t -> t Π^T (Chuang et al. code,
    default), ``orientation="ltc"`` maps t -> t Π (LTC code, parity switch). Columns are
    renormalised unless ``renormalize=False``.
    """
    pi = ortho_cali_projection(spurious_emb, candidate_emb, pairs, lam)
    t = np.asarray(classifier, dtype=np.float64)  # columns t_c, i.e. rows of t^T
    if orientation == "original":
        out = pi @ t  # (t Π^T)^T = Π t
    elif orientation == "ltc":
        out = pi.T @ t  # (t Π)^T = Π^T t
    else:
        raise ValueError(f"orientation must be 'original' or 'ltc', got {orientation!r}")
    if renormalize:
        out = out / np.linalg.norm(out, axis=0, keepdims=True)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# RoboShot on the full embedding
# ---------------------------------------------------------------------------------------------


def roboshot(
    embeddings: np.ndarray,
    q_reject: np.ndarray | None = None,
    q_accept: np.ndarray | None = None,
    mode: str = "both",
    normalize_first: bool = True,
) -> np.ndarray:
    """RoboShot on full embeddings [N, D] (METHODS §4.7): ``mode="both"`` applies every
    reject step (``q_reject`` [D, Kr]) then every accept step (``q_accept`` [D, Ka]);
    ``mode="accept"`` applies the accept steps only. The embedding is L2-normalised first
    (``normalize_first``, as the original RoboShot code). Returns float32 [N, D]."""
    v = np.asarray(embeddings, dtype=np.float64)
    if normalize_first:
        v = _normalise(v)
    if mode not in ("both", "accept"):
        raise ValueError(f"mode must be 'both' or 'accept', got {mode!r}")
    if mode == "both" and q_reject is not None:
        v = reject_update(v, q_reject)
    if q_accept is not None:
        v = accept_update(v, q_accept)
    return v.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Head-ablation baselines
# ---------------------------------------------------------------------------------------------


def _word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    alts = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not alts:
        raise ValueError("no words given")
    body = "|".join(re.escape(w) for w in alts)
    return re.compile(rf"\b(?:{body})(?:s|es)?\b", re.IGNORECASE)


def select_textspan_heads(
    table: pd.DataFrame, words: Iterable[str], top_k: int = 10
) -> list[HeadId]:
    """Heads whose top-``top_k`` TextSpan texts mention any of ``words``.

    ``table`` is a :func:`clipbias.methods.textspan.textspan_heads` table. A text mentions a
    word if it contains it as a whole word, case-insensitively, optionally followed by a plural
    "s"/"es" ("lake" matches "Lakes at dawn" but not "lakeside"). Returns ``(layer, head)``
    sorted by layer then head.
    """
    pat = _word_pattern(words)
    top = table[table["rank"] <= top_k]
    hit = top["text"].map(lambda t: bool(pat.search(str(t))))
    heads = {(int(r.layer), int(r.head)) for r in top[hit].itertuples()}
    return sorted(heads)


def textspan_ablation(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    head_list: Iterable[str | HeadId],
    means: np.ndarray | None,
    ablation: str = "mean",
) -> np.ndarray:
    """TextSpan baseline: mean-ablate ``head_list`` (Appendix B or :func:`select_textspan_heads`)."""
    return ltc_correct(heads, rest, layers, head_list, [], None, means, ablation)


def ablate_only(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    spurious: Iterable[str | HeadId],
    means: np.ndarray | None,
    ablation: str = "mean",
) -> np.ndarray:
    """ "Ablate": mean-ablate S only."""
    return ltc_correct(heads, rest, layers, spurious, [], None, means, ablation)


def ltc_no_ablate(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    salient: Iterable[str | HeadId],
    q_basis: np.ndarray,
    scale_preserving: bool = False,
) -> np.ndarray:
    """ "LTC-no-ablate": accept-project the Y heads only."""
    return ltc_correct(heads, rest, layers, [], salient, q_basis, None, "mean", scale_preserving)


# ---------------------------------------------------------------------------------------------
# LTC-random
# ---------------------------------------------------------------------------------------------

RANDOM_COLUMNS = ["draw", "S", "Y", "avg_acc", "avg_group_acc", "worst_group_acc", "gap"]


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
    """LTC-random control (METHODS §4.9, §7.2): ``n_draws`` draws of |S| random heads to
    mean-ablate and |Y| random heads to accept-project.

    Heads are drawn without replacement from ``pool_layers`` (default: the last 4 stored
    layers; pass the model's last 4 layer numbers explicitly if more are stored), the S draw
    excluding S and the Y draw excluding Y, with ``numpy.random.default_rng(seed)``.
    Returns one row per draw: ``draw, S, Y`` (``";"``-joined ``"L{l}H{h}"``), ``avg_acc``
    and, with groups, ``avg_group_acc, worst_group_acc, gap``. Summarise with
    :func:`random_control_summary`.
    """
    heads = np.asarray(heads)
    n_heads = heads.shape[2]
    layers = [int(x) for x in layers]
    pool_layers = sorted(layers)[-4:] if pool_layers is None else [int(x) for x in pool_layers]
    pool = all_heads(pool_layers, n_heads)
    for h in pool:
        head_position(h, layers)  # raises if a pool layer is not stored
    s_set = {parse_head(h) for h in spurious}
    y_set = {parse_head(h) for h in salient}
    pool_s = [h for h in pool if h not in s_set]
    pool_y = [h for h in pool if h not in y_set]
    if len(pool_s) < len(s_set) or len(pool_y) < len(y_set):
        raise ValueError("random-head pool is smaller than the head sets")
    rng = np.random.default_rng(seed)
    base = heads.sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest, dtype=np.float64)
    rows = []
    for k in range(int(n_draws)):
        rs = [pool_s[i] for i in rng.choice(len(pool_s), size=len(s_set), replace=False)]
        ry = [pool_y[i] for i in rng.choice(len(pool_y), size=len(y_set), replace=False)]
        emb = corrected_embeddings(
            heads, layers, base, rs, ry, q_basis, means, ablation, scale_preserving
        )
        preds = metrics.predict(emb, classifier, candidates)
        pm = metrics.point_metrics(preds, labels, groups)
        rows.append(
            {
                "draw": k,
                "S": ";".join(head_str(h) for h in rs),
                "Y": ";".join(head_str(h) for h in ry),
                **pm,
            }
        )
    return pd.DataFrame(rows, columns=[c for c in RANDOM_COLUMNS if c in rows[0]])


RANDOM_METRICS = ("avg_acc", "avg_group_acc", "worst_group_acc", "gap")


def random_metric_rows(draws: pd.DataFrame, split: str) -> pd.DataFrame:
    """The ``ltc_random`` rows of the tidy metrics table: per metric the mean of the draws,
    with the 2.5-97.5 % range of the draws as interval (columns ``method, split, metric,
    value, ci_low, ci_high, n``)."""
    rows = [
        {
            "method": "ltc_random",
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
