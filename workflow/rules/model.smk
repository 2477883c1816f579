# Stage "model": train the small CLIP of a planted benchmark (models with pretrained: train).


rule train_small_clip:
    input:
        index=f"{RESULTS}/data/{{dataset}}/seed-{{seed}}/index.parquet",
        captions=f"{RESULTS}/data/{{dataset}}/seed-{{seed}}/captions.parquet",
        images=f"{RESULTS}/data/{{dataset}}/seed-{{seed}}/images",
    output:
        checkpoint=f"{RESULTS}/models/{{dataset}}/{{model}}/seed-{{seed}}/checkpoint.safetensors",
        log_json=f"{RESULTS}/models/{{dataset}}/{{model}}/seed-{{seed}}/train_log.json",
    log:
        f"logs/{EXPERIMENT}/train_small_clip/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/train_small_clip/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        model_name=model_name,
        train=config["train"],
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/train_small_clip.py"


# A localrule (Snakefile): on a cluster it runs where Snakemake runs, the login node, which
# has internet; every other rule reads the cache offline (HF_HUB_OFFLINE=1).
rule fetch_weights:
    output:
        f"{HF_HOME}/fetched/{{model}}.json",
    log:
        "logs/fetch_weights/{model}.log",
    benchmark:
        "logs/benchmarks/fetch_weights/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        model_name=model_name,
        pretrained=model_pretrained,
        hf_home=hf_home_of_record,
    script:
        "../scripts/fetch_weights.py"


# A rehearsal's stand-in for a tag's or checkpoint's weights: random weights of the same
# open_clip architecture, QuickGELU setting and image normalisation (clipbias.rehearsal),
# seeded; one file per (architecture, tag), shared by every rehearsal.
rule make_rehearsal_weights:
    output:
        f"{REHEARSAL['weights_dir']}/{{weights}}.safetensors",
    log:
        f"logs/rehearsal-weights/{{weights}}.log",
    benchmark:
        f"logs/rehearsal-weights/benchmarks/{{weights}}.tsv"
    wildcard_constraints:
        weights=REHEARSAL_WEIGHTS_PATTERN,
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=rehearsal_weights_mem_mb,
        runtime=30,
    params:
        model=rehearsal_weights_params,
        seed=REHEARSAL["weights_seed"],
        code_version=CODE_VERSION,
    script:
        "../scripts/make_rehearsal_weights.py"
