"""The per-head stereotype-logit score (METHODS §6.4, optional; RECON).

Over misclassified images with a valid attribute value whose prediction is a class
stereotyped for the image's own value (:func:`stereotyped_class_map`,
:func:`stereotype_selection`), the mean direct logit of each head toward that predicted class
against the true class, ⟨ĉ_{l,h}(x), t̂_pred − t̂_y⟩; positive = the head pushes toward the
stereotyped error. The sums add up over batches (:func:`stereotype_logit_sums`), the table
divides by the count (:func:`stereotype_logit_table`); :func:`stereotype_sums` computes them
from in-memory heads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..heads import head_str
from .params import DEFAULTS

log = logging.getLogger(__name__)


def stereotyped_class_map(
    labels: np.ndarray,
    attr: np.ndarray,
    n_classes: int,
    min_lift: float = DEFAULTS["stereotype_min_lift"],
) -> np.ndarray:
    """[C, V] bool: class c is *stereotyped for value v* when the share of v among its images
    exceeds ``min_lift`` × the overall share of v (true labels, ``attr >= 0``; RECON §6.4)."""
    a = np.asarray(attr, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    keep = a >= 0
    n_values = int(a[keep].max()) + 1 if keep.any() else 0
    counts = np.zeros((n_classes, n_values))
    np.add.at(counts, (y[keep], a[keep]), 1)
    overall = counts.sum(axis=0) / max(counts.sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / counts.sum(axis=1, keepdims=True)
    return np.nan_to_num(share, nan=0.0) > min_lift * overall[None, :]


STEREO_COLUMNS = ["layer", "head", "head_id", "stereo_logit", "n_images"]


def stereotype_selection(
    preds: np.ndarray, labels: np.ndarray, attr: np.ndarray, stereo_map: np.ndarray
) -> np.ndarray:
    """[N] bool: the images the stereotype-logit score averages over (METHODS §6.4):
    misclassified (``preds != labels``), with a valid attribute value and a prediction
    (both >= 0), predicted as a class stereotyped for their own value (``stereo_map`` [C, V]
    of :func:`stereotyped_class_map`)."""
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    sel = (p != y) & (a >= 0) & (p >= 0)
    sel[sel] = stereo_map[p[sel], a[sel]]
    return sel


def stereotype_logit_sums(
    heads: np.ndarray, classifier: np.ndarray, labels: np.ndarray, preds: np.ndarray
) -> np.ndarray:
    """Σ over the rows of ``heads`` [n, L, H, D] of ⟨ĉ_{l,h}(x), t̂_pred − t̂_y⟩: [L, H]
    float64 (the differences t̂_pred − t̂_y in the heads' dtype, float64 accumulation). Sums of
    batches add up to the sum over their union (:func:`stereotype_logit_table`)."""
    heads = np.asarray(heads)
    T = np.asarray(classifier, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if not len(y):
        return np.zeros(heads.shape[1:3])
    diff = (T[:, p] - T[:, y]).T  # [n, D]
    return np.einsum("nlhd,nd->lh", heads, diff.astype(heads.dtype), dtype=np.float64)


def stereotype_logit_table(sums: np.ndarray, count: int, layers: Sequence[int]) -> pd.DataFrame:
    """The stereotype-logit table (:data:`STEREO_COLUMNS`) from the summed direct logits
    ``sums`` [L, H] (:func:`stereotype_logit_sums`) of ``count`` selected images."""
    sums = np.asarray(sums, dtype=np.float64)
    n_layers, n_heads = sums.shape
    if count:
        score = sums / count
    else:
        log.warning("stereotype-logit score: no misclassified image lands on a stereotyped class")
        score = np.full((n_layers, n_heads), np.nan)
    layers = [int(x) for x in layers]
    rows = [
        (layers[li], h, head_str((layers[li], h)), float(score[li, h]), int(count))
        for li in range(n_layers)
        for h in range(n_heads)
    ]
    return pd.DataFrame(rows, columns=STEREO_COLUMNS)


def stereotype_sums(
    heads: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    attr: np.ndarray,
    preds: np.ndarray,
    min_lift: float = DEFAULTS["stereotype_min_lift"],
) -> tuple[np.ndarray, int]:
    """The stereotype-logit sums of in-memory ``heads`` [N, L, H, D] (the array version of
    what :class:`~clipbias.methods.audit.stream.AuditAccumulator` adds batch by batch):
    (:func:`stereotype_logit_sums` over the images :func:`stereotype_selection` picks with
    ``preds`` and the :func:`stereotyped_class_map` of ``labels`` and ``attr``, their count).
    :func:`stereotype_logit_table` turns them into the scores."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    n_classes = np.asarray(classifier).shape[1]
    sel = stereotype_selection(p, y, attr, stereotyped_class_map(y, attr, n_classes, min_lift))
    return stereotype_logit_sums(np.asarray(heads)[sel], classifier, y[sel], p[sel]), int(sel.sum())
