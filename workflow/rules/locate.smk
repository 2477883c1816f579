# Stage "locate": TextSpan descriptions and LTC head location, per grid cell.


rule textspan:
    input:
        unpack(cell_features),
    output:
        f"{HEADS}/textspan.csv",
    log:
        f"logs/{EXPERIMENT}/textspan/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/textspan/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=stream_mem_mb("textspan"),
        runtime=stream_runtime("textspan"),
    params:
        split=locate_split,
        m=config["locate"]["textspan"]["m"],
        rank=config["locate"]["textspan"]["rank"],
        last_layers=config["locate"]["textspan"]["last_layers"],
    script:
        "../scripts/textspan.py"


rule locate_ltc:
    input:
        unpack(cell_features),
    output:
        groups=f"{HEADS}/ltc.json",
        full=f"{HEADS}/ltc_full.json",
    log:
        f"logs/{EXPERIMENT}/locate_ltc/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/locate_ltc/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=stream_mem_mb("locate_ltc"),
        runtime=stream_runtime("locate_ltc"),
    params:
        split=locate_split,
        use_group_labels=config["locate"]["ltc"]["use_group_labels"],
    script:
        "../scripts/locate_ltc.py"
