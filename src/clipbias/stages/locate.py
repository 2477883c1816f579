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
    from clipbias.io import atomic_path
    from clipbias.methods.texts import read_method_texts, unit_rows
    from clipbias.methods.textspan import textspan_heads

    limit_blas_threads(threads)
    fs = FeatureSet.open(feature_dir)
    n_layers = int(fs.meta["n_layers"])
    keep = [layer for layer in fs.layers if layer >= n_layers - last_layers]
    _, heads, _ = fs.load(layers=keep, split=split)
    pool_texts, pool_emb = read_method_texts(texts)["pool"]
    r = textspan_rank(fs.meta, rank)
    table = textspan_heads(heads, keep, unit_rows(pool_emb), pool_texts, m=m, rank=r)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
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
    """LTC locate (METHODS §4.3-4.5, §4.8) on the locate split; both variants."""
    from clipbias.features import FeatureSet, read_classifier
    from clipbias.io import read_json, write_json
    from clipbias.labels import classifier_labels
    from clipbias.methods import ltc
    from clipbias.methods.texts import read_method_texts, unit_rows

    limit_blas_threads(threads)
    meta = read_json(dataset_meta)
    _, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    fs = FeatureSet.open(feature_dir)
    idx, heads, rest = fs.load(split=split)
    labels = classifier_labels(idx["label"].to_numpy(), meta)
    groups = idx["group"].to_numpy()
    attr_acc = None
    if not use_group_labels:
        attr_emb = unit_rows(read_method_texts(texts)["attribute"][1])
        if not len(attr_emb):
            raise ValueError(
                "locating without group labels needs attribute_prompts in the dataset text file"
            )
        emb = heads.sum((1, 2)) + rest
        groups, s_hat = ltc.infer_groups(emb, attr_emb.T, labels)
        true_attr = idx[f"attr_{meta['spurious_attribute']}"].to_numpy()
        attr_acc = float(np.mean(s_hat == true_attr))
        log.info("inferred spurious attribute accuracy on %s: %.3f", split, attr_acc)
    minority = meta.get("minority_groups", [1, 2])
    cand = (
        np.stack([idx[c].to_numpy(dtype=np.int64) for c in meta["candidate_columns"]], axis=1)
        if meta.get("candidate_columns")
        else None
    )
    variants = [("groups", out, None), ("full", out_full, None)]
    policy = meta.get("ltc_locate") or {}
    if policy.get("policy") == "worst_gender":
        # GenderBias-VL (METHODS §4.4): the worse gender of the top_k most biased occupations
        from clipbias.metrics import predict

        preds = predict(heads.sum((1, 2)) + rest, classifier, cand)
        mask = ltc.worst_gender_mask(
            preds == labels,
            idx["label"].to_numpy(),
            idx[f"attr_{policy.get('attribute', 'gender')}"].to_numpy(),
            int(policy.get("top_k", 10)),
        )
        variants[0] = ("full", out, mask)
    elif policy:
        raise ValueError(f"dataset.json ltc_locate policy {policy!r} is not supported")
    for variant, path, mask in variants:
        res = ltc.locate_ltc(
            heads,
            rest,
            classifier,
            labels,
            fs.layers,
            groups=groups,
            minority_groups=minority,
            variant=variant,
            candidates=cand,
            sample_mask=mask,
        )
        if mask is not None:
            res["variant"] = policy["policy"]
        write_json(path, _ltc_json(res, split, use_group_labels, attr_acc))
