"""Adapter: rule refineclip_sensitivity -> clipbias.stages.refineclip.refineclip_sensitivity."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.refineclip import refineclip_sensitivity  # noqa: E402

refineclip_sensitivity(
    feature_dir=Path(snakemake.input.manifest).parent,
    dataset_meta=snakemake.input.meta,
    phase1=snakemake.input.phase1,
    out=snakemake.output[0],
    seed=int(snakemake.wildcards.seed),
    params=snakemake.params.method_params,
    values=snakemake.params.values,
    steps=snakemake.params.steps,
    edit_targets=snakemake.params.edit_targets,
    test_split=snakemake.params.test_split,
    device=snakemake.params.device,
    threads=snakemake.threads,
)
