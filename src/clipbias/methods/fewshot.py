"""Few-shot plumbing shared by the RefineCLIP family and Tip-Adapter (METHODS §5.5, §5.7, §7.1).

numpy/pandas only (the analysis env): which shots a grid cell uses, reading just their rows
from a feature store, the temperature τ of a checkpoint, and the classes an edit targets.

**Shots.** :func:`shot_index` draws ``n_per_class`` rows per class of one split with
:func:`clipbias.methods.refineclip.sample_shots` (one seeded generator, classes in increasing
order, positions in feature-store order). Phase 1 (``heads/{cell}/refineclip/{id}.json``
records the image ids) and Tip-Adapter call the same function with the cell's seed, so every
method of an experiment that sets the same ``n_per_class`` and ``shots_split`` edits with the
same images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipbias.features import FeatureSet, read_classifier
from clipbias.methods import registry
from clipbias.methods.refineclip import sample_shots

log = logging.getLogger(__name__)

__all__ = [
    "edit_target_classes",
    "load_rows",
    "parse_shots",
    "predict_logits",
    "resolve_tau",
    "SHOT_SAMPLING",
    "group_balanced_shots",
    "shot_index",
    "shot_rows",
    "shots_record",
    "target_eval_sets",
]


SHOT_SAMPLING = registry.SHOT_SAMPLING


def group_balanced_shots(
    labels: np.ndarray, groups: np.ndarray, n_per_class: int, seed: int = 42
) -> np.ndarray:
    """Indices of ``n_per_class`` samples per class spread as evenly as possible over the
    class's groups (the groups of that class present; the first ``n % g`` of them in
    increasing order get one more), each drawn without replacement. Classes and groups are
    visited in increasing order with one seeded generator. Returns the sorted indices.

    [RECON] RefineCLIP's editor "has K₁ correctly predicted and K₂ misclassified samples"
    of a class (METHODS §5.1); a draw from a split where the spurious attribute agrees with
    the class 95 % of the time holds almost no misclassified sample, so the edit has
    nothing to learn from. Spreading the shots over groups puts bias-conflicting samples in
    the few-shot set, as an editor collecting failure cases would."""
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != labels.shape:
        raise ValueError(f"groups {groups.shape} and labels {labels.shape} differ")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        in_class = labels == c
        gs = np.unique(groups[in_class])
        quota = np.full(len(gs), n_per_class // len(gs))
        quota[: n_per_class % len(gs)] += 1
        for g, q in zip(gs, quota, strict=True):
            pool = np.flatnonzero(in_class & (groups == g))
            if q > len(pool):
                raise ValueError(
                    f"class {int(c)}, group {int(g)} has {len(pool)} samples for {int(q)} "
                    "group-balanced shots; lower n_per_class or use shot_sampling: random"
                )
            if q:
                chosen.append(rng.choice(pool, size=int(q), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def shot_index(
    index: pd.DataFrame,
    n_per_class: int,
    seed: int,
    split: str = "",
    sampling: str = "random",
    classes: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The shots among ``index`` (the rows of one split, feature-store order): ``n_per_class``
    per class present, drawn with ``seed`` by :func:`~clipbias.methods.refineclip.sample_shots`
    (``sampling="random"``, the paper's draw) or :func:`group_balanced_shots`
    (``"group_balanced"``). ``classes``: draw only from these labels (an edit's target
    classes, METHODS §5.8); None = every class. Rows stay in store order."""
    if sampling not in SHOT_SAMPLING:
        raise ValueError(f"shot_sampling must be one of {SHOT_SAMPLING}, got {sampling!r}")
    if classes is not None:
        missing = sorted(set(map(int, classes)) - set(index["label"].astype(int)))
        if missing:
            raise ValueError(f"split {split!r} has no rows of the shot classes {missing}")
        index = index[index["label"].isin(list(classes))]
    if len(index) == 0:
        raise ValueError(
            f"split {split!r} has no rows in the feature store; set the method's shots_split to "
            "a split of the dataset (e.g. train or val)"
        )
    try:
        if sampling == "group_balanced":
            pos = group_balanced_shots(
                index["label"].to_numpy(), index["group"].to_numpy(), int(n_per_class), int(seed)
            )
        else:
            pos = sample_shots(index["label"].to_numpy(), int(n_per_class), seed=int(seed))
    except ValueError as err:
        raise ValueError(f"few-shot sampling on split {split!r}: {err}") from None
    return index.iloc[pos].reset_index(drop=True)


def load_rows(
    fs: FeatureSet,
    split: str,
    image_ids: Iterable[str],
    layers: Sequence[int] | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(index, heads [n, L', H, D], rest [n, D]) of the rows ``image_ids`` of ``split``,
    streamed batch by batch (memory: one batch + the selected rows). ``layers`` = the stored
    layers to return individually (``[]`` = embeddings only, in ``rest``); rows come in store
    order. Raises if an id is not in the split."""
    wanted = set(map(str, image_ids))
    parts = []
    for idx, heads, rest in fs.iter_batches(layers, split):
        keep = idx["image_id"].astype(str).isin(wanted).to_numpy()
        if keep.any():
            parts.append((idx[keep], heads[keep], rest[keep]))
    found = {i for p in parts for i in p[0]["image_id"].astype(str)}
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(
            f"{len(missing)} shot(s) not in split {split!r} of {fs.folder}, e.g. {missing[:3]}; "
            "the phase-1 file was made from other features: rerun locate_refineclip"
        )
    idx = pd.concat([p[0] for p in parts], ignore_index=True)
    return idx, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def shot_rows(
    fs: FeatureSet,
    split: str,
    n_per_class: int,
    seed: int,
    layers: Sequence[int] | None = None,
    sampling: str = "random",
    classes: Sequence[int] | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """:func:`shot_index` then :func:`load_rows`: the shots' index, heads and rest."""
    shots = shot_index(fs.index(split=split), n_per_class, seed, split, sampling, classes)
    return load_rows(fs, split, shots["image_id"], layers)


def shots_record(
    index: pd.DataFrame,
    split: str,
    n_per_class: int,
    seed: int,
    sampling: str = "random",
    shot_classes: str = "all",
    classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """What the phase-1 file stores about its shots (so later stages reuse exactly them);
    ``shot_classes``/``classes``: the setting and the class ids it resolved to."""
    return {
        "split": split,
        "n_per_class": int(n_per_class),
        "sampling": sampling,
        "shot_classes": shot_classes,
        "classes": None if classes is None else [int(c) for c in classes],
        "seed": int(seed),
        "image_ids": [str(x) for x in index["image_id"]],
        "labels": [int(x) for x in index["label"]],
        "groups": [int(x) for x in index["group"]] if "group" in index else None,
    }


def resolve_tau(tau: float | str | None, feature_dir: str | os.PathLike) -> float:
    """τ: a number as given; ``None``/``"checkpoint"`` = the logit scale exp(logit_scale) that
    ``encode_classes`` recorded in ``classifier.parquet`` (100 for the laion2b checkpoints)."""
    if tau is None or tau == "checkpoint":
        _, _, meta = read_classifier(Path(feature_dir) / "classifier.parquet")
        if "logit_scale" not in meta:
            raise ValueError(
                f"{feature_dir}/classifier.parquet records no logit_scale (encoded by an older "
                "clipbias): set tau to a number in the method's parameters, or re-encode"
            )
        return float(meta["logit_scale"])
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau > 0:
        raise ValueError(f"tau must be a positive number or 'checkpoint', got {tau!r}")
    return float(tau)


def edit_target_classes(
    spec: str | Sequence[str] | None,
    class_names: Sequence[str],
    labels: np.ndarray | None = None,
    zero_shot_preds: np.ndarray | None = None,
) -> list[int]:
    """Class ids an edit targets (METHODS §5.8, §7.1) from the dataset's ``edit_targets``.

    ``spec``: a list of class names; ``"worst:<k>"`` = the ``k`` classes with the lowest
    zero-shot accuracy on the given (test) ``labels``/``zero_shot_preds`` (ties: lower class
    id first); empty/None = no targets (returns ``[]``).
    """
    if not spec:
        return []
    names = list(class_names)
    if isinstance(spec, str):
        if not spec.startswith("worst:"):
            spec = [spec]
        else:
            try:
                k = int(spec.split(":", 1)[1])
            except ValueError:
                k = 0
            if k < 1 or k >= len(names):
                raise ValueError(
                    f"edit_targets {spec!r}: k must be between 1 and {len(names) - 1} "
                    f"(the dataset has {len(names)} classes)"
                )
            if labels is None or zero_shot_preds is None:
                raise ValueError("edit_targets 'worst:<k>' needs the zero-shot test predictions")
            labels = np.asarray(labels, dtype=np.int64)
            correct = np.asarray(zero_shot_preds, dtype=np.int64) == labels
            present = np.unique(labels)
            acc = np.array([correct[labels == c].mean() for c in present])
            order = np.lexsort((present, acc))
            return sorted(int(c) for c in present[order[:k]])
    unknown = [s for s in spec if s not in names]
    if unknown:
        raise ValueError(f"edit_targets {unknown} are not classes of the dataset; classes: {names}")
    return sorted(names.index(s) for s in dict.fromkeys(spec))


def target_eval_sets(
    emb: np.ndarray, labels: np.ndarray, targets: Sequence[int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Evaluation sets of the phase-2 curves: ``test`` (every image) and, with targets,
    ``target`` (images of the target classes) and ``other`` (all other images)."""
    labels = np.asarray(labels, dtype=np.int64)
    sets = {"test": (emb, labels)}
    if len(targets):
        is_t = np.isin(labels, np.asarray(list(targets), dtype=np.int64))
        sets["target"] = (emb[is_t], labels[is_t])
        sets["other"] = (emb[~is_t], labels[~is_t])
    return sets


def parse_shots(phase1: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(split, image ids) of the shots a phase-1 result was computed on."""
    shots = phase1.get("shots")
    if not shots or "image_ids" not in shots:
        raise ValueError(
            "the phase-1 file names no shots (written by an older clipbias); rerun "
            "locate_refineclip"
        )
    return str(shots["split"]), list(shots["image_ids"])


def predict_logits(ctx, logits_fn) -> np.ndarray:
    """Test-split predictions ``argmax logits_fn(embeddings)`` batch by batch (embeddings only,
    no head columns read), restricted to each sample's candidate classes when the dataset
    defines them (:meth:`clipbias.methods.api.MethodContext.candidates`)."""
    out = []
    for idx, _, emb in ctx.batches(layers=[]):
        s = np.asarray(logits_fn(emb.astype(np.float64)))
        cand = ctx.candidates(idx)
        if cand is None:
            out.append(np.argmax(s, axis=1).astype(np.int64))
        else:
            sub = np.take_along_axis(s, cand, axis=1)
            out.append(cand[np.arange(len(cand)), np.argmax(sub, axis=1)])
    if not out:
        raise ValueError(f"no rows of split {ctx.test_split!r} in {ctx.feature_dir}")
    return np.concatenate(out)
