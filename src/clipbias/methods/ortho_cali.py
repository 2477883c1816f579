"""Ortho-Cali (Chuang et al. 2023, "Debiasing vision-language models via biased prompts";
METHODS §4.10): a debiased *text* classifier, applied to the zero-shot embedding.

Spurious prompts span a subspace that is projected out (P0); candidate prompt pairs that
should become indistinguishable calibrate the projection (G = λM + I, Π = P0 G^{-1}).
Prompts, pairs and λ come from the dataset's text file (``ortho_cali``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipbias.methods.api import Correction, MethodContext, MethodOutput, apply_correction


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


def fit(ctx: MethodContext, orientation: str = "original") -> Correction:
    """The debiased classifier as a fitted :class:`Correction` (alone, and as a step)."""
    spec = ctx.text_spec.get("ortho_cali", {}) or {}
    candidates = ctx.text_roles("ortho_candidate")
    if not len(ctx.text_roles("ortho_spurious")[0]):
        raise ValueError("Ortho-Cali needs ortho_cali.spurious prompts in the dataset text file")
    clf = ortho_cali(
        ctx.classifier,
        ctx.unit_texts("ortho_spurious"),
        ctx.unit_texts("ortho_candidate") if len(candidates[0]) else None,
        [tuple(p) for p in spec.get("pairs", [])],
        lam=float(spec.get("lambda", 1000.0)),
        orientation=orientation,
    )
    return Correction(classifier=clf, meta={"orientation": orientation})


def predict(ctx: MethodContext, orientation: str = "original") -> MethodOutput:
    return apply_correction(ctx, fit(ctx, orientation))
