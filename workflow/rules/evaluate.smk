# Stage "evaluate": zero-shot bias check and the planted ground truth.


rule zero_shot_eval:
    input:
        unpack(experiment_features),
    output:
        "results/{experiment}/metrics/zero_shot.csv",
    log:
        "logs/{experiment}/zero_shot_eval.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        split=config["dataset"]["test_split"],
        n_boot=config["evaluate"]["n_boot"],
        seed=config["seed"],
    script:
        "../scripts/zero_shot_eval.py"


rule planted_ground_truth:
    input:
        unpack(experiment_features),
    output:
        "results/{experiment}/ground_truth/head_attribute.csv",
    log:
        "logs/{experiment}/planted_ground_truth.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        split=config["dataset"]["test_split"],
        n_boot=config["ground_truth"]["n_boot"],
        seed=config["seed"],
    script:
        "../scripts/planted_ground_truth.py"


rule evaluate:
    input:
        predictions=[
            "results/{experiment}/predictions/{dataset}/{model}/ltc.parquet",
            "results/{experiment}/predictions/{dataset}/{model}/baselines.parquet",
        ],
        random="results/{experiment}/metrics/{dataset}/random/{model}/draws.csv",
        meta=dataset_meta,
    output:
        table="results/{experiment}/metrics/{dataset}/{model}.csv",
        random_summary="results/{experiment}/metrics/{dataset}/random/{model}/summary.csv",
    log:
        "logs/{experiment}/evaluate/{dataset}/{model}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        n_boot=config["evaluate"]["n_boot"],
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
