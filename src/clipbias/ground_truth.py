"""Per-head planted ground truth: how much each head's class-margin contribution depends on
the spurious attribute with the class held fixed.

For head (l, h) and image i with label y_i, the head's direct contribution to the class
margin is

* binary classes (C = 2): ``m_i = <c_{l,h}(x_i), t_1 - t_0>`` (the same direction for
  every image, so positive = pushes towards class 1);
* C > 2: ``m_i = <c_{l,h}(x_i), t_{y_i} - mean_{c != y_i} t_c>`` (margin of the true class
  over the mean of the others, positive = supports the true class).

``c_{l,h}`` are the head contributions of the decomposition (docs/DESIGN.md, ``heads``
[N, L, H, D]) and ``t_c`` the unit class text embeddings (``classifier`` [D, C] columns).

The effect of a head is the mean over classes of
``mean(m | y = c, a = 1) - mean(m | y = c, a = 0)`` where ``a`` is the binary spurious
attribute. Classes lacking either attribute value are skipped. The 95 % percentile
bootstrap CI resamples images with replacement within every class x attribute cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def head_margins(heads: np.ndarray, classifier: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, L, H] direct contribution of every head to the class margin (see module doc)."""
    heads = np.asarray(heads)
    w = np.asarray(classifier, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if heads.ndim != 4:
        raise ValueError(f"heads must be [N, L, H, D], got shape {heads.shape}")
    n, _, _, d = heads.shape
    if w.ndim != 2 or w.shape[0] != d:
        raise ValueError(f"classifier must be [D={d}, C], got shape {w.shape}")
    c = w.shape[1]
    if c < 2:
        raise ValueError("need at least 2 classes")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N={n}], got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must be in [0, {c})")
    if c == 2:
        direction = w[:, 1] - w[:, 0]
        return np.einsum("nlhd,d->nlh", heads, direction)
    # t_y - mean_{c != y} t_c = (C t_y - sum_c t_c) / (C - 1)
    dirs = (c * w - w.sum(1, keepdims=True)) / (c - 1)  # [D, C], column y
    proj = np.einsum("nlhd,dc->nlhc", heads, dirs)
    return np.take_along_axis(proj, labels[:, None, None, None], axis=3)[..., 0]


def _effect(margins: np.ndarray, cells: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """[L, H] mean over classes of (mean m | a = 1) - (mean m | a = 0)."""
    return np.mean([margins[i1].mean(0) - margins[i0].mean(0) for i0, i1 in cells], axis=0)


def head_attribute_table(
    heads: np.ndarray,
    layers: list[int],
    classifier: np.ndarray,
    labels: np.ndarray,
    attribute: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """One row per head: ``layer, head, head_id, effect, abs_effect, ci_low, ci_high, rank``.

    ``heads`` [N, L, H, D], ``layers`` the L layer numbers, ``classifier`` [D, C] unit
    columns, ``labels`` [N] class indices, ``attribute`` [N] binary spurious attribute
    (0/1; other values, e.g. -1 = unknown, are ignored). ``rank`` 1 = largest ``abs_effect``
    (ties broken by layer, head). CIs: percentile 95 % over ``n_boot`` bootstrap resamples
    within each class x attribute cell, ``numpy.random.default_rng(seed)``.
    """
    heads = np.asarray(heads)
    labels = np.asarray(labels).astype(np.int64)
    attribute = np.asarray(attribute).astype(np.int64)
    if attribute.shape != labels.shape:
        raise ValueError("labels and attribute must have the same shape [N]")
    n_layers = heads.shape[1]
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer numbers for {n_layers} stored layers")
    margins = head_margins(heads, classifier, labels)
    return head_attribute_table_from_margins(
        margins, layers, labels, attribute, n_boot=n_boot, seed=seed
    )


def head_attribute_table_from_margins(
    margins: np.ndarray,
    layers: list[int],
    labels: np.ndarray,
    attribute: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """:func:`head_attribute_table` from the margins [N, L, H] of :func:`head_margins`
    (result-sized; computed batch by batch by :func:`clipbias.streaming.map_batches`)."""
    margins = np.asarray(margins).astype(np.float64)
    labels = np.asarray(labels).astype(np.int64)
    attribute = np.asarray(attribute).astype(np.int64)
    if attribute.shape != labels.shape or margins.shape[:1] != labels.shape:
        raise ValueError("margins, labels and attribute must have the same length N")
    n_layers, n_heads = margins.shape[1], margins.shape[2]
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer numbers for {n_layers} stored layers")

    cells = []
    for c in np.unique(labels):
        i0 = np.flatnonzero((labels == c) & (attribute == 0))
        i1 = np.flatnonzero((labels == c) & (attribute == 1))
        if len(i0) and len(i1):
            cells.append((i0, i1))
    if not cells:
        raise ValueError("no class has images with both attribute values")
    effect = _effect(margins, cells)

    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, n_layers, n_heads))
    for b in range(n_boot):
        resampled = [
            (rng.choice(i0, size=len(i0), replace=True), rng.choice(i1, size=len(i1), replace=True))
            for i0, i1 in cells
        ]
        boot[b] = _effect(margins, resampled)
    if n_boot > 0:
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    else:
        lo = hi = np.full_like(effect, np.nan)

    ll, hh = np.meshgrid(np.asarray(layers, dtype=np.int64), np.arange(n_heads), indexing="ij")
    df = pd.DataFrame(
        {
            "layer": ll.ravel(),
            "head": hh.ravel(),
            "head_id": [f"L{int(a)}H{int(b)}" for a, b in zip(ll.ravel(), hh.ravel(), strict=True)],
            "effect": effect.ravel(),
            "abs_effect": np.abs(effect).ravel(),
            "ci_low": lo.ravel(),
            "ci_high": hi.ravel(),
        }
    )
    order = np.lexsort(
        (df["head"].to_numpy(), df["layer"].to_numpy(), -df["abs_effect"].to_numpy())
    )
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(1, len(df) + 1)
    df["rank"] = rank
    return df
