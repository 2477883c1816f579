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
        f"benchmarks/{EXPERIMENT}/make_planted_dataset/{{dataset}}/seed-{{seed}}.tsv"
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


rule download_dataset:
    input:
        registry=config["dataset_registry"],
    output:
        directory("resources/datasets/{dataset}/extracted"),
    log:
        "logs/download_dataset/{dataset}.log",
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


rule prepare_dataset:
    input:
        registry=config["dataset_registry"],
        extracted="resources/datasets/{dataset}/extracted",
    output:
        index="resources/datasets/{dataset}/index.parquet",
        meta="resources/datasets/{dataset}/dataset.json",
    log:
        "logs/prepare_dataset/{dataset}.log",
    conda:
        "../../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/prepare_dataset.py"


# A task built from other registry datasets' prepared folders (registry key "derive",
# clipbias.data.derive): no download, only an index that points into their files.
rule derive_dataset:
    input:
        unpack(derived_components),
        registry=config["dataset_registry"],
    output:
        index="resources/datasets/{dataset}/index.parquet",
        meta="resources/datasets/{dataset}/dataset.json",
    log:
        "logs/derive_dataset/{dataset}.log",
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
