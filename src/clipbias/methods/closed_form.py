"""Closed-form debiasing (Lian et al., CVPR 2026; METHODS §10.6), with fixed synonym templates
instead of LLM-written group prompts ([REC]); no labels, no images are used to fit.

Group directions: for every group g (a value of the attribute), p_g = the normalised mean over
classes of the spherical mean (normalised mean of unit embeddings) of that class's group
prompts (:func:`clipbias.methods.texts.group_prompts`); A = an orthonormal basis of
{p_g − p_0}. Every unit embedding u, each image **and** each class text, is edited: with
e∥ = AAᵀu, e⊥ = u − e∥, n∥ = ‖e∥‖, n⊥ = ‖e⊥‖,

  E = n∥ + (1 − n⊥)/n∥,  α = (E − n⊥√(E² − n∥²))/(E² + n⊥²) clamped to [−1, 1],
  u* = normalise(√(1 − α²)·e⊥/n⊥ + α·e∥/n∥).

Embeddings are L2-normalised first; an embedding with no component in span A (n∥ ≈ 0) is
left as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clipbias.methods.api import Correction, MethodContext, apply_correction
from clipbias.methods.texts import texts_sha256, unit_rows


def group_directions(emb: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """p_g [G, D] from the group prompts' embeddings [G·C·V, D] (group, class, variant)."""
    g, c, v = shape
    u = unit_rows(emb).astype(np.float64).reshape(g, c, v, -1)
    per_class = unit_rows(u.mean(axis=2).reshape(g * c, -1)).reshape(g, c, -1)
    return unit_rows(per_class.mean(axis=1)).astype(np.float64)


def bias_basis(p: np.ndarray) -> np.ndarray:
    """Orthonormal basis A [D, r] of {p_g − p_0} (SVD; numerically null directions dropped)."""
    diffs = np.asarray(p, dtype=np.float64)[1:] - p[0]
    u, s, _ = np.linalg.svd(diffs.T, full_matrices=False)
    keep = s > max(s.max(), 1e-300) * 1e-10
    if not keep.any():
        raise ValueError("closed-form debiasing: the group directions coincide (no bias axis)")
    return u[:, keep]


def closed_form_edit(emb: np.ndarray, basis: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """u* of every row of ``emb`` [n, D] (module doc) -> [n, D] float64, unit rows."""
    u = np.asarray(emb, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    par = (u @ basis) @ basis.T
    perp = u - par
    n_par = np.linalg.norm(par, axis=1)
    n_perp = np.linalg.norm(perp, axis=1)
    ok = (n_par > eps) & (n_perp > eps)
    safe_par = np.where(ok, n_par, 1.0)
    safe_perp = np.where(ok, n_perp, 1.0)
    big_e = safe_par + (1.0 - safe_perp) / safe_par
    root = np.sqrt(np.maximum(big_e**2 - safe_par**2, 0.0))
    alpha = np.clip((big_e - safe_perp * root) / (big_e**2 + safe_perp**2), -1.0, 1.0)
    out = (
        np.sqrt(1.0 - alpha**2)[:, None] * perp / safe_perp[:, None]
        + alpha[:, None] * par / safe_par[:, None]
    )
    out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(ok[:, None], out, u)


def fit(ctx: MethodContext) -> Correction:
    from clipbias.methods.texts import group_prompts

    texts, raw = ctx.text_roles("group_prompt")
    expected, shape = group_prompts(ctx.text_spec)
    if not len(texts) or list(texts) != expected:
        raise ValueError(
            "closed-form debiasing needs group_prompts (templates, groups with synonyms) in the "
            "dataset text file, encoded into texts.parquet (rerun encode_method_texts)"
        )
    if shape[0] < 2:
        raise ValueError("closed-form debiasing needs at least two groups in group_prompts")
    basis = bias_basis(group_directions(raw, shape))
    clf = closed_form_edit(np.asarray(ctx.classifier, dtype=np.float64).T, basis).T
    meta = {
        "groups": list((ctx.text_spec.get("group_prompts") or {}).get("groups", {})),
        "rank": int(basis.shape[1]),
        "n_prompts": len(texts),
        "texts_sha256": texts_sha256(texts),
    }
    return Correction(
        transform=lambda e, idx: closed_form_edit(e, basis), classifier=clf, meta=meta
    )


def predict(ctx: MethodContext) -> Any:
    return apply_correction(ctx, fit(ctx))
