"""Adapter: rule derive_dataset -> clipbias.stages.data.derive_dataset."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.data import derive_dataset  # noqa: E402

root = Path(snakemake.output.index).parent
derive_dataset(
    registry=snakemake.input.registry,
    dataset=snakemake.wildcards.dataset,
    resources_dir=root.parent,
    dataset_root=root,
)
