"""Stage entry points: paths and plain values in, files out.

Each Snakemake rule script calls exactly one function here. Nothing in this module reads the
``snakemake`` object or the workflow config, so every stage is callable from tests.
"""

from __future__ import annotations

import json
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
    from clipbias.extract import default_workers, extract_shard

    _set_threads(threads)
    maybe_fail_once("extract_features")
    loaded = _load(model_name, pretrained, device)
    return extract_shard(
        loaded,
        dataset_dir,
        out,
        shard,
        n_shards,
        layers=layers,
        dtype=dtype,
        batch_size=batch_size,
        num_workers=default_workers(threads, loaded.device),
    )


def zero_shot_predictions(
    heads: np.ndarray, rest: np.ndarray, classifier: np.ndarray
) -> np.ndarray:
    """Arg-max of ⟨Σ ĉ_k, t̂_c⟩ (METHODS §2.3)."""
    emb = heads.sum((1, 2)) + rest
    return (emb @ classifier).argmax(1)


# ----------------------------------------------------------------------------- method texts

TEXT_ROLES = (
    "pool",
    "accept_pos",
    "accept_neg",
    "reject_pos",
    "reject_neg",
    "ortho_spurious",
    "ortho_candidate",
    "attribute",
)


def method_texts(texts_yaml: str | os.PathLike, general_pool: bool = True) -> dict[str, list[str]]:
    """All texts the methods need, by role, from a dataset's text file (config/texts/*.yaml)."""
    import yaml

    from clipbias.methods import load_resource_lines

    spec = yaml.safe_load(Path(texts_yaml).read_text())
    pairs = spec.get("insight_pairs", {})
    oc = spec.get("ortho_cali", {})
    pool = load_resource_lines("text_pool_general.txt") if general_pool else []
    pool = list(dict.fromkeys([*pool, *spec.get("textspan_extra", [])]))
    return {
        "pool": pool,
        "accept_pos": [p[0] for p in pairs.get("accept", [])],
        "accept_neg": [p[1] for p in pairs.get("accept", [])],
        "reject_pos": [p[0] for p in pairs.get("reject", [])],
        "reject_neg": [p[1] for p in pairs.get("reject", [])],
        "ortho_spurious": list(oc.get("spurious", [])),
        "ortho_candidate": list(oc.get("candidates", [])),
        "attribute": list(spec.get("attribute_prompts", {}).get("default", [])),
    }


def encode_method_texts(
    model_name: str,
    pretrained: str | None,
    texts_yaml: str | os.PathLike,
    out: str | os.PathLike,
    device: str | None = None,
    threads: int | None = None,
) -> None:
    """Encode every method text once with the text tower -> Parquet (raw, unnormalised)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbias.io import atomic_path
    from clipbias.text import encode_texts

    _set_threads(threads)
    loaded = _load(model_name, pretrained, device)
    by_role = method_texts(texts_yaml)
    roles, idx, texts = [], [], []
    for role in TEXT_ROLES:
        for i, t in enumerate(by_role[role]):
            roles.append(role)
            idx.append(i)
            texts.append(t)
    emb = encode_texts(loaded.model, loaded.tokenizer, texts).float().cpu().numpy()
    table = pa.table(
        {
            "role": pa.array(roles, pa.string()),
            "idx": pa.array(idx, pa.int64()),
            "text": pa.array(texts, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]
            ),
        }
    )
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    log.info("encoded %d texts (%s)", len(texts), {r: roles.count(r) for r in TEXT_ROLES})


def read_method_texts(path: str | os.PathLike) -> dict[str, tuple[list[str], np.ndarray]]:
    """role -> (texts, raw embeddings [M, D])."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pandas()
    out = {}
    for role in TEXT_ROLES:
        part = table[table["role"] == role].sort_values("idx")
        emb = np.stack(part["embedding"].to_numpy()) if len(part) else np.zeros((0, 0), np.float32)
        out[role] = (part["text"].tolist(), emb.astype(np.float32))
    return out


# ----------------------------------------------------------------------------- shared loading


def _dataset_meta(path: str | os.PathLike) -> dict:
    return read_json(path)


def _load_split(feature_dir, split: str):
    from clipbias.features import FeatureSet

    fs = FeatureSet.open(feature_dir)
    idx, heads, rest = fs.load(split=split)
    return fs, idx, heads, rest


def _threads_env(threads: int | None) -> None:
    """Pin BLAS threads to the rule's threads (oversubscription slows numpy badly)."""
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(threads))


# ----------------------------------------------------------------------------- evaluation


def zero_shot_eval(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 42,
) -> None:
    """Zero-shot accuracy per group on ``split`` with bootstrap intervals -> tidy CSV."""
    from clipbias.features import read_classifier
    from clipbias.io import atomic_path
    from clipbias.metrics import evaluate_predictions

    meta = _dataset_meta(dataset_meta)
    _, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    _, idx, heads, rest = _load_split(feature_dir, split)
    preds = zero_shot_predictions(heads, rest, classifier)
    table = evaluate_predictions(
        preds,
        idx["label"].to_numpy(),
        idx["group"].to_numpy(),
        group_names=meta.get("group_names"),
        method="zero_shot",
        split=split,
        n_boot=n_boot,
        seed=seed,
    )
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("zero-shot on %s:\n%s", split, table.to_string(index=False))


def planted_ground_truth(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 42,
) -> None:
    """Per-head dependence of the class-margin contribution on the planted attribute."""
    from clipbias.features import read_classifier
    from clipbias.ground_truth import head_attribute_table
    from clipbias.io import atomic_path

    meta = _dataset_meta(dataset_meta)
    attr = meta["spurious_attribute"]
    _, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    fs, idx, heads, _ = _load_split(feature_dir, split)
    table = head_attribute_table(
        heads,
        fs.layers,
        classifier,
        idx["label"].to_numpy(),
        idx[f"attr_{attr}"].to_numpy(),
        n_boot=n_boot,
        seed=seed,
    )
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("ground truth, top heads:\n%s", table.head(8).to_string(index=False))


# ----------------------------------------------------------------------------- TextSpan, LTC


def _last_layers(layers: Sequence[int], n_layers: int, k: int) -> list[int]:
    return [l for l in layers if l >= n_layers - k]


def textspan_stage(
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
    from clipbias.io import atomic_path
    from clipbias.methods.textspan import default_rank, textspan_heads

    _threads_env(threads)
    fs, _, heads, _ = _load_split(feature_dir, split)
    n_layers = int(fs.meta["n_layers"])
    layers = fs.layers
    keep = _last_layers(layers, n_layers, last_layers)
    sel = [layers.index(l) for l in keep]
    pool_texts, pool_emb = read_method_texts(texts)["pool"]
    pool_emb = pool_emb / np.linalg.norm(pool_emb, axis=1, keepdims=True)
    head_dim = int(fs.meta.get("head_dim", 0)) or None
    r = rank if rank is not None else (default_rank(head_dim) if head_dim else 80)
    table = textspan_heads(heads[:, sel], keep, pool_emb, pool_texts, m=m, rank=r)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    log.info(
        "TextSpan: %d heads, m=%d, rank=%d, pool=%d texts",
        len(sel) * fs.n_heads,
        m,
        r,
        len(pool_texts),
    )


def _ltc_json(
    result: dict, split: str, use_group_labels: bool, attr_accuracy: float | None
) -> dict:
    """The located heads file of DESIGN.md (result-table formats)."""
    from clipbias.methods import parse_head

    def entry(x, score_key="score"):
        l, h = parse_head(x["head"])
        return {"head": x["head"], "layer": l, "index": h, "score": x[score_key]}

    freqs = []
    for head_id, f_c in result["F_C"].items():
        l, h = parse_head(head_id)
        freqs.append(
            {
                "head": head_id,
                "layer": l,
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


def locate_ltc_stage(
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
    from clipbias.features import read_classifier
    from clipbias.io import write_json
    from clipbias.methods import ltc

    _threads_env(threads)
    meta = _dataset_meta(dataset_meta)
    _, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    fs, idx, heads, rest = _load_split(feature_dir, split)
    labels = idx["label"].to_numpy()
    groups = idx["group"].to_numpy()
    attr_acc = None
    if not use_group_labels:
        _, attr_emb = read_method_texts(texts)["attribute"]
        attr_emb = attr_emb / np.linalg.norm(attr_emb, axis=1, keepdims=True)
        emb = heads.sum((1, 2)) + rest
        groups, s_hat = ltc.infer_groups(emb, attr_emb.T, labels)
        true_attr = idx[f"attr_{meta['spurious_attribute']}"].to_numpy()
        attr_acc = float(np.mean(s_hat == true_attr))
        log.info("inferred spurious attribute accuracy on %s: %.3f", split, attr_acc)
    minority = meta.get("minority_groups", [1, 2])
    for variant, path in (("groups", out), ("full", out_full)):
        res = ltc.locate_ltc(
            heads,
            rest,
            classifier,
            labels,
            fs.layers,
            groups=groups,
            minority_groups=minority,
            variant=variant,
        )
        write_json(path, _ltc_json(res, split, use_group_labels, attr_acc))


def _located(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    spec = read_json(path)
    return [x["head"] for x in spec["spurious"]], [x["head"] for x in spec["salient"]]


def _basis(texts: dict, pos: str, neg: str) -> np.ndarray | None:
    from clipbias.methods.ltc import insight_basis

    _, p = texts[pos]
    _, n = texts[neg]
    return insight_basis(p, n) if len(p) else None


def _write_predictions(out, idx, preds: dict[str, np.ndarray], meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbias.io import atomic_path

    cols = {c: idx[c].to_numpy() for c in ("image_id", "label", "group")}
    cols.update({f"pred_{k}": np.asarray(v, dtype=np.int64) for k, v in preds.items()})
    table = pa.table(cols).replace_schema_metadata({b"clipbias.meta": json.dumps(meta).encode()})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def correct_ltc_stage(
    feature_dir: str | os.PathLike,
    ltc_json: str | os.PathLike,
    ltc_full_json: str | os.PathLike,
    texts: str | os.PathLike,
    out: str | os.PathLike,
    locate_split: str,
    test_split: str,
    ablation_stats: str = "locate",
    renormalize_after_edit: bool = False,
    threads: int | None = None,
) -> None:
    """LTC correct (METHODS §4.6-4.7) and its ablations on the test split -> predictions.

    Methods: ``ltc`` (S mean-ablated with statistics from ``ablation_stats``, Y accept-
    projected), ``ltc_transductive`` (statistics from the test split, reference-compatible),
    ``ltc_scale_preserving``, ``ablate`` (S only), ``ltc_no_ablate`` (Y only), ``ltc_full``
    (S and Y of the all-correct-vs-all-wrong variant).
    """
    from clipbias.features import read_classifier
    from clipbias.methods import ltc
    from clipbias.metrics import predict

    _threads_env(threads)
    _, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    fs, idx, heads, rest = _load_split(feature_dir, test_split)
    means_locate = fs.head_means(split=locate_split)
    means_test = heads.mean(0)
    means = means_locate if ablation_stats == "locate" else means_test
    q_accept = _basis(read_method_texts(texts), "accept_pos", "accept_neg")
    s, y = _located(ltc_json)
    s_full, y_full = _located(ltc_full_json)
    layers = fs.layers
    common = {"renormalize_after_edit": renormalize_after_edit}
    runs = {
        "ltc": (s, y, means, False),
        "ltc_transductive": (s, y, means_test, False),
        "ltc_scale_preserving": (s, y, means, True),
        "ablate": (s, [], means, False),
        "ltc_no_ablate": ([], y, means, False),
        "ltc_full": (s_full, y_full, means, False),
    }
    preds = {}
    for name, (sp, sa, mu, scale) in runs.items():
        emb = ltc.ltc_correct(
            heads, rest, layers, sp, sa, q_accept, means=mu, scale_preserving=scale, **common
        )
        preds[name] = predict(emb, classifier)
    _write_predictions(
        out,
        idx,
        preds,
        {
            "split": test_split,
            "S": s,
            "Y": y,
            "S_full": s_full,
            "Y_full": y_full,
            "ablation_stats": ablation_stats,
        },
    )
    log.info("LTC corrected %d test images; S=%s Y=%s", len(idx), s, y)


def baselines_stage(
    feature_dir: str | os.PathLike,
    ltc_json: str | os.PathLike,
    textspan_csv: str | os.PathLike,
    texts: str | os.PathLike,
    texts_yaml: str | os.PathLike,
    out: str | os.PathLike,
    out_random: str | os.PathLike,
    out_textspan_heads: str | os.PathLike,
    locate_split: str,
    test_split: str,
    n_random: int = 100,
    random_last_layers: int = 4,
    textspan_top_k: int = 5,
    seed: int = 42,
    threads: int | None = None,
) -> None:
    """Zero-shot, Ortho-Cali, RoboShot (both, accept), TextSpan ablation, LTC-random."""
    import pandas as pd
    import yaml

    from clipbias.features import read_classifier
    from clipbias.io import atomic_path, write_json
    from clipbias.methods import baselines as bl
    from clipbias.methods import head_str
    from clipbias.metrics import predict

    _threads_env(threads)
    spec = yaml.safe_load(Path(texts_yaml).read_text())
    _, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    fs, idx, heads, rest = _load_split(feature_dir, test_split)
    means = fs.head_means(split=locate_split)
    txt = read_method_texts(texts)
    q_accept = _basis(txt, "accept_pos", "accept_neg")
    q_reject = _basis(txt, "reject_pos", "reject_neg")
    emb = heads.sum((1, 2)) + rest
    preds = {"zero_shot": predict(emb, classifier)}

    oc = spec.get("ortho_cali", {})
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    clf_oc = bl.ortho_cali(
        classifier,
        unit(txt["ortho_spurious"][1]),
        unit(txt["ortho_candidate"][1]) if len(txt["ortho_candidate"][0]) else None,
        [tuple(p) for p in oc.get("pairs", [])],
        lam=float(oc.get("lambda", 1000.0)),
    )
    preds["ortho_cali"] = predict(emb, clf_oc)
    preds["roboshot"] = predict(bl.roboshot(emb, q_reject, q_accept, mode="both"), classifier)
    preds["roboshot_accept"] = predict(bl.roboshot(emb, None, q_accept, mode="accept"), classifier)

    ts_table = pd.read_csv(textspan_csv)
    ts_heads = bl.select_textspan_heads(ts_table, spec.get("spurious_words", []), textspan_top_k)
    preds["textspan_ablation"] = predict(
        bl.textspan_ablation(heads, rest, fs.layers, ts_heads, means), classifier
    )
    write_json(
        out_textspan_heads,
        {
            "top_k": textspan_top_k,
            "spurious_words": spec.get("spurious_words", []),
            "heads": [head_str(h) for h in ts_heads],
        },
    )

    s, y = _located(ltc_json)
    n_layers = int(fs.meta["n_layers"])
    draws = bl.ltc_random(
        heads,
        rest,
        fs.layers,
        classifier,
        idx["label"].to_numpy(),
        idx["group"].to_numpy(),
        s,
        y,
        q_accept,
        means,
        n_draws=n_random,
        seed=seed,
        pool_layers=_last_layers(fs.layers, n_layers, random_last_layers),
    )
    draws = draws.rename(columns={"S": "spurious", "Y": "salient"})
    with atomic_path(out_random) as tmp:
        draws.to_csv(tmp, index=False)
    _write_predictions(
        out, idx, preds, {"split": test_split, "textspan_heads": [head_str(h) for h in ts_heads]}
    )
    log.info("baselines done; TextSpan-ablation heads: %s", [head_str(h) for h in ts_heads])


def evaluate_stage(
    predictions: Sequence[str | os.PathLike],
    random_draws: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    out: str | os.PathLike,
    out_random_summary: str | os.PathLike,
    n_boot: int = 1000,
    seed: int = 42,
) -> None:
    """Tidy metrics table of every method with 95 % stratified bootstrap intervals."""
    import pandas as pd
    import pyarrow.parquet as pq

    from clipbias.io import atomic_path
    from clipbias.methods.baselines import random_control_summary, random_metric_rows
    from clipbias.metrics import evaluate_predictions

    meta = _dataset_meta(dataset_meta)
    tables = []
    observed = None
    for path in predictions:
        t = pq.read_table(path)
        split = json.loads(t.schema.metadata[b"clipbias.meta"])["split"]
        df = t.to_pandas()
        for col in [c for c in df.columns if c.startswith("pred_")]:
            method = col[len("pred_") :]
            res = evaluate_predictions(
                df[col].to_numpy(),
                df["label"].to_numpy(),
                df["group"].to_numpy(),
                group_names=meta.get("group_names"),
                method=method,
                split=split,
                n_boot=n_boot,
                seed=seed,
            )
            tables.append(res)
            if method == "ltc":
                observed = dict(zip(res["metric"], res["value"], strict=True))
    draws = pd.read_csv(random_draws)
    if len(draws):
        random_rows = random_metric_rows(draws, tables[0]["split"].iloc[0])
        tables.append(random_rows)
        summary = random_control_summary(
            draws, {k: v for k, v in (observed or {}).items() if k in set(random_rows["metric"])}
        )
    else:
        summary = pd.DataFrame()
    table = pd.concat(tables, ignore_index=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_random_summary) as tmp:
        summary.to_csv(tmp, index=False)
    pivot = table[table["metric"].isin(["avg_acc", "worst_group_acc", "gap"])].pivot(
        index="method", columns="metric", values="value"
    )
    log.info(
        "evaluation:\n%s\nLTC vs random heads:\n%s",
        pivot.round(4).to_string(),
        summary.to_string(index=False),
    )


# ----------------------------------------------------------------------------- real datasets


def download_stage(
    registry: str | os.PathLike,
    dataset: str,
    resources_dir: str | os.PathLike,
    out: str | os.PathLike,
    lock_file: str | os.PathLike | None = None,
) -> None:
    """Download (or find, for gated datasets), verify and unpack ``dataset``.

    ``out`` is the folder ``<resources_dir>/<dataset>/extracted``; it appears only after
    every file was verified and unpacked.
    """
    from clipbias.data.download import fetch_dataset
    from clipbias.data.registry import get_entry, load_registry

    entry = get_entry(load_registry(registry), dataset)
    base = Path(resources_dir) / dataset
    root = fetch_dataset(entry, base / "raw", out, lock_file)
    log.info("dataset %s ready at %s", dataset, root)


def prepare_stage(
    registry: str | os.PathLike,
    dataset: str,
    extracted: str | os.PathLike,
    dataset_root: str | os.PathLike,
) -> None:
    """Run the dataset's adapter: extracted files -> index.parquet + dataset.json."""
    from clipbias.data.adapters import build_index
    from clipbias.data.download import check_layout
    from clipbias.data.registry import get_entry, load_registry

    entry = get_entry(load_registry(registry), dataset)
    source = check_layout(entry, Path(extracted))
    build_index(entry, source, dataset_root)
