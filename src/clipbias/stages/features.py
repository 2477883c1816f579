"""Rules of ``workflow/rules/features.smk``: class and method text embeddings, the per-shard
exact head decomposition (torch), and the verified manifest of the shards (no torch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipbias.stages.common import maybe_fail_once, set_torch_threads

log = logging.getLogger(__name__)


def _load(model_name: str, pretrained: str | None, device: str | None, hf_home: str | None = None):
    """Load the model; with ``hf_home`` (a tag's weights) strictly offline from that cache
    (``HF_HUB_OFFLINE=1``), with a clear error naming the fetch command when they are missing."""
    from clipbias.models import load_model

    pretrained = pretrained if pretrained not in ("", "none") else None
    if not hf_home:
        return load_model(model_name, pretrained, device)
    from clipbias.weights import check_offline, hub_cache_dir

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(hf_home)
    check_offline(model_name, pretrained, hf_home)
    return load_model(model_name, pretrained, device, cache_dir=hub_cache_dir(hf_home))


def class_prompts(dataset_dir: str | os.PathLike) -> list[str]:
    """Class names in prompts, in classifier order (``clipbias.labels.classifier_class_names``:
    dataset.json ``class_prompt_names`` or ``classes``, or the ImageNet-1k names)."""
    from clipbias.io import read_json
    from clipbias.labels import classifier_class_names

    return classifier_class_names(read_json(Path(dataset_dir) / "dataset.json"))


def encode_classes(
    model_name: str,
    pretrained: str | None,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    templates: Sequence[str],
    convention: str = "ltc",
    device: str | None = None,
    hf_home: str | None = None,
) -> None:
    """Zero-shot classifier (METHODS §2.1) of the dataset's classes -> classifier.parquet."""
    from clipbias.features import write_classifier
    from clipbias.text import class_text_embeddings

    loaded = _load(model_name, pretrained, device, hf_home)
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
    dataset: str | None = None,
    hf_home: str | None = None,
    precision: str = "float32",
    splits: Sequence[str] | None = None,
) -> int:
    """Decompose one shard of the dataset index into ``out`` (Parquet, written atomically).

    ``splits``: only these splits of the index are extracted (``None``: all).
    ``dataset`` (the grid's dataset name) is recorded in the shard metadata; ``precision``:
    compute precision of the decomposition (``float32``, ``float16``, ``bfloat16``)."""
    from clipbias.extract import default_workers, extract_shard

    set_torch_threads(threads)
    maybe_fail_once("extract_features")
    loaded = _load(model_name, pretrained, device, hf_home)
    return extract_shard(
        loaded,
        dataset_dir,
        out,
        shard,
        n_shards,
        layers=layers,
        dtype=dtype,
        precision=precision,
        batch_size=batch_size,
        extra_meta={"dataset": dataset} if dataset else None,
        num_workers=default_workers(threads, loaded.device),
        splits=splits,
    )


def encode_method_texts(
    model_name: str,
    pretrained: str | None,
    texts_yaml: str | os.PathLike,
    out: str | os.PathLike,
    device: str | None = None,
    threads: int | None = None,
    hf_home: str | None = None,
    pool_cap: int = 0,
) -> None:
    """Encode every method text of the dataset once with the text tower -> texts.parquet
    (raw, unnormalised embeddings; :mod:`clipbias.methods.texts`). ``pool_cap``: at most
    that many texts of the general TextSpan pool (a rehearsal's cap; 0 = all)."""
    from clipbias.methods.texts import (
        TEXT_ROLES,
        flatten_roles,
        method_texts,
        read_spec,
        write_method_texts,
    )
    from clipbias.text import encode_texts

    set_torch_threads(threads)
    loaded = _load(model_name, pretrained, device, hf_home)
    by_role = method_texts(read_spec(texts_yaml), pool_cap=pool_cap)
    texts = flatten_roles(by_role)
    emb = encode_texts(loaded.model, loaded.tokenizer, texts).float().cpu().numpy()
    meta = {**loaded.provenance(), "general_pool_cap": int(pool_cap)}
    write_method_texts(out, by_role, emb, meta)
    log.info("encoded %d texts (%s)", len(texts), {r: len(by_role[r]) for r in TEXT_ROLES})


def encode_class_templates(
    model_name: str,
    pretrained: str | None,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    templates_resource: str = "openai_imagenet_templates.txt",
    device: str | None = None,
    threads: int | None = None,
    hf_home: str | None = None,
) -> None:
    """Raw text embeddings of every (template, class) prompt -> ``class_templates.parquet``
    (:func:`clipbias.methods.sage.write_class_templates`), for methods that choose templates
    per image (SAGE, METHODS §10.5). ``templates_resource``: a template list of
    ``clipbias/resources/`` (default the 80 OpenAI ImageNet templates)."""
    from clipbias.methods.heads import load_resource_lines
    from clipbias.methods.sage import write_class_templates
    from clipbias.text import encode_texts, fill_template

    set_torch_threads(threads)
    loaded = _load(model_name, pretrained, device, hf_home)
    names = class_prompts(dataset_dir)
    templates = load_resource_lines(templates_resource)
    prompts = [fill_template(t, c) for t in templates for c in names]
    emb = encode_texts(loaded.model, loaded.tokenizer, prompts).float().cpu().numpy()
    write_class_templates(
        out, templates, names, emb, {**loaded.provenance(), "resource": templates_resource}
    )
    log.info("encoded %d templates x %d classes", len(templates), len(names))


def feature_manifest(shards: Sequence[str | os.PathLike], out: str | os.PathLike) -> None:
    """Verify every shard against its write-time sha256 and write ``manifest.json``."""
    from clipbias.features import write_manifest

    write_manifest(list(shards), out)
