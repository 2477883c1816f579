"""One streamed pass over a cell: everything the audit needs from the heads (docs/DESIGN.md,
"Memory"). :class:`AuditAccumulator` takes the batches of the cell's rows in order and keeps, per
row, the class logits of every terminal-layer head and the CAV projections of every stored
head, and per registered row set the ablation means, the TextSpan moments and the
stereotype-logit sums (:class:`AuditStats`); none of these has both an image and a D axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ablation import BlockMean, HeadLogits
from .stereotype import stereotype_logit_sums, stereotype_selection


@dataclass
class AuditStats:
    """What the audit of one cell needs from its head contributions (:class:`AuditAccumulator`).

    ``logits``: :class:`HeadLogits` of the candidate (terminal) layers, N·L_t·H·C float64;
    ``proj`` [N, L, H, K] float32: every stored head projected on each CAV column (METHODS
    §6.4 s_{l,h}(x) = ⟨ĉ_{l,h}(x), v⟩; K = the cell's CAVs, 1-4 per attribute, so N·L·H·K·4
    bytes: 20,000 images of ViT-L-14 with all 24 layers and 5 CAVs make 150 MB). Per
    registered row set (by the key its ``add_*`` call returned): ``means`` [L_t, H, D]
    float32 (:class:`BlockMean`), ``moments`` (:class:`clipbias.streaming.HeadMoments` of the
    terminal heads, L_t·H·D² float64 each), ``stereotype`` (sums [L_t, H], count) of
    :func:`stereotype_logit_sums`. None of these has both an image and a D axis.
    """

    logits: HeadLogits
    proj: np.ndarray
    means: list[np.ndarray]
    moments: list[Any]
    stereotype: list[tuple[np.ndarray, int]]


class AuditAccumulator:
    """Accumulates :class:`AuditStats` from the batches of one pass over a cell's N rows.

    ``layers``: the stored layers of each batch's heads [n, L, H, D]; ``terminal``: the
    candidate layers (a subset) whose class logits, means, moments and stereotype sums are
    kept; ``classifier`` [D, C]; ``cav_matrix`` [D, K] (one column per CAV). Before the
    first :meth:`update`, register the row sets (bool masks [N]; ``None`` = every row) whose
    ablation means (:meth:`add_means`), TextSpan moments (:meth:`add_moments`) and
    stereotype-logit sums (:meth:`add_stereotype`) are wanted; equal masks share one
    accumulator. Then :meth:`update` with every batch, in row order, and :meth:`finish`.

    The terminal rows of a batch give: the un-ablated logits (the embedding = the terminal
    heads + rest, rest = everything else, as the in-memory stage summed it), the per-head
    class logits, the mean sums (row after row in blocks, bit-identical to
    :func:`mean_heads`), the stereotype sums (over the batch's images that
    :func:`stereotype_selection` picks from its un-ablated predictions) and the moments
    (through a buffer of ``moment_rows`` rows, so that each Gram update is a matrix product
    of a useful size even when batches of all stored layers are small). When the moments of
    every row and of some mask M are both wanted, M and its complement are accumulated and
    merged at the end (each row is added once).
    """

    def __init__(
        self,
        n_rows: int,
        layers: Sequence[int],
        terminal: Sequence[int],
        n_heads: int,
        dim: int,
        classifier: np.ndarray,
        cav_matrix: np.ndarray,
        moment_rows: int = 256,
    ) -> None:
        self.n = int(n_rows)
        self.layers = [int(x) for x in layers]
        self.terminal = [int(x) for x in terminal]
        missing = sorted(set(self.terminal) - set(self.layers))
        if missing:
            raise ValueError(f"terminal layers {missing} are not among the stored {self.layers}")
        self._t_pos = [self.layers.index(x) for x in self.terminal]
        self._others = [i for i in range(len(self.layers)) if i not in self._t_pos]
        self.n_heads, self.dim = int(n_heads), int(dim)
        self.classifier = np.asarray(classifier, dtype=np.float64)
        self._v = np.asarray(cav_matrix).astype(np.float32)
        self.logits = HeadLogits.empty(self.n, self.terminal, self.n_heads, self.classifier)
        self.proj = np.empty((self.n, len(self.layers), self.n_heads, self._v.shape[1]), np.float32)
        self._mean_masks: list[np.ndarray] = []
        self._moment_masks: list[np.ndarray] = []
        self._stereo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._moment_rows = int(moment_rows)
        self._row = 0
        self._started = False

    def _mask(self, rows: np.ndarray | None) -> np.ndarray:
        if rows is None:
            return np.ones(self.n, dtype=bool)
        m = np.asarray(rows, dtype=bool)
        if m.shape != (self.n,):
            raise ValueError(f"row mask of shape {m.shape} for {self.n} rows")
        return m

    def _register(self, masks: list[np.ndarray], rows: np.ndarray | None) -> int:
        if self._started:
            raise RuntimeError("register row sets before the first update")
        m = self._mask(rows)
        for i, other in enumerate(masks):
            if np.array_equal(m, other):
                return i
        masks.append(m)
        return len(masks) - 1

    def add_means(self, rows: np.ndarray | None) -> int:
        """Ablation means of the terminal heads over ``rows``; returns the key."""
        return self._register(self._mean_masks, rows)

    def add_moments(self, rows: np.ndarray | None) -> int:
        """TextSpan moments of the terminal heads over ``rows``; returns the key."""
        return self._register(self._moment_masks, rows)

    def add_stereotype(self, labels: np.ndarray, attr: np.ndarray, stereo_map: np.ndarray) -> int:
        """Stereotype-logit sums over the rows :func:`stereotype_selection` picks with
        ``labels``, ``attr`` [N] (-1 outside the locate half) and ``stereo_map`` [C, V];
        returns the key."""
        if self._started:
            raise RuntimeError("register row sets before the first update")
        y = np.asarray(labels, dtype=np.int64)
        a = np.asarray(attr, dtype=np.int64)
        if y.shape != (self.n,) or a.shape != (self.n,):
            raise ValueError(f"labels and attr need {self.n} entries")
        self._stereo.append((y, a, np.asarray(stereo_map, dtype=bool)))
        return len(self._stereo) - 1

    def _start(self) -> None:
        from clipbias.streaming import HeadMoments

        self._started = True
        shape = (len(self.terminal), self.n_heads, self.dim)
        self._means = [BlockMean(shape) for _ in self._mean_masks]
        self._stereo_sums = [np.zeros(shape[:2]) for _ in self._stereo]
        self._stereo_counts = [0 for _ in self._stereo]
        # moments: accumulate each mask, except "every row" next to another mask M, which
        # becomes M's complement here and M ∪ complement in finish()
        self._acc_masks = list(self._moment_masks)
        self._merge: tuple[int, int] | None = None
        full = [bool(m.all()) for m in self._moment_masks]
        if any(full) and not all(full):
            k_all, k_base = full.index(True), full.index(False)
            self._acc_masks[k_all] = ~self._moment_masks[k_base]
            self._merge = (k_all, k_base)
        self._moments = [
            HeadMoments(self.terminal, self.n_heads, self.dim) for _ in self._acc_masks
        ]
        if self._moments:
            self._buf = np.empty((self._moment_rows, *shape), dtype=np.float32)
            self._buf_rows = np.empty(self._moment_rows, dtype=np.int64)
            self._buf_n = 0

    def update(self, heads: np.ndarray, rest: np.ndarray) -> None:
        """Add the next batch: ``heads`` [n, L, H, D] of ``layers`` and ``rest`` [n, D]
        (embedding minus those heads), float32."""
        if not self._started:
            self._start()
        heads = np.asarray(heads)
        n = heads.shape[0]
        if heads.shape[1:] != (len(self.layers), self.n_heads, self.dim):
            raise ValueError(f"batch heads {heads.shape[1:]} for layers {self.layers}")
        start = self._row
        if start + n > self.n:
            raise ValueError(f"more than the {self.n} registered rows")
        part = slice(start, start + n)
        ht = heads[:, self._t_pos]  # [n, L_t, H, D] copy
        rest_t = (rest + heads[:, self._others].sum(axis=(1, 2), dtype=np.float64)).astype(
            np.float32
        )
        self.logits.fill(start, ht, rest_t)
        self.proj[part] = np.einsum("nlhd,dk->nlhk", heads, self._v)
        for mask, bm in zip(self._mean_masks, self._means, strict=True):
            m = mask[part]
            bm.update(ht if m.all() else ht[m])
        if self._stereo:
            pred = np.argmax(self.logits.base[part], axis=1)
            for k, (y, a, smap) in enumerate(self._stereo):
                sel = stereotype_selection(pred, y[part], a[part], smap)
                if sel.any():
                    self._stereo_sums[k] += stereotype_logit_sums(
                        ht[sel], self.classifier, y[part][sel], pred[sel]
                    )
                    self._stereo_counts[k] += int(sel.sum())
        if self._moments:
            pos = 0
            while pos < n:
                take = min(self._moment_rows - self._buf_n, n - pos)
                self._buf[self._buf_n : self._buf_n + take] = ht[pos : pos + take]
                self._buf_rows[self._buf_n : self._buf_n + take] = np.arange(take) + start + pos
                self._buf_n += take
                pos += take
                if self._buf_n == self._moment_rows:
                    self._flush()
        self._row += n

    def _flush(self) -> None:
        rows, x = self._buf_rows[: self._buf_n], self._buf[: self._buf_n]
        for mask, mom in zip(self._acc_masks, self._moments, strict=True):
            m = mask[rows]
            if m.all():
                mom.update(x)
            elif m.any():
                mom.update(x[m])
        self._buf_n = 0

    def finish(self) -> AuditStats:
        """The statistics, after every row was added."""
        if not self._started:
            self._start()
        if self._row != self.n:
            raise ValueError(f"{self._row} rows were added, expected {self.n}")
        if self._moments:
            self._flush()
            del self._buf, self._buf_rows
            if self._merge is not None:
                k_all, k_base = self._merge
                self._moments[k_all].add(self._moments[k_base])
        return AuditStats(
            self.logits,
            self.proj,
            [bm.mean() for bm in self._means],
            self._moments,
            list(zip(self._stereo_sums, self._stereo_counts, strict=True)),
        )
