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
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}" if path else key)


def test_every_schema_key_is_described_with_default():
    for path, node in _walk(SCHEMA):
        if not path:
            continue
        assert node.get("description"), f"{path} has no description"
        assert "default" in node, f"{path} has no default"
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{path} must be closed"


@pytest.mark.parametrize("cfg", experiment_configs(), ids=lambda p: p.name)
def test_shipped_configs_validate(cfg):
    jsonschema.validate(yaml.safe_load(cfg.read_text()), SCHEMA)


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


BAD = [
    ({"unknown_key": 1}, "unknown_key"),
    ({"features": {"n_shards": 0}}, "n_shards"),
    ({"features": {"dtype": "int8"}}, "dtype"),
    ({"synth": {"spurious_correlation": 1.5}}, "spurious_correlation"),
    ({"model": {"name": "ViT-B-16", "pretraind": "x"}}, "pretraind"),
]


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


@pytest.mark.parametrize("patch,key", BAD, ids=[k for _, k in BAD])
def test_bad_config_stops_before_any_job(tmp_path, patch, key):
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(_merge(base, patch)))
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
