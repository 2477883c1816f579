"""Adapter: rule locate_ltc -> clipbias.stages.locate.locate_ltc."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.locate import locate_ltc  # noqa: E402

locate_ltc(
    feature_dir=Path(snakemake.input.manifest).parent,
    dataset_meta=snakemake.input.meta,
    texts=snakemake.input.texts,
    out=snakemake.output.groups,
    out_full=snakemake.output.full,
    split=snakemake.params.split,
    use_group_labels=snakemake.params.use_group_labels,
    threads=snakemake.threads,
)
