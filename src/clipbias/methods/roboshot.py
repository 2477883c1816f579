"""RoboShot on the full embedding (METHODS §4.7, §9 #8): starting from the normalised ê,
all reject steps over the orthonormalised spurious directions, then all accept steps over the
insight directions (``mode="both"``), or the accept steps only (``mode="accept"``).
"""

from __future__ import annotations

import numpy as np

from clipbias.methods.api import Correction, MethodContext, MethodOutput, apply_correction
from clipbias.methods.ltc import _normalise, accept_update, reject_update


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


def fit(ctx: MethodContext, mode: str = "both") -> Correction:
    """The projections of the full embedding as a fitted :class:`Correction` (alone, and as
    a composition's step)."""
    q_accept = ctx.basis("accept_pos", "accept_neg")
    q_reject = ctx.basis("reject_pos", "reject_neg") if mode == "both" else None

    def transform(e, idx):
        return roboshot(e, q_reject, q_accept, mode).astype(np.float64)

    meta = {
        "mode": mode,
        "n_accept": 0 if q_accept is None else int(q_accept.shape[1]),
        "n_reject": 0 if q_reject is None else int(q_reject.shape[1]),
    }
    return Correction(transform=transform, meta=meta)


def predict(ctx: MethodContext, mode: str) -> MethodOutput:
    return apply_correction(ctx, fit(ctx, mode))
