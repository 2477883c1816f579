"""Adapter: rule make_rehearsal_weights -> clipbias.rehearsal.make_random_weights."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.rehearsal import make_random_weights  # noqa: E402

make_random_weights(
    name=snakemake.params.model["name"],
    pretrained=snakemake.params.model["pretrained"],
    out=snakemake.output[0],
    seed=snakemake.params.seed,
)
