"""Adapter: rule encode_classes -> clipbias.stages.features.encode_classes."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.features import encode_classes  # noqa: E402

encode_classes(
    model_name=snakemake.params.model_name,
    pretrained=snakemake.params.pretrained,
    dataset_dir=Path(snakemake.input.index).parent,
    out=snakemake.output[0],
    templates=snakemake.params.templates,
    convention=snakemake.params.convention,
    device=snakemake.params.device,
    hf_home=snakemake.params.hf_home or None,
)
