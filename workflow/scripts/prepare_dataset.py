"""Adapter: rule prepare_dataset -> clipbias.stages.data.prepare_dataset."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.data import prepare_dataset  # noqa: E402

prepare_dataset(
    registry=snakemake.input.registry,
    dataset=snakemake.wildcards.dataset,
    extracted=snakemake.input.extracted,
    dataset_root=Path(snakemake.output.index).parent,
    rehearsal=snakemake.params.rehearsal,
    class_cap=snakemake.params.class_cap,
)
