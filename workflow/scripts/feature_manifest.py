"""Adapter: rule feature_manifest -> clipbias.features.write_manifest."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.features import write_manifest  # noqa: E402

write_manifest(list(snakemake.input.shards), snakemake.output[0])
