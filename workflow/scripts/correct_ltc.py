"""Adapter: rule correct_ltc -> clipbias.stages.correct_ltc_stage."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages import correct_ltc_stage  # noqa: E402

correct_ltc_stage(
    feature_dir=Path(snakemake.input.manifest).parent,
    ltc_json=snakemake.input.ltc,
    ltc_full_json=snakemake.input.ltc_full,
    texts=snakemake.input.texts,
    out=snakemake.output[0],
    locate_split=snakemake.params.locate_split,
    test_split=snakemake.params.test_split,
    ablation_stats=snakemake.params.ltc["ablation_stats"],
    renormalize_after_edit=snakemake.params.ltc["renormalize_after_edit"],
    threads=snakemake.threads,
)
