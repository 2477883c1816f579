# Stage "evaluate": metrics of every method with bootstrap intervals, paired comparisons with
# zero-shot, random controls, the planted ground truth, the summary over seeds, the grid table.


rule evaluate:
    input:
        unpack(cell_predictions),
        meta=cell_meta,
    output:
        metrics=f"{METRICS}/metrics.csv",
        paired=f"{METRICS}/paired.csv",
        draws=f"{METRICS}/random_draws.csv",
        random_summary=f"{METRICS}/random_summary.csv",
        methods=f"{METRICS}/methods.csv",
    log:
        f"logs/{EXPERIMENT}/evaluate/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/evaluate/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=stream_mem_mb("evaluate"),
        runtime=stream_runtime("evaluate"),
    params:
        n_boot=config["evaluate"]["n_boot"],
        protocol=protocol,
        edit_targets=dataset_edit_targets,
        ltc_group_labels=config["locate"]["ltc"]["use_group_labels"],
        code_version=CODE_VERSION,
    script:
        "../scripts/evaluate.py"


rule planted_ground_truth:
    input:
        unpack(cell_features),
    output:
        heads=f"{GROUND_TRUTH}/heads.csv",
        total=f"{GROUND_TRUTH}/total.csv",
    log:
        f"logs/{EXPERIMENT}/planted_ground_truth/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/planted_ground_truth/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=stream_mem_mb("planted_ground_truth"),
        runtime=stream_runtime("planted_ground_truth"),
    params:
        split=test_split,
        n_boot=config["ground_truth"]["n_boot"],
        code_version=CODE_VERSION,
    script:
        "../scripts/planted_ground_truth.py"


rule score_locators:
    input:
        unpack(score_locators_inputs),
    output:
        f"{GROUND_TRUTH}/locator_scores.csv",
    log:
        f"logs/{EXPERIMENT}/score_locators/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/score_locators/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code_version=CODE_VERSION,
    script:
        "../scripts/score_locators.py"


rule summarize_seeds:
    input:
        unpack(seed_metrics),
    output:
        f"{RESULTS}/metrics/{{dataset}}/{{model}}/summary_over_seeds.csv",
    log:
        f"logs/{EXPERIMENT}/summarize_seeds/{{dataset}}/{{model}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/summarize_seeds/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        split=test_split,
        metrics=seed_metric_names,
        code_version=CODE_VERSION,
    script:
        "../scripts/summarize_seeds.py"


rule grid_table:
    input:
        grid_summaries,
    output:
        csv=f"{RESULTS}/tables/grid_main.csv",
        md=f"{RESULTS}/tables/grid_main.md",
        tex=f"{RESULTS}/tables/grid_main.tex",
    log:
        f"logs/{EXPERIMENT}/grid_table.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/grid_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cells=grid_cells(),
        code_version=CODE_VERSION,
    script:
        "../scripts/grid_table.py"


# Every metric each paper table reports, for every configured method of every cell
# (clipbias.tables): a job that succeeds but leaves out a table's number fails here.
rule table_completeness:
    input:
        completeness_inputs,
    output:
        f"{RESULTS}/tables/completeness.csv",
    log:
        f"logs/{EXPERIMENT}/table_completeness.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/table_completeness.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cells=completeness_cells(),
        code_version=CODE_VERSION,
    script:
        "../scripts/table_completeness.py"
