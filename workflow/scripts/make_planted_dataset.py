"""Adapter: rule make_planted_dataset -> clipbias.stages.data.make_planted_dataset."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.data import make_planted_dataset  # noqa: E402

make_planted_dataset(
    Path(snakemake.output.index).parent,
    seed=int(snakemake.wildcards.seed),
    synth=snakemake.params.synth,
    name=snakemake.wildcards.dataset,
)
