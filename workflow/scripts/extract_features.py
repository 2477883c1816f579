"""Adapter: rule extract_features -> clipbias.stages.extract_features."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages import extract_features  # noqa: E402

extract_features(
    model_name=snakemake.wildcards.model,
    pretrained=snakemake.params.pretrained,
    dataset_dir=Path(snakemake.input.index).parent,
    out=snakemake.output.shard,
    shard=int(snakemake.wildcards.shard),
    n_shards=snakemake.params.n_shards,
    device=snakemake.params.device,
    threads=snakemake.threads,
    layers=snakemake.params.features["layers"],
    dtype=snakemake.params.features["dtype"],
    batch_size=snakemake.params.features["batch_size"],
)
