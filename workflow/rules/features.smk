# Stage "features": class and method text embeddings, the per-shard exact head decomposition.
# Wildcard fseed is "seed-<n>" when the data or the model depend on the seed, else "any-seed".

FEATURES = f"{RESULTS}/features/{{dataset}}/{{model}}/{{fseed}}"


rule encode_classes:
    input:
        unpack(extract_inputs),
    output:
        f"{FEATURES}/classifier.parquet",
    log:
        f"logs/{EXPERIMENT}/encode_classes/{{dataset}}/{{model}}/{{fseed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/encode_classes/{{dataset}}/{{model}}/{{fseed}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=text_mem_mb,
        runtime=text_runtime,
    params:
        model_name=model_name,
        pretrained=pretrained_arg,
        hf_home=hf_home_arg,
        templates=dataset_templates,
        convention=config["classifier"]["convention"],
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/encode_classes.py"


rule encode_method_texts:
    input:
        unpack(text_inputs),
    output:
        f"{FEATURES}/texts.parquet",
    log:
        f"logs/{EXPERIMENT}/encode_method_texts/{{dataset}}/{{model}}/{{fseed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/encode_method_texts/{{dataset}}/{{model}}/{{fseed}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=text_mem_mb,
        runtime=text_runtime,
    params:
        model_name=model_name,
        pretrained=pretrained_arg,
        hf_home=hf_home_arg,
        device=config["device"],
        pool_cap=text_pool_cap(),
        code_version=CODE_VERSION,
    script:
        "../scripts/encode_method_texts.py"


# Per-template class embeddings (the 80 OpenAI templates) for methods that choose templates
# per image (SAGE, METHODS §10.5); requested only by their predict jobs.
rule encode_class_templates:
    input:
        unpack(extract_inputs),
    output:
        f"{FEATURES}/class_templates.parquet",
    log:
        f"logs/{EXPERIMENT}/encode_class_templates/{{dataset}}/{{model}}/{{fseed}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
    params:
        model_name=model_name,
        pretrained=pretrained_arg,
        hf_home=hf_home_arg,
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/encode_class_templates.py"


rule extract_features:
    input:
        unpack(extract_inputs),
    output:
        shard=f"{FEATURES}/shard-{{shard}}.parquet",
        checksum=f"{FEATURES}/shard-{{shard}}.parquet.sha256",
    log:
        f"logs/{EXPERIMENT}/extract_features/{{dataset}}/{{model}}/{{fseed}}/{{shard}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/extract_features/{{dataset}}/{{model}}/{{fseed}}/{{shard}}.tsv"
    conda:
        "../../envs/torch.yaml"
    # On a GPU, all but one thread decode and resize images for the next batches.
    threads: 4
    resources:
        gpu=1,
        mem_mb=extract_mem_mb,
        runtime=extract_runtime,
    params:
        model_name=model_name,
        pretrained=pretrained_arg,
        hf_home=hf_home_arg,
        n_shards=shard_count,
        splits=extract_splits,
        layers=config["features"]["layers"],
        dtype=config["features"]["dtype"],
        precision=config["features"]["precision"],
        batch_size=config["features"]["batch_size"],
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/extract_features.py"


rule feature_manifest:
    input:
        shards=feature_shards,
        checksums=feature_checksums,
    output:
        f"{FEATURES}/manifest.json",
    log:
        f"logs/{EXPERIMENT}/feature_manifest/{{dataset}}/{{model}}/{{fseed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/feature_manifest/{{dataset}}/{{model}}/{{fseed}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/feature_manifest.py"
