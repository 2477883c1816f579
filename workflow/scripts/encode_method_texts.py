"""Adapter: rule encode_method_texts -> clipbias.stages.features.encode_method_texts."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.features import encode_method_texts  # noqa: E402

encode_method_texts(
    model_name=snakemake.params.model_name,
    pretrained=snakemake.params.pretrained,
    texts_yaml=snakemake.input.texts,
    out=snakemake.output[0],
    device=snakemake.params.device,
    hf_home=snakemake.params.hf_home or None,
    threads=snakemake.threads,
    pool_cap=snakemake.params.pool_cap,
)
