"""Class labels in the zero-shot classifier's class space.

Most datasets classify among their own classes (``dataset.json["classes"]``), so a label is
already a classifier column. CounterAnimal is classified among the 1,000 ImageNet-1k classes
(METHODS §2.2, §4.8): its ``dataset.json`` says ``"classifier_classes": "imagenet_1k"`` and
maps each dataset label to its ImageNet index (``imagenet_1k_indices``). Every stage that
compares predictions with labels (locating, evaluation, ground truth) uses
:func:`classifier_labels`, and the classifier is built from :func:`classifier_class_names`.
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


def classifier_class_names(meta: Mapping[str, Any]) -> list[str]:
    """Class names in prompts, in classifier-column order."""
    if _space(meta) == "imagenet_1k":
        return imagenet_class_names()
    return list(meta.get("class_prompt_names") or meta["classes"])


def classifier_labels(labels: Sequence[int] | np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Dataset labels -> classifier columns (int64); identity unless a class map is declared."""
    labels = np.asarray(labels, dtype=np.int64)
    if _space(meta) == "imagenet_1k":
        mapping = np.asarray(meta["imagenet_1k_indices"], dtype=np.int64)
        return mapping[labels]
    return labels


def label_map(meta: Mapping[str, Any]) -> np.ndarray | None:
    """Dataset label -> classifier column as an array, or None when they coincide."""
    if _space(meta) == "imagenet_1k":
        return np.asarray(meta["imagenet_1k_indices"], dtype=np.int64)
    return None
