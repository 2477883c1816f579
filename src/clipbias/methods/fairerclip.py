"""FairerCLIP (Dehdashtian, Wang, Boddeti, ICLR 2024; METHODS §10.3): kernel encoders of the
image and the text side whose codes depend on the class Y, not on the attribute S, and align
across the two modalities; each side is a closed-form generalised eigenproblem, the sides
alternate.

On the locate split (§10.8): X_I = ê, S = the zero-shot attribute (the dataset's attribute
prompts, always inferred, as the reference), Y = the ground-truth class (``fairerclip``) or
the zero-shot prediction, re-predicted by the current encoders from the second iteration on
(``fairerclip_nolabels``); X_T = the classifier column of each sample's (pseudo-)label.
Labels are one-hot with ±1 entries and a centred linear kernel; X and Z go through random
Fourier features φ(x) = √(2/m)·cos(Wx + b), W ~ N(0, σ⁻²I), b ~ U[0, 2π], σ² = 0.5·median of
the positive squared distances (≤ 4,000 rows), centred. One side solves

  B = B_Y/‖B_Y‖₂ + τ_z/(1−τ_z)·B_Z/‖B_Z‖₂ − τ/(1−τ)·B_S/‖B_S‖₂,  C = φ̃ᵀφ̃ + nγI,
  B u = λ C u, U = the top ``dim_z`` eigenvectors (95 % energy prefix; B has rank ≤ the
  label columns, so the problem is solved exactly in that small subspace,
  :func:`top_generalized_eigvecs`),

with B_Y = (φ̃ᵀỸ)(φ̃ᵀỸ)ᵀ and likewise for Z and S; f(x) = √n·(φ(x) − φ̄)ᵀU, its sign flipped
when it mostly disagrees with Z (the first solve: with Y) [RECON]. Prediction:
argmax_c cos(f_I(x), f_T(t̂_c)). With the published ``dim_z = 1`` that is a sign match between
two class codes, so the method takes two classes only (it refuses more at config time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clipbias.methods.api import Correction, MethodContext, apply_correction
from clipbias.methods.texts import texts_sha256, unit_rows


@dataclass
class RFF:
    """Random Fourier features of a Gaussian kernel, centred on the fitting rows."""

    w: np.ndarray  # [m, D]
    b: np.ndarray  # [m]
    mean: np.ndarray  # [m]

    def raw(self, x: np.ndarray) -> np.ndarray:
        m = len(self.b)
        return np.sqrt(2.0 / m) * np.cos(np.asarray(x, dtype=np.float64) @ self.w.T + self.b)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.raw(x) - self.mean


def rff_sigma(x: np.ndarray, rng: np.random.Generator, max_rows: int = 4000) -> float:
    """σ = √(0.5 · median of the positive squared distances) over ≤ ``max_rows`` random rows."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) > max_rows:
        x = x[rng.choice(len(x), max_rows, replace=False)]
    sq = np.sum(x**2, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    pos = d2[np.triu_indices(len(x), k=1)]
    pos = pos[pos > 1e-12]
    if not len(pos):
        raise ValueError("FairerCLIP: all fitting rows coincide; no kernel width")
    return float(np.sqrt(0.5 * np.median(pos)))


def fit_rff(x: np.ndarray, m: int, rng: np.random.Generator) -> RFF:
    sigma = rff_sigma(x, rng)
    w = rng.normal(0.0, 1.0 / sigma, size=(m, np.asarray(x).shape[1]))
    b = rng.uniform(0.0, 2.0 * np.pi, size=m)
    f = RFF(w, b, np.zeros(m))
    f.mean = f.raw(x).mean(axis=0)
    return f


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0)


def _factor(phi: np.ndarray, k: np.ndarray) -> np.ndarray:
    """a = φ̃ᵀK̃ / ‖a‖₂, so that a aᵀ = B_K / ‖B_K‖₂ (‖a aᵀ‖₂ = ‖a‖₂²) without forming the
    m × m matrix."""
    a = phi.T @ k  # [m, k]
    norm = np.linalg.norm(a, 2)
    return a / norm if norm > 0 else a


def top_generalized_eigvecs(
    factors: list[np.ndarray], weights: list[float], c: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` eigenpairs of B u = λ C u for B = Σ_j w_j a_j a_jᵀ (low rank) and C
    symmetric positive definite, exactly, in O(m²r + m³/3) instead of a dense generalised
    eigensolver's O(m³): with Q an orthonormal basis of A = [a_j] (rank r) and A = Q R,
    B = Q M Qᵀ, M = R diag(w) Rᵀ; the nonzero eigenpairs are u = C⁻¹Qv with M G v = λ v, G = QᵀC⁻¹Q =
    LLᵀ, i.e. the symmetric r × r problem LᵀML y = λ y, v = L⁻ᵀy. Eigenvectors are
    C-normalised (uᵀCu = 1), as scipy.linalg.eigh(B, C) returns them. -> (λ [k], U [m, k])
    in descending order."""
    from scipy.linalg import cho_factor, cho_solve, eigh, solve_triangular

    a = np.concatenate(factors, axis=1)
    w = np.concatenate([np.full(f.shape[1], wt) for f, wt in zip(factors, weights, strict=True)])
    # orthonormal basis of span(A) from the small Gram matrix AᵀA = V S² Vᵀ: Q = A V S⁻¹
    s2, vr = eigh(a.T @ a)
    keep = s2 > max(s2.max(), 1e-300) * 1e-12
    if not keep.any():
        raise ValueError("FairerCLIP: the label kernels are zero (constant labels?)")
    q = a @ (vr[:, keep] / np.sqrt(s2[keep]))
    coef = q.T @ a  # [rank, R]: a = q coef
    m_small = (coef * w) @ coef.T
    cf = cho_factor(c)
    cq = cho_solve(cf, q)  # C⁻¹Q [m, rank]
    low = np.linalg.cholesky(q.T @ cq)  # G = L Lᵀ
    vals, y = eigh(low.T @ m_small @ low)
    order = np.argsort(vals)[::-1][:k]
    v = solve_triangular(low.T, y[:, order], lower=False)
    return vals[order], cq @ v


def signed_onehot(labels: np.ndarray, n_values: int) -> np.ndarray:
    """One-hot with ±1 entries [N, n_values]."""
    out = -np.ones((len(labels), n_values))
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return out


@dataclass
class Encoder:
    rff: RFF
    u: np.ndarray  # [m, k]
    scale: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.scale * self.rff(x) @ self.u


def solve_side(
    x: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    z: np.ndarray | None,
    tau: float,
    tau_z: float,
    gamma: float,
    dim_z: int,
    m: int,
    rng: np.random.Generator,
    energy: float = 0.95,
) -> Encoder:
    """One closed-form solve (module doc): the encoder of ``x`` [n, D] given ±1 one-hot
    ``y`` and ``s`` and the other side's codes ``z`` [n, k] (None on the first solve)."""
    n = len(x)
    rff = fit_rff(x, m, rng)
    phi = rff(x)
    factors = [_factor(phi, _centred(y)), _factor(phi, _centred(s))]
    weights = [1.0, -tau / (1.0 - tau)]
    if z is not None:
        zf = fit_rff(z, m, rng)(z)
        factors.append(_factor(phi, zf))
        weights.append(tau_z / (1.0 - tau_z))
    c = phi.T @ phi + n * gamma * np.eye(m)
    vals, vecs = top_generalized_eigvecs(factors, weights, c, dim_z)
    share = np.cumsum(vals**2) / max(np.sum(vals**2), 1e-300)
    keep = int(np.searchsorted(share, energy) + 1)
    u = vecs[:, : min(keep, dim_z)]
    enc = Encoder(rff, u, float(np.sqrt(n)))
    ref = _centred(z if z is not None else y)[:, : u.shape[1]]
    codes = enc(x)
    flip = np.sign(np.sum(codes * ref, axis=0))
    enc.u = u * np.where(flip == 0, 1.0, flip)
    return enc


def decide(f_img: np.ndarray, f_cls: np.ndarray) -> np.ndarray:
    """argmax_c cos(f_I(x), f_T(t̂_c)): codes [n, k] and class codes [C, k] -> [n]."""
    a = unit_rows(np.atleast_2d(f_img).astype(np.float64))
    c = unit_rows(np.atleast_2d(f_cls).astype(np.float64))
    return np.argmax(a @ c.T, axis=1).astype(np.int64)


def fairerclip_fit(
    x_img: np.ndarray,
    classifier: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    labels: str = "ground_truth",
    n_iter: int = 2,
    tau_i: float = 0.7,
    tau_z_i: float = 0.7,
    tau_t: float = 0.1,
    tau_z_t: float = 0.1,
    gamma_i: float = 3e-4,
    gamma_t: float = 2e-4,
    dim_z: int = 1,
    m: int = 3000,
    seed: int = 2,
) -> tuple[Encoder, Encoder, np.ndarray]:
    """The alternation (METHODS §10.3) -> (f_I, f_T, the last labels used). ``y``: class ids
    (ground truth or the zero-shot pseudo-labels); ``s``: attribute ids; ``classifier``
    [D, C] unit columns (X_T rows = t̂_{y_i})."""
    if labels not in ("ground_truth", "pseudo"):
        raise ValueError(f"FairerCLIP labels must be 'ground_truth' or 'pseudo', got {labels!r}")
    rng = np.random.default_rng(seed)
    n_cls = classifier.shape[1]
    t = np.asarray(classifier, dtype=np.float64).T  # [C, D]
    s1 = signed_onehot(s, int(np.max(s)) + 1 if len(s) else 1)
    y = np.asarray(y, dtype=np.int64)
    f_i = solve_side(
        x_img, signed_onehot(y, n_cls), s1, None, tau_i, tau_z_i, gamma_i, dim_z, m, rng
    )
    f_t = None
    iters = 1 if labels == "ground_truth" else int(n_iter)
    for it in range(iters):
        if it >= 1 and labels == "pseudo":
            y = decide(f_i(x_img), f_t(t))
        y1 = signed_onehot(y, n_cls)
        x_t = t[y]
        f_t = solve_side(x_t, y1, s1, f_i(x_img), tau_t, tau_z_t, gamma_t, dim_z, m, rng)
        f_i = solve_side(x_img, y1, s1, f_t(x_t), tau_i, tau_z_i, gamma_i, dim_z, m, rng)
    return f_i, f_t, y


def fit(
    ctx: MethodContext,
    labels: str = "ground_truth",
    n_iter: int = 2,
    dim_z: int = 1,
    **solver: float,
) -> Correction:
    from clipbias.labels import label_map
    from clipbias.methods.tie import infer_attribute

    n_cls = ctx.classifier.shape[1]
    if dim_z == 1 and n_cls > 2:
        raise ValueError(
            f"FairerCLIP with dim_z = 1 (the published setting) decides by the sign of a 1-D "
            f"code: two classes only, the classifier has {n_cls}"
        )
    texts, raw = ctx.text_roles("attribute")
    if len(texts) < 2:
        raise ValueError(
            "FairerCLIP infers the attribute zero-shot: it needs attribute_prompts.default in "
            "the dataset text file"
        )
    idx, x = ctx.embeddings(ctx.locate_split)
    s = infer_attribute(x, unit_rows(raw).astype(np.float64))
    clf = np.asarray(ctx.classifier, dtype=np.float64)
    if labels == "ground_truth":
        y = idx["label"].to_numpy(dtype=np.int64)
        lmap = label_map(ctx.dataset_meta)
        y = y if lmap is None else lmap[y]
    else:
        y = np.argmax(x @ clf, axis=1)
    # solver: tau_i, tau_z_i, tau_t, tau_z_t, gamma_i, gamma_t, m (fairerclip_fit's keywords)
    f_i, f_t, y_last = fairerclip_fit(
        x, clf, y, s, labels, n_iter=n_iter, dim_z=dim_z, seed=ctx.seed, **solver
    )
    class_codes = f_t(clf.T)

    def classify(e, idx):
        return decide(f_i(e), class_codes)

    meta: dict[str, Any] = {
        "labels": labels,
        "iterations": 1 if labels == "ground_truth" else int(n_iter),
        "dim_z": int(f_i.u.shape[1]),
        "class_codes": class_codes.round(6).tolist(),
        "locate_fit_accuracy": float(np.mean(decide(f_i(x), class_codes) == y_last)),
        "attribute_texts_sha256": texts_sha256(texts),
    }
    return Correction(classify=classify, meta=meta)


def predict(ctx: MethodContext, **params) -> Any:
    return apply_correction(ctx, fit(ctx, **params))
