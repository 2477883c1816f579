"""Mean ablation in logit space, and Cramér's V of the predictions (METHODS §1.3, §6.7, §6.8).

A prediction is an arg-max of ⟨e(x), t̂_c⟩, and mean-ablating a head set S changes the logits
by Σ_{h∈S} (μ_h − ĉ_h(x))·T. So the per-head class logits (:class:`HeadLogits`) and the
means' logits stand in for the D-dimensional heads, and :class:`LogitDeltas` ablates any
subset of a head pool by adding precomputed changes. The means: :func:`mean_heads` (in-memory
rows) and :class:`BlockMean` (streamed, bit-identical). :class:`VCalc` gives V(pred, attr) of
many predictions of the same images, :func:`accuracy` their accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import metrics
from ..heads import HeadId, head_position, head_str, parse_head
from ..ltc import head_means

_BLOCK = 1024  # images per block when reducing over a subset of rows


def _row_index(rows: np.ndarray | None, n: int) -> np.ndarray:
    """Row indices [k] of ``rows``: ``None`` (every row), a bool mask [n] or indices."""
    if rows is None:
        return np.arange(n)
    r = np.asarray(rows)
    if r.dtype != bool:
        r = r.astype(np.int64)
        if r.size and not 0 <= r.min() <= r.max() < n:
            raise ValueError(f"row indices outside 0..{n - 1}")
        return r
    if r.shape != (n,):
        raise ValueError(f"row mask of shape {r.shape} for {n} images")
    return np.flatnonzero(r)


def mean_heads(heads: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean of every head over the images ``rows`` (mask or indices): the ablation means
    [L, H, D] float32, float64 accumulation, as :class:`BlockMean` adds them when streamed
    (equal to :func:`clipbias.methods.ltc.head_means` of ``heads[rows]``, which it is for
    ``rows=None``, to rounding); one block of rows is copied at a time."""
    heads = np.asarray(heads)
    if rows is None:
        return head_means(heads)
    sel = _row_index(rows, heads.shape[0])
    acc = BlockMean(heads.shape[1:])
    for block in np.array_split(sel, range(_BLOCK, len(sel), _BLOCK)):
        acc.update(heads[block])
    return acc.mean()


class BlockMean:
    """Running mean of rows [..., shape] added in order, float64 accumulation, the result
    float32: each block of :data:`_BLOCK` rows summed row after row, then the blocks, however
    the rows arrive (bit-identical to summing ``heads[block].sum(axis=0, dtype=float64)``
    block by block, the in-memory reduction of ``tests/unit/audit_reference.py``)."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.acc = np.zeros(tuple(shape), dtype=np.float64)
        self._block = np.zeros(tuple(shape), dtype=np.float64)
        self._in_block = 0
        self.count = 0

    def update(self, rows: np.ndarray) -> None:
        for row in rows:
            self._block += row
            self._in_block += 1
            if self._in_block == _BLOCK:
                self.acc += self._block
                self._block[...] = 0.0
                self._in_block = 0
        self.count += len(rows)

    def mean(self) -> np.ndarray:
        if not self.count:
            raise ValueError("no images to average the heads over")
        acc = self.acc + self._block if self._in_block else self.acc
        return (acc / self.count).astype(np.float32)


@dataclass
class HeadLogits:
    """Per-image direct class logits of every head of ``layers``, and the un-ablated logits:
    all that mean ablation and the predictions need (METHODS §1.3, §6.7).

    A prediction is the arg-max over classes of ⟨e(x), t̂_c⟩ / ‖e(x)‖; the positive factor
    1/‖e‖ does not change it, and the logits are linear in the head contributions. So
    mean-ablating a set S, e′ = e − Σ_{h∈S} (ĉ_h − μ_h), gives the logits
    ``base + Σ_{h∈S} (μ_h·T − logits_h)``: the class logits ``logits_h(x) = ĉ_h(x)·T`` [C]
    stand in for the D-dimensional heads (:class:`LogitDeltas`), and the means for a head
    enter only as μ_h·T (:meth:`mean_logits`).

    ``base`` [N, C] float64 = e(x)·T with e = Σ heads + rest; ``logits`` [L, H, N, C] float64
    (float64 so that ``mean_logits − logits`` rounds like ``(μ − ĉ)·T``); ``classifier``
    [D, C] float64. Memory N·L·H·C·8 bytes: for the last 4 layers of ViT-H-14 and 42 classes
    21.5 kB per image instead of the 262 kB of the heads.
    """

    layers: list[int]
    classifier: np.ndarray
    base: np.ndarray
    logits: np.ndarray

    @classmethod
    def empty(
        cls, n: int, layers: Sequence[int], n_heads: int, classifier: np.ndarray
    ) -> HeadLogits:
        """Preallocated for ``n`` images, filled batch by batch with :meth:`fill`."""
        T = np.asarray(classifier, dtype=np.float64)
        c = T.shape[1]
        layers = [int(x) for x in layers]
        return cls(layers, T, np.empty((n, c)), np.empty((len(layers), n_heads, n, c)))

    @classmethod
    def from_heads(
        cls, heads: np.ndarray, rest: np.ndarray, classifier: np.ndarray, layers: Sequence[int]
    ) -> HeadLogits:
        """From in-memory ``heads`` [N, L, H, D] of ``layers`` and ``rest`` [N, D]."""
        heads = np.asarray(heads)
        rest = np.asarray(rest)
        if heads.ndim != 4 or rest.shape != (heads.shape[0], heads.shape[-1]):
            raise ValueError(
                f"heads {heads.shape} must be [N, L, H, D] and rest {rest.shape} [N, D]"
            )
        if len(layers) != heads.shape[1]:
            raise ValueError(f"{len(layers)} layer numbers for {heads.shape[1]} stored layers")
        out = cls.empty(heads.shape[0], layers, heads.shape[2], classifier)
        for start in range(0, heads.shape[0], _BLOCK):
            part = slice(start, start + _BLOCK)
            out.fill(start, heads[part], rest[part])
        return out

    def fill(self, start: int, heads: np.ndarray, rest: np.ndarray) -> None:
        """Rows ``start ..`` from ``heads`` [n, L, H, D] (the heads of ``layers``) and ``rest``
        [n, D] (everything else of the embedding)."""
        n = heads.shape[0]
        part = slice(start, start + n)
        emb = heads.sum(axis=(1, 2), dtype=np.float64) + rest
        self.base[part] = emb @ self.classifier
        for li in range(len(self.layers)):
            self.logits[li, :, part] = np.swapaxes(
                heads[:, li].astype(np.float64) @ self.classifier, 0, 1
            )

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.logits.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.base.shape[1])

    def mean_logits(self, means: np.ndarray) -> np.ndarray:
        """μ_h·T [L, H, C] float64 of the ablation means ``means`` [L, H, D] (float32 from
        :func:`mean_heads` / :class:`BlockMean`, widened exactly)."""
        means = np.asarray(means)
        if means.shape[:2] != self.logits.shape[:2]:
            raise ValueError(f"means {means.shape} do not match the heads {self.logits.shape[:2]}")
        return means.astype(np.float64) @ self.classifier


class LogitDeltas:
    """Mean ablation of any subset of a head pool by adding precomputed logit changes.

    Mean-ablating head h replaces ĉ_h(x) by the reference mean m_h, which changes the logits
    by Δ_h(x) = m_h·T − ĉ_h(x)·T (METHODS §1.3, §6.7: direct path, frozen LN statistics).
    The changes of a set add up, so ``logits(S) = base + Σ_{h∈S} Δ_h``. ``base`` [N, C]
    float64, ``deltas`` [K, N, C] (``dtype``, default float32), from the per-head class
    logits ``logits`` (:class:`HeadLogits`) and the means' logits ``mean_logits`` [L, H, C]
    (:meth:`HeadLogits.mean_logits`). ``rows`` (bool mask or indices) restricts the images.
    :meth:`from_heads` builds one from in-memory heads.
    """

    def __init__(
        self,
        logits: HeadLogits,
        pool: Iterable[str | HeadId],
        mean_logits: np.ndarray,
        dtype: Any = np.float32,
        rows: np.ndarray | None = None,
    ) -> None:
        mean_logits = np.asarray(mean_logits, dtype=np.float64)
        if mean_logits.shape != (*logits.logits.shape[:2], logits.n_classes):
            raise ValueError(
                f"mean logits {mean_logits.shape} must be [L, H, C] = "
                f"{(*logits.logits.shape[:2], logits.n_classes)}"
            )
        sel = slice(None) if rows is None else _row_index(rows, logits.n)
        self.base = logits.base[sel]
        if rows is None:
            self.base = self.base.copy()
        self.layers = list(logits.layers)
        self.pool: list[HeadId] = list(dict.fromkeys(parse_head(h) for h in pool))
        self._index = {h: i for i, h in enumerate(self.pool)}
        self.deltas = np.empty((len(self.pool), *self.base.shape), dtype=dtype)
        for i, hid in enumerate(self.pool):
            li, hh = head_position(hid, self.layers)
            self.deltas[i] = mean_logits[li, hh][None, :] - logits.logits[li, hh][sel]

    @classmethod
    def from_heads(
        cls, heads: np.ndarray, rest: np.ndarray, classifier: np.ndarray, layers: Sequence[int],
        pool: Iterable[str | HeadId], means: np.ndarray, dtype: Any = np.float32,
        rows: np.ndarray | None = None,
    ) -> LogitDeltas:  # fmt: skip
        """From in-memory ``heads`` [N, L, H, D] of ``layers``, ``rest`` [N, D], the
        ``classifier`` [D, C] and the ablation ``means`` [L, H, D] (see
        :func:`clipbias.methods.ltc.head_means`)."""
        heads = np.asarray(heads)
        means = np.asarray(means)
        if heads.ndim != 4 or means.shape != heads.shape[1:]:
            raise ValueError(
                f"heads {heads.shape} must be [N, L, H, D] and means {means.shape} [L, H, D] "
                "(see clipbias.methods.ltc.head_means)"
            )
        if np.asarray(rest).shape != (heads.shape[0], heads.shape[-1]):
            raise ValueError(
                f"rest {np.asarray(rest).shape} must be [N, D] for heads {heads.shape}"
            )
        logits = HeadLogits.from_heads(heads, rest, classifier, layers)
        return cls(logits, pool, logits.mean_logits(means), dtype, rows)

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    def index(self, head_set: Iterable[str | HeadId]) -> list[int]:
        """Positions of ``head_set`` in the pool."""
        hids = [parse_head(h) for h in head_set]
        outside = [head_str(h) for h in hids if h not in self._index]
        if outside:
            raise ValueError(f"head {outside[0]} is not in the ablation pool")
        return [self._index[h] for h in hids]

    def logits(self, head_set: Iterable[str | HeadId] = ()) -> np.ndarray:
        """Class logits [N, C] float64 after mean-ablating ``head_set``."""
        idx = self.index(head_set)
        return (
            self.base + self.deltas[idx].sum(axis=0, dtype=np.float64) if idx else self.base.copy()
        )

    def predict(self, head_set: Iterable[str | HeadId] = ()) -> np.ndarray:
        """Arg-max predictions [N] int64 after mean-ablating ``head_set``."""
        return np.argmax(self.logits(head_set), axis=1).astype(np.int64)


class VCalc:
    """Cramér's V(pred, attr) (METHODS §6.8) for fixed attribute codes, fast enough to call
    once per ablated head set: a bincount contingency table of the images with a valid code
    (and in ``mask``) and :func:`clipbias.metrics.cramers_v_counts`."""

    def __init__(self, attr: np.ndarray, n_classes: int, mask: np.ndarray | None = None):
        a = np.asarray(attr, dtype=np.int64)
        keep = a >= 0
        if mask is not None:
            keep &= np.asarray(mask, dtype=bool)
        if not keep.any():
            raise ValueError("no image with a valid attribute value (attr >= 0)")
        self.keep = keep
        vals, self.code = np.unique(a[keep], return_inverse=True)
        self.n_cols = len(vals)
        self.n_rows = int(n_classes)

    def __call__(self, pred: np.ndarray, bias_correction: bool = False) -> float:
        flat = np.asarray(pred)[self.keep] * self.n_cols + self.code
        t = np.bincount(flat, minlength=self.n_rows * self.n_cols).reshape(self.n_rows, -1)
        return metrics.cramers_v_counts(t, bias_correction)


def accuracy(pred: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Top-1 accuracy of ``pred`` (over the images in ``mask``, default all)."""
    ok = np.asarray(pred) == np.asarray(labels)
    return float(ok[mask].mean() if mask is not None else ok.mean())
