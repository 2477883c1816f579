"""Adapter: rule evaluate -> clipbias.stages.evaluate_stage."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages import evaluate_stage  # noqa: E402

evaluate_stage(
    predictions=list(snakemake.input.predictions),
    random_draws=snakemake.input.random,
    dataset_meta=snakemake.input.meta,
    out=snakemake.output.table,
    out_random_summary=snakemake.output.random_summary,
    n_boot=snakemake.params.n_boot,
    seed=snakemake.params.seed,
)
