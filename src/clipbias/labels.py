"""Class labels in the zero-shot classifier's class space.

Most datasets classify among their own classes (``dataset.json["classes"]``), so a label is
already a classifier column. CounterAnimal is classified among the 1,000 ImageNet-1k classes
(METHODS §2.2, §4.8): its ``dataset.json`` says ``"classifier_classes": "imagenet_1k"`` and
maps each dataset label to its ImageNet index (``imagenet_1k_indices``). Every stage that
compares predictions with labels (locating, evaluation, ground truth) uses
:func:`classifier_labels`, and the classifier is built from :func:`classifier_class_names`.

A dataset.json may restrict the ImageNet-1k classifier to a subset of its classes
(``classifier_subset``: sorted ImageNet indices, a superset of the dataset's own): a rehearsal
caps the 1,000 class prompts so (:func:`capped_imagenet_subset`). The classifier's columns
are then the subset's classes in index order, and every mapping follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CLASS_SPACES = ("dataset", "imagenet_1k")


def _space(meta: Mapping[str, Any]) -> str:
    space = meta.get("classifier_classes") or "dataset"
    if space not in CLASS_SPACES:
        raise ValueError(
            f"dataset.json classifier_classes={space!r} is not supported; use one of {CLASS_SPACES}"
        )
    return space


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names of CLIP's classifier, in class-index order."""
    from clipbias.methods.heads import load_resource_lines

    return load_resource_lines("imagenet_classnames.txt")


def _imagenet_columns(meta: Mapping[str, Any]) -> list[int]:
    """ImageNet-1k indices of the classifier's columns: all 1,000, or ``classifier_subset``."""
    subset = meta.get("classifier_subset")
    if subset is None:
        return list(range(1000))
    subset = [int(i) for i in subset]
    own = {int(i) for i in meta["imagenet_1k_indices"]}
    if subset != sorted(set(subset)) or not own <= set(subset):
        raise ValueError(
            "dataset.json classifier_subset must be sorted unique ImageNet indices that "
            "include every class of the dataset (imagenet_1k_indices)"
        )
    return subset


def capped_imagenet_subset(own: Sequence[int], cap: int) -> list[int]:
    """At most ``cap`` ImageNet-1k indices (at least the ``own`` ones): the dataset's classes,
    then others evenly spaced through the 1,000, sorted."""
    keep = {int(i) for i in own}
    others = [i for i in range(1000) if i not in keep]
    n = max(0, int(cap) - len(keep))
    keep |= {others[j * len(others) // n] for j in range(n)} if n else set()
    return sorted(keep)


def classifier_class_names(meta: Mapping[str, Any]) -> list[str]:
    """Class names in prompts, in classifier-column order."""
    if _space(meta) == "imagenet_1k":
        names = imagenet_class_names()
        return [names[i] for i in _imagenet_columns(meta)]
    return list(meta.get("class_prompt_names") or meta["classes"])


def classifier_labels(labels: Sequence[int] | np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Dataset labels -> classifier columns (int64); identity unless a class map is declared."""
    labels = np.asarray(labels, dtype=np.int64)
    mapping = label_map(meta)
    return labels if mapping is None else mapping[labels]


def label_map(meta: Mapping[str, Any]) -> np.ndarray | None:
    """Dataset label -> classifier column as an array, or None when they coincide."""
    if _space(meta) == "imagenet_1k":
        column = {c: j for j, c in enumerate(_imagenet_columns(meta))}
        return np.asarray([column[int(i)] for i in meta["imagenet_1k_indices"]], dtype=np.int64)
    return None
