"""Rules of ``workflow/rules/predict.smk``: one registered method -> test predictions.

The same function serves the ``predict`` rule (analysis env, no torch) and the
``predict_torch`` rule (torch env); the registry says which methods need which
(:attr:`clipbias.methods.registry.MethodSpec.env`).

Predictions file (``predictions/{dataset}/{model}/seed-{seed}/{method}.parquet``): the index
columns ``image_id, split, label, group, attr_*`` of the evaluation splits (the test split,
then any ``eval_splits``), ``pred`` (int64) or, for random controls, ``draws`` (fixed-size
list of int32, one value per draw), and ``scores`` (fixed-size list of float32: cosine with
each retrieval prompt) when the dataset's texts define them; schema metadata
``clipbias.meta`` = ``{"method", "method_name", "params", "split", "splits", "seed", "meta",
"draw_meta", "retrieval"}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipbias.stages.common import limit_blas_threads

log = logging.getLogger(__name__)

META_KEY = b"clipbias.meta"


def read_located(paths: Mapping[str, str | os.PathLike]) -> dict[str, Any]:
    """Parse located-heads files by locator name (JSON, or CSV for TextSpan tables); binary
    files (``.safetensors``, e.g. a RefineCLIP adapter) are passed on as paths."""

    from clipbias.io import read_csv, read_json

    out: dict[str, Any] = {}
    for name, path in paths.items():
        if str(path).endswith(".safetensors"):
            out[name] = Path(path)
            continue
        out[name] = read_csv(path) if str(path).endswith(".csv") else read_json(path)
    return out


def write_predictions(
    out: str | os.PathLike,
    index,
    output,
    info: Mapping[str, Any],
    dataset_meta: Mapping[str, Any] | None = None,
) -> None:
    """Write a method's :class:`~clipbias.methods.api.MethodOutput` (module doc format).

    ``label`` is written in the classifier's class space (``clipbias.labels``), the space of
    ``pred``; a dataset whose classifier has other classes keeps its own labels as
    ``dataset_label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbias.io import atomic_path, stamp_table
    from clipbias.labels import classifier_labels

    keep = [
        "image_id",
        "split",
        "label",
        "group",
        *[c for c in index.columns if c.startswith("attr_")],
    ]
    cols = {c: pa.array(index[c].to_numpy()) for c in keep}
    mapped = classifier_labels(index["label"].to_numpy(), dataset_meta or {})
    if not np.array_equal(mapped, index["label"].to_numpy()):
        cols["dataset_label"] = cols["label"]
        cols["label"] = pa.array(mapped)
    n = len(index)
    if output.pred is not None:
        pred = np.asarray(output.pred, dtype=np.int64)
        if pred.shape != (n,):
            raise ValueError(f"method returned {pred.shape} predictions for {n} test rows")
        cols["pred"] = pa.array(pred)
    if output.draws is not None:
        draws = np.asarray(output.draws, dtype=np.int32)
        if draws.ndim != 2 or draws.shape[1] != n:
            raise ValueError(f"draws must be [n_draws, {n}], got {draws.shape}")
        cols["draws"] = pa.FixedSizeListArray.from_arrays(
            pa.array(draws.T.reshape(-1)), draws.shape[0]
        )
    if "pred" not in cols and "draws" not in cols:
        raise ValueError("a method must return predictions or draws")
    scores = info.get("scores")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32)
        cols["scores"] = pa.FixedSizeListArray.from_arrays(
            pa.array(scores.reshape(-1)), scores.shape[1]
        )
    info = {k: v for k, v in info.items() if k != "scores"}
    meta = {**info, "meta": output.meta, "draw_meta": output.draw_meta}
    table = pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    table = stamp_table(table, out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def read_predictions(path: str | os.PathLike):
    """(DataFrame without the list columns, draws [n_draws, N] or None, metadata dict);
    retrieval scores [N, K], when stored, are in ``meta["scores"]``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    draws = None
    if "draws" in table.column_names:
        col = table.column("draws").combine_chunks()
        width = col.type.list_size
        draws = col.flatten().to_numpy().reshape(-1, width).T.astype(np.int64)
        table = table.drop(["draws"])
    if "scores" in table.column_names:
        col = table.column("scores").combine_chunks()
        meta["scores"] = col.flatten().to_numpy().reshape(-1, col.type.list_size)
        table = table.drop(["scores"])
    return table.to_pandas(), draws, meta


def predict(
    method: str,
    params: Mapping[str, Any],
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    out: str | os.PathLike,
    locate_split: str,
    test_split: str,
    seed: int = 42,
    texts: str | os.PathLike | None = None,
    texts_yaml: str | os.PathLike | None = None,
    located: Mapping[str, str | os.PathLike] | None = None,
    threads: int | None = None,
    method_id: str | None = None,
    eval_splits: Sequence[str] = (),
    class_templates: str | os.PathLike | None = None,
) -> None:
    """Run the registered ``method`` with ``params`` and write its predictions file.

    ``method_id``: the configured id (default: the name; differs for a method configured
    twice with different parameters); ``class_templates``: the per-template class embeddings
    (``class_templates.parquet``) for methods that declare them (SAGE)."""
    from clipbias.io import read_json
    from clipbias.methods import registry
    from clipbias.methods.api import open_context
    from clipbias.methods.texts import read_spec

    limit_blas_threads(threads)
    spec = registry.spec_for(method, params)
    missing = [loc for loc in spec.locators if loc not in (located or {})]
    if missing:
        raise ValueError(f"method {method!r} needs the located heads of {missing}")
    ctx = open_context(
        feature_dir,
        read_json(dataset_meta),
        locate_split,
        test_split,
        seed=seed,
        # a method that declares no texts gets them too when given: the dataset's retrieval
        # prompts (FairFace) then score every method's embeddings (MaxSkew for every row)
        texts=texts,
        text_spec=read_spec(texts_yaml) if texts_yaml else None,
        located=read_located(located or {}),
        eval_splits=eval_splits,
        class_templates=class_templates if spec.class_templates else None,
    )
    output = spec.load()(ctx, **dict(params))
    info = {
        "method": method_id or method,
        "method_name": method,
        "params": dict(params),
        "split": test_split,
        "splits": ctx.splits,
        "locate_split": locate_split,
        "seed": int(seed),
        "retrieval": ctx.texts.get("retrieval", ([], None))[0] if output.pred is not None else [],
        "scores": ctx.last_scores if output.pred is not None else None,
    }
    write_predictions(out, ctx.test_index(), output, info, ctx.dataset_meta)
    log.info(
        "%s: %s predictions on %s (%s)", method, len(ctx.test_index()), test_split, output.meta
    )
