"""Config validation: the shipped configs are valid; a bad config stops before any job."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO, tool

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def experiment_configs() -> list[Path]:
    return [REPO / "config/config.yaml", *sorted((REPO / "config/experiments").glob("*.yaml"))]


def _walk(schema: dict, path: str = ""):
    """Every key of the schema, entries of object lists as ``key[].sub``."""
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}" if path else key)
    items = schema.get("items", {})
    if items.get("type") == "object":
        for key, sub in items.get("properties", {}).items():
            yield from _walk(sub, f"{path}[].{key}")


def test_every_schema_key_is_described_with_default():
    for path, node in _walk(SCHEMA):
        if not path:
            continue
        assert node.get("description"), f"{path} has no description"
        assert "default" in node, f"{path} has no default"
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{path} must be closed"


def _update(base: dict, over: dict) -> dict:
    """Snakemake's config merge: nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("cfg", experiment_configs(), ids=lambda p: p.name)
def test_shipped_configs_validate(cfg):
    """An experiment file is read on top of config/config.yaml (``--configfile``)."""
    default = yaml.safe_load((REPO / "config/config.yaml").read_text())
    jsonschema.validate(_update(default, yaml.safe_load(cfg.read_text())), SCHEMA)


def test_every_key_documented_in_config_readme():
    readme = (REPO / "config/README.md").read_text()
    for path, _ in _walk(SCHEMA):
        if path:
            assert f"`{path}`" in readme, f"config/README.md does not document `{path}`"


def test_config_readme_is_generated_from_the_schema():
    """Defaults and descriptions in config/README.md are the schema's (scripts/config_docs.py)."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "scripts/config_docs.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def _set(path: str, value):
    """A patch setting ``path`` (dots; an integer selects a list entry) to ``value``."""

    def patch(cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        node, keys = cfg, path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        node[keys[-1]] = value
        return cfg

    return patch


BAD = [
    (_set("unknown_key", 1), "unknown_key"),
    (_set("features.n_shards", 0), "n_shards"),
    (_set("features.dtype", "int8"), "dtype"),
    (_set("datasets.0.synth.spurious_correlation", 1.5), "spurious_correlation"),
    (_set("models.0.pretraind", "x"), "pretraind"),
    (_set("methods", ["zero_shot", "magic"]), "unknown method 'magic'; known methods: zero_shot,"),
    (_set("methods", ["ltc_random"]), "method 'ltc_random' needs ['ltc']"),
    (_set("methods", [{"name": "ltc", "n_drawz": 3}]), "unknown parameter(s) ['n_drawz']"),
    (
        _set("datasets.0.kind", "registry"),
        "['planted'] have synth settings but are not kind planted",
    ),
    (
        _set("datasets", [{"name": "waterbirds", "kind": "registry"}]),
        "models with pretrained 'train' are trained on planted datasets only",
    ),
    (_set("seeds", []), "seeds"),
    (
        _set("methods", [{"name": "refineclip", "shot_sampling": "stratified"}]),
        "shot_sampling must be one of ['random', 'group_balanced']",
    ),
    (
        _set("methods", [{"name": "refineclip", "shot_classes": "edit_targets"}]),
        "but datasets ['planted'] set no edit_targets",
    ),
]


@pytest.mark.parametrize("patch,key", BAD, ids=[k[:30] for _, k in BAD])
def test_bad_config_stops_before_any_job(tmp_path, patch, key):
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(patch(base)))
    res = subprocess.run(
        [tool("snakemake"), "-n", "--configfile", str(cfg), "--replace-workflow-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert key in out, out
    assert "Job stats" not in out, "jobs were planned despite the bad config"


def test_every_report_figure_and_table_has_a_caption_file():
    """snakemake --report fails at the very end of a run when a caption .rst is missing (it
    did for textspan_completeness); check every stem the report rules declare."""
    import ast
    import re

    text = (REPO / "workflow/rules/common.smk").read_text()
    aliases = ast.literal_eval(re.search(r"_CAPTIONS = (\{.*?\})\n", text, re.S).group(1))
    missing = []
    for kind, names in re.findall(r"^[A-Z]+_(FIGURES|TABLES) = (\[.*?\])", text, re.M | re.S):
        for name in ast.literal_eval(names):
            key = f"{name}_table" if kind == "TABLES" else name
            rst = REPO / "workflow/report" / f"{aliases.get(key, name)}.rst"
            if not rst.is_file():
                missing.append(rst.name)
    assert not missing, f"caption files missing in workflow/report/: {sorted(set(missing))}"


def test_every_gpu_rule_goes_to_the_gpu_partition_on_slurm():
    """A rule that declares gpu=1 but keeps the default (CPU) partition asks a CPU node for a
    GPU, which sbatch rejects; every such rule needs its set-resources entry."""
    from workflow_helpers import gpu_rules

    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    rules = gpu_rules()
    assert {"extract_features", "predict_torch", "adapt_refineclip"} <= set(rules)
    for rule in rules:
        entry = profile["set-resources"].get(rule) or {}
        assert entry.get("slurm_partition") == "gpu" and entry.get("gpu") == 1, rule
