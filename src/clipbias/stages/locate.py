"""Rules of ``workflow/rules/locate.smk``: TextSpan descriptions and LTC head location
(stored features only; no torch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clipbias.stages.common import limit_blas_threads

log = logging.getLogger(__name__)


def textspan_rank(meta: Mapping[str, Any], rank: int | None) -> int:
    """TextSpan subspace rank: ``rank`` if given, else head dim + 2 (METHODS §3.3, §9 #25).

    The head dim is read from the feature metadata (``head_dim``, or ``width / n_heads``).
    """
    from clipbias.methods.textspan import default_rank

    if rank is not None:
        return int(rank)
    head_dim = meta.get("head_dim") or (
        int(meta["width"]) // int(meta["n_heads"]) if meta.get("width") else None
    )
    if not head_dim:
        raise ValueError(
            "the feature metadata has no head_dim (features extracted by an older clipbias): "
            "set locate.textspan.rank explicitly or re-extract the features"
        )
    return default_rank(int(head_dim))


def textspan(
    feature_dir: str | os.PathLike,
    texts: str | os.PathLike,
    out: str | os.PathLike,
    split: str,
    last_layers: int = 4,
    m: int = 20,
    rank: int | None = None,
    threads: int | None = None,
) -> None:
    """TextSpan descriptions (METHODS §3) of every head in the last ``last_layers`` layers."""
    from clipbias.features import FeatureSet
    from clipbias.io import write_csv
    from clipbias.methods.texts import read_method_texts, unit_rows
    from clipbias.methods.textspan import textspan_heads_from_moments
    from clipbias.streaming import head_moments

    limit_blas_threads(threads)
    fs = FeatureSet.open(feature_dir)
    n_layers = int(fs.meta["n_layers"])
    keep = [layer for layer in fs.layers if layer >= n_layers - last_layers]
    pool_texts, pool_emb = read_method_texts(texts)["pool"]
    r = textspan_rank(fs.meta, rank)
    # one streamed pass: per-head mean and Gram matrices (memory O(batch + L*H*D^2))
    moments = head_moments(fs, keep, split)
    table, _ = textspan_heads_from_moments(moments, unit_rows(pool_emb), pool_texts, m=m, rank=r)
    write_csv(table, out)
    log.info(
        "TextSpan: %d heads, m=%d, rank=%d, pool=%d texts",
        len(keep) * fs.n_heads,
        m,
        r,
        len(pool_texts),
    )


def _ltc_json(
    result: dict, split: str, use_group_labels: bool, attr_accuracy: float | None
) -> dict:
    """The located heads file of DESIGN.md (result-table formats)."""
    from clipbias.methods.heads import parse_head

    def entry(x):
        layer, h = parse_head(x["head"])
        return {"head": x["head"], "layer": layer, "index": h, "score": x["score"]}

    freqs = []
    for head_id, f_c in result["F_C"].items():
        layer, h = parse_head(head_id)
        freqs.append(
            {
                "head": head_id,
                "layer": layer,
                "index": h,
                "f_correct": f_c,
                "f_wrong": result["F_W"][head_id],
            }
        )
    return {
        "variant": result["variant"],
        "locate_split": split,
        "group_labels": "true" if use_group_labels else "inferred",
        "attribute_accuracy": attr_accuracy,
        "layers": result["layers"],
        "n_heads": result["n_heads"],
        "minority_groups": result["minority_groups"],
        "kappa": result["kappa"],
        "n_active": result["n_active"],
        "n_correct": result["n_correct"],
        "n_wrong": result["n_wrong"],
        "n_samples": result["n_samples"],
        "baseline_accuracy": result["baseline_accuracy"],
        "spurious": [entry(x) for x in result["S"]],
        "salient": [entry(x) for x in result["Y"]],
        "frequencies": freqs,
        "by_class": [
            {**c, "salient": [entry(x) for x in c["salient"]]} for c in result.get("by_class", [])
        ],
    }


def locate_ltc(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    texts: str | os.PathLike,
    out: str | os.PathLike,
    out_full: str | os.PathLike,
    split: str,
    use_group_labels: bool = True,
    threads: int | None = None,
) -> None:
    """LTC locate (METHODS §4.3-4.5, §4.8) on the locate split; both variants.

    Streamed: one pass keeps only each sample's top-1 head and prediction. Labels are
    compared in the classifier's class space (``clipbias.labels``); per-image candidate sets
    (``dataset.json`` ``candidate_columns``) restrict each sample's classes; a dataset's
    ``ltc_locate`` policy ``worst_gender`` (GenderBias-VL, §4.4) selects the worse gender of
    its most biased occupations instead of minority groups."""
    from clipbias.features import FeatureSet, read_classifier
    from clipbias.io import read_json, write_json
    from clipbias.labels import label_map
    from clipbias.methods import ltc
    from clipbias.methods.texts import read_method_texts, unit_rows
    from clipbias.streaming import ltc_samples

    limit_blas_threads(threads)
    meta = read_json(dataset_meta)
    class_names, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    fs = FeatureSet.open(feature_dir)
    attr_emb = None
    if not use_group_labels:
        attr_emb = unit_rows(read_method_texts(texts)["attribute"][1])
        if not len(attr_emb):
            raise ValueError(
                "locating without group labels needs attribute_prompts in the dataset text file"
            )
    policy = meta.get("ltc_locate") or {}
    if policy and policy.get("policy") != "worst_gender":
        raise ValueError(f"dataset.json ltc_locate policy {policy!r} is not supported")
    lmap = label_map(meta)
    # one streamed pass over all stored layers: per-sample top-1 head and prediction
    samples = ltc_samples(
        fs,
        classifier,
        split,
        attr_emb=attr_emb,
        candidate_columns=meta.get("candidate_columns"),
        label_map=lmap,
    )
    idx = samples.index
    labels = idx["label"].to_numpy() if lmap is None else lmap[idx["label"].to_numpy()]
    groups = idx["group"].to_numpy()
    attr_acc = None
    if not use_group_labels:
        groups = samples.groups_hat
        true_attr = idx[f"attr_{meta['spurious_attribute']}"].to_numpy()
        attr_acc = float(np.mean(samples.attr_hat == true_attr))
        log.info("inferred spurious attribute accuracy on %s: %.3f", split, attr_acc)
    minority = meta.get("minority_groups", [1, 2])
    variants = [("groups", out, None), ("full", out_full, None)]
    if policy:
        mask = ltc.worst_gender_mask(
            samples.preds == labels,
            idx["label"].to_numpy(),
            idx[f"attr_{policy.get('attribute', 'gender')}"].to_numpy(),
            int(policy.get("top_k", 10)),
        )
        variants[0] = ("full", out, mask)
    for variant, path, mask in variants:
        res = ltc.locate_from_winners(
            samples.winners,
            samples.preds,
            labels,
            fs.layers,
            fs.n_heads,
            groups=groups,
            minority_groups=minority,
            variant=variant,
            sample_mask=mask,
            class_names=class_names,
        )
        if mask is not None:
            res["variant"] = policy["policy"]
        write_json(path, _ltc_json(res, split, use_group_labels, attr_acc))
