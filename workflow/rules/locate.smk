# Stage "locate": method texts, TextSpan descriptions, LTC head location.


rule encode_method_texts:
    input:
        unpack(model_inputs),
        texts=config["texts"],
    output:
        "results/{experiment}/features/{model}/{dataset}/texts.parquet",
    log:
        "logs/{experiment}/encode_method_texts/{model}/{dataset}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
    params:
        pretrained=pretrained_arg,
        device=config["device"],
    script:
        "../scripts/encode_method_texts.py"


rule textspan:
    input:
        unpack(method_inputs),
    output:
        "results/{experiment}/heads/{dataset}/{model}/textspan.csv",
    log:
        "logs/{experiment}/textspan/{dataset}/{model}.log",
    benchmark:
        "benchmarks/{experiment}/textspan/{dataset}/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        split=config["dataset"]["locate_split"],
        textspan=config["textspan"],
    script:
        "../scripts/textspan.py"


rule locate_ltc:
    input:
        unpack(method_inputs),
    output:
        groups="results/{experiment}/heads/{dataset}/{model}/ltc.json",
        full="results/{experiment}/heads/{dataset}/{model}/ltc_full.json",
    log:
        "logs/{experiment}/locate_ltc/{dataset}/{model}.log",
    benchmark:
        "benchmarks/{experiment}/locate_ltc/{dataset}/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        split=config["dataset"]["locate_split"],
        use_group_labels=config["ltc"]["use_group_labels"],
    script:
        "../scripts/locate_ltc.py"
