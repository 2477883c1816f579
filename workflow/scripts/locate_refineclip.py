"""Adapter: rule locate_refineclip -> clipbias.stages.refineclip.locate_refineclip."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.refineclip import locate_refineclip  # noqa: E402

locate_refineclip(
    feature_dir=Path(snakemake.input.manifest).parent,
    out=snakemake.output[0],
    seed=int(snakemake.wildcards.seed),
    threads=snakemake.threads,
    dataset_meta=snakemake.input.meta,
    edit_targets=snakemake.params.edit_targets,
    test_split=snakemake.params.test_split,
    **snakemake.params.phase1,
)
