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
