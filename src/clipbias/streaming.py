"""Whole-split results from one streamed pass over feature shards, memory O(batch + result).

Every stage that reads features goes through :meth:`clipbias.features.FeatureSet.iter_batches`
(only the layers it needs, one bounded batch at a time) and keeps only per-row results of a
few numbers (margins [N, L, H], winners [N], predictions [N]) or fixed-size statistics
(per-head sums and Gram matrices). Nothing here holds a split's heads array, so the memory of
a stage does not grow with the number of rows (``tests/integration/test_memory.py``).

* :func:`map_batches`: apply a per-batch function and concatenate its per-row outputs;
* :func:`ltc_samples`: LTC's per-sample top-1 heads and zero-shot predictions (METHODS
  §4.3), with zero-shot group inference (§4.8); counting is
  :func:`clipbias.methods.ltc.locate_from_winners`;
* :class:`HeadMoments` / :func:`head_moments`: per-head mean and (un)centred Gram matrices in
  float64, TextSpan's sufficient statistics (METHODS §3.3;
  :func:`clipbias.methods.textspan.textspan_heads_from_moments`);
* :func:`ground_truth_margins`: the planted ground truth's per-head class margins.

Pure numpy/pyarrow (no torch): these run in the analysis env.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipbias.features import FeatureError, FeatureSet

log = logging.getLogger(__name__)

#: fn(index, heads [n, L, H, D], rest [n, D] or None) -> per-row arrays, each [n, ...]
BatchFn = Callable[[pd.DataFrame, np.ndarray, np.ndarray | None], tuple[np.ndarray, ...]]


def map_batches(
    fs: FeatureSet,
    fn: BatchFn,
    *,
    layers: Sequence[int] | None = None,
    split: str | None = None,
    rest: bool = True,
    batch_rows: int | None = None,
) -> tuple[pd.DataFrame, tuple[np.ndarray, ...]]:
    """Run ``fn`` on every batch of ``split`` and concatenate its per-row outputs.

    Returns ``(index of all rows, (output_0 [N, ...], output_1, ...))`` in storage order.
    ``fn`` must return arrays whose first axis is the batch's rows; only those (and the
    index columns) are kept, so memory is O(batch + outputs).
    """
    idx_parts: list[pd.DataFrame] = []
    out_parts: list[tuple[np.ndarray, ...]] = []
    for idx, heads, rst in fs.iter_batches(layers, split, batch_rows=batch_rows, rest=rest):
        res = fn(idx, heads, rst)
        if not isinstance(res, tuple):
            res = (res,)
        for a in res:
            if len(a) != len(idx):
                raise ValueError(f"batch function returned {len(a)} rows for {len(idx)}")
        idx_parts.append(idx)
        out_parts.append(tuple(np.asarray(a) for a in res))
    if not idx_parts:
        raise FeatureError(f"no rows for split {split!r} in {fs.folder}")
    index = pd.concat(idx_parts, ignore_index=True)
    outs = tuple(np.concatenate(col) for col in zip(*out_parts, strict=True))
    return index, outs


@dataclass
class LTCSamples:
    """Per-sample LTC quantities of one split (all [N], storage order).

    ``winners``: flat id (``layer_index * H + head``) of the head with the largest margin δ;
    ``preds``: zero-shot predictions; ``groups_hat`` / ``attr_hat``: inferred pseudo-groups
    and spurious attribute (None unless attribute texts were given).
    """

    index: pd.DataFrame
    winners: np.ndarray
    preds: np.ndarray
    groups_hat: np.ndarray | None = None
    attr_hat: np.ndarray | None = None


def ltc_samples(
    fs: FeatureSet,
    classifier: np.ndarray,
    split: str,
    attr_emb: np.ndarray | None = None,
    candidate_columns: Sequence[str] | None = None,
    batch_rows: int | None = None,
    label_map: np.ndarray | None = None,
) -> LTCSamples:
    """One pass over ``split`` (all stored layers): per batch the margins δ of every head
    (:func:`clipbias.methods.ltc.head_margins`), the top-1 head and the prediction; with
    ``attr_emb`` [V, D] (unit attribute prompts) also the zero-shot attribute and
    pseudo-groups of :func:`clipbias.methods.ltc.infer_groups`. Only [N]-sized results are
    kept (the margins of a batch are dropped after its argmax). ``label_map``: dataset label
    -> classifier column (``clipbias.labels``), e.g. CounterAnimal's ImageNet indices."""
    from clipbias.methods import ltc

    def per_batch(idx, heads, rest):
        labels = idx["label"].to_numpy()
        if label_map is not None:
            labels = np.asarray(label_map)[labels]
        cand = (
            np.stack([idx[c].to_numpy(dtype=np.int64) for c in candidate_columns], axis=1)
            if candidate_columns
            else None
        )
        delta, preds, _ = ltc.head_margins(heads, rest, classifier, labels, cand)
        out = (ltc.top_heads(delta), preds)
        if attr_emb is not None:
            emb = heads.sum((1, 2)) + rest
            out += ltc.infer_groups(emb, attr_emb.T, labels)
        return out

    index, outs = map_batches(fs, per_batch, split=split, batch_rows=batch_rows)
    return LTCSamples(index, *outs)


@dataclass
class HeadMoments:
    """Running per-head first and second moments of head contributions, float64.

    Rows are shifted by the first batch's mean before accumulating (``sums`` = Σ (c − s),
    ``squares`` = Σ (c − s)(c − s)^T per head), so the centred Gram matrix does not suffer
    cancellation when a head's mean is large against its spread. Memory: L·H·D² float64
    (512 MiB for the last 4 layers of ViT-H-14).
    """

    layers: list[int]
    n_heads: int
    dim: int
    count: int = 0
    shift: np.ndarray | None = field(default=None, repr=False)
    sums: np.ndarray | None = field(default=None, repr=False)
    squares: np.ndarray | None = field(default=None, repr=False)

    def update(self, heads: np.ndarray) -> None:
        """Add the rows of ``heads`` [n, L, H, D]."""
        heads = np.asarray(heads)
        n, n_layers, n_heads, dim = heads.shape
        if (n_layers, n_heads, dim) != (len(self.layers), self.n_heads, self.dim):
            raise ValueError(
                f"heads of shape {heads.shape[1:]} for moments of "
                f"{(len(self.layers), self.n_heads, self.dim)}"
            )
        if n == 0:
            return
        if self.shift is None:
            self.shift = heads.mean(axis=0, dtype=np.float64)
            self.sums = np.zeros_like(self.shift)
            self.squares = np.zeros((n_layers, n_heads, dim, dim), dtype=np.float64)
        for li in range(n_layers):
            for h in range(n_heads):
                x = heads[:, li, h, :].astype(np.float64) - self.shift[li, h]
                self.sums[li, h] += x.sum(axis=0)
                self.squares[li, h] += x.T @ x
        self.count += n

    def add(self, other: HeadMoments) -> None:
        """Merge the rows of ``other`` (moments of the same heads, another row set) into
        these: re-expressed around this shift s, Σ (c − s) = t′ + n′δ and
        Σ (c − s)(c − s)^T = Q′ + t′δ^T + δt′^T + n′δδ^T with δ = s′ − s."""
        if (other.layers, other.n_heads, other.dim) != (self.layers, self.n_heads, self.dim):
            raise ValueError("moments of different heads cannot be merged")
        if not other.count:
            return
        if not self.count:
            self.shift, self.sums = other.shift.copy(), other.sums.copy()
            self.squares, self.count = other.squares.copy(), other.count
            return
        for li in range(len(self.layers)):
            for h in range(self.n_heads):
                d = other.shift[li, h] - self.shift[li, h]
                t = other.sums[li, h]
                td = np.outer(t, d)
                self.squares[li, h] += other.squares[li, h] + td + td.T
                self.squares[li, h] += other.count * np.outer(d, d)
                self.sums[li, h] += t + other.count * d
        self.count += other.count

    def _check(self) -> None:
        if not self.count:
            raise ValueError("no rows were added to these moments")

    def mean(self, li: int, h: int) -> np.ndarray:
        """μ [D] of head ``h`` of the ``li``-th stored layer (index into ``layers``)."""
        self._check()
        return self.shift[li, h] + self.sums[li, h] / self.count

    def centred_gram(self, li: int, h: int) -> np.ndarray:
        """C_c^T C_c [D, D] = Σ (c − μ)(c − μ)^T."""
        self._check()
        t = self.sums[li, h]
        return self.squares[li, h] - np.outer(t, t) / self.count

    def gram(self, li: int, h: int) -> np.ndarray:
        """C^T C [D, D] (uncentred)."""
        self._check()
        s, t = self.shift[li, h], self.sums[li, h]
        st = np.outer(s, t)
        return self.squares[li, h] + st + st.T + self.count * np.outer(s, s)


def head_moments(
    fs: FeatureSet,
    layers: Sequence[int],
    split: str | None = None,
    batch_rows: int | None = None,
) -> HeadMoments:
    """:class:`HeadMoments` of the heads of ``layers`` over ``split``, one streamed pass
    (only those layers' columns are read; the embedding is not)."""
    moments = HeadMoments([int(x) for x in layers], fs.n_heads, fs.dim)
    for _, heads, _ in fs.iter_batches(layers, split, batch_rows=batch_rows, rest=False):
        moments.update(heads)
    if not moments.count:
        raise FeatureError(f"no rows for split {split!r} in {fs.folder}")
    return moments


def ground_truth_margins(
    fs: FeatureSet,
    classifier: np.ndarray,
    split: str,
    layers: Sequence[int] | None = None,
    batch_rows: int | None = None,
    label_map: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """(index, margins [N, L, H] float64) of :func:`clipbias.ground_truth.head_margins`,
    batch by batch (``label_map``: dataset label -> classifier column)."""
    from clipbias.ground_truth import head_margins

    def per_batch(idx, heads, _):
        labels = idx["label"].to_numpy()
        if label_map is not None:
            labels = np.asarray(label_map)[labels]
        return (head_margins(heads, classifier, labels).astype(np.float64),)

    index, (margins,) = map_batches(
        fs, per_batch, layers=layers, split=split, rest=False, batch_rows=batch_rows
    )
    return index, margins
