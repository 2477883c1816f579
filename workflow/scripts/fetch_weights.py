"""Adapter: rule fetch_weights -> clipbias.stages.model.fetch_weights."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.model import fetch_weights  # noqa: E402

fetch_weights(
    model_name=snakemake.params.model_name,
    pretrained=snakemake.params.pretrained,
    hf_home=snakemake.params.hf_home,
    record=snakemake.output[0],
)
