"""Adapter: rule make_rehearsal_dataset -> clipbias.stages.data.make_rehearsal_dataset."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.data import make_rehearsal_dataset  # noqa: E402

make_rehearsal_dataset(
    registry=snakemake.input.registry,
    dataset=snakemake.wildcards.dataset,
    out=snakemake.output[0],
    image_size=snakemake.params.image_size,
    seed=snakemake.params.seed,
)
