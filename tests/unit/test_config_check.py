"""Config-time checks (clipbias.config_check): a few lines naming the key or file, the value
and what is allowed; never the schema."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from clipbias import config_check as cc

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def _errors(**patch) -> list[str]:
    cfg = copy.deepcopy(DEFAULT)
    for path, value in patch.items():
        node, keys = cfg, path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node[keys[-1]] = value
    return cc.schema_errors(cfg, SCHEMA)


def test_the_default_config_has_no_schema_errors():
    assert cc.schema_errors(DEFAULT, SCHEMA) == []


def test_a_misspelt_key_names_the_key_and_the_closest_allowed_one():
    lines = _errors(experimnt="x")
    assert len(lines) == 1
    assert lines[0].startswith("config: unknown key 'experimnt'; did you mean 'experiment'?")
    assert "keys allowed here: experiment, seeds," in lines[0]
    nested = _errors(datasets__0__synth__n_tran=5)
    assert nested[0].startswith("config datasets[0].synth: unknown key 'n_tran'; did you mean")


def test_a_value_out_of_its_enum_or_range_names_value_and_allowed_values():
    (line,) = _errors(features__dtype="flaot16")
    assert line == (
        "config features.dtype: 'flaot16' is not allowed; did you mean 'float16'? "
        "(allowed: float32, float16)"
    )
    (line,) = _errors(datasets__0__synth__spurious_correlation=1.5)
    assert (
        line
        == "config datasets[0].synth.spurious_correlation: 1.5 is greater than the maximum of 1.0"
    )
    (line,) = _errors(seeds="42")
    assert line == "config seeds: '42' is a str, expected a list of integer"
    (line,) = _errors(datasets__0__edit_targets=7)
    assert line.startswith("config datasets[0].edit_targets: 7 is none of the allowed forms:")
    assert "a list of string; or a string matching ^worst:" in line


def test_many_errors_are_cut_to_a_few_lines():
    cfg = copy.deepcopy(DEFAULT)
    cfg.update({f"bad_{i}": i for i in range(10)})
    lines = cc.schema_errors(cfg, SCHEMA)
    assert len(lines) == 5 and lines[-1] == "... and 6 more"
    assert all(len(line) < 400 for line in lines)


def test_a_long_value_is_shortened():
    (line,) = _errors(seeds=list(range(-1, 200)))
    assert len(line) < 200, line


def test_yaml_error_names_file_line_and_column(tmp_path):
    f = tmp_path / "texts.yaml"
    f.write_text("classes: [circle, triangle]\ncolours: [red\nprism: {}\n")
    with pytest.raises(cc.ConfigError) as err:
        cc.load_yaml(f, "datasets[].texts of 'planted'")
    msg = str(err.value)
    assert msg.startswith(f"{f}, line 3, column 6: not valid YAML: expected ',' or ']'")
    assert "datasets[].texts of 'planted'" in msg and len(msg.splitlines()) == 1
    cc.check_yaml_file(tmp_path / "absent.yaml")  # a missing file is not a YAML error


def test_registry_names():
    cc.check_registry_names([{"name": "planted", "kind": "planted"}], ["waterbirds"], "r.yaml")
    with pytest.raises(cc.ConfigError) as err:
        cc.check_registry_names(
            [{"name": "waterbird", "kind": "registry"}], ["waterbirds", "celeba"], "r.yaml"
        )
    msg = str(err.value)
    assert "'waterbird' is not in the dataset registry r.yaml; did you mean 'waterbirds'?" in msg
    assert "kind: folder" in msg and len(msg.splitlines()) <= 4


def test_paths(tmp_path):
    texts = tmp_path / "t.yaml"
    texts.write_text("{}")
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    cc.check_paths([{"name": "d", "texts": str(texts)}], [{"name": "m", "pretrained": str(ckpt)}])
    cc.check_paths([], [{"name": "ViT-B-16", "pretrained": "openai"}])  # a tag
    with pytest.raises(cc.ConfigError, match="text file 'nope.yaml' of 'd' does not exist"):
        cc.check_paths([{"name": "d", "texts": "nope.yaml"}], [])
    with pytest.raises(cc.ConfigError, match="checkpoint 'ckpt/m.pt' of 'm' does not exist"):
        cc.check_paths([], [{"name": "m", "pretrained": "ckpt/m.pt"}])
    with pytest.raises(cc.ConfigError, match="another experiment's output"):
        cc.check_paths([], [{"name": "m", "pretrained": "results/other/m.safetensors"}])
    # this experiment's outputs, and any checkpoint in a rehearsal, are left to Snakemake
    cc.check_paths([], [{"name": "m", "pretrained": "results/exp/m.safetensors"}],
                   made_here="results/exp")  # fmt: skip
    cc.check_paths([], [{"name": "m", "pretrained": "ckpt/m.pt"}], checkpoints=False)


def test_planted_attributes_match_the_generator():
    from clipbias import synth

    classes, attrs = cc.planted_attributes({})
    assert attrs["background"] == list(synth.BACKGROUNDS)
    assert attrs["place"] == list(synth.PLACES)
    dataset = SCHEMA["properties"]["datasets"]["items"]["properties"]["synth"]["properties"]
    assert classes == dataset["classes"]["default"]
    assert attrs["colour"] == dataset["colours"]["default"]


def test_shipped_planted_texts_fit_their_generator_settings():
    for cfg in (REPO / "config/config.yaml", REPO / "config/experiments/planted_multiclass.yaml"):
        d = yaml.safe_load(cfg.read_text())["datasets"][0]
        spec = yaml.safe_load((REPO / d["texts"]).read_text())
        classes, attrs = cc.planted_attributes(d["synth"])
        assert cc.texts_errors(spec, classes, attrs, colours=attrs["colour"]) == [], cfg


def test_texts_for_other_shapes_and_colours_are_refused_before_training():
    """The issue's case: synth.classes [square, cross], colours [white, purple] with the
    default text file trained for minutes and then failed in the audit job."""
    spec = yaml.safe_load((REPO / "config/texts/planted.yaml").read_text())
    classes, attrs = cc.planted_attributes(
        {"classes": ["square", "cross"], "colours": ["white", "purple"]}
    )
    errs = cc.texts_errors(spec, classes, attrs, colours=attrs["colour"])
    assert (
        errs[0] == "written for classes ['circle', 'triangle'], the dataset has ['square', 'cross']"
    )
    assert any("protected_attributes.colour.values names ['red', 'yellow']" in e for e in errs)
    with pytest.raises(cc.ConfigError) as err:
        cc.check_texts(spec, "config/texts/planted.yaml", "planted", classes, attrs,
                       colours=attrs["colour"])  # fmt: skip
    assert len(str(err.value).splitlines()) <= 7


def test_texts_of_a_folder_dataset_against_its_attributes():
    spec = {
        "attribute_prompts": {"attribute": "background", "values": ["land", "water"]},
        "protected_attributes": {"gender": {"values": {"female": [], "male": []}}},
    }
    attrs = {"background": ["water", "land"], "gender": ["female", "male", "unknown"]}
    errs = cc.texts_errors(spec, ["a", "b"], attrs)
    assert errs == [
        "attribute_prompts.values ['land', 'water'] are not the values of 'background' in "
        "the dataset's order ['water', 'land']"
    ]
    assert cc.texts_errors(spec, ["a", "b"], {"background": ["land", "water"]}) == [
        "protected_attributes.gender is not an attribute of the dataset ['background']"
    ]


def test_an_overlay_before_a_file_that_overrides_it(tmp_path):
    (tmp_path / "overlays").mkdir()
    over = tmp_path / "overlays" / "fast.yaml"
    over.write_text("features: {n_shards: 1}\nrehearsal: {enabled: true}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("experiment: x\nfeatures: {n_shards: 8, batch_size: 4}\n")
    cc.check_overlay_order([exp, over])  # overlay last: fine
    with pytest.raises(cc.ConfigError) as err:
        cc.check_overlay_order([over, exp])
    msg = str(err.value)
    assert "overrides its key(s) ['features.n_shards']" in msg
    assert f"--configfile {exp} {over}" in msg
    # a later file that leaves the overlay's keys alone is fine in any order
    other = tmp_path / "other.yaml"
    other.write_text("experiment: y\n")
    cc.check_overlay_order([over, other])


def test_config_check_imports_only_pure_python():
    """The workflow imports it at every start-up (no numpy, pandas, torch)."""
    import subprocess
    import sys

    code = (
        "import sys\nimport clipbias.config_check, clipbias.data.folder\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'torch', 'pyarrow', 'PIL') "
        "if m in sys.modules))"
    )
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": ""}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_model_names(tmp_path):
    """Names come from the config JSONs of open_clip and of clipbias, without open_clip."""
    known = cc.known_model_names(REPO / "src/clipbias/model_configs")
    assert {"ViT-B-16", "ViT-B-16-quickgelu", "planted-vit-tiny"} <= set(known)
    models = [{"name": "ViT-B-16"}, {"name": "hf-hub:org/repo"}, {"name": "planted-vit-tiny"}]
    cc.check_model_names(models, known)
    with pytest.raises(cc.ConfigError, match="'ViT-B-61' is not an open_clip model config; did"):
        cc.check_model_names([{"name": "ViT-B-61"}], known)
    cc.check_model_names([{"name": "ViT-B-61"}], None)  # open_clip not installed here


def test_command_line_names_the_broken_file(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("experiment: x\n")
    bad.write_text("experiment: x\nseeds: [1\n")
    assert cc.main([str(good)]) == 0
    assert cc.main([str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}, line 3, column 1: not valid YAML") and str(good) not in err
