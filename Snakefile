# clipbias: locate and correct bias carried by attention heads of CLIP vision transformers.
# Thin entry point: configuration, validation and the rule files of every stage. An
# experiment is a grid (models x datasets x seeds); every configured method runs on each cell.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# A YAML error in the workflow's own config names its file and line (Snakemake's does not).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from clipbias.config_check import check_yaml_file

check_yaml_file("config/config.yaml", "the workflow's configfile")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Runs on the submitting host (a cluster's login node has internet, compute nodes do not).
localrules:
    fetch_weights,


wildcard_constraints:
    experiment=EXPERIMENT,
    dataset="[a-z0-9_]+",
    model="[A-Za-z0-9_.-]+",
    seed=r"\d+",
    fseed=r"seed-\d+|any-seed",
    shard=r"\d{5}",
    method="[a-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/locate.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/refineclip.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# Every result table of the grid without the report notebooks: `snakemake tables`.
rule tables:
    input:
        table_targets(),
