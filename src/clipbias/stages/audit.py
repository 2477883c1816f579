"""Rules of ``workflow/rules/audit.smk``: the mechanistic fairness audit (METHODS §6).

* ``encode_audit_texts`` (torch env): the ``protected_attributes`` texts of the dataset's
  text file (structure: ``config/texts/facet.yaml``) through the text tower, once per feature
  instance -> ``audit_texts.parquet`` next to the features
  (:func:`clipbias.methods.texts.write_audit_texts`);
* ``audit`` (analysis env, no torch): :func:`clipbias.methods.audit.audit_attribute_stats`
  for every protected attribute of the audit texts that is also an attribute of
  ``dataset.json``, on the split variant (heads located on the dataset's locate split,
  effects on its test split; a stratified 50/50 split when both are the same split) and the
  single-pool variant (locate and evaluate on the union, as the paper appears to do).
  One streamed pass over the cell's features (:class:`clipbias.methods.audit.AuditAccumulator`)
  keeps only what the audit needs from the heads: the per-image class logits of each
  terminal-layer head (mean ablation and every prediction), the CAV projections, the
  ablation means, the TextSpan moments of each locate half and the stereotype-logit sums;
  memory O(batch + N·L_t·H·C + L_t·H·D² per TextSpan row set), not O(N·D).

Output folder ``results/{experiment}/audit/{dataset}/{model}/seed-{seed}/``::

    summary.json                      attributes audited / skipped, splits, parameters
    <attribute>/<variant>/audit.json  selection, CAVs, random-control summaries, texts used
    <attribute>/<variant>/<table>.csv the tables of audit_attribute (TABLE_KEYS), the
                                      bias-augmented TextSpan table and its statistics

``variant`` is ``split`` or ``single_pool``. The located heads
``heads/{dataset}/{model}/seed-{seed}/audit.json`` (:func:`locator_json`) give the top-k and
greedy sets per attribute and variant to the ``audit_ablation*`` methods.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipbias.methods.audit.params import DEFAULT_SEED, DEFAULTS, STAGE_KEYS, resolve_params
from clipbias.stages.common import limit_blas_threads, set_torch_threads

log = logging.getLogger(__name__)

#: Tables of :func:`clipbias.methods.audit.audit_attribute_stats` written as ``<key>.csv``.
TABLE_KEYS = (
    "head_scores",
    "stereotype_logit",
    "ranking",
    "greedy_trace",
    "outcome",
    "per_class",
    "delta_v",
    "random_draws",
    "attribution",
    "stereotyped_classes",
    "transitions",
)
VARIANTS = ("split", "single_pool")

# ---------------------------------------------------------------------------------------------
# encode_audit_texts (torch env)
# ---------------------------------------------------------------------------------------------


def encode_audit_texts(
    model_name: str,
    pretrained: str | None,
    texts_yaml: str | os.PathLike,
    out: str | os.PathLike,
    device: str | None = None,
    threads: int | None = None,
    min_concept_texts: int = DEFAULTS["min_concept_texts"],
    min_bias_texts: int = DEFAULTS["min_bias_texts"],
) -> None:
    """Validate the ``protected_attributes`` block of ``texts_yaml``
    (:func:`clipbias.methods.audit.texts.audit_texts`) and encode its concept and bias texts
    without templates (METHODS §3.8) -> ``audit_texts.parquet``."""
    from clipbias.methods.audit import audit_texts, text_table
    from clipbias.methods.texts import read_spec, write_audit_texts
    from clipbias.models import load_model
    from clipbias.text import encode_texts

    set_torch_threads(threads)
    spec = read_spec(texts_yaml)
    try:
        attrs = audit_texts(spec, min_concept_texts, min_bias_texts)
    except ValueError as err:
        raise ValueError(
            f"{texts_yaml}: {err}. The fairness audit (audit_ablation methods) needs this "
            "block; remove those methods from the config for datasets without it."
        ) from None
    table = text_table(attrs)
    loaded = load_model(model_name, pretrained if pretrained not in ("", "none") else None, device)
    emb = encode_texts(loaded.model, loaded.tokenizer, table["text"].tolist())
    write_audit_texts(out, table, emb.float().cpu().numpy(), attrs)
    log.info(
        "encoded %d audit texts: %s",
        len(table),
        {a: int((table["attribute"] == a).sum()) for a in attrs},
    )


# ---------------------------------------------------------------------------------------------
# audit (analysis env)
# ---------------------------------------------------------------------------------------------


def _cell_index(fs, splits: Sequence[str]):
    """The index columns of ``splits`` (in order; no features) and their row counts."""
    import pandas as pd

    frames = [fs.index(split=s) for s in splits]
    counts = [len(f) for f in frames]
    for s, c in zip(splits, counts, strict=True):
        if c == 0:
            raise ValueError(f"split {s!r} has no rows in {fs.folder}")
    return pd.concat(frames, ignore_index=True), counts


def locator_json(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    layers: Sequence[int],
    n_layers: int,
    n_heads: int,
    locate_split: str,
    test_split: str,
    skipped: Sequence[str] = (),
) -> dict[str, Any]:
    """``heads/{cell}/audit.json``: ``{"method": "fairness_audit", "locate_split",
    "test_split", "layers" (candidate layers), "n_layers", "n_heads", "skipped_attributes",
    "attributes": {attribute: {"values", "rank_cav", "k", <variant>: {"top_k": [ids],
    "greedy": [ids]}}}}``. ``results``: {attribute: {variant: selection dict of
    :func:`clipbias.methods.audit.audit_attribute_stats` plus "values"}}."""
    attrs: dict[str, Any] = {}
    for attr, by_variant in results.items():
        first = next(iter(by_variant.values()))
        entry: dict[str, Any] = {
            "values": list(first["values"]),
            "rank_cav": first["rank_cav"],
            "k": int(first["k"]),
        }
        for variant, sel in by_variant.items():
            entry[variant] = {"top_k": list(sel["top_k"]), "greedy": list(sel["greedy"])}
        attrs[attr] = entry
    return {
        "method": "fairness_audit",
        "locate_split": locate_split,
        "test_split": test_split,
        "layers": [int(x) for x in layers],
        "n_layers": int(n_layers),
        "n_heads": int(n_heads),
        "skipped_attributes": list(skipped),
        "attributes": attrs,
    }


def audit(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    texts: str | os.PathLike,
    audit_texts: str | os.PathLike,
    out_dir: str | os.PathLike,
    out_heads: str | os.PathLike,
    locate_split: str,
    test_split: str,
    seed: int = DEFAULT_SEED,
    params: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """The fairness audit of one grid cell (module docstring); returns the locator dict.

    ``texts`` is the cell's ``texts.parquet`` (its ``pool`` role is the general TextSpan pool
    R_general), ``audit_texts`` its ``audit_texts.parquet``. ``params``: the config's
    ``audit:`` block (:func:`resolve_params`). ``seed`` seeds the stratified split (when
    ``locate_split == test_split``), the bootstraps and the random control. Outputs depend
    only on the inputs (wall times go to the log and the rule's benchmark file).
    """
    from clipbias.features import FeatureSet, read_classifier
    from clipbias.io import atomic_path, read_json, write_csv, write_json
    from clipbias.methods import audit as au
    from clipbias.methods.texts import read_audit_texts, read_method_texts
    from clipbias.stages.locate import textspan_rank

    limit_blas_threads(threads)
    p = resolve_params(params)
    ts = p["textspan"]
    meta = read_json(dataset_meta)
    if meta.get("candidate_columns"):
        raise ValueError(
            f"{dataset_meta}: the dataset classifies each image among its own candidate "
            f"classes ({meta['candidate_columns']}); the fairness audit needs one classifier "
            "over all classes. Remove the audit methods for this dataset."
        )
    names, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    table, emb, attr_meta = read_audit_texts(audit_texts)
    ds_attrs = meta.get("attributes") or {}
    chosen = [a for a in attr_meta if a in ds_attrs]
    skipped = [a for a in attr_meta if a not in ds_attrs]
    if skipped:
        log.warning(
            "protected attribute(s) %s of the audit texts are not attributes of %s (%s): skipped",
            skipped,
            dataset_meta,
            list(ds_attrs),
        )
    if not chosen:
        raise ValueError(
            f"none of the protected attributes {list(attr_meta)} of the audit texts is an "
            f"attribute of {dataset_meta} ({list(ds_attrs)}); name them as in dataset.json "
            "in the text file's protected_attributes block"
        )

    fs = FeatureSet.open(feature_dir)
    n_layers, n_heads = int(fs.meta["n_layers"]), fs.n_heads
    terminal = au.terminal_layer_numbers(fs.layers, p["terminal_layers"], n_layers)
    cavs: dict[str, list] = {}
    for a in chosen:
        sub = table[table["attribute"] == a]
        value_emb = {}
        for v in attr_meta[a]["values"]:
            rows = ((sub["role"] == "concept") & (sub["value"] == v)).to_numpy()
            value_emb[v] = emb[sub.index.to_numpy()[rows]]
        cavs[a] = au.zero_shot_cavs(value_emb, axis=attr_meta[a]["axis"])
    columns = [(a, c.name) for a in chosen for c in cavs[a]]
    cav_matrix = np.stack([c.vector for a in chosen for c in cavs[a]], axis=1)
    splits = [locate_split] if locate_split == test_split else [locate_split, test_split]
    idx, counts = _cell_index(fs, splits)
    labels = idx["label"].to_numpy(dtype=np.int64)
    pool_texts, pool_emb = read_method_texts(texts)["pool"]
    rank = textspan_rank(fs.meta, ts["rank"])

    # Plan the pass: each attribute's codes, halves and the row sets whose statistics the
    # audit needs (ablation means, TextSpan moments, stereotype-logit sums), keyed in `acc`.
    acc = au.AuditAccumulator(
        len(idx), fs.layers, terminal, n_heads, fs.dim, classifier, cav_matrix
    )
    plans: dict[str, dict[str, Any]] = {}
    for a in chosen:
        col = f"attr_{a}"
        if col not in idx.columns:
            raise ValueError(f"the features have no column {col} (dataset attribute {a!r})")
        vals = list(attr_meta[a]["values"])
        codes = au.value_codes(vals, ds_attrs[a])
        attr = au.recode_attr(idx[col].to_numpy(), [codes[v] for v in vals])
        if len(splits) == 2:
            is_locate = np.arange(len(idx)) < counts[0]
        else:
            is_locate = au.locate_evaluate_split(labels, attr, p["locate_fraction"], seed)
        variants: dict[str, np.ndarray | None] = {"split": is_locate}
        if p["single_pool"]:
            variants["single_pool"] = None
        keys: dict[str, dict[str, int]] = {}
        for variant, mask in variants.items():
            loc = np.ones(len(idx), dtype=bool) if mask is None else mask
            k = keys[variant] = {"locate": acc.add_means(loc)}
            if mask is not None and p["transductive"]:
                k["evaluate"] = acc.add_means(~mask)
            if ts["enabled"]:
                k["moments"] = acc.add_moments(mask)
            if p["stereotype_score"]:
                a_only_loc = np.where(loc, attr, -1)
                smap = au.stereotyped_class_map(
                    labels, a_only_loc, classifier.shape[1], p["stereotype_min_lift"]
                )
                k["stereotype"] = acc.add_stereotype(labels, a_only_loc, smap)
        plans[a] = {"values": vals, "attr": attr, "variants": variants, "keys": keys}

    # One streamed pass over the cell (memory O(batch + result), no [N, ..., D] array).
    t0 = time.perf_counter()
    row = 0
    for s in splits:
        for batch_idx, h, r in fs.iter_batches(None, s):
            ids = idx["image_id"].iloc[row : row + len(batch_idx)].to_numpy()
            if not np.array_equal(batch_idx["image_id"].to_numpy(), ids):
                raise ValueError(f"rows of {s!r} in {fs.folder} changed order between reads")
            acc.update(h, r)
            row += len(batch_idx)
    stats = acc.finish()
    del acc
    log.info(
        "streamed %s rows of %s (%d terminal layers %s) in %.1f s",
        counts,
        splits,
        len(terminal),
        terminal,
        time.perf_counter() - t0,
    )

    # Bias-augmented TextSpan of every attribute and variant from the moments, which are
    # then dropped before the ablation engines are built.
    spans: dict[tuple[str, str], tuple[Any, Any, list[str], list[str]]] = {}
    for a in chosen:
        bias = table[(table["attribute"] == a) & (table["role"] == "bias")]
        bias_texts = bias["text"].tolist()
        aug_texts, aug_emb = au.augmented_pool(
            pool_texts, pool_emb, bias_texts, emb[bias.index.to_numpy()]
        )
        for variant in plans[a]["variants"]:
            ts_table, bias_stats = None, None
            if ts["enabled"]:
                t1 = time.perf_counter()
                ts_table, bias_stats = au.bias_textspan_from_moments(
                    stats.moments[plans[a]["keys"][variant]["moments"]],
                    aug_texts,
                    aug_emb,
                    bias_texts,
                    m=min(int(ts["m"]), len(aug_texts)),
                    rank=rank,
                    top_k=ts["top_k"],
                    first_rank_max=ts["first_rank_max"],
                    share_quantile=ts["share_quantile"],
                )
                log.info("TextSpan %s / %s: %.1f s", a, variant, time.perf_counter() - t1)
            spans[a, variant] = (ts_table, bias_stats, aug_texts, bias_texts)
    stats.moments.clear()

    selections: dict[str, dict[str, Any]] = {}
    with atomic_path(out_dir, is_dir=True) as tmp:
        for a in chosen:
            vals, attr = plans[a]["values"], plans[a]["attr"]
            proj_a = {c: stats.proj[..., j] for j, (aa, c) in enumerate(columns) if aa == a}
            selections[a] = {}
            for variant, mask in plans[a]["variants"].items():
                t1 = time.perf_counter()
                keys = plans[a]["keys"][variant]
                ts_table, bias_stats, aug_texts, bias_texts = spans[a, variant]
                means = {"locate": stats.means[keys["locate"]]}
                if "evaluate" in keys:
                    means["evaluate"] = stats.means[keys["evaluate"]]
                res = au.audit_attribute_stats(
                    stats.logits,
                    labels,
                    attr,
                    cavs[a],
                    vals,
                    means=means,
                    proj=proj_a,
                    proj_layers=fs.layers,
                    stereotype=stats.stereotype[keys["stereotype"]]
                    if "stereotype" in keys
                    else None,
                    attribute=a,
                    is_locate=mask,
                    bias_stats=bias_stats,
                    n_layers=n_layers,
                    class_names=names,
                    seed=int(seed),
                    **{k: v for k, v in p.items() if k not in STAGE_KEYS},
                )
                seconds = time.perf_counter() - t1
                folder = tmp / a / variant
                folder.mkdir(parents=True)
                for key in TABLE_KEYS:
                    if res.get(key) is not None:
                        res[key].insert(1, "variant", variant)
                        write_csv(res[key], folder / f"{key}.csv")
                if ts_table is not None:
                    for name, df in (("textspan", ts_table), ("textspan_bias", bias_stats)):
                        df = df.copy()
                        df.insert(0, "attribute", a)
                        df.insert(1, "variant", variant)
                        write_csv(df, folder / f"{name}.csv")
                sel = {**res["selection"], "values": vals}
                selections[a][variant] = sel
                write_json(
                    folder / "audit.json",
                    {
                        "attribute": a,
                        "variant": variant,
                        "values": vals,
                        "dataset_values": list(ds_attrs[a]),
                        "axis": list(attr_meta[a]["axis"]),
                        "description": attr_meta[a].get("description", ""),
                        "locate_split": locate_split,
                        "test_split": test_split,
                        "selection": res["selection"],
                        "random_control": res["random_control"],
                        "cavs": res["cavs"],
                        "textspan": {
                            **ts,
                            "rank": int(rank),
                            "pool_size": len(aug_texts),
                            "n_bias_texts": len(bias_texts),
                            "layers": [int(x) for x in terminal],
                        },
                    },
                )
                log.info("audit %s / %s: %.1f s", a, variant, seconds)
        locator = locator_json(
            selections, terminal, n_layers, n_heads, locate_split, test_split, skipped
        )
        log.info("audit of %s: %.1f s", chosen, time.perf_counter() - t0)
        write_json(
            tmp / "summary.json",
            {
                **locator,
                "variants": [v for v in VARIANTS if v == "split" or p["single_pool"]],
                "split_sizes": dict(zip(splits, counts, strict=True)),
                "stored_layers": fs.layers,
                "seed": int(seed),
                "params": p,
            },
        )
    write_json(out_heads, locator)
    return locator
