"""Adapter: rule textspan -> clipbias.stages.locate.textspan."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.locate import textspan  # noqa: E402

textspan(
    feature_dir=Path(snakemake.input.manifest).parent,
    texts=snakemake.input.texts,
    out=snakemake.output[0],
    split=snakemake.params.split,
    last_layers=snakemake.params.last_layers,
    m=snakemake.params.m,
    rank=snakemake.params.rank,
    threads=snakemake.threads,
)
