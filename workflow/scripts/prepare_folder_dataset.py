"""Adapter: rule prepare_folder_dataset -> clipbias.stages.data.prepare_folder_dataset."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.data import prepare_folder_dataset  # noqa: E402

spec = snakemake.params.spec
prepare_folder_dataset(
    dataset=snakemake.wildcards.dataset,
    folder=spec["folder"],
    dataset_root=Path(snakemake.output.index).parent,
    splits=spec["splits"],
    locate_split=spec["locate_split"],
)
