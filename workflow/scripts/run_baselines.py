"""Adapter: rule run_baselines -> clipbias.stages.baselines_stage."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages import baselines_stage  # noqa: E402

baselines_stage(
    feature_dir=Path(snakemake.input.manifest).parent,
    ltc_json=snakemake.input.ltc,
    textspan_csv=snakemake.input.textspan,
    texts=snakemake.input.texts,
    texts_yaml=snakemake.input.texts_yaml,
    out=snakemake.output.predictions,
    out_random=snakemake.output.random,
    out_textspan_heads=snakemake.output.textspan_heads,
    locate_split=snakemake.params.locate_split,
    test_split=snakemake.params.test_split,
    n_random=snakemake.params.ltc["n_random"],
    random_last_layers=snakemake.params.ltc["random_last_layers"],
    textspan_top_k=snakemake.params.top_k,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
)
