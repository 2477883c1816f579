"""Adapter: rule train_small_clip -> clipbias.train.train_clip."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.train import train_clip  # noqa: E402

train_clip(
    Path(snakemake.input.index).parent,
    snakemake.output.checkpoint,
    snakemake.output.log_json,
    model_name=snakemake.wildcards.model,
    seed=snakemake.params.seed,
    device=snakemake.params.device,
    num_threads=snakemake.threads,
    **snakemake.params.train,
)
