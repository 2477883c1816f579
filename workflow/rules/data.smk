# Stage "data": planted-bias benchmarks (one per seed), verified downloads of real datasets.


rule make_planted_dataset:
    output:
        index=f"{RESULTS}/data/{{dataset}}/seed-{{seed}}/index.parquet",
        meta=f"{RESULTS}/data/{{dataset}}/seed-{{seed}}/dataset.json",
        captions=f"{RESULTS}/data/{{dataset}}/seed-{{seed}}/captions.parquet",
        images=directory(f"{RESULTS}/data/{{dataset}}/seed-{{seed}}/images"),
    log:
        f"logs/{EXPERIMENT}/make_planted_dataset/{{dataset}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/make_planted_dataset/{{dataset}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        synth=planted_synth,
        code_version=CODE_VERSION,
    script:
        "../scripts/make_planted_dataset.py"


# Your own images (kind folder, docs/OWN_DATA.md): the folder's index table -> the standard
# dataset folder (index.parquet + dataset.json; image paths lead into the folder).
rule prepare_folder_dataset:
    input:
        index=folder_index,
    output:
        index=f"{RESULTS}/data/{{dataset}}/index.parquet",
        meta=f"{RESULTS}/data/{{dataset}}/dataset.json",
    log:
        f"logs/{EXPERIMENT}/prepare_folder_dataset/{{dataset}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/prepare_folder_dataset/{{dataset}}.tsv"
    wildcard_constraints:
        dataset=FOLDER_PATTERN,
    conda:
        "../../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=folder_params,
        code_version=CODE_VERSION,
    script:
        "../scripts/prepare_folder_dataset.py"


rule download_dataset:
    input:
        registry=config["dataset_registry"],
    output:
        directory("resources/datasets/{dataset}/extracted"),
    log:
        "logs/download_dataset/{dataset}.log",
    benchmark:
        "logs/benchmarks/download_dataset/{dataset}.tsv"
    conda:
        "../../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=600,
    params:
        lock="config/datasets.lock.json",
    script:
        "../scripts/download_dataset.py"


# A rehearsal's stand-in for download_dataset: a fixture-scale copy of the dataset in its
# real on-disk layout (clipbias.data.fixtures), which prepare_dataset then indexes.
rule make_rehearsal_dataset:
    input:
        registry=config["dataset_registry"],
    output:
        directory(f"{REHEARSAL['datasets_dir']}/{{dataset}}/extracted"),
    log:
        f"{DATA_LOGS}/make_rehearsal_dataset/{{dataset}}.log",
    benchmark:
        f"{DATA_LOGS}/benchmarks/make_rehearsal_dataset/{{dataset}}.tsv"
    conda:
        "../../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        image_size=REHEARSAL["image_size"],
        seed=REHEARSAL["fixture_seed"],
        code_version=CODE_VERSION,
    script:
        "../scripts/make_rehearsal_dataset.py"


rule prepare_dataset:
    input:
        registry=config["dataset_registry"],
        extracted=f"{DATASETS_DIR}/{{dataset}}/extracted",
    output:
        index=f"{DATASETS_DIR}/{{dataset}}/index.parquet",
        meta=f"{DATASETS_DIR}/{{dataset}}/dataset.json",
    log:
        f"{DATA_LOGS}/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{DATA_LOGS}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        rehearsal=IS_REHEARSAL,
        class_cap=REHEARSAL["class_text_cap"],
    script:
        "../scripts/prepare_dataset.py"


# A task built from other registry datasets' prepared folders (registry key "derive",
# clipbias.data.derive): no download, only an index that points into their files.
rule derive_dataset:
    input:
        unpack(derived_components),
        registry=config["dataset_registry"],
    output:
        index=f"{DATASETS_DIR}/{{dataset}}/index.parquet",
        meta=f"{DATASETS_DIR}/{{dataset}}/dataset.json",
    log:
        f"{DATA_LOGS}/derive_dataset/{{dataset}}.log",
    benchmark:
        f"{DATA_LOGS}/benchmarks/derive_dataset/{{dataset}}.tsv"
    wildcard_constraints:
        dataset=DERIVED_PATTERN,
    conda:
        "../../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/derive_dataset.py"


ruleorder: derive_dataset > prepare_dataset
