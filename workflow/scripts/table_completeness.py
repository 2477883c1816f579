"""Adapter: rule table_completeness -> clipbias.stages.evaluate.table_completeness."""

from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.evaluate import table_completeness  # noqa: E402

table_completeness(snakemake.params.cells, snakemake.output[0])
