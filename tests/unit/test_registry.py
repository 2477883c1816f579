"""The dataset registry (config/datasets.yaml) and its schema."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from clipbias.data.adapters import ADAPTERS
from clipbias.data.registry import (
    DatasetEntry,
    RegistryError,
    get_entry,
    load_registry,
    load_schema,
    validate_registry,
)

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "config" / "datasets.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "datasets.schema.yaml"
# The datasets of docs/DATASETS.md (sections 2-8), registry name -> title there.
DATASETS_MD_TITLES = {
    "waterbirds": "Waterbirds",
    "celeba": "CelebA",
    "counteranimal": "CounterAnimal",
    "genderbias_vl": "GenderBias-VL",
    "fairface": "FairFace",
    "facet": "FACET",
    "imagenet_r": "ImageNet-R",
    "imagenet_a": "ImageNet-A",
}
DATASETS_MD_NAMES = set(DATASETS_MD_TITLES)
# Protocol variants: another adapter setup of a dataset above, with the same files.
PROTOCOL_VARIANTS = {"celeba_young": "celeba"}
# Derived tasks (clipbias.data.derive): built from the prepared folders of these datasets.
DERIVED = {
    "waterbirds_imagenet_r": ["waterbirds", "imagenet_r"],
    "imagenet_a_top10": ["imagenet_a"],
}
DATASETS_MD = REPO / "docs" / "DATASETS.md"


@pytest.fixture(scope="module")
def registry() -> dict[str, DatasetEntry]:
    return load_registry(REGISTRY)


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(REGISTRY.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_schema(SCHEMA)


def test_schema_is_valid_json_schema(schema):
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_dataset_has_an_entry_and_registry_validates(registry):
    assert set(registry) == DATASETS_MD_NAMES | set(PROTOCOL_VARIANTS) | set(DERIVED)
    for variant, base in PROTOCOL_VARIANTS.items():
        assert registry[variant].files == registry[base].files, variant
    for name, comps in DERIVED.items():
        e = registry[name]
        assert e.derived and not e.files and not e.manual, name
        assert [c["dataset"] for c in e.derive["components"]] == comps
    for name, e in registry.items():
        assert bool(e.files) != e.derived, name
        assert e.licence_name and e.licence_url.startswith("http"), name
        if not e.manual:
            assert all(f.url for f in e.files), name
        if e.gated:
            assert e.manual_steps, name
        for f in e.files:
            if f.sha256 is None:
                assert f.sha256_source, (name, f.filename)


def test_pins_come_from_datasets_md(registry):
    """No invented facts: every pinned checksum and size of config/datasets.yaml appears in
    docs/DATASETS.md, where its source is named."""
    text = DATASETS_MD.read_text(encoding="utf-8")
    # every dataset section (2-8) of DATASETS.md is covered by a registry entry
    headings = re.findall(r"^## [2-8]\. (.+)$", text, re.M)
    assert len(headings) == 7
    for h in headings:
        assert any(t in h for t in DATASETS_MD_TITLES.values()), h
    for t in DATASETS_MD_TITLES.values():
        assert any(t in h for h in headings), t
    digits = text.replace(",", "")
    for e in registry.values():
        for f in e.files:
            for value in (f.sha256, f.md5):
                if value:
                    assert value in text, (e.name, f.filename, value)
            if f.size is not None:
                assert str(f.size) in digits, (e.name, f.filename, f.size)


def test_manual_datasets_name_the_raw_files(registry):
    for e in registry.values():
        if e.manual:
            for f in e.files:
                if not f.optional:
                    assert f"resources/datasets/{e.name}/raw/{f.filename}" in e.manual_steps, (
                        e.name,
                        f.filename,
                    )


def test_known_gating_and_adapters(registry):
    assert registry["facet"].gated
    assert not registry["imagenet_r"].gated and not registry["imagenet_r"].manual
    assert registry["celeba"].manual  # Google Drive
    for name in registry:
        assert registry[name].derived or registry[name].adapter in ADAPTERS
    assert registry["celeba"].adapter_options == {
        "target": "Blond_Hair",
        "attribute": "Male",
        "extra_attributes": ["Young"],
    }


def test_get_entry_unknown_name(registry):
    assert get_entry(registry, "celeba").name == "celeba"
    with pytest.raises(RegistryError, match="'nope' is not in the registry; known: celeba"):
        get_entry(registry, "nope")


def _errors(data, schema) -> str:
    with pytest.raises(RegistryError) as exc:
        validate_registry(data, schema, source="reg.yaml")
    return str(exc.value)


def test_error_names_dataset_and_key_missing_licence(raw, schema):
    del raw["datasets"]["celeba"]["licence"]
    msg = _errors(raw, schema)
    assert "reg.yaml: dataset 'celeba'" in msg
    assert "'licence' is a required property" in msg


def test_error_names_dataset_and_key_bad_sha(raw, schema):
    raw["datasets"]["imagenet_a"]["files"][0]["sha256"] = "ABC"
    msg = _errors(raw, schema)
    assert "dataset 'imagenet_a', key 'files[0].sha256'" in msg


def test_error_gated_needs_manual_steps(raw, schema):
    del raw["datasets"]["facet"]["manual_steps"]
    msg = _errors(raw, schema)
    assert "dataset 'facet'" in msg and "manual_steps" in msg


def test_error_http_dataset_needs_url(raw, schema):
    raw["datasets"]["waterbirds"]["files"][0]["url"] = None
    msg = _errors(raw, schema)
    assert "dataset 'waterbirds', key 'files[0].url'" in msg


def test_error_unknown_key_and_bad_archive(raw, schema):
    bad = copy.deepcopy(raw)
    bad["datasets"]["imagenet_r"]["files"][0]["archive"] = "rar"
    bad["datasets"]["imagenet_r"]["colour"] = "blue"
    msg = _errors(bad, schema)
    assert "dataset 'imagenet_r', key 'files[0].archive'" in msg
    assert "'colour' was unexpected" in msg


def test_error_layout_escaping(raw, schema):
    raw["datasets"]["imagenet_r"]["layout"] = "a/../../b"
    msg = _errors(raw, schema)
    assert "dataset 'imagenet_r', key 'layout'" in msg


def test_load_registry_reports_file_and_missing_schema(tmp_path):
    reg = tmp_path / "datasets.yaml"
    reg.write_text("schema_version: 1\ndatasets: {}\n")
    with pytest.raises(RegistryError, match="schema .* not found"):
        load_registry(reg)
    with pytest.raises(RegistryError, match=re.escape(str(reg))):
        load_registry(reg, SCHEMA)
    reg.write_text("datasets: [unclosed\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(reg, SCHEMA)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": "imagenet_x"}, "'imagenet_x' is not a dataset of the registry"),
        ({"dataset": "waterbirds_imagenet_r"}, "is itself derived"),
        ({"dataset": "imagenet_r", "classes": ["n01443537"], "top_classes": 2}, "not both"),
    ],
)
def test_bad_derived_entry_names_the_key(raw, schema, change, message):
    raw["datasets"]["imagenet_a_top10"]["derive"]["components"] = [change]
    with pytest.raises(RegistryError, match=message) as err:
        validate_registry(raw, schema, "reg.yaml")
    assert "dataset 'imagenet_a_top10', key 'derive.components[0]" in str(err.value)


def test_derived_entry_is_checked_against_its_own_schema(raw, schema):
    raw["datasets"]["imagenet_a_top10"]["files"] = []
    with pytest.raises(RegistryError, match="imagenet_a_top10.*files"):
        validate_registry(raw, schema, "reg.yaml")
