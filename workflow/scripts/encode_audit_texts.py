"""Adapter: rule encode_audit_texts -> clipbias.stages.audit.encode_audit_texts."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.audit import encode_audit_texts  # noqa: E402

encode_audit_texts(
    model_name=snakemake.params.model_name,
    pretrained=snakemake.params.pretrained,
    texts_yaml=snakemake.input.texts,
    out=snakemake.output[0],
    device=snakemake.params.device,
    threads=snakemake.threads,
    min_concept_texts=snakemake.params.min_concept_texts,
    min_bias_texts=snakemake.params.min_bias_texts,
)
