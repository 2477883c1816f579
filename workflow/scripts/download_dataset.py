"""Adapter: rule download_dataset -> clipbias.stages.data.download_dataset."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.data import download_dataset  # noqa: E402

download_dataset(
    registry=snakemake.input.registry,
    dataset=snakemake.wildcards.dataset,
    resources_dir=Path(snakemake.output[0]).parents[1],
    out=snakemake.output[0],
    lock_file=snakemake.params.lock,
)
