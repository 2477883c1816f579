"""Adapter: rule feature_manifest -> clipbias.stages.features.feature_manifest."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.features import feature_manifest  # noqa: E402

feature_manifest(list(snakemake.input.shards), snakemake.output[0])
