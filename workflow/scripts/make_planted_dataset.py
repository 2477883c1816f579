"""Adapter: rule make_planted_dataset -> clipbias.synth.generate."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.synth import generate  # noqa: E402

generate(Path(snakemake.output.index).parent, seed=snakemake.params.seed, **snakemake.params.synth)
