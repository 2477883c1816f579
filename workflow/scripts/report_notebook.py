"""Adapter: rules report_planted, report_method, report_seeds, report_audit ->
clipbias.stages.report.run_notebook."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.report import run_notebook  # noqa: E402

# Notebook parameters: every named input (except the notebook itself and image folders, and
# the per-seed metrics, which come as one mapping in params), every param, the wildcards and
# the output folders. Relative paths are resolved against the working directory.
skip = {"notebook", "images"}
parameters = {k: v for k, v in snakemake.input.items() if k.isidentifier() and k not in skip}
parameters.update(dict(snakemake.params.items()))
parameters.update(dict(snakemake.wildcards.items()))
parameters["repo_root"] = str(_bootstrap.SRC.parent)  # where src/clipbias is
parameters["fig_dir"] = str(Path(snakemake.output.figures[0]).parent)
parameters["table_dir"] = str(Path(snakemake.output.tables[0]).parent)
run_notebook(
    snakemake.input.notebook,
    snakemake.output.notebook,
    snakemake.output.html,
    parameters,
    cwd=Path.cwd(),
)
