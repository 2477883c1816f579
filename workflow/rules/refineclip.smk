# Stage "refineclip": RefineCLIP phase 1 and phase 2 per configured method id (METHODS §5),
# the edited checkpoints, the α/β sensitivity study and the RefineCLIP report. Predictions of
# the family go through the predict stage like every other method.


rule locate_refineclip:
    input:
        unpack(cell_features),
    output:
        f"{HEADS}/refineclip/{{method}}.json",
    log:
        f"logs/{EXPERIMENT}/locate_refineclip/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/locate_refineclip/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.tsv"
    wildcard_constraints:
        method=per_method_pattern("refineclip"),
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=stream_mem_mb("locate_refineclip"),
        runtime=stream_runtime("locate_refineclip"),
    params:
        phase1=phase1_params,
        edit_targets=dataset_edit_targets,
        test_split=test_split,
        code_version=CODE_VERSION,
    script:
        "../scripts/locate_refineclip.py"


rule adapt_refineclip:
    input:
        unpack(adapt_inputs),
    output:
        adapter=f"{HEADS}/refineclip_adapter/{{method}}.safetensors",
        curves=f"{HEADS}/refineclip_adapter/{{method}}_curves.csv",
    log:
        f"logs/{EXPERIMENT}/adapt_refineclip/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/adapt_refineclip/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.tsv"
    wildcard_constraints:
        method=per_method_pattern("refineclip_adapter"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=stream_mem_mb("adapt_refineclip"),
        runtime=stream_runtime("adapt_refineclip"),
    params:
        method_params=method_params,
        edit_targets=dataset_edit_targets,
        test_split=test_split,
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/adapt_refineclip.py"


rule export_refineclip_model:
    input:
        unpack(export_inputs),
    output:
        checkpoint=f"{EDITED_MODELS}/{{method}}.safetensors",
        info=f"{EDITED_MODELS}/{{method}}.json",
    log:
        f"logs/{EXPERIMENT}/export_refineclip_model/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/export_refineclip_model/{{dataset}}/{{model}}/seed-{{seed}}/{{method}}.tsv"
    wildcard_constraints:
        method=per_method_pattern("refineclip_adapter"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb,
        runtime=text_runtime,
    params:
        model_name=model_name,
        pretrained=export_pretrained,
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/export_refineclip_model.py"


rule refineclip_sensitivity:
    input:
        unpack(sensitivity_inputs),
    output:
        f"{METRICS}/refineclip_sensitivity.csv",
    log:
        f"logs/{EXPERIMENT}/refineclip_sensitivity/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/refineclip_sensitivity/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=stream_mem_mb("refineclip_sensitivity"),
        runtime=stream_runtime("refineclip_sensitivity"),
    params:
        method_params=sensitivity_params,
        values=config["analysis"]["sensitivity"]["values"],
        steps=config["analysis"]["sensitivity"]["steps"],
        edit_targets=dataset_edit_targets,
        test_split=test_split,
        device=config["device"],
        code_version=CODE_VERSION,
    script:
        "../scripts/refineclip_sensitivity.py"


rule report_refineclip:
    input:
        unpack(report_refineclip_inputs),
        notebook="notebooks/report_refineclip.ipynb",
    output:
        notebook=f"{REPORT_DIR}/report_refineclip.ipynb",
        html=report(
            f"{REPORT_DIR}/report_refineclip.html",
            caption="../report/report_refineclip.rst",
            category="{dataset} / {model}",
            subcategory="RefineCLIP",
            labels={"notebook": "refineclip", "seed": "{seed}"},
        ),
        figures=report_figures(REFINECLIP_FIGURES),
        tables=report_tables(REFINECLIP_TABLES),
    log:
        f"logs/{EXPERIMENT}/report_refineclip/{{dataset}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/report_refineclip/{{dataset}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        split=test_split,
        # "" when the experiment has no such file (no phase-1 method, no refineclip_adapt*)
        phase1_json=report_phase1_json,
        sensitivity=report_sensitivity,
        model_name=model_name,
        reference_table=config["analysis"]["reference_table"],
        edit_targets=dataset_edit_targets,
        method_info=refineclip_method_info,
    script:
        "../scripts/report_notebook.py"
