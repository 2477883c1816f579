"""Per-head planted ground truth: causal (counterfactual twins) and associative.

Notation (docs/DESIGN.md "Array conventions"): ``heads`` [N, L, H, D] are the head
contributions ĉ_{l,h}(x) of the decomposition (METHODS §1.3), ``classifier`` [D, C] the unit
class text embeddings t_c, ``labels`` [N] the true classes y. The *true-class margin
direction* of class y is ``d_y = t_y - mean_{c != y} t_c`` (= ``t_y - t_other`` for C = 2) and
a head's *direct contribution to the true-class margin* is ``m_{l,h}(x) = <ĉ_{l,h}(x), d_y>``.
Summed over all components (heads, MLPs, embedding term) it is the total margin
``<ê(x), d_y>``.

Every class y has an *associated* value of the attribute: its majority background
(spurious attribute) or its associated colour (protected attribute), ``dataset.json``
``majority_background`` / ``associated_colour``.

**Causal effect** (:func:`causal_head_table`, kind ``causal``). For each pair (original x,
twin x') that differ only in the attribute, exactly one side of which has the associated
value of y, the orientation ``o = +1`` if the twin has the associated value and ``-1`` if the
original has it (pairs where neither or both have it get ``o = 0`` and are left out). Then

    effect_{l,h} = mean over pairs of  o · (m_{l,h}(x') - m_{l,h}(x)),

the mean change of the head's direct contribution to the true-class margin when the
attribute goes from a class-non-associated value to the class-associated value, all else
(object, position, size, rotation, shading, noise draw) fixed. Positive = the head pushes
towards the biased prediction (it supports the class more when the attribute agrees with the
class's stereotype). The effect includes everything the attribute change does upstream of
the head (it is the head's *total* response, read at its direct path). The total effect
(:func:`causal_total_effect`) is the same on the total margin.

**Associative statistic** (:func:`associative_head_table`, kind ``associative``): from one
set of images without twins, per class y with both kinds of images present,
``mean(m | a = assoc(y)) - mean(m | a != assoc(y))``, averaged over classes. With binary
classes and attribute and ``assoc(y) = y`` this equals the earlier statistic of
:func:`head_attribute_table`. It mixes the head's response to the attribute with any other
difference between the two image sets.

**Output sensitivity** (:func:`output_sensitivity_table`, kind ``output``): what a head
*encodes* rather than what it contributes to the decision. A head can carry the background
in directions orthogonal to every margin direction (a large change of ĉ, no change of m);
TextSpan describes the head's whole output, so the TextSpan check ranks heads by

    effect_{l,h} = mean over pairs ||ĉ_{l,h}(x') - ĉ_{l,h}(x)||^2 / (2 tr Cov(ĉ_{l,h})),

the squared change under the twin swap relative to that between two independent images of
the split (``2 tr Cov``, population covariance over the split's rows): 0 = the head ignores
the attribute; 1 = swapping the attribute moves the head as far as swapping the whole image;
a head that encodes only a balanced binary attribute scores 2. Unsigned; every pair counts.

CIs: 95 % percentile bootstrap, resampling image pairs (causal, output; the output
normaliser is held fixed) or images within every class x {associated, not} cell
(associative), ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

GT_COLUMNS = [
    "head_id",
    "layer",
    "head",
    "attribute",
    "effect",
    "ci_low",
    "ci_high",
    "abs_effect",
    "rank",
    "kind",
]
KINDS = ("causal", "associative", "output")


def _check(heads: np.ndarray, classifier: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    if heads.ndim != 4:
        raise ValueError(f"heads must be [N, L, H, D], got shape {heads.shape}")
    n, _, _, d = heads.shape
    if classifier.ndim != 2 or classifier.shape[0] != d:
        raise ValueError(f"classifier must be [D={d}, C], got shape {classifier.shape}")
    c = classifier.shape[1]
    if c < 2:
        raise ValueError("need at least 2 classes")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N={n}], got shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must be in [0, {c})")
    return n, c


def margin_directions(classifier: np.ndarray) -> np.ndarray:
    """[D, C] true-class margin directions ``d_y = t_y - mean_{c != y} t_c`` (column y)."""
    w = np.asarray(classifier, dtype=np.float64)
    c = w.shape[1]
    return (c * w - w.sum(1, keepdims=True)) / (c - 1)


def true_class_margins(heads: np.ndarray, classifier: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, L, H] direct contribution of every head to the true-class margin ⟨ĉ, d_y⟩."""
    heads = np.asarray(heads)
    labels = np.asarray(labels).astype(np.int64)
    _check(heads, np.asarray(classifier), labels)
    dirs = margin_directions(classifier)  # [D, C]
    proj = np.einsum("nlhd,dc->nlhc", heads, dirs)
    return np.take_along_axis(proj, labels[:, None, None, None], axis=3)[..., 0]


def head_margins(heads: np.ndarray, classifier: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, L, H] margins of the earlier associative statistic.

    Binary classes: ``<ĉ, t_1 - t_0>`` for every image (positive = towards class 1);
    C > 2: the true-class margin (:func:`true_class_margins`).
    """
    heads = np.asarray(heads)
    w = np.asarray(classifier, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    _, c = _check(heads, w, labels)
    if c == 2:
        return np.einsum("nlhd,d->nlh", heads, w[:, 1] - w[:, 0])
    return true_class_margins(heads, w, labels)


def _head_frame(
    effect: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    layers: Sequence[int],
    attribute: str,
    kind: str,
) -> pd.DataFrame:
    n_layers, n_heads = effect.shape
    ll, hh = np.meshgrid(np.asarray(layers, dtype=np.int64), np.arange(n_heads), indexing="ij")
    df = pd.DataFrame(
        {
            "head_id": [f"L{int(a)}H{int(b)}" for a, b in zip(ll.ravel(), hh.ravel(), strict=True)],
            "layer": ll.ravel(),
            "head": hh.ravel(),
            "attribute": attribute,
            "effect": effect.ravel(),
            "ci_low": lo.ravel(),
            "ci_high": hi.ravel(),
            "abs_effect": np.abs(effect).ravel(),
        }
    )
    order = np.lexsort(
        (df["head"].to_numpy(), df["layer"].to_numpy(), -df["abs_effect"].to_numpy())
    )
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(1, len(df) + 1)
    df["rank"] = rank
    df["kind"] = kind
    return df[GT_COLUMNS]


def _percentiles(boot: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(boot) == 0:
        nan = np.full_like(like, np.nan, dtype=np.float64)
        return nan, nan.copy()
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return lo, hi


# ----------------------------------------------------------------------------- twins


def twin_pairs(index: pd.DataFrame, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Aligned row positions ``(originals, twins)`` of the ``kind`` twins in ``index``.

    Twins are the rows with ``split == "twin_<kind>"`` and ``image_id == "<id>|<kind>"``
    (clipbias.synth); ``originals[i]`` is the position of the source row of the twin at
    position ``twins[i]``. Positions are 0-based into ``index`` as given (not its labels).
    """
    ids = index["image_id"].astype(str).to_numpy()
    split = index["split"].astype(str).to_numpy()
    twins = np.flatnonzero(split == f"twin_{kind}")
    if len(twins) == 0:
        raise ValueError(
            f"no rows with split 'twin_{kind}'; generate the dataset with twin_splits and "
            "extract the twin splits too"
        )
    suffix = f"|{kind}"
    pos = {v: i for i, v in enumerate(ids)}
    originals = np.empty(len(twins), dtype=np.int64)
    for k, t in enumerate(twins):
        tid = ids[t]
        if not tid.endswith(suffix) or tid[: -len(suffix)] not in pos:
            raise ValueError(f"twin {tid!r} has no source row {tid[: -len(suffix)]!r} in index")
        originals[k] = pos[tid[: -len(suffix)]]
    return originals, twins


def twin_orientation(
    original_values: np.ndarray,
    twin_values: np.ndarray,
    labels: np.ndarray,
    associated: Sequence[int],
) -> np.ndarray:
    """[P] +1 / -1 / 0: does the pair go non-associated -> associated (twin associated, +1),
    the other way (original associated, -1), or neither (0)?

    ``associated[y]`` is class y's associated attribute value (value index).
    """
    a = np.asarray(associated, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(a)):
        raise ValueError(f"labels must index 'associated' (length {len(a)})")
    assoc = a[labels]
    o_assoc = np.asarray(original_values) == assoc
    t_assoc = np.asarray(twin_values) == assoc
    return t_assoc.astype(np.int64) - o_assoc.astype(np.int64)


def _pair_effects(
    deltas: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over pairs of ``deltas`` [P, ...] and its 95 % bootstrap CI over pairs."""
    effect = deltas.mean(0)
    rng = np.random.default_rng(seed)
    p = len(deltas)
    boot = np.empty((n_boot, *deltas.shape[1:]))
    for b in range(n_boot):
        boot[b] = deltas[rng.integers(0, p, p)].mean(0)
    lo, hi = _percentiles(boot, effect)
    return effect, lo, hi


def _oriented(orientation: np.ndarray, n: int) -> np.ndarray:
    o = np.asarray(orientation, dtype=np.int64)
    if o.shape != (n,):
        raise ValueError(f"orientation must be [N={n}], got shape {o.shape}")
    if not np.isin(o, (-1, 0, 1)).all():
        raise ValueError("orientation values must be -1, 0 or +1 (see twin_orientation)")
    keep = np.flatnonzero(o != 0)
    if len(keep) == 0:
        raise ValueError(
            "no pair goes between a class-associated and a non-associated attribute value "
            "(all orientations are 0)"
        )
    return keep


def causal_head_table(
    heads: np.ndarray,
    twin_heads: np.ndarray,
    layers: Sequence[int],
    classifier: np.ndarray,
    labels: np.ndarray,
    orientation: np.ndarray,
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """Causal per-head effect of ``attribute`` on the true-class margin (module doc).

    ``heads`` / ``twin_heads`` [N, L, H, D]: contributions of the originals and of their
    twins, row i of one paired with row i of the other (:func:`twin_pairs`); ``layers`` the
    L layer numbers; ``classifier`` [D, C]; ``labels`` [N] (shared by a pair);
    ``orientation`` [N] from :func:`twin_orientation` (pairs with 0 are left out).
    Returns :data:`GT_COLUMNS` with ``kind = "causal"``; ``rank`` 1 = largest
    ``abs_effect`` (ties by layer, head); CI = bootstrap over pairs.
    """
    heads = np.asarray(heads)
    twin_heads = np.asarray(twin_heads)
    labels = np.asarray(labels).astype(np.int64)
    if twin_heads.shape != heads.shape:
        raise ValueError(f"twin_heads {twin_heads.shape} must match heads {heads.shape}")
    n, _ = _check(heads, np.asarray(classifier), labels)
    if len(layers) != heads.shape[1]:
        raise ValueError(f"{len(layers)} layer numbers for {heads.shape[1]} stored layers")
    keep = _oriented(orientation, n)
    m_orig = np.zeros(heads.shape[:3])
    m_twin = np.zeros(heads.shape[:3])
    m_orig[keep] = true_class_margins(heads[keep], classifier, labels[keep])
    m_twin[keep] = true_class_margins(twin_heads[keep], classifier, labels[keep])
    return causal_table_from_margins(
        m_orig, m_twin, layers, orientation, attribute=attribute, n_boot=n_boot, seed=seed
    )


def causal_table_from_margins(
    margins: np.ndarray,
    twin_margins: np.ndarray,
    layers: Sequence[int],
    orientation: np.ndarray,
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """:func:`causal_head_table` from the true-class margins [P, L, H] of originals and twins
    (:func:`true_class_margins`; result-sized, so a stage can compute them batch by batch)."""
    m = np.asarray(margins, dtype=np.float64)
    m2 = np.asarray(twin_margins, dtype=np.float64)
    if m.ndim != 3 or m2.shape != m.shape:
        raise ValueError(f"margins must both be [P, L, H], got {m.shape} and {m2.shape}")
    if len(layers) != m.shape[1]:
        raise ValueError(f"{len(layers)} layer numbers for {m.shape[1]} stored layers")
    keep = _oriented(orientation, len(m))
    o = np.asarray(orientation, dtype=np.float64)[keep, None, None]
    effect, lo, hi = _pair_effects(o * (m2[keep] - m[keep]), n_boot, seed)
    return _head_frame(effect, lo, hi, layers, attribute, "causal")


def output_sensitivity_table(
    pair_sq: np.ndarray,
    random_pair_sq: np.ndarray,
    layers: Sequence[int],
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """Output sensitivity (module doc, kind ``output``) from the per-pair squared output
    changes ``pair_sq`` [P, L, H] = ||ĉ(x') - ĉ(x)||^2 and the per-head ``random_pair_sq``
    [L, H] = 2 tr Cov(ĉ) over the split (:func:`head_spread`); both result-sized, so a stage
    can accumulate them batch by batch."""
    sq = np.asarray(pair_sq, dtype=np.float64)
    norm = np.asarray(random_pair_sq, dtype=np.float64)
    if sq.ndim != 3 or norm.shape != sq.shape[1:]:
        raise ValueError(
            f"pair_sq must be [P, L, H] and random_pair_sq [L, H]: {sq.shape}, {norm.shape}"
        )
    if len(sq) == 0:
        raise ValueError("no twin pairs")
    if len(layers) != sq.shape[1]:
        raise ValueError(f"{len(layers)} layer numbers for {sq.shape[1]} stored layers")
    ratio = sq / np.where(norm > 0, norm, np.nan)[None]
    effect, lo, hi = _pair_effects(ratio, n_boot, seed)
    return _head_frame(effect, lo, hi, layers, attribute, "output")


def head_spread(sum_heads: np.ndarray, sum_sq: np.ndarray, n: int) -> np.ndarray:
    """[L, H] ``2 tr Cov(ĉ_{l,h})`` (population) from streamed sums over n rows:
    ``sum_heads`` [L, H, D] = Σ ĉ and ``sum_sq`` [L, H] = Σ ||ĉ||^2."""
    if n < 1:
        raise ValueError("no rows")
    mean = np.asarray(sum_heads, dtype=np.float64) / n
    return 2.0 * (np.asarray(sum_sq, dtype=np.float64) / n - np.sum(mean * mean, axis=-1))


def output_sensitivity(
    heads: np.ndarray,
    twin_heads: np.ndarray,
    layers: Sequence[int],
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """:func:`output_sensitivity_table` from whole arrays: ``heads`` / ``twin_heads``
    [P, L, H, D] of aligned originals and twins (the normaliser over the originals)."""
    h = np.asarray(heads, dtype=np.float64)
    h2 = np.asarray(twin_heads, dtype=np.float64)
    if h.ndim != 4 or h2.shape != h.shape:
        raise ValueError(f"heads must both be [P, L, H, D], got {h.shape} and {h2.shape}")
    spread = head_spread(h.sum(0), np.sum(h * h, axis=(0, 3)), len(h))
    return output_sensitivity_table(
        np.sum((h2 - h) ** 2, axis=-1), spread, layers,
        attribute=attribute, n_boot=n_boot, seed=seed,
    )  # fmt: skip


def causal_total_effect(
    embedding: np.ndarray,
    twin_embedding: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    orientation: np.ndarray,
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """The causal effect on the total true-class margin ⟨ê, d_y⟩ (all components summed).

    ``embedding`` / ``twin_embedding`` [N, D] = ``heads.sum((1, 2)) + rest`` of originals and
    twins. One row with :data:`GT_COLUMNS`: ``head_id = "total"``, ``layer = head = -1``,
    ``rank = 0``, ``kind = "causal"``.
    """
    e = np.asarray(embedding, dtype=np.float64)
    e2 = np.asarray(twin_embedding, dtype=np.float64)
    if e.ndim != 2 or e2.shape != e.shape:
        raise ValueError(f"embeddings must both be [N, D], got {e.shape} and {e2.shape}")
    labels = np.asarray(labels).astype(np.int64)
    n, _ = _check(e[:, None, None, :], np.asarray(classifier), labels)
    dirs = margin_directions(classifier)[:, labels].T  # [N, D]
    return causal_total_from_margins(
        np.sum(e * dirs, axis=1),
        np.sum(e2 * dirs, axis=1),
        orientation,
        attribute=attribute,
        n_boot=n_boot,
        seed=seed,
    )


def causal_total_from_margins(
    total: np.ndarray,
    twin_total: np.ndarray,
    orientation: np.ndarray,
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """:func:`causal_total_effect` from the total true-class margins [P] ``⟨ê, d_y⟩`` of
    originals and twins."""
    t = np.asarray(total, dtype=np.float64)
    t2 = np.asarray(twin_total, dtype=np.float64)
    if t.ndim != 1 or t2.shape != t.shape:
        raise ValueError(f"total margins must both be [P], got {t.shape} and {t2.shape}")
    keep = _oriented(orientation, len(t))
    o = np.asarray(orientation, dtype=np.float64)[keep]
    effect, lo, hi = _pair_effects(o * (t2[keep] - t[keep]), n_boot, seed)
    return pd.DataFrame(
        [
            {
                "head_id": "total",
                "layer": -1,
                "head": -1,
                "attribute": attribute,
                "effect": float(effect),
                "ci_low": float(lo),
                "ci_high": float(hi),
                "abs_effect": abs(float(effect)),
                "rank": 0,
                "kind": "causal",
            }
        ]
    )[GT_COLUMNS]


# ------------------------------------------------------------------------- associative


def associative_head_table(
    heads: np.ndarray,
    layers: Sequence[int],
    classifier: np.ndarray,
    labels: np.ndarray,
    values: np.ndarray,
    associated: Sequence[int],
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """Associative per-head statistic (module doc) with the columns of the causal table.

    ``values`` [N] attribute value indices (negative = unknown, ignored); ``associated[y]``
    class y's associated value. Per class with images of both kinds:
    ``mean(m | value = associated) - mean(m | value != associated)`` of the true-class
    margin m, averaged over classes. ``kind = "associative"``.
    """
    heads = np.asarray(heads)
    labels = np.asarray(labels).astype(np.int64)
    values = np.asarray(values).astype(np.int64)
    if values.shape != labels.shape:
        raise ValueError("labels and values must have the same shape [N]")
    _check(heads, np.asarray(classifier), labels)
    if len(layers) != heads.shape[1]:
        raise ValueError(f"{len(layers)} layer numbers for {heads.shape[1]} stored layers")
    return associative_table_from_margins(
        true_class_margins(heads, classifier, labels),
        layers,
        labels,
        values,
        associated,
        attribute=attribute,
        n_boot=n_boot,
        seed=seed,
    )


def associative_table_from_margins(
    margins: np.ndarray,
    layers: Sequence[int],
    labels: np.ndarray,
    values: np.ndarray,
    associated: Sequence[int],
    *,
    attribute: str = "background",
    n_boot: int = 1000,
    seed: int = 42,
) -> pd.DataFrame:
    """:func:`associative_head_table` from the true-class margins [N, L, H]."""
    margins = np.asarray(margins, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    values = np.asarray(values).astype(np.int64)
    if margins.ndim != 3 or margins.shape[:1] != labels.shape or values.shape != labels.shape:
        raise ValueError("margins [N, L, H], labels [N] and values [N] must share N")
    if len(layers) != margins.shape[1]:
        raise ValueError(f"{len(layers)} layer numbers for {margins.shape[1]} stored layers")
    assoc = np.asarray(associated, dtype=np.int64)
    if labels.size and labels.max() >= len(assoc):
        raise ValueError(f"labels must index 'associated' (length {len(assoc)})")
    cells = []
    for c in np.unique(labels):
        known = (labels == c) & (values >= 0)
        i1 = np.flatnonzero(known & (values == assoc[c]))
        i0 = np.flatnonzero(known & (values != assoc[c]))
        if len(i0) and len(i1):
            cells.append((i0, i1))
    if not cells:
        raise ValueError("no class has images with both associated and other attribute values")
    effect, lo, hi = _cell_effects(margins, cells, n_boot, seed)
    return _head_frame(effect, lo, hi, layers, attribute, "associative")


def _cell_effect(margins: np.ndarray, cells: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """[L, H] mean over classes of (mean m | cell 1) - (mean m | cell 0)."""
    return np.mean([margins[i1].mean(0) - margins[i0].mean(0) for i0, i1 in cells], axis=0)


def _cell_effects(
    margins: np.ndarray, cells: list[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    effect = _cell_effect(margins, cells)
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, *effect.shape))
    for b in range(n_boot):
        resampled = [
            (rng.choice(i0, size=len(i0), replace=True), rng.choice(i1, size=len(i1), replace=True))
            for i0, i1 in cells
        ]
        boot[b] = _cell_effect(margins, resampled)
    lo, hi = _percentiles(boot, effect)
    return effect, lo, hi


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
    """Earlier associative table: ``layer, head, head_id, effect, abs_effect, ci_low, ci_high,
    rank`` (the current ``ground_truth/head_attribute.csv``).

    Effect = mean over classes of ``mean(m | a = 1) - mean(m | a = 0)`` with the margins of
    :func:`head_margins` and a binary ``attribute`` (other values ignored). For two classes
    whose associated values are 0 and 1 this equals :func:`associative_head_table`.
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
    n_layers = margins.shape[1]
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
    effect, lo, hi = _cell_effects(margins, cells, n_boot, seed)
    df = _head_frame(effect, lo, hi, layers, "", "associative")
    return df[["layer", "head", "head_id", "effect", "abs_effect", "ci_low", "ci_high", "rank"]]


# ----------------------------------------------------------------------- planted tables

TWIN_ATTRIBUTE_KEYS = {
    # twin kind -> (dataset.json key naming the attribute, key of the per-class values)
    "background": ("spurious_attribute", "majority_background"),
    "protected": ("protected_attribute", "associated_colour"),
}


def associated_values(meta: Mapping[str, Any], kind: str) -> tuple[str, list[int]]:
    """(attribute name, associated value index per class) of a twin ``kind`` from dataset.json.

    ``background``: the spurious attribute and ``majority_background``; ``protected``: the
    protected attribute and ``associated_colour`` (clipbias.synth metadata).
    """
    if kind not in TWIN_ATTRIBUTE_KEYS:
        raise ValueError(f"kind must be one of {sorted(TWIN_ATTRIBUTE_KEYS)}, got {kind!r}")
    attr_key, assoc_key = TWIN_ATTRIBUTE_KEYS[kind]
    attr = meta.get(attr_key)
    per_class = meta.get(assoc_key)
    if attr is None or per_class is None:
        raise ValueError(
            f"dataset.json lacks '{attr_key}' or '{assoc_key}': regenerate the planted dataset "
            "with this version of clipbias.synth"
        )
    values = list(meta["attributes"][attr])
    return attr, [values.index(per_class[c]) for c in meta["classes"]]


def planted_ground_truth_tables(
    index: pd.DataFrame,
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    classifier: np.ndarray,
    meta: Mapping[str, Any],
    *,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 42,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every ground-truth table of the planted benchmark (docs/DESIGN.md) in one call.

    ``index`` rows (reset positions) align with ``heads`` [N, L, H, D] and ``rest`` [N, D]
    (feature-shard layout) and must hold the rows of ``split`` and of the twin splits
    ``twin_background`` / ``twin_protected`` (either may be absent). Returns
    ``(heads_table, total_table)``: per head, the causal effect of each twin kind present
    (pairs whose original is in ``split``) and the associative statistic of both attributes
    on ``split``; and the causal total-margin rows. Columns :data:`GT_COLUMNS`.
    """
    index = index.reset_index(drop=True)
    heads = np.asarray(heads)
    rest = np.asarray(rest)
    if len(index) != len(heads) or len(rest) != len(heads):
        raise ValueError(f"{len(index)} index rows, {len(heads)} heads, {len(rest)} rest rows")
    labels = index["label"].to_numpy(np.int64)
    margins = true_class_margins(heads, classifier, labels)
    dirs = margin_directions(classifier)[:, labels].T  # [N, D]
    total = np.sum((heads.sum((1, 2)) + rest) * dirs, axis=1)
    return planted_tables_from_margins(
        index, margins, total, layers, meta, split=split, n_boot=n_boot, seed=seed
    )


def planted_tables_from_margins(
    index: pd.DataFrame,
    margins: np.ndarray,
    total: np.ndarray,
    layers: Sequence[int],
    meta: Mapping[str, Any],
    *,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 42,
    extra: Sequence[pd.DataFrame] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`planted_ground_truth_tables` from the per-row true-class margins [N, L, H] of
    every head and of the total embedding [N] (:func:`true_class_margins`), aligned with
    ``index`` (computed batch by batch by the ground-truth stage). ``extra`` head tables
    (e.g. :func:`output_sensitivity_table`) join the result in the same order."""
    index = index.reset_index(drop=True)
    margins = np.asarray(margins, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    if len(index) != len(margins) or total.shape != (len(margins),):
        raise ValueError(f"{len(index)} index rows, {len(margins)} margins, {total.shape} totals")
    labels = index["label"].to_numpy(np.int64)
    base = np.flatnonzero(index["split"].astype(str).to_numpy() == split)
    if len(base) == 0:
        raise ValueError(f"no rows of split {split!r}")
    head_tables, totals = [], []
    for kind, (attr_key, _) in TWIN_ATTRIBUTE_KEYS.items():
        if meta.get(attr_key) is None:
            continue  # e.g. a dataset without a protected attribute
        attr, assoc = associated_values(meta, kind)
        values = index[f"attr_{attr}"].to_numpy(np.int64)
        head_tables.append(
            associative_table_from_margins(
                margins[base],
                layers,
                labels[base],
                values[base],
                assoc,
                attribute=attr,
                n_boot=n_boot,
                seed=seed,
            )  # fmt: skip
        )
        if not (index["split"] == f"twin_{kind}").any():
            continue
        orig, twin = twin_pairs(index, kind)
        in_split = index["split"].to_numpy()[orig] == split
        orig, twin = orig[in_split], twin[in_split]
        orient = twin_orientation(values[orig], values[twin], labels[orig], assoc)
        head_tables.append(
            causal_table_from_margins(
                margins[orig],
                margins[twin],
                layers,
                orient,
                attribute=attr,
                n_boot=n_boot,
                seed=seed,
            )  # fmt: skip
        )
        totals.append(
            causal_total_from_margins(
                total[orig], total[twin], orient, attribute=attr, n_boot=n_boot, seed=seed
            )
        )
    if not head_tables:
        raise ValueError(
            f"dataset.json names no planted attribute ({sorted(TWIN_ATTRIBUTE_KEYS)} keys "
            f"{[list(v) for v in TWIN_ATTRIBUTE_KEYS.values()]}): not a planted dataset?"
        )
    kinds_order = {k: i for i, k in enumerate(KINDS)}
    table = pd.concat([*head_tables, *extra], ignore_index=True)
    table = table.sort_values(
        ["kind", "attribute", "rank"], key=lambda c: c.map(kinds_order) if c.name == "kind" else c
    ).reset_index(drop=True)
    total = pd.concat(totals, ignore_index=True) if totals else pd.DataFrame(columns=GT_COLUMNS)
    return table[GT_COLUMNS], total[GT_COLUMNS]


# --------------------------------------------------------------------- locator scoring

#: Columns of ``ground_truth/{cell}/locator_scores.csv`` (:func:`score_locators`).
SCORE_COLUMNS = [
    "locator",
    "variant",
    "attribute",
    "kind",
    "layers_searched",
    "n_selected",
    "selected",
    "truth_top",
    "precision_at_k",
    "top1_head",
    "contains_top1",
    "spearman",
    "spearman_p",
    "n_scored",
    "score",
]


def truth_view(table: pd.DataFrame, attribute: str) -> tuple[pd.DataFrame, str]:
    """(per-head rows, kind) of ``attribute`` in a ground-truth heads table: the causal rows
    when the table has them (a dataset with twins), otherwise the associative ones; sorted by
    rank. The total-margin row is never included."""
    rows = table[(table["attribute"] == attribute) & (table["head_id"] != "total")]
    if rows.empty:
        known = sorted(set(table["attribute"]))
        raise ValueError(f"no ground truth for attribute {attribute!r}; the table has {known}")
    kind = "causal" if (rows["kind"] == "causal").any() else "associative"
    return rows[rows["kind"] == kind].sort_values("rank").reset_index(drop=True), kind


def score_selection(
    truth: pd.DataFrame,
    selected: Sequence[str],
    scores: Mapping[str, float] | None = None,
    *,
    layers: Sequence[int] | None = None,
    truth_column: str = "abs_effect",
) -> dict[str, Any]:
    """Score one locator's output against one per-head ground truth (:func:`truth_view`).

    ``precision_at_k`` = |S ∩ T_k| / |S| with T_k the k = |S| heads of largest
    ``abs_effect`` among the searched ``layers`` (all layers when None): NaN when S is
    empty. ``contains_top1``: S holds the head of largest ``abs_effect`` over all layers.
    ``spearman`` (``scipy.stats.spearmanr``) between the locator's ``scores`` of the searched
    heads and ``truth_column`` (``effect`` when the score is signed the same way as the
    effect, e.g. LTC's F_W − F_C against the pro-bias effect); NaN without scores or with
    fewer than 3 scored heads.
    """
    from scipy.stats import spearmanr

    selected = [str(h) for h in selected]
    searched = truth if layers is None else truth[truth["layer"].isin(list(layers))]
    searched = searched.sort_values(["abs_effect", "layer", "head"], ascending=[False, True, True])
    k = len(selected)
    top = searched["head_id"].head(k).tolist()
    unknown = sorted(set(selected) - set(truth["head_id"]))
    if unknown:
        raise ValueError(f"selected heads {unknown} are not in the ground truth")
    top1 = truth.sort_values(["abs_effect", "layer", "head"], ascending=[False, True, True])
    top1_head = str(top1["head_id"].iloc[0])
    rho = p = np.nan
    n_scored = 0
    if scores:
        common = [h for h in searched["head_id"] if h in scores]
        n_scored = len(common)
        if n_scored >= 3:
            x = np.array([scores[h] for h in common], dtype=np.float64)
            y = searched.set_index("head_id").loc[common, truth_column].to_numpy(np.float64)
            if np.ptp(x) > 0 and np.ptp(y) > 0:
                res = spearmanr(x, y)
                rho, p = float(res.statistic), float(res.pvalue)
    return {
        "layers_searched": "all"
        if layers is None
        else ";".join(str(int(x)) for x in sorted(layers)),
        "n_selected": k,
        "selected": ";".join(selected),
        "truth_top": ";".join(top),
        "precision_at_k": len(set(selected) & set(top)) / k if k else np.nan,
        "top1_head": top1_head,
        "contains_top1": top1_head in selected,
        "spearman": rho,
        "spearman_p": p,
        "n_scored": n_scored,
    }


def locator_selections(name: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The head selections of one located-heads file, each as ``{"variant", "attribute"
    (None = the spurious attribute), "selected", "scores", "layers", "truth_column",
    "score"}``.

    ``ltc`` / ``ltc_full``: S with F_W − F_C of every head (signed like the pro-bias effect);
    ``audit``: per protected attribute and variant the top-k and greedy sets, searched in
    the audit's candidate layers; ``refineclip`` (a phase-1 file): S* with the scores of the
    list it came from.
    """
    out: list[dict[str, Any]] = []
    method = spec.get("method", "")
    if "spurious" in spec and "frequencies" in spec:
        scores = {
            f["head"]: float(f["f_wrong"]) - float(f["f_correct"]) for f in spec["frequencies"]
        }
        out.append(
            {
                "variant": spec.get("variant", name),
                "attribute": None,
                "selected": [h["head"] for h in spec["spurious"]],
                "scores": scores,
                "layers": None,
                "truth_column": "effect",
                "score": "F_W - F_C",
            }
        )
    elif method == "fairness_audit":
        for attr, entry in spec["attributes"].items():
            for variant, sets in entry.items():
                if not isinstance(sets, Mapping) or "top_k" not in sets:
                    continue
                for which in ("top_k", "greedy"):
                    out.append(
                        {
                            "variant": f"{variant}/{which}",
                            "attribute": attr,
                            "selected": list(sets[which]),
                            "scores": None,
                            "layers": list(spec["layers"]),
                            "truth_column": "abs_effect",
                            "score": "",
                        }
                    )
    elif method == "refineclip_phase1":
        sel = spec["selected"]
        scores = None
        col = f"DE_{sel.get('score')}" if sel.get("score") else None
        if col and spec.get("scores"):
            scores = {
                r["head"]: float(r[col])
                for r in spec["scores"]
                if r["direction"] == sel.get("direction") and r.get(col) is not None
            }
        out.append(
            {
                "variant": name,
                "attribute": None,
                "selected": list(sel["heads"]),
                "scores": scores,
                "layers": list(spec["score_layers"])
                if isinstance(spec.get("score_layers"), list)
                else None,
                "truth_column": "abs_effect",
                "score": col or "",
            }
        )
    else:
        raise ValueError(f"{name}: not a located-heads file this function knows ({method!r})")
    return out


def score_locators(
    truth_table: pd.DataFrame,
    located: Mapping[str, Mapping[str, Any]],
    spurious_attribute: str = "background",
) -> pd.DataFrame:
    """Every selection of every located-heads file in ``located`` ({name: parsed json})
    scored against the ground truth (:func:`score_selection`); :data:`SCORE_COLUMNS`.
    Attributes without ground truth (e.g. an audit attribute the dataset does not plant)
    are left out."""
    rows = []
    have = set(truth_table["attribute"])
    for name, spec in located.items():
        for sel in locator_selections(name, spec):
            attr = sel["attribute"] or spurious_attribute
            if attr not in have:
                continue
            truth, kind = truth_view(truth_table, attr)
            res = score_selection(
                truth,
                sel["selected"],
                sel["scores"],
                layers=sel["layers"],
                truth_column=sel["truth_column"],
            )
            rows.append(
                {
                    "locator": name,
                    "variant": sel["variant"],
                    "attribute": attr,
                    "kind": kind,
                    **res,
                    "score": sel["score"],
                }
            )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
