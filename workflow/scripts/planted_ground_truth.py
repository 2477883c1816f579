"""Adapter: rule planted_ground_truth -> clipbias.stages.evaluate.planted_ground_truth."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.evaluate import planted_ground_truth  # noqa: E402

planted_ground_truth(
    feature_dir=Path(snakemake.input.manifest).parent,
    dataset_meta=snakemake.input.meta,
    out_heads=snakemake.output.heads,
    out_total=snakemake.output.total,
    split=snakemake.params.split,
    n_boot=snakemake.params.n_boot,
    seed=int(snakemake.wildcards.seed),
)
