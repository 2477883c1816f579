"""Adapter: rule export_refineclip_model -> clipbias.stages.refineclip.export_refineclip_model."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.refineclip import export_refineclip_model  # noqa: E402

export_refineclip_model(
    model_name=snakemake.params.model_name,
    pretrained=snakemake.params.pretrained,
    adapter=snakemake.input.adapter,
    out=snakemake.output.checkpoint,
    out_info=snakemake.output.info,
    device=snakemake.params.device,
)
