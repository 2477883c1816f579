"""Adapter: rule train_small_clip -> clipbias.stages.model.train_small_clip."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.model import train_small_clip  # noqa: E402

train_small_clip(
    Path(snakemake.input.index).parent,
    snakemake.output.checkpoint,
    snakemake.output.log_json,
    model_name=snakemake.params.model_name,
    seed=int(snakemake.wildcards.seed),
    train=snakemake.params.train,
    device=snakemake.params.device,
    threads=snakemake.threads,
)
