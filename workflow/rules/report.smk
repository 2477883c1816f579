# Stage "report": papermill notebooks regenerate every figure and table from results/ only.


rule report_planted:
    input:
        index="results/{experiment}/data/planted/index.parquet",
        images="results/{experiment}/data/planted/images",
        train_log="results/{experiment}/models/{model}/train_log.json",
        zero_shot="results/{experiment}/metrics/zero_shot.csv",
        metrics="results/{experiment}/metrics/{dataset}/{model}.csv",
        draws="results/{experiment}/metrics/{dataset}/random/{model}/draws.csv",
        summary="results/{experiment}/metrics/{dataset}/random/{model}/summary.csv",
        ltc="results/{experiment}/heads/{dataset}/{model}/ltc.json",
        ltc_full="results/{experiment}/heads/{dataset}/{model}/ltc_full.json",
        textspan="results/{experiment}/heads/{dataset}/{model}/textspan.csv",
        ground_truth="results/{experiment}/ground_truth/head_attribute.csv",
        notebook="notebooks/report_planted.ipynb",
    output:
        notebook=f"{REPORT_DIR}/report_planted.ipynb",
        html=report(
            f"{REPORT_DIR}/report_planted.html",
            caption="../report/report_notebook.rst",
            category="{dataset} / {model}",
            subcategory="Notebook",
        ),
        figures=report_figures(PLANTED_FIGURES),
        tables=report_tables(PLANTED_TABLES),
    log:
        "logs/{experiment}/report_planted/{dataset}/{model}.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        split=config["dataset"]["test_split"],
        python_bin=PYTHON_BIN,
    shell:
        """
        export PATH="$PATH:{params.python_bin}"
        papermill {input.notebook} {output.notebook} -k python3 --log-level WARNING \
            -p repo_root . -p dataset_dir "$(dirname {input.index})" \
            -p train_log {input.train_log} -p zero_shot_metrics {input.zero_shot} \
            -p metrics {input.metrics} -p random_draws {input.draws} \
            -p random_summary {input.summary} -p ltc_json {input.ltc} \
            -p ltc_full_json {input.ltc_full} -p textspan {input.textspan} \
            -p ground_truth {input.ground_truth} \
            -p fig_dir "$(dirname {output.figures[0]})" \
            -p table_dir "$(dirname {output.tables[0]})" \
            -p dataset {wildcards.dataset} -p model {wildcards.model} -p split {params.split} \
            > {log} 2>&1
        jupyter nbconvert --to html --log-level WARN {output.notebook} >> {log} 2>&1
        """


rule report_method:
    input:
        meta=dataset_meta,
        metrics="results/{experiment}/metrics/{dataset}/{model}.csv",
        draws="results/{experiment}/metrics/{dataset}/random/{model}/draws.csv",
        summary="results/{experiment}/metrics/{dataset}/random/{model}/summary.csv",
        ltc="results/{experiment}/heads/{dataset}/{model}/ltc.json",
        ltc_full="results/{experiment}/heads/{dataset}/{model}/ltc_full.json",
        textspan="results/{experiment}/heads/{dataset}/{model}/textspan.csv",
        notebook="notebooks/report_method.ipynb",
    output:
        notebook=f"{REPORT_DIR}/report_method.ipynb",
        html=report(
            f"{REPORT_DIR}/report_method.html",
            caption="../report/report_notebook.rst",
            category="{dataset} / {model}",
            subcategory="Notebook",
        ),
        figures=report_figures(METHOD_FIGURES),
        tables=report_tables(METHOD_TABLES),
    log:
        "logs/{experiment}/report_method/{dataset}/{model}.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        split=config["dataset"]["test_split"],
        python_bin=PYTHON_BIN,
    shell:
        """
        export PATH="$PATH:{params.python_bin}"
        papermill {input.notebook} {output.notebook} -k python3 --log-level WARNING \
            -p repo_root . -p dataset_meta {input.meta} \
            -p metrics {input.metrics} -p random_draws {input.draws} \
            -p random_summary {input.summary} -p ltc_json {input.ltc} \
            -p ltc_full_json {input.ltc_full} -p textspan {input.textspan} \
            -p fig_dir "$(dirname {output.figures[0]})" \
            -p table_dir "$(dirname {output.tables[0]})" \
            -p dataset {wildcards.dataset} -p model {wildcards.model} -p split {params.split} \
            > {log} 2>&1
        jupyter nbconvert --to html --log-level WARN {output.notebook} >> {log} 2>&1
        """


rule report:
    input:
        report_targets(),
