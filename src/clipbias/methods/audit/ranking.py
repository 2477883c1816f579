"""Head ranking and selection (METHODS §6.6): candidates among the terminal layers
(:func:`terminal_layer_numbers`), the ranking (:func:`rank_heads`; ``cav`` by default,
``combined`` as a named variant), the top-k set (:func:`select_top_k`) and the greedy forward
choice of k on the locate half (:func:`greedy_select`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .ablation import LogitDeltas, VCalc, accuracy
from .params import DEFAULTS, check_ranking


def terminal_layer_numbers(
    layers: Sequence[int],
    terminal_layers: int = DEFAULTS["terminal_layers"],
    n_layers: int | None = None,
) -> list[int]:
    """The stored layers among the model's last ``terminal_layers`` layers (layer numbers >=
    ``n_layers − terminal_layers``; ``n_layers`` defaults to max(layers) + 1)."""
    layers = sorted(int(x) for x in layers)
    total = max(layers) + 1 if n_layers is None else int(n_layers)
    out = [lyr for lyr in layers if lyr >= total - int(terminal_layers)]
    if not out:
        raise ValueError(
            f"no stored layer among the last {terminal_layers} of {total} (stored: {layers})"
        )
    return out


RANK_COLUMNS = [
    "layer",
    "head",
    "head_id",
    "candidate",
    "cav_score",
    "bias_share",
    "flagged",
    "rank_cav",
    "rank_textspan",
    "combined_rank",
    "order",
]


def _desc_rank(x: np.ndarray) -> np.ndarray:
    """Rank 1 = largest; NaN ranks last (average ranks for ties)."""
    from scipy import stats

    x = np.where(np.isnan(x), -np.inf, x)
    return stats.rankdata(-x, method="average")


def rank_heads(
    scores: pd.DataFrame,
    bias_stats: pd.DataFrame | None,
    layers: Sequence[int],
    terminal_layers: int = DEFAULTS["terminal_layers"],
    n_layers: int | None = None,
    cav: str | None = None,
    cav_score: str = DEFAULTS["cav_score"],
    flagged_first: bool = DEFAULTS["flagged_first"],
    ranking: str = DEFAULTS["ranking"],
) -> pd.DataFrame:
    """Rank heads for ablation (METHODS §6.6).

    Candidates = heads of the last ``terminal_layers`` layers (:func:`terminal_layer_numbers`).
    Among them: ``rank_cav`` by ``cav_score`` (default |within-class d|) and ``rank_textspan``
    by bias-variance share (rank 1 = largest; heads without TextSpan statistics rank last),
    ``combined_rank`` = mean of the two (= ``rank_cav`` without ``bias_stats``). ``order``
    (1 = first to ablate) follows ``ranking``: ``"cav"`` (§6.6 item 5) sorts by ``rank_cav``;
    ``"combined"`` (item 2) sorts TextSpan-flagged heads first (``flagged_first``), then by
    combined rank; ties then by ``cav_score``. The TextSpan columns are filled whenever
    ``bias_stats`` is given. Scores of ``scores`` for one CAV (``cav`` picks it when the table
    holds several). Non-candidates are kept with ``order`` missing.

    Columns :data:`RANK_COLUMNS`, rows in ``order`` (candidates first).
    """
    df = scores
    if "cav" in df.columns and df["cav"].nunique() > 1:
        if cav is None:
            raise ValueError(f"scores hold several CAVs {sorted(df['cav'].unique())}; pass cav=")
        df = df[df["cav"] == cav]
    elif cav is not None and "cav" in df.columns and not (df["cav"] == cav).any():
        raise ValueError(f"no scores for CAV {cav!r}")
    if cav_score not in df.columns:
        raise ValueError(f"cav_score {cav_score!r} is not a score column ({list(df.columns)})")
    df = df[["layer", "head", "head_id", cav_score]].rename(columns={cav_score: "cav_score"})
    df = df.reset_index(drop=True)
    if bias_stats is not None:
        bs = bias_stats[["layer", "head", "bias_share", "flagged"]]
        df = df.merge(bs, on=["layer", "head"], how="left")
    else:
        df["bias_share"] = np.nan
        df["flagged"] = False
    df["flagged"] = df["flagged"].astype("boolean").fillna(False).astype(bool)
    term = set(terminal_layer_numbers(df["layer"].unique(), terminal_layers, n_layers))
    stored = {int(x) for x in layers}
    df["candidate"] = df["layer"].isin(term & stored)
    cand = df[df["candidate"]].copy()
    if cand.empty:
        raise ValueError("no candidate heads in the terminal layers")
    if cand["cav_score"].isna().all():
        raise ValueError(
            f"every candidate head has a NaN {cav_score}; with too few images per class use "
            "a smaller min_per_group or cav_score='abs_d'"
        )
    cand["rank_cav"] = _desc_rank(cand["cav_score"].to_numpy(dtype=np.float64))
    if bias_stats is not None:
        cand["rank_textspan"] = _desc_rank(cand["bias_share"].to_numpy(dtype=np.float64))
        cand["combined_rank"] = (cand["rank_cav"] + cand["rank_textspan"]) / 2.0
    else:
        cand["rank_textspan"] = np.nan
        cand["combined_rank"] = cand["rank_cav"]
    check_ranking(ranking)
    first = ["flagged"] if ranking == "combined" and flagged_first else []
    rank_col = "combined_rank" if ranking == "combined" else "rank_cav"
    keys = first + [rank_col, "cav_score", "layer", "head"]
    asc = [False] * len(first) + [True, False, False, True]
    cand = cand.sort_values(keys, ascending=asc, na_position="last")
    cand["order"] = np.arange(1, len(cand) + 1)
    rest = df[~df["candidate"]].copy()
    for col in ("rank_cav", "rank_textspan", "combined_rank"):
        rest[col] = np.nan
    rest["order"] = pd.NA
    out = pd.concat([cand, rest.sort_values(["layer", "head"])], ignore_index=True)
    out["order"] = out["order"].astype("Int64")
    return out[RANK_COLUMNS]


def select_top_k(ranking: pd.DataFrame, k: int = DEFAULTS["k"]) -> list[str]:
    """The first ``k`` candidate heads of :func:`rank_heads` (METHODS §6.6 step 3)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cand = ranking[ranking["candidate"]].sort_values("order")
    if len(cand) < k:
        raise ValueError(f"k = {k} but only {len(cand)} candidate heads")
    return cand["head_id"].head(k).tolist()


GREEDY_COLUMNS = [
    "step",
    "head_id",
    "accepted",
    "v_before",
    "v_after",
    "v_drop",
    "acc",
    "acc_drop",
]


def greedy_select(
    ranking: pd.DataFrame,
    engine: LogitDeltas,
    labels: np.ndarray,
    attr: np.ndarray,
    min_drop: float = DEFAULTS["greedy_min_drop"],
    max_acc_drop: float = DEFAULTS["greedy_max_acc_drop"],
    max_k: int | None = None,
    bias_correction: bool = False,
) -> tuple[list[str], pd.DataFrame]:
    """Greedy forward choice of k on the locate half (METHODS §6.6 step 3, [REC]).

    Walk the candidates in ranking order; add the next head while V(pred, attr) falls by at
    least ``min_drop`` relative to the current set and accuracy is at most ``max_acc_drop``
    (a fraction: 0.005 = 0.5 pp) below the un-ablated accuracy; stop at the first head that
    fails (or after ``max_k`` heads). ``engine`` holds the locate-half images with locate
    means and every candidate in its pool. Returns (heads, trace) with trace columns
    :data:`GREEDY_COLUMNS` (one row per head tried; ``acc_drop`` vs the un-ablated accuracy).
    """
    y = np.asarray(labels, dtype=np.int64)
    vcalc = VCalc(attr, engine.base.shape[1])
    cand = ranking[ranking["candidate"]].sort_values("order")["head_id"].tolist()
    chosen: list[str] = []
    v_cur = vcalc(engine.predict(), bias_correction)
    acc0 = accuracy(engine.predict(), y)
    rows = []
    for step, hid in enumerate(cand, start=1):
        if max_k is not None and len(chosen) >= max_k:
            break
        pred = engine.predict([*chosen, hid])
        v_new = vcalc(pred, bias_correction)
        acc = accuracy(pred, y)
        drop = v_cur - v_new
        ok = bool(drop >= min_drop - 1e-12 and acc0 - acc <= max_acc_drop + 1e-12)
        rows.append((step, hid, ok, v_cur, v_new, drop, acc, acc0 - acc))
        if not ok:
            break
        chosen.append(hid)
        v_cur = v_new
    return chosen, pd.DataFrame(rows, columns=GREEDY_COLUMNS)
