"""Adapter: rule extract_features -> clipbias.stages.features.extract_features."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.features import extract_features  # noqa: E402

extract_features(
    model_name=snakemake.params.model_name,
    pretrained=snakemake.params.pretrained,
    dataset_dir=Path(snakemake.input.index).parent,
    out=snakemake.output.shard,
    shard=int(snakemake.wildcards.shard),
    n_shards=snakemake.params.n_shards,
    splits=snakemake.params.splits,
    layers=snakemake.params.layers,
    dtype=snakemake.params.dtype,
    precision=snakemake.params.precision,
    batch_size=snakemake.params.batch_size,
    device=snakemake.params.device,
    hf_home=snakemake.params.hf_home or None,
    threads=snakemake.threads,
    dataset=snakemake.wildcards.dataset,
)
