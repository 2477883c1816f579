"""Adapter: rule adapt_refineclip -> clipbias.stages.refineclip.adapt_refineclip."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.refineclip import adapt_refineclip  # noqa: E402

adapt_refineclip(
    feature_dir=Path(snakemake.input.manifest).parent,
    dataset_meta=snakemake.input.meta,
    phase1=snakemake.input.phase1,
    out_adapter=snakemake.output.adapter,
    out_curves=snakemake.output.curves,
    seed=int(snakemake.wildcards.seed),
    params=snakemake.params.method_params,
    edit_targets=snakemake.params.edit_targets,
    test_split=snakemake.params.test_split,
    device=snakemake.params.device,
    threads=snakemake.threads,
)
