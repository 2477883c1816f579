"""Adapter: rule textspan -> clipbias.stages.textspan_stage."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages import textspan_stage  # noqa: E402

ts = snakemake.params.textspan
textspan_stage(
    feature_dir=Path(snakemake.input.manifest).parent,
    texts=snakemake.input.texts,
    out=snakemake.output[0],
    split=snakemake.params.split,
    last_layers=ts["last_layers"],
    m=ts["m"],
    rank=ts["rank"],
    threads=snakemake.threads,
)
