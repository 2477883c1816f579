# Stage "correct": LTC correction and its ablations; baselines and random-head controls.


rule correct_ltc:
    input:
        unpack(method_inputs),
        ltc="results/{experiment}/heads/{dataset}/{model}/ltc.json",
        ltc_full="results/{experiment}/heads/{dataset}/{model}/ltc_full.json",
    output:
        "results/{experiment}/predictions/{dataset}/{model}/ltc.parquet",
    log:
        "logs/{experiment}/correct_ltc/{dataset}/{model}.log",
    benchmark:
        "benchmarks/{experiment}/correct_ltc/{dataset}/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        locate_split=config["dataset"]["locate_split"],
        test_split=config["dataset"]["test_split"],
        ltc=config["ltc"],
    script:
        "../scripts/correct_ltc.py"


rule run_baselines:
    input:
        unpack(method_inputs),
        ltc="results/{experiment}/heads/{dataset}/{model}/ltc.json",
        textspan="results/{experiment}/heads/{dataset}/{model}/textspan.csv",
        texts_yaml=config["texts"],
    output:
        predictions="results/{experiment}/predictions/{dataset}/{model}/baselines.parquet",
        random="results/{experiment}/metrics/{dataset}/random/{model}/draws.csv",
        textspan_heads="results/{experiment}/heads/{dataset}/{model}/textspan_ablation.json",
    log:
        "logs/{experiment}/run_baselines/{dataset}/{model}.log",
    benchmark:
        "benchmarks/{experiment}/run_baselines/{dataset}/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        locate_split=config["dataset"]["locate_split"],
        test_split=config["dataset"]["test_split"],
        ltc=config["ltc"],
        top_k=config["textspan"]["top_k"],
        seed=config["seed"],
    script:
        "../scripts/run_baselines.py"
