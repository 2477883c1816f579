"""Adapter: rule score_locators -> clipbias.stages.evaluate.score_locators."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.evaluate import score_locators  # noqa: E402

located = {k: v for k, v in snakemake.input.items() if k not in ("ground_truth", "meta")}
score_locators(
    ground_truth=snakemake.input.ground_truth,
    located=located,
    dataset_meta=snakemake.input.meta,
    out=snakemake.output[0],
)
