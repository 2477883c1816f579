"""TextSpan: greedy text descriptions of a head's output space (METHODS §3).

For one head with contributions ``C`` [K, D] and a pool of text embeddings ``R`` [M, D]:

1. restrict the texts to the top-``rank`` right singular subspace of the *uncentred* ``C``;
2. centre ``C``;
3. greedily pick the text whose projections have the largest standard deviation over images
   (unnormalised texts, as in the reference), remove that direction from the head (deflation)
   and from every text; repeat ``m`` times.

Computation is carried out exactly, but in ``rank``-dimensional coordinates of the subspace
(everything the algorithm touches lives there), with float64 accumulation. The variance
explained (§3.4) uses ``V0 = ||C_c||_F^2`` of the full centred head, including its part outside
the subspace, so the cumulative VE reaches 1 only if the texts span the whole head.

Also the bias-augmented statistics of §3.7 (audit paper, reconstruction).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .heads import head_str

if TYPE_CHECKING:
    from clipbias.streaming import HeadMoments

log = logging.getLogger(__name__)

DEFAULT_RANK = 80  # reference value (parity); METHODS recommends head_dim + 2
DEFAULT_M = 60

TABLE_COLUMNS = ["layer", "head", "head_id", "rank", "text_index", "text", "ve", "cum_ve"]


def default_rank(head_dim: int) -> int:
    """Recommended subspace rank ``d_h + 2`` (METHODS §3.3 / §9 #25)."""
    return int(head_dim) + 2


def _right_singular(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared singular values (descending) and right singular vectors [D, k] of ``C``.

    For tall ``C`` (K >= D) via the eigendecomposition of the D x D Gram matrix C^T C (same
    vectors, ~3x faster than a thin SVD of a 5000 x 512 matrix); otherwise a thin SVD.
    """
    C = np.asarray(C, dtype=np.float64)
    if C.shape[0] >= C.shape[1]:
        return _gram_eig(C.T @ C)
    _, s, vt = np.linalg.svd(C, full_matrices=False)
    return s**2, vt.T


def _gram_eig(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a Gram matrix C^T C."""
    w, v = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1]
    return np.clip(w[order], 0.0, None), v[:, order]


def _rank_from_energy(e: np.ndarray, energy: float) -> int:
    tot = float(e.sum())
    if tot <= 0:
        return 1
    return int(min(np.searchsorted(np.cumsum(e) / tot, energy - 1e-12) + 1, len(e)))


def choose_rank(
    contributions: np.ndarray, energy: float = 0.999, max_rank: int | None = None
) -> int:
    """Smallest ``r`` whose top-``r`` singular values of the *uncentred* ``C`` hold ``energy``
    of ``||C||_F^2``; optionally capped at ``max_rank``."""
    e, _ = _right_singular(contributions)
    r = _rank_from_energy(e, energy)
    return min(r, max_rank) if max_rank is not None else r


@dataclass
class TextSpanResult:
    """Output of :func:`textspan` for one head.

    ``indices`` [m'] chosen text indices in order (m' <= m; shorter only when no remaining
    text carries variance, e.g. m > rank: the reference would then pick noise-level texts); ``ve`` [m'] per-text share VE_i; ``cum_ve`` [m'] cumulative VE;
    ``reconstruction`` [K, D] = mean + sum_i a_i u_i (float32) or None; ``total_variance`` V0;
    ``rank`` the subspace rank used; ``mean`` [D] and ``directions`` [m', D] (the deflated
    texts u_i, mutually orthogonal) let :meth:`reconstruct` rebuild Ĉ for any rows, e.g. in
    a second streamed pass after :func:`textspan_from_moments`.
    """

    indices: np.ndarray
    ve: np.ndarray
    cum_ve: np.ndarray
    reconstruction: np.ndarray | None
    total_variance: float
    rank: int
    mean: np.ndarray | None = None
    directions: np.ndarray | None = None

    def reconstruct(self, contributions: np.ndarray) -> np.ndarray:
        """Ĉ = μ_C + Σ_i a_i u_i for rows ``contributions`` [K, D] (float32).

        The chosen u_i are mutually orthogonal (each text is deflated by the earlier ones),
        so a_i = (C - μ_C) u_i / <u_i, u_i> and Ĉ is μ_C plus the projection of the centred
        rows onto span(u_1..u_m'), the same as :func:`textspan`'s reconstruction.
        """
        if self.mean is None or self.directions is None:
            raise ValueError("this TextSpanResult has no mean/directions to reconstruct from")
        C = np.asarray(contributions, dtype=np.float64)
        out = np.broadcast_to(self.mean, C.shape).copy()
        if len(self.directions):
            U = self.directions
            out += ((C - self.mean) @ U.T / np.sum(U**2, axis=1)) @ U
        return out.astype(np.float32)


def textspan(
    contributions: np.ndarray,
    text_emb: np.ndarray,
    m: int = DEFAULT_M,
    rank: int | None = DEFAULT_RANK,
    energy: float = 0.999,
    normalize_texts: bool = True,
    reconstruct: bool = True,
) -> TextSpanResult:
    """Run TextSpan (METHODS §3.3-3.4) on one head.

    Parameters
    ----------
    contributions : [K, D] head contributions over K images.
    text_emb : [M, D] text embeddings of single descriptions (no template).
    m : number of greedy iterations.
    rank : subspace rank r (clipped to min(K, D)); ``None`` chooses it with
        :func:`choose_rank` at the given ``energy``.
    normalize_texts : L2-normalise the text rows first (the pool is defined normalised).
    reconstruct : also return the reconstruction ``Ĉ`` [K, D].
    """
    C = np.asarray(contributions, dtype=np.float64)
    R = np.asarray(text_emb, dtype=np.float64)
    if C.ndim != 2 or R.ndim != 2 or C.shape[1] != R.shape[1]:
        raise ValueError(f"shape mismatch: contributions {C.shape}, texts {R.shape}")
    K, _ = C.shape
    if normalize_texts:
        nrm = np.linalg.norm(R, axis=1, keepdims=True)
        R = R / np.where(nrm > 0, nrm, 1.0)

    # 1. subspace of the uncentred contributions
    e, vecs = _right_singular(C)
    r = _rank_from_energy(e, energy) if rank is None else int(rank)
    r = max(1, min(r, K, C.shape[1]))
    V = vecs[:, :r]  # [D, r], orthonormal columns
    Rr = R @ V  # texts in subspace coordinates (R V V^T expressed in the basis V)

    # 2. centre
    mu = C.mean(axis=0)
    Cc_full = C - mu
    v0 = float(np.sum(Cc_full**2))
    Cc = Cc_full @ V  # [K, r]; the part outside span(V) is never touched

    # 3. greedy loop
    chosen: list[int] = []
    ve: list[float] = []
    coeffs: list[np.ndarray] = []
    dirs: list[np.ndarray] = []
    denom = max(K - 1, 1)
    # stop when every remaining text is zero to numerical precision (pool or subspace spent)
    uu_tol = 1e-20 * max(float(np.max(np.sum(Rr**2, axis=1), initial=0.0)), 1e-300)
    var_tol = 1e-16 * max(float(np.sum(Cc**2)) / denom, 1e-300)
    for _ in range(int(m)):
        gram = Cc.T @ Cc  # [r, r]; sample variance of C_c r_j is r_j^T gram r_j / (K - 1)
        var = np.sum((Rr @ gram) * Rr, axis=1) / denom
        j = int(np.argmax(var))
        u = Rr[j].copy()
        uu = float(u @ u)
        if uu <= uu_tol or var[j] <= var_tol:
            log.warning(
                "TextSpan stopped after %d of %d texts: no remaining text carries variance",
                len(chosen), m,
            )  # fmt: skip
            break
        a = Cc @ u / uu  # [K]
        Cc -= np.outer(a, u)
        Rr -= np.outer(Rr @ u / uu, u)
        chosen.append(j)
        ve.append(float(a @ a) * uu / v0 if v0 > 0 else 0.0)
        coeffs.append(a)
        dirs.append(u)

    recon = None
    if reconstruct:
        recon = np.broadcast_to(mu, C.shape).copy()
        if chosen:
            A = np.stack(coeffs, axis=1)  # [K, m']
            U = np.stack(dirs, axis=0) @ V.T  # [m', D]
            recon += A @ U
        recon = recon.astype(np.float32)
    ve_arr = np.asarray(ve, dtype=np.float64)
    return TextSpanResult(
        indices=np.asarray(chosen, dtype=np.int64),
        ve=ve_arr,
        cum_ve=np.cumsum(ve_arr),
        reconstruction=recon,
        total_variance=v0,
        rank=r,
        mean=mu,
        directions=np.stack(dirs, axis=0) @ V.T if dirs else np.zeros((0, C.shape[1])),
    )


def textspan_from_moments(
    mean: np.ndarray,
    gram: np.ndarray,
    centred_gram: np.ndarray,
    count: int,
    text_emb: np.ndarray,
    m: int = DEFAULT_M,
    rank: int | None = DEFAULT_RANK,
    energy: float = 0.999,
    normalize_texts: bool = True,
) -> TextSpanResult:
    """:func:`textspan` from the head's sufficient statistics instead of its rows.

    ``mean`` [D] = μ_C, ``gram`` [D, D] = C^T C (uncentred), ``centred_gram`` [D, D] =
    C_c^T C_c, ``count`` = K (all float64, accumulated in one streamed pass by
    :class:`clipbias.streaming.HeadMoments`). The subspace of step 1 is the top eigenspace
    of C^T C (the right singular vectors of the uncentred C); the greedy criterion of step 3
    is r_j^T (C_c^T C_c) r_j / (K - 1), and deflating C_c by the chosen u turns its Gram
    matrix into P G P with P = I - u u^T / <u, u>; V0 = trace(C_c^T C_c). So the texts and
    VE equal :func:`textspan`'s (to rounding). ``reconstruction`` is None: call
    :meth:`TextSpanResult.reconstruct` on the rows (a second pass) when Ĉ is needed.
    """
    mean = np.asarray(mean, dtype=np.float64)
    G = np.asarray(gram, dtype=np.float64)
    Gc_full = np.asarray(centred_gram, dtype=np.float64)
    R = np.asarray(text_emb, dtype=np.float64)
    K = int(count)
    D = mean.shape[0]
    if G.shape != (D, D) or Gc_full.shape != (D, D) or R.ndim != 2 or R.shape[1] != D:
        raise ValueError(
            f"shape mismatch: mean {mean.shape}, gram {G.shape}, centred {Gc_full.shape}, "
            f"texts {R.shape}"
        )
    if K < 1:
        raise ValueError("TextSpan needs at least one row (count = 0)")
    if normalize_texts:
        nrm = np.linalg.norm(R, axis=1, keepdims=True)
        R = R / np.where(nrm > 0, nrm, 1.0)

    # 1. subspace of the uncentred contributions
    e, vecs = _gram_eig(G)
    r = _rank_from_energy(e, energy) if rank is None else int(rank)
    r = max(1, min(r, K, D))
    V = vecs[:, :r]
    Rr = R @ V

    # 2. centre: the centred rows in subspace coordinates have Gram V^T Gc V
    v0 = float(np.trace(Gc_full))
    Gc = V.T @ Gc_full @ V
    Gc = (Gc + Gc.T) / 2

    # 3. greedy loop on the Gram matrix
    chosen: list[int] = []
    ve: list[float] = []
    dirs: list[np.ndarray] = []
    denom = max(K - 1, 1)
    uu_tol = 1e-20 * max(float(np.max(np.sum(Rr**2, axis=1), initial=0.0)), 1e-300)
    var_tol = 1e-16 * max(float(np.trace(Gc)) / denom, 1e-300)
    for _ in range(int(m)):
        var = np.sum((Rr @ Gc) * Rr, axis=1) / denom
        j = int(np.argmax(var))
        u = Rr[j].copy()
        uu = float(u @ u)
        if uu <= uu_tol or var[j] <= var_tol:
            log.warning(
                "TextSpan stopped after %d of %d texts: no remaining text carries variance",
                len(chosen), m,
            )  # fmt: skip
            break
        gu = Gc @ u
        ugu = float(u @ gu)
        # ||a||^2 uu = u^T Gc u / uu with a = C_c u / uu
        ve.append(ugu / uu / v0 if v0 > 0 else 0.0)
        Gc = Gc - (np.outer(gu, u) + np.outer(u, gu)) / uu + np.outer(u, u) * (ugu / uu**2)
        Gc = (Gc + Gc.T) / 2
        Rr -= np.outer(Rr @ u / uu, u)
        chosen.append(j)
        dirs.append(u)
    ve_arr = np.asarray(ve, dtype=np.float64)
    return TextSpanResult(
        indices=np.asarray(chosen, dtype=np.int64),
        ve=ve_arr,
        cum_ve=np.cumsum(ve_arr),
        reconstruction=None,
        total_variance=v0,
        rank=r,
        mean=mean,
        directions=np.stack(dirs, axis=0) @ V.T if dirs else np.zeros((0, D)),
    )


def textspan_heads(
    heads: np.ndarray,
    layers: Sequence[int],
    text_emb: np.ndarray,
    texts: Sequence[str],
    m: int = DEFAULT_M,
    rank: int | None = DEFAULT_RANK,
    energy: float = 0.999,
    select: Iterable[tuple[int, int]] | None = None,
    return_reconstructions: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """TextSpan for every stored head (or the heads in ``select``).

    Returns a tidy DataFrame with columns ``layer, head, head_id, rank, text_index, text, ve,
    cum_ve`` (one row per chosen text; ``rank`` = 1-based position in the greedy order,
    ``head_id`` = ``"L{l}H{h}"``). With ``return_reconstructions`` also the reconstructed
    heads ``[N, L, H, D]`` float32 (heads not selected are copied unchanged).
    """
    heads = np.asarray(heads)
    n, n_layers, n_heads, _ = heads.shape
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer numbers for {n_layers} stored layers")
    if len(texts) != len(text_emb):
        raise ValueError(f"{len(texts)} texts but {len(text_emb)} text embeddings")
    layers = [int(x) for x in layers]
    wanted = (
        [(li, h) for li in range(n_layers) for h in range(n_heads)]
        if select is None
        else [(layers.index(int(lyr)), int(h)) for lyr, h in select]
    )
    recon = heads.astype(np.float32, copy=True) if return_reconstructions else None
    rows = []
    for li, h in wanted:
        res = textspan(
            heads[:, li, h, :],
            text_emb,
            m=m,
            rank=rank,
            energy=energy,
            reconstruct=return_reconstructions,
        )
        rows += _table_rows(res, layers[li], h, texts)
        if recon is not None:
            recon[:, li, h, :] = res.reconstruction
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return (table, recon) if return_reconstructions else table


def _table_rows(res: TextSpanResult, layer: int, h: int, texts: Sequence[str]) -> list[tuple]:
    hid = head_str((layer, h))
    log.info(
        "TextSpan %s: rank %d, %d texts, VE %.3f",
        hid,
        res.rank,
        len(res.indices),
        res.cum_ve[-1] if len(res.cum_ve) else 0.0,
    )
    return [
        (layer, h, hid, pos + 1, int(j), texts[int(j)], v, cv)
        for pos, (j, v, cv) in enumerate(zip(res.indices, res.ve, res.cum_ve, strict=True))
    ]


def textspan_heads_from_moments(
    moments: HeadMoments,
    text_emb: np.ndarray,
    texts: Sequence[str],
    m: int = DEFAULT_M,
    rank: int | None = DEFAULT_RANK,
    energy: float = 0.999,
    select: Iterable[tuple[int, int]] | None = None,
) -> tuple[pd.DataFrame, dict[tuple[int, int], TextSpanResult]]:
    """:func:`textspan_heads` from streamed per-head moments (one pass over the rows,
    memory O(batch + L·H·D²); :func:`clipbias.streaming.head_moments`).

    Returns the same table, plus every head's :class:`TextSpanResult` by ``(layer, head)``
    (``reconstruct`` them in a second pass if needed).
    """
    if len(texts) != len(text_emb):
        raise ValueError(f"{len(texts)} texts but {len(text_emb)} text embeddings")
    layers = [int(x) for x in moments.layers]
    wanted = (
        [(li, h) for li in range(len(layers)) for h in range(moments.n_heads)]
        if select is None
        else [(layers.index(int(lyr)), int(h)) for lyr, h in select]
    )
    rows: list[tuple] = []
    results: dict[tuple[int, int], TextSpanResult] = {}
    for li, h in wanted:
        res = textspan_from_moments(
            moments.mean(li, h),
            moments.gram(li, h),
            moments.centred_gram(li, h),
            moments.count,
            text_emb,
            m=m,
            rank=rank,
            energy=energy,
        )
        rows += _table_rows(res, layers[li], h, texts)
        results[(layers[li], h)] = res
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), results


# ---------------------------------------------------------------------------------------------
# Bias-augmented TextSpan (METHODS §3.7, reconstruction)
# ---------------------------------------------------------------------------------------------


def augment_pool(general: Sequence[str], bias: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """R+ = general ∪ bias (order kept, duplicates dropped). Returns (texts, is_bias [M] bool).

    A text present in both lists counts as a bias text.
    """
    bias_set = {t.strip() for t in bias}
    seen: set[str] = set()
    out: list[str] = []
    for t in list(general) + list(bias):
        t = t.strip()
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out, np.array([t in bias_set for t in out], dtype=bool)


BIAS_COLUMNS = [
    "layer",
    "head",
    "head_id",
    "ve_total",
    "bias_ve",
    "bias_share",
    "first_bias_rank",
    "n_bias_top",
    "flagged",
]


def bias_textspan_stats(
    table: pd.DataFrame,
    bias_texts: Iterable[str],
    top_k: int = 10,
    first_rank_max: int = 5,
    share_quantile: float = 0.95,
) -> pd.DataFrame:
    """Per-head bias statistics from a :func:`textspan_heads` table (METHODS §3.7, step 3-4).

    Columns ``layer, head, head_id, ve_total, bias_ve, bias_share, first_bias_rank,
    n_bias_top, flagged``:

    * ``ve_total`` = VE(m); ``bias_ve`` = sum of VE_i over bias texts;
      ``bias_share`` = bias_ve / VE(m) (0 when VE(m) = 0);
    * ``first_bias_rank`` = 1-based rank of the first bias text (``inf`` if none);
    * ``n_bias_top`` = number of bias texts among the first ``top_k``;
    * ``flagged`` = first_bias_rank <= ``first_rank_max`` or bias_share > the
      ``share_quantile`` quantile of bias_share over all heads in the table.
    """
    bias_set = {t.strip() for t in bias_texts}
    df = table.sort_values(["layer", "head", "rank"])
    rows = []
    for (layer, head), g in df.groupby(["layer", "head"], sort=True):
        is_b = g["text"].str.strip().isin(bias_set).to_numpy()
        ranks = g["rank"].to_numpy()
        ve = g["ve"].to_numpy(dtype=np.float64)
        tot = float(ve.sum())
        bve = float(ve[is_b].sum())
        first = float(ranks[is_b].min()) if is_b.any() else math.inf
        rows.append(
            (
                int(layer),
                int(head),
                head_str((layer, head)),
                tot,
                bve,
                bve / tot if tot > 0 else 0.0,
                first,
                int(np.sum(is_b & (ranks <= top_k))),
            )
        )
    out = pd.DataFrame(rows, columns=BIAS_COLUMNS[:-1])
    thr = float(np.quantile(out["bias_share"], share_quantile)) if len(out) else 0.0
    out["flagged"] = (out["first_bias_rank"] <= first_rank_max) | (out["bias_share"] > thr)
    return out
