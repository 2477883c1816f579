# Stage "data": the embedded planted-bias benchmark, and verified downloads of real datasets.


rule make_planted_dataset:
    output:
        index="results/{experiment}/data/planted/index.parquet",
        meta="results/{experiment}/data/planted/dataset.json",
        captions="results/{experiment}/data/planted/captions.parquet",
        images=directory("results/{experiment}/data/planted/images"),
    log:
        "logs/{experiment}/make_planted_dataset.log",
    benchmark:
        "benchmarks/{experiment}/make_planted_dataset.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        seed=config["seed"],
        synth=config["synth"],
        code_version=CODE_VERSION,
    script:
        "../scripts/make_planted_dataset.py"


rule download_dataset:
    input:
        registry=config["dataset"]["registry"],
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
        registry=config["dataset"]["registry"],
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
