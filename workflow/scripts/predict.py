"""Adapter: rule predict, predict_torch -> clipbias.stages.predict.predict."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.methods.registry import LOCATORS  # noqa: E402
from clipbias.stages.predict import predict  # noqa: E402

predict(
    method=snakemake.params.method_name,
    method_id=snakemake.wildcards.method,
    params=snakemake.params.method_params,
    feature_dir=Path(snakemake.input.manifest).parent,
    dataset_meta=snakemake.input.meta,
    out=snakemake.output[0],
    locate_split=snakemake.params.locate_split,
    test_split=snakemake.params.test_split,
    eval_splits=snakemake.params.eval_splits,
    seed=int(snakemake.wildcards.seed),
    texts=snakemake.input.get("texts"),
    texts_yaml=snakemake.input.texts_yaml,
    located={k: v for k, v in snakemake.input.items() if k in LOCATORS},
    threads=snakemake.threads,
    class_templates=snakemake.input.get("class_templates"),
)
