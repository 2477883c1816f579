# Stage "report": papermill notebooks regenerate every figure and table from results/ only.
# The notebooks run in the rule's own Python (its conda env's Jupyter kernel).


rule report_planted:
    input:
        unpack(report_planted_inputs),
        notebook="notebooks/report_cell.ipynb",
    output:
        notebook=f"{REPORT_DIR}/report_planted.ipynb",
        html=report(
            f"{REPORT_DIR}/report_planted.html",
            caption="../report/report_notebook.rst",
            category="{dataset} / {model}",
            subcategory="Notebook",
            labels={"notebook": "report", "seed": "{seed}"},
        ),
        figures=report_figures(PLANTED_FIGURES),
        tables=report_tables(PLANTED_TABLES),
    log:
        f"logs/{EXPERIMENT}/report_planted/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/report_planted/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        dataset_dir=report_dataset_dir,
        split=test_split,
    script:
        "../scripts/report_notebook.py"


rule report_method:
    input:
        unpack(report_common_inputs),
        notebook="notebooks/report_cell.ipynb",
    output:
        notebook=f"{REPORT_DIR}/report_method.ipynb",
        html=report(
            f"{REPORT_DIR}/report_method.html",
            caption="../report/report_notebook.rst",
            category="{dataset} / {model}",
            subcategory="Notebook",
            labels={"notebook": "report", "seed": "{seed}"},
        ),
        figures=report_figures(METHOD_FIGURES),
        tables=report_tables(METHOD_TABLES),
    log:
        f"logs/{EXPERIMENT}/report_method/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/report_method/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        split=test_split,
        model_name=model_name,
        pretrained=model_pretrained,
        # not a planted benchmark: no sample images, training curve or ground truth
        dataset_dir="",
        train_log="",
        ground_truth="",
        locator_scores="",
    script:
        "../scripts/report_notebook.py"


rule report_seeds:
    input:
        unpack(seed_metrics),
        summary=f"{RESULTS}/metrics/{{dataset}}/{{model}}/summary_over_seeds.csv",
        notebook="notebooks/report_seeds.ipynb",
    output:
        notebook=f"{SEEDS_REPORT_DIR}/report_seeds.ipynb",
        html=report(
            f"{SEEDS_REPORT_DIR}/report_seeds.html",
            caption="../report/report_seeds.rst",
            category="{dataset} / {model}",
            subcategory="Seeds",
            labels={"notebook": "seeds"},
        ),
        figures=report_figures(SEEDS_FIGURES, SEEDS_REPORT_DIR),
        tables=report_tables(SEEDS_TABLES, SEEDS_REPORT_DIR),
    log:
        f"logs/{EXPERIMENT}/report_seeds/{{dataset}}/{{model}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/report_seeds/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        seed_metrics=seed_metrics,
        split=test_split,
    script:
        "../scripts/report_notebook.py"


rule report:
    input:
        report_targets(),
