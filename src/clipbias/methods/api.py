"""What a registered method receives and returns (see :mod:`clipbias.methods.registry`).

A method function ``fn(ctx: MethodContext, **params) -> MethodOutput`` reads the stored
features only through ``ctx``: whole-split statistics come from streamed aggregates
(:meth:`MethodContext.head_means`), and test predictions from :meth:`MethodContext.predict`,
which edits and classifies the test split one batch at a time. So a method's memory is
O(batch + result), independent of the split size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipbias.features import FeatureSet
from clipbias.methods.insight import insight_basis
from clipbias.methods.texts import unit_rows

log = logging.getLogger(__name__)

#: edit(heads [n, L, H, D], rest [n, D], idx) -> embeddings [n, D]
EditFn = Callable[[np.ndarray, np.ndarray, pd.DataFrame], np.ndarray]


@dataclass
class MethodOutput:
    """Predictions of one method on the test split (rows in feature-store order).

    ``pred`` [N] class ids (None for random controls, which have ``draws`` [n_draws, N] and
    one ``draw_meta`` dict per draw); ``meta``: JSON-serialisable facts about the run (heads
    used, parameters) stored in the predictions file.
    """

    pred: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    draws: np.ndarray | None = None
    draw_meta: list[dict[str, Any]] | None = None


@dataclass
class MethodContext:
    """Everything a method may read: features, classifier, texts, located heads, splits."""

    feature_dir: Path
    classifier: np.ndarray  # [D, C] unit columns
    class_names: list[str]
    dataset_meta: dict[str, Any]
    locate_split: str
    test_split: str
    seed: int = 42
    texts: Mapping[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    text_spec: Mapping[str, Any] = field(default_factory=dict)
    located: Mapping[str, Any] = field(default_factory=dict)
    batch_rows: int | None = None  # None: from the row width (FeatureSet.batch_rows)
    eval_splits: Sequence[str] = ()
    _features: FeatureSet | None = field(default=None, repr=False)
    _means: dict[str | tuple[str, ...], np.ndarray] = field(default_factory=dict, repr=False)
    #: retrieval scores [N, K] of the last :meth:`predict` (when the texts have ``retrieval``)
    last_scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def splits(self) -> list[str]:
        """Evaluation splits in order: the test split, then any further ``eval_splits``."""
        return list(dict.fromkeys([self.test_split, *self.eval_splits]))

    @property
    def features(self) -> FeatureSet:
        if self._features is None:
            self._features = FeatureSet.open(self.feature_dir)
        return self._features

    @property
    def layers(self) -> list[int]:
        return self.features.layers

    @property
    def n_layers(self) -> int:
        """Layers of the model (not only the stored ones)."""
        return int(self.features.meta["n_layers"])

    def last_layers(self, k: int) -> list[int]:
        """Stored layers among the model's last ``k``."""
        return [layer for layer in self.layers if layer >= self.n_layers - int(k)]

    def batches(
        self, split: str | None = None, layers: Sequence[int] | None = None
    ) -> Iterator[tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
        """Stream (index, heads, rest) of ``split`` (default: every evaluation split in turn)."""
        for s in [split] if split else self.splits:
            yield from self.features.iter_batches(layers, s, batch_rows=self.batch_rows)

    def test_index(self) -> pd.DataFrame:
        """Index rows of the evaluation splits, in the order :meth:`predict` returns them."""
        return pd.concat([self.features.index(split=s) for s in self.splits], ignore_index=True)

    def head_means(self, split: str | Sequence[str] | None = None) -> np.ndarray:
        """Mean of every stored head over ``split`` (default: locate split; several splits:
        their rows together), [L, H, D]."""
        split = split or self.locate_split
        key = split if isinstance(split, str) else tuple(split)
        if key not in self._means:
            self._means[key] = self.features.head_means(split=split)
        return self._means[key]

    def ablation_means(self, stats: str) -> np.ndarray:
        """Means for mean ablation: ``locate`` (inductive) or ``test`` (transductive)."""
        if stats not in ("locate", "test"):
            raise ValueError(f"ablation_stats must be 'locate' or 'test', got {stats!r}")
        return self.head_means(self.locate_split if stats == "locate" else self.test_split)

    def text_roles(self, role: str) -> tuple[list[str], np.ndarray]:
        if role not in self.texts:
            raise KeyError(f"no encoded texts of role {role!r} (texts.parquet)")
        return self.texts[role]

    def unit_texts(self, role: str) -> np.ndarray:
        return unit_rows(self.text_roles(role)[1])

    def basis(self, pos: str, neg: str) -> np.ndarray | None:
        """Orthonormal insight directions of the pairs (pos[k], neg[k]); None without pairs."""
        _, p = self.text_roles(pos)
        _, n = self.text_roles(neg)
        return insight_basis(p, n) if len(p) else None

    def candidates(self, idx: pd.DataFrame) -> np.ndarray | None:
        """Per-sample candidate classes [n, k] when the dataset defines them, else None.

        ``dataset.json["candidate_columns"]`` names index columns holding class ids (e.g.
        GenderBias-VL's own occupation and its counterpart; METHODS §2.3).
        """
        cols = self.dataset_meta.get("candidate_columns")
        if not cols:
            return None
        return np.stack([idx[c].to_numpy(dtype=np.int64) for c in cols], axis=1)

    def predict(
        self,
        edit: EditFn | None = None,
        classifier: np.ndarray | None = None,
        layers: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Test-split predictions: ``argmax <edit(heads, rest, idx), t_c>`` batch by batch.

        Without ``edit`` the embedding is the plain sum ``heads.sum((1, 2)) + rest``;
        ``classifier`` defaults to the zero-shot one; ``layers`` restricts the heads read
        (``rest`` then holds everything else, so sums are unchanged). When the dataset's texts
        define ``retrieval`` prompts, their cosine scores with the (edited) embedding are kept
        in :attr:`last_scores` (the predict stage stores them with the predictions).
        """
        from clipbias.metrics import predict

        clf = self.classifier if classifier is None else classifier
        retrieval = None
        if len(self.texts.get("retrieval", ([], []))[0]):
            retrieval = self.unit_texts("retrieval").T.astype(np.float64)  # [D, K]
        out, scores = [], []
        for idx, heads, rest in self.batches(layers=layers):
            emb = (
                heads.sum(axis=(1, 2), dtype=np.float64) + rest
                if edit is None
                else edit(heads, rest, idx)
            )
            out.append(predict(emb, clf, self.candidates(idx)))
            if retrieval is not None:
                e = np.asarray(emb, dtype=np.float64)
                scores.append((e / np.linalg.norm(e, axis=1, keepdims=True)) @ retrieval)
        if not out:
            raise ValueError(f"no rows of splits {self.splits} in {self.feature_dir}")
        self.last_scores = np.concatenate(scores).astype(np.float32) if scores else None
        return np.concatenate(out)


def open_context(
    feature_dir: str | os.PathLike,
    dataset_meta: Mapping[str, Any],
    locate_split: str,
    test_split: str,
    seed: int = 42,
    texts: str | os.PathLike | None = None,
    text_spec: Mapping[str, Any] | None = None,
    located: Mapping[str, Any] | None = None,
    batch_rows: int | None = None,
    eval_splits: Sequence[str] = (),
) -> MethodContext:
    """A context on ``feature_dir`` (its ``classifier.parquet``; ``texts`` = texts.parquet)."""
    from clipbias.features import read_classifier
    from clipbias.methods.texts import read_method_texts

    feature_dir = Path(feature_dir)
    names, classifier, _ = read_classifier(feature_dir / "classifier.parquet")
    return MethodContext(
        feature_dir=feature_dir,
        classifier=classifier,
        class_names=names,
        dataset_meta=dict(dataset_meta),
        locate_split=locate_split,
        test_split=test_split,
        seed=int(seed),
        texts=read_method_texts(texts) if texts else {},
        text_spec=dict(text_spec or {}),
        located=dict(located or {}),
        batch_rows=batch_rows,
        eval_splits=list(eval_splits),
    )
