"""Bias-augmented TextSpan (METHODS §3.7, §6.5): TextSpan (§3.3) of each candidate head on the
augmented pool R⁺ = R_general ∪ B_attr (:func:`augmented_pool`), then the per-head bias
statistics (:func:`bias_head_stats`): bias-variance share, first bias rank, bias texts among the
top k and the TextSpan flag. :func:`bias_textspan_from_moments` works from streamed per-head
moments, :func:`bias_textspan` from in-memory heads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..texts import unit_rows
from ..textspan import (
    DEFAULT_RANK,
    augment_pool,
    bias_textspan_stats,
    textspan_heads,
    textspan_heads_from_moments,
)
from .params import DEFAULTS

log = logging.getLogger(__name__)


def augmented_pool(
    pool_texts: Sequence[str], pool_emb: np.ndarray, bias_texts: Sequence[str], bias_emb: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """R⁺ = general pool ∪ bias texts (METHODS §3.7 step 2), unit-norm embeddings."""
    lut = {t.strip(): e for t, e in zip(pool_texts, unit_rows(pool_emb), strict=True)}
    lut.update({t.strip(): e for t, e in zip(bias_texts, unit_rows(bias_emb), strict=True)})
    texts, _ = augment_pool(pool_texts, bias_texts)
    return texts, np.stack([lut[t] for t in texts])


def bias_head_stats(
    table: pd.DataFrame,
    bias_texts: Iterable[str],
    top_k: int = DEFAULTS["textspan"]["top_k"],
    first_rank_max: int = DEFAULTS["textspan"]["first_rank_max"],
    share_quantile: float = DEFAULTS["textspan"]["share_quantile"],
) -> pd.DataFrame:
    """Per-head bias statistics of a TextSpan table run on the augmented pool R⁺ = R_general ∪
    B_attr (METHODS §3.7 steps 3-4): :func:`clipbias.methods.textspan.bias_textspan_stats`,
    columns ``layer, head, head_id, ve_total, bias_ve, bias_share, first_bias_rank,
    n_bias_top, flagged``."""
    bias = [t.strip() for t in bias_texts]
    if not bias:
        raise ValueError("no bias texts given")
    if table.empty:
        raise ValueError("the TextSpan table is empty; run textspan_heads first")
    found = set(table["text"].str.strip())
    if not found & set(bias):
        log.warning("none of the %d bias texts was chosen by TextSpan for any head", len(bias))
    return bias_textspan_stats(table, bias, top_k, first_rank_max, share_quantile)


def bias_textspan(
    heads: Any,
    layers: Sequence[int] | None,
    pool_texts: Sequence[str],
    pool_emb: np.ndarray,
    bias_texts: Iterable[str],
    m: int = DEFAULTS["textspan"]["m"],
    rank: int | None = DEFAULT_RANK,
    energy: float = 0.999,
    select: Iterable[tuple[int, int]] | None = None,
    top_k: int = DEFAULTS["textspan"]["top_k"],
    first_rank_max: int = DEFAULTS["textspan"]["first_rank_max"],
    share_quantile: float = DEFAULTS["textspan"]["share_quantile"],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bias-augmented TextSpan (METHODS §3.7, §6.5): TextSpan (§3.3) per head on the augmented
    pool, then :func:`bias_head_stats`; returns ``(textspan table, bias statistics)``.

    ``heads``: the heads [N, L, H, D] of ``layers``, or (``layers=None``) their per-head
    moments (:class:`clipbias.streaming.HeadMoments`, accumulated batch by batch; TextSpan
    needs only each head's mean and Gram matrices, equal to rounding; see
    :func:`bias_textspan_from_moments`). ``pool_texts`` / ``pool_emb`` [M, D] are R⁺
    (:func:`augmented_pool`); every bias text must be in it. ``select`` restricts the heads
    (default all; METHODS default: the last 4 layers, on the locate half).
    """
    bias = [t.strip() for t in bias_texts]
    pool = [t.strip() for t in pool_texts]
    absent = sorted(set(bias) - set(pool), key=bias.index)
    if absent:
        raise ValueError(
            f"{len(absent)} bias text(s) are not in the pool, e.g. {absent[:3]}; build the "
            "pool with augmented_pool(...) (clipbias.methods.textspan.augment_pool)"
        )
    span = {"m": m, "rank": rank, "energy": energy, "select": select}
    if layers is None:
        table, _ = textspan_heads_from_moments(heads, pool_emb, pool, **span)
    else:
        table = textspan_heads(heads, layers, pool_emb, pool, **span)
    return table, bias_head_stats(table, bias, top_k, first_rank_max, share_quantile)


def bias_textspan_from_moments(
    moments: Any,
    pool_texts: Sequence[str],
    pool_emb: np.ndarray,
    bias_texts: Iterable[str],
    **options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`bias_textspan` of the images whose per-head ``moments``
    (:class:`clipbias.streaming.HeadMoments`) were accumulated; ``options`` as there."""
    return bias_textspan(moments, None, pool_texts, pool_emb, bias_texts, **options)
