# Helpers shared by all stages (config validation, path helpers, resources).
import sys
from pathlib import Path

from snakemake.io import report as report_file
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

EXPERIMENT = config["experiment"]
DATASET = config["dataset"]["name"]
MODEL = config["model"]["name"]
PLANTED = DATASET == "planted"
TRAINED = config["model"]["pretrained"] == "train"
N_SHARDS = config["features"]["n_shards"]
CODE_VERSION = "0.1.0"


def dataset_root(experiment, dataset):
    """Folder holding index.parquet and dataset.json of a dataset."""
    if dataset == "planted":
        return f"results/{experiment}/data/planted"
    return f"resources/datasets/{dataset}"


def dataset_dir(wildcards):
    return dataset_root(wildcards.experiment, wildcards.dataset)


def checkpoint_path(wildcards):
    return f"results/{wildcards.experiment}/models/{wildcards.model}/checkpoint.safetensors"


def model_inputs(wildcards):
    """The trained checkpoint when the pipeline trains the model; nothing for a tag."""
    return {"checkpoint": checkpoint_path(wildcards)} if TRAINED else {}


def pretrained_arg(wildcards, input):
    return input.checkpoint if TRAINED else config["model"]["pretrained"]


def feature_dir(wildcards):
    return f"results/{wildcards.experiment}/features/{wildcards.model}/{wildcards.dataset}"


def feature_shards(wildcards):
    return expand(
        "{folder}/shard-{shard:05d}.parquet",
        folder=feature_dir(wildcards),
        shard=range(N_SHARDS),
    )


# Memory (MB) by model size; the profile can override with set-resources.
_MODEL_MEM_MB = {"ViT-H-14": 48000, "ViT-L-14": 24000, "ViT-B-16": 12000, "ViT-B-32": 8000}


def model_mem_mb(wildcards, attempt):
    base = next((v for k, v in _MODEL_MEM_MB.items() if wildcards.model.startswith(k)), 4000)
    return base * attempt


def feature_checksums(wildcards):
    return [f"{s}.sha256" for s in feature_shards(wildcards)]


def all_targets():
    exp, ds, mdl = EXPERIMENT, DATASET, MODEL
    targets = [
        f"results/{exp}/features/{mdl}/{ds}/manifest.json",
        f"results/{exp}/metrics/zero_shot.csv",
        f"results/{exp}/metrics/{ds}/{mdl}.csv",
    ]
    if PLANTED:
        targets.append(f"results/{exp}/ground_truth/head_attribute.csv")
    return targets + report_targets()


def dataset_files(wildcards):
    """Index and metadata of a dataset (plus the image folder of the planted benchmark)."""
    root = dataset_dir(wildcards)
    files = {"index": f"{root}/index.parquet", "meta": f"{root}/dataset.json"}
    if wildcards.dataset == "planted":
        files["images"] = f"{root}/images"
    return files


def extract_inputs(wildcards):
    return {**dataset_files(wildcards), **model_inputs(wildcards)}


def experiment_features(wildcards):
    """Features and classifier of the experiment's configured dataset and model."""
    folder = f"results/{wildcards.experiment}/features/{MODEL}/{DATASET}"
    return {
        "manifest": f"{folder}/manifest.json",
        "classifier": f"{folder}/classifier.parquet",
        "meta": f"{dataset_root(wildcards.experiment, DATASET)}/dataset.json",
    }


def method_inputs(wildcards):
    """Features, classifier, method texts and dataset metadata for the method rules."""
    folder = feature_dir(wildcards)
    return {
        "manifest": f"{folder}/manifest.json",
        "classifier": f"{folder}/classifier.parquet",
        "texts": f"{folder}/texts.parquet",
        "meta": f"{dataset_dir(wildcards)}/dataset.json",
    }


def dataset_meta(wildcards):
    return f"{dataset_dir(wildcards)}/dataset.json"


# Report notebooks: figure and table stems each notebook writes, and the caption of each.
PLANTED_FIGURES = [
    "sample_grid",
    "training_curve",
    "zero_shot_groups",
    "head_heatmap_ltc",
    "head_heatmap_ltc_full",
    "textspan_heads",
    "located_vs_ground_truth",
    "group_accuracy",
    "random_distribution",
]
PLANTED_TABLES = [
    "zero_shot_groups",
    "heads_table",
    "located_precision",
    "group_accuracy",
    "main_table",
    "random_summary",
]
METHOD_FIGURES = [
    "zero_shot_groups",
    "head_heatmap_ltc",
    "head_heatmap_ltc_full",
    "textspan_heads",
    "group_accuracy",
    "random_distribution",
]
METHOD_TABLES = ["heads_table", "group_accuracy", "main_table", "random_summary"]
_CAPTIONS = {
    "head_heatmap_ltc": "head_heatmap",
    "head_heatmap_ltc_full": "head_heatmap",
    "zero_shot_groups_table": "group_table",
    "group_accuracy_table": "group_table",
}
REPORT_DIR = "results/{experiment}/report/{dataset}/{model}"


def caption(name, kind):
    key = f"{name}_table" if kind == "table" else name
    return f"../report/{_CAPTIONS.get(key, name)}.rst"


def report_figures(names):
    return [
        report_file(
            f"{REPORT_DIR}/figures/{n}.png",
            caption=caption(n, "figure"),
            category="{dataset} / {model}",
            subcategory="Figures",
            labels={"figure": n.replace("_", " ")},
        )
        for n in names
    ]


def report_tables(names):
    return [
        report_file(
            f"{REPORT_DIR}/tables/{n}.csv",
            caption=caption(n, "table"),
            category="{dataset} / {model}",
            subcategory="Tables",
            labels={"table": n.replace("_", " ")},
        )
        for n in names
    ]


def report_targets():
    kind = "planted" if PLANTED else "method"
    root = REPORT_DIR.format(experiment=EXPERIMENT, dataset=DATASET, model=MODEL)
    return [f"{root}/report_{kind}.html"]


# Shell rules append the folder of the Python running Snakemake to PATH, so papermill and
# jupyter are found without conda; a job's conda env (first on PATH) still wins.
PYTHON_BIN = str(Path(sys.executable).parent)
