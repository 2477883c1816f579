"""Adapter: rule summarize_seeds -> clipbias.stages.evaluate.summarize_seeds."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.evaluate import summarize_seeds  # noqa: E402

summarize_seeds(
    {int(k): v for k, v in snakemake.input.items()},
    snakemake.output[0],
    split=snakemake.params.split,
    metric_names=snakemake.params.metrics,
)
