# Stage "predict": every configured method of the registry (clipbias.methods.registry) turns
# stored features + its located heads into test predictions. Methods whose code needs torch
# run in predict_torch (torch env), all others in predict (analysis env).


rule predict:
    input:
        unpack(predict_inputs),
    output:
        f"{PREDICTIONS}/{{method}}.parquet",
    log:
        f"logs/{EXPERIMENT}/predict/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/predict/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.tsv"
    wildcard_constraints:
        method=method_pattern("analysis"),
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=stream_mem_mb("predict"),
        runtime=stream_runtime("predict"),
    params:
        method_name=method_name,
        method_params=method_params,
        locate_split=locate_split,
        test_split=test_split,
        eval_splits=eval_splits,
        code_version=CODE_VERSION,
    script:
        "../scripts/predict.py"


rule predict_torch:
    input:
        unpack(predict_inputs),
    output:
        f"{PREDICTIONS}/{{method}}.parquet",
    log:
        f"logs/{EXPERIMENT}/predict/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/predict_torch/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.tsv"
    wildcard_constraints:
        method=method_pattern("torch"),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=stream_mem_mb("predict_torch"),
        runtime=stream_runtime("predict_torch"),
    params:
        method_name=method_name,
        method_params=method_params,
        locate_split=locate_split,
        test_split=test_split,
        eval_splits=eval_splits,
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/predict.py"
