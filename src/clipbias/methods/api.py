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
#: transform(embeddings [n, D] float64, idx) -> embeddings [n, D] (an embedding-level edit)
TransformFn = Callable[[np.ndarray, pd.DataFrame], np.ndarray]
#: classify(embeddings [n, D] float64, idx) -> class ids [n] (a decision that is not one
#: argmax over a fixed classifier matrix, e.g. SAGE's per-image templates)
ClassifyFn = Callable[[np.ndarray, pd.DataFrame], np.ndarray]


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
class Correction:
    """A fitted correction, applied batch by batch to the evaluation splits.

    Its parts act in this order on a batch: ``heads`` (a head-level edit of the stored
    contributions, :data:`EditFn`; None = their plain sum ê), ``transform`` (an
    embedding-level edit, :data:`TransformFn`), then the decision: ``classify`` if set, else
    argmax of the scores with ``classifier`` ([D', C]; None = the zero-shot classifier).
    A method that returns a Correction from its ``fit`` function can be a step of a
    composition (:mod:`clipbias.methods.compose`); its ``predict`` is
    ``apply_correction(ctx, fit(ctx, ...))``. ``meta``: JSON-serialisable facts (as
    :attr:`MethodOutput.meta`).
    """

    heads: EditFn | None = None
    transform: TransformFn | None = None
    classifier: np.ndarray | None = None
    classify: ClassifyFn | None = None
    meta: dict[str, Any] = field(default_factory=dict)


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
    #: per-template class embeddings (``class_templates.parquet``) for methods that declare
    #: ``class_templates`` in the registry (SAGE), else None
    class_templates: Path | None = None
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

    def embeddings(self, split: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """(index, ê [N, D] float64) of ``split`` (default: the locate split): the stored
        embedding, Σ of all contributions, without reading the heads."""
        split = split or self.locate_split
        idx, emb = [], []
        for i, _, rest in self.features.iter_batches([], split, batch_rows=self.batch_rows):
            idx.append(i)
            emb.append(np.asarray(rest, dtype=np.float64))
        if not idx:
            raise ValueError(f"no rows of split {split!r} in {self.feature_dir}")
        return pd.concat(idx, ignore_index=True), np.concatenate(emb)

    def attribute_name(self, attribute: str = "") -> str:
        """``attribute``, or the dataset's spurious attribute (else its protected one)."""
        name = attribute or self.dataset_meta.get("spurious_attribute")
        name = name or self.dataset_meta.get("protected_attribute")
        if not name:
            raise ValueError(
                "the dataset names no spurious or protected attribute (dataset.json); set the "
                "method's attribute parameter"
            )
        return str(name)

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


def apply_correction(ctx: MethodContext, corr: Correction) -> MethodOutput:
    """Predictions of a fitted :class:`Correction` on the evaluation splits (streamed).

    Only a head-level edit reads the heads; the other parts read the stored embedding."""
    layers = None if corr.heads is not None else []

    def embed(heads, rest, idx):
        if corr.heads is not None:
            emb = np.asarray(corr.heads(heads, rest, idx), dtype=np.float64)
        else:
            emb = heads.sum(axis=(1, 2), dtype=np.float64) + rest
        return emb if corr.transform is None else corr.transform(emb, idx)

    if corr.classify is None:
        return MethodOutput(ctx.predict(embed, corr.classifier, layers=layers), dict(corr.meta))
    out = [
        np.asarray(corr.classify(embed(heads, rest, idx), idx), dtype=np.int64)
        for idx, heads, rest in ctx.batches(layers=layers)
    ]
    if not out:
        raise ValueError(f"no rows of splits {ctx.splits} in {ctx.feature_dir}")
    ctx.last_scores = None
    return MethodOutput(np.concatenate(out), dict(corr.meta))


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
    class_templates: str | os.PathLike | None = None,
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
        class_templates=Path(class_templates) if class_templates else None,
    )
