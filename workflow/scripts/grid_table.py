"""Adapter: rule grid_table -> clipbias.stages.evaluate.grid_table."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.evaluate import grid_table  # noqa: E402

grid_table(
    [
        {**cell, "path": path}
        for cell, path in zip(snakemake.params.cells, snakemake.input, strict=True)
    ],
    Path(snakemake.output.csv).with_suffix(""),
)
