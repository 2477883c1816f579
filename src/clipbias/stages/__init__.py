"""Stage entry points, one module per rule file (``workflow/rules/<stage>.smk``).

Each Snakemake rule script calls exactly one function here: paths and plain values in, files
out. Nothing here reads the ``snakemake`` object or the workflow config, so every stage is
callable from tests. torch is imported only inside the functions of rules whose conda env
has it (``envs/torch.yaml``); ``tests/unit/test_envs.py`` checks that every rule's code imports
only what its env provides.

| module | rules (env) |
|---|---|
| :mod:`.data` | make_planted_dataset, download_dataset, prepare_dataset (download) |
| :mod:`.model` | train_small_clip (torch) |
| :mod:`.features` | encode_classes, extract_features, encode_method_texts (torch); feature_manifest (analysis) |
| :mod:`.locate` | textspan, locate_ltc (analysis) |
| :mod:`.predict` | predict (analysis), predict_torch (torch) |
| :mod:`.evaluate` | evaluate, planted_ground_truth, summarize_seeds, grid_table (analysis) |
| :mod:`.report` | report notebooks (report) |
| :mod:`.audit` | encode_audit_texts (torch); audit (analysis) |
"""
