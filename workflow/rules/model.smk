# Stage "model": train the small CLIP of the embedded default (pretrained: train).


rule train_small_clip:
    input:
        index="results/{experiment}/data/planted/index.parquet",
        captions="results/{experiment}/data/planted/captions.parquet",
        images="results/{experiment}/data/planted/images",
    output:
        checkpoint="results/{experiment}/models/{model}/checkpoint.safetensors",
        log_json="results/{experiment}/models/{model}/train_log.json",
    log:
        "logs/{experiment}/train_small_clip/{model}.log",
    benchmark:
        "benchmarks/{experiment}/train_small_clip/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        seed=config["seed"],
        train=config["train"],
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/train_small_clip.py"
