"""Adapter: rule evaluate -> clipbias.stages.evaluate.evaluate."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.evaluate import evaluate  # noqa: E402

evaluate(
    predictions={k: v for k, v in snakemake.input.items() if k != "meta"},
    dataset_meta=snakemake.input.meta,
    out_metrics=snakemake.output.metrics,
    out_paired=snakemake.output.paired,
    out_draws=snakemake.output.draws,
    out_random_summary=snakemake.output.random_summary,
    n_boot=snakemake.params.n_boot,
    seed=int(snakemake.wildcards.seed),
    threads=snakemake.threads,
    protocol=snakemake.params.protocol,
    edit_targets=snakemake.params.edit_targets,
    out_methods=snakemake.output.methods,
    ltc_group_labels=snakemake.params.ltc_group_labels,
)
