"""LTC's insight directions (METHODS §4.7): an orthonormal basis of the differences of text
pairs. Read by :meth:`clipbias.methods.api.MethodContext.basis` and by the LTC family
(:mod:`clipbias.methods.ltc`, :mod:`clipbias.methods.ltc_random`); it sits below both so that
neither imports the other for it.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def insight_basis(pos_emb: np.ndarray, neg_emb: np.ndarray) -> np.ndarray:
    """Orthonormal insight directions Q [D, K] from text pairs (METHODS §4.7).

    ``pos_emb``, ``neg_emb`` [K, D] are the **unnormalised** text embeddings T(p+), T(p-).
    u_k = T(p+_k) - T(p-_k) stacked as columns, thin QR (Gram-Schmidt order = pair order).
    """
    u = (np.asarray(pos_emb, dtype=np.float64) - np.asarray(neg_emb, dtype=np.float64)).T
    if u.ndim != 2 or u.shape[1] == 0:
        raise ValueError("need at least one text pair")
    q, r = np.linalg.qr(u, mode="reduced")
    diag = np.abs(np.diag(r))
    if diag.min() <= 1e-10 * max(diag.max(), 1e-30):
        log.warning("insight directions are (nearly) linearly dependent: |R_kk| = %s", diag)
    return q
