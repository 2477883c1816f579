# Stage "audit": the mechanistic fairness audit (METHODS §6) of every grid cell on which a
# method reading its heads (audit_ablation, audit_ablation_greedy) is configured: audit
# texts through the text tower, then CAV scores, bias-augmented TextSpan, selection,
# ablation, Cramér's V and the layer-matched random control on stored features.


rule encode_audit_texts:
    input:
        unpack(text_inputs),
    output:
        f"{RESULTS}/features/{{dataset}}/{{model}}/{{fseed}}/audit_texts.parquet",
    log:
        f"logs/{EXPERIMENT}/encode_audit_texts/{{dataset}}/{{model}}/{{fseed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/encode_audit_texts/{{dataset}}/{{model}}/{{fseed}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=text_mem_mb,
        runtime=text_runtime,
    params:
        model_name=model_name,
        pretrained=pretrained_arg,
        device=config["device"],
        min_concept_texts=config["audit"]["min_concept_texts"],
        min_bias_texts=config["audit"]["min_bias_texts"],
        code_version=CODE_VERSION,
    script:
        "../scripts/encode_audit_texts.py"


rule audit:
    input:
        unpack(audit_inputs),
    output:
        tables=directory(AUDIT),
        heads=f"{HEADS}/audit.json",
    log:
        f"logs/{EXPERIMENT}/audit/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/audit/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 2
    resources:
        mem_mb=stream_mem_mb("audit"),
        runtime=stream_runtime("audit"),
    params:
        locate_split=locate_split,
        test_split=test_split,
        audit=audit_params(),
        code_version=CODE_VERSION,
    script:
        "../scripts/audit.py"


rule report_audit:
    input:
        unpack(report_audit_inputs),
        notebook="notebooks/report_audit.ipynb",
    output:
        notebook=f"{REPORT_DIR}/report_audit.ipynb",
        html=report(
            f"{REPORT_DIR}/report_audit.html",
            caption="../report/report_audit.rst",
            category="{dataset} / {model}",
            subcategory="Notebook",
            labels={"notebook": "audit", "seed": "{seed}"},
        ),
        figures=report_figures(AUDIT_FIGURES),
        tables=report_tables(AUDIT_TABLES),
    log:
        f"logs/{EXPERIMENT}/report_audit/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/report_audit/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        split=test_split,
        model_name=model_name,
    script:
        "../scripts/report_notebook.py"
