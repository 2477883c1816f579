"""Adapter: rule encode_class_templates -> clipbias.stages.features.encode_class_templates."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.features import encode_class_templates  # noqa: E402

encode_class_templates(
    model_name=snakemake.params.model_name,
    pretrained=snakemake.params.pretrained,
    dataset_dir=Path(snakemake.input.index).parent,
    out=snakemake.output[0],
    device=snakemake.params.device,
    hf_home=snakemake.params.hf_home or None,
    threads=snakemake.threads,
)
