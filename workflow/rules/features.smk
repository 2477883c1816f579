# Stage "features": class text embeddings and the per-shard exact head decomposition.


rule encode_classes:
    input:
        unpack(extract_inputs),
    output:
        "results/{experiment}/features/{model}/{dataset}/classifier.parquet",
    log:
        "logs/{experiment}/encode_classes/{model}/{dataset}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
    params:
        pretrained=pretrained_arg,
        classifier=config["classifier"],
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/encode_classes.py"


rule extract_features:
    input:
        unpack(extract_inputs),
    output:
        shard="results/{experiment}/features/{model}/{dataset}/shard-{shard}.parquet",
        checksum="results/{experiment}/features/{model}/{dataset}/shard-{shard}.parquet.sha256",
    log:
        "logs/{experiment}/extract_features/{model}/{dataset}/{shard}.log",
    benchmark:
        "benchmarks/{experiment}/extract_features/{model}/{dataset}/{shard}.tsv"
    conda:
        "../../envs/torch.yaml"
    # On a GPU, all but one thread decode and resize images for the next batches.
    threads: 4
    resources:
        gpu=1,
        mem_mb=model_mem_mb,
        runtime=120,
    params:
        pretrained=pretrained_arg,
        n_shards=N_SHARDS,
        features=config["features"],
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/extract_features.py"


rule feature_manifest:
    input:
        shards=feature_shards,
        checksums=feature_checksums,
    output:
        "results/{experiment}/features/{model}/{dataset}/manifest.json",
    log:
        "logs/{experiment}/feature_manifest/{model}/{dataset}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/feature_manifest.py"
