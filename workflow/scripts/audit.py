"""Adapter: rule audit -> clipbias.stages.audit.audit."""

from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap

if TYPE_CHECKING:
    from snakemake.script import snakemake

_bootstrap.setup_logging(snakemake.log[0])
from clipbias.stages.audit import audit  # noqa: E402

audit(
    feature_dir=Path(snakemake.input.manifest).parent,
    dataset_meta=snakemake.input.meta,
    texts=snakemake.input.texts,
    audit_texts=snakemake.input.audit_texts,
    out_dir=snakemake.output.tables,
    out_heads=snakemake.output.heads,
    locate_split=snakemake.params.locate_split,
    test_split=snakemake.params.test_split,
    seed=int(snakemake.wildcards.seed),
    params=snakemake.params.audit,
    threads=snakemake.threads,
)
