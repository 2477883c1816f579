"""Stage entry points: paths and plain values in, files out.

Each Snakemake rule script calls exactly one function here. Nothing in this module reads the
``snakemake`` object or the workflow config, so every stage is callable from tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipbias.io import read_json

log = logging.getLogger(__name__)

FAIL_ONCE_ENV = "CLIPBIAS_FAIL_ONCE"


def maybe_fail_once(stage: str) -> None:
    """Fault injection for resilience tests.

    If ``CLIPBIAS_FAIL_ONCE`` is ``<stage>:<marker path>`` and the marker does not exist yet,
    create it and fail; the retry (marker present) succeeds.
    """
    spec = os.environ.get(FAIL_ONCE_ENV, "")
    if not spec or ":" not in spec:
        return
    name, marker = spec.split(":", 1)
    if name != stage or Path(marker).exists():
        return
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text("failed once\n")
    raise RuntimeError(f"injected transient failure in stage {stage} ({FAIL_ONCE_ENV})")


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def _load(model_name: str, pretrained: str | None, device: str | None):
    from clipbias.models import load_model

    return load_model(model_name, pretrained if pretrained not in ("", "none") else None, device)


def class_prompts(dataset_dir: str | os.PathLike) -> list[str]:
    """Class names as they appear in prompts (dataset.json ``class_prompt_names`` or ``classes``)."""
    meta = read_json(Path(dataset_dir) / "dataset.json")
    return list(meta.get("class_prompt_names", meta["classes"]))


def encode_classes(
    model_name: str,
    pretrained: str | None,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    templates: Sequence[str],
    convention: str = "ltc",
    device: str | None = None,
) -> None:
    """Zero-shot classifier (METHODS §2.1) of the dataset's classes -> classifier.parquet."""
    from clipbias.features import write_classifier
    from clipbias.text import class_text_embeddings

    loaded = _load(model_name, pretrained, device)
    names = class_prompts(dataset_dir)
    emb = class_text_embeddings(loaded.model, loaded.tokenizer, names, list(templates), convention)
    meta = {
        **loaded.provenance(),
        "templates": list(templates),
        "convention": convention,
        "logit_scale": float(loaded.model.logit_scale.exp().item()),
    }
    write_classifier(out, names, emb.cpu().numpy(), meta)
    log.info("classifier: %d classes, templates %s", len(names), list(templates))


def extract_features(
    model_name: str,
    pretrained: str | None,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    shard: int,
    n_shards: int,
    layers: Any = "all",
    dtype: str = "float32",
    batch_size: int = 64,
    device: str | None = None,
    threads: int | None = None,
) -> int:
    """Decompose one shard of the dataset index into ``out`` (Parquet, written atomically)."""
    from clipbias.extract import extract_shard

    _set_threads(threads)
    maybe_fail_once("extract_features")
    loaded = _load(model_name, pretrained, device)
    return extract_shard(
        loaded, dataset_dir, out, shard, n_shards, layers=layers, dtype=dtype, batch_size=batch_size
    )


def zero_shot_predictions(
    heads: np.ndarray, rest: np.ndarray, classifier: np.ndarray
) -> np.ndarray:
    """Arg-max of ⟨Σ ĉ_k, t̂_c⟩ (METHODS §2.3)."""
    emb = heads.sum((1, 2)) + rest
    return (emb @ classifier).argmax(1)
