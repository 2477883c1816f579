"""A configuration mistake stops the workflow before any job, in seconds, with at most ten
lines that name the cause (issue 23): a misspelt dataset name, key, model name, a YAML error,
a text file that does not fit its dataset, a bad image folder, an overlay given too early.
Dry runs in a copy of the workflow; the threads of every job stay within --cores."""

from __future__ import annotations

import re
import resource
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import tool
from workflow_helpers import make_workdir

from clipbias.data.example_folder import example_config, write_example_folder

MAX_LINES = 10
MAX_CPU_S = 5.0
# wall time on a shared 2-core machine varies with the other jobs; the CPU time is the
# load-independent bound, the wall time only guards against a hang (a weights fetch would
# retry for 50 s)
MAX_WALL_S = 20.0


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = make_workdir(tmp_path_factory.mktemp("errors") / "wf")
    write_example_folder(work / "my_images", n_train=8, n_val=40, n_test=16)
    (work / "tiny.safetensors").write_bytes(b"not read by a dry run")
    return work


def _write(work: Path, name: str, cfg: dict) -> str:
    (work / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def _folder_cfg(**folder) -> dict:
    cfg = example_config("my_images", "tiny.safetensors", experiment="own")
    cfg["datasets"][0]["folder"].update(folder)
    return cfg


def _stop(work: Path, *args: str) -> str:
    """Output of a dry run that must stop before planning any job, quickly and briefly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(
        [tool("snakemake"), "-n", *args], cwd=work, capture_output=True, text=True, timeout=120
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = res.stdout + res.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert res.returncode != 0, out
    assert "Job stats" not in out and "fetch_weights" not in out, out
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines:\n{out}"
    assert cpu < MAX_CPU_S and wall < MAX_WALL_S, (cpu, wall, out)
    return out


def test_misspelt_registry_dataset(work):
    cfg = {
        "experiment": "wb",
        "models": [{"name": "ViT-B-16", "pretrained": "openai"}],
        "datasets": [{"name": "waterbird", "kind": "registry",
                      "texts": "config/texts/waterbirds.yaml"}],
        "methods": ["zero_shot"],
    }  # fmt: skip
    out = _stop(work, "--configfile", _write(work, "wb.yaml", cfg))
    assert "'waterbird' is not in the dataset registry config/datasets.yaml; did you mean " in out
    assert "'waterbirds'?" in out


def test_misspelt_key_without_the_schema_dump(work):
    out = _stop(work, "--configfile", _write(work, "key.yaml", {"experimnt": "x"}))
    assert "unknown key 'experimnt'; did you mean 'experiment'?" in out
    assert "Failed validating" not in out and "'$schema'" not in out


def test_misspelt_model_name(work):
    cfg = {"models": [{"name": "planted-vit-tinny", "pretrained": "train"}]}
    out = _stop(work, "--configfile", _write(work, "model.yaml", cfg))
    assert "'planted-vit-tinny' is not an open_clip model config" in out
    assert "did you mean 'planted-vit-tiny'?" in out


def test_yaml_error_in_a_text_file_names_file_and_line(work):
    texts = (work / "config/texts/planted.yaml").read_text().splitlines()
    broken = work / "broken_texts.yaml"
    broken.write_text("\n".join(texts[:20] + ["  - [unclosed", "next: 1"] + texts[20:]))
    cfg = {"datasets": [{"name": "planted", "kind": "planted", "texts": "broken_texts.yaml"}]}
    out = _stop(work, "--configfile", _write(work, "texts.yaml", cfg))
    assert re.search(r"broken_texts.yaml, line 21, column 3: not valid YAML", out), out


def test_yaml_error_in_the_workflow_config_names_file_and_line(work, tmp_path):
    copy = make_workdir(tmp_path / "wf")
    cfg = copy / "config/config.yaml"
    cfg.write_text(cfg.read_text().replace("seeds: [42]", "seeds: [42", 1))
    out = _stop(copy)
    assert re.search(r"config/config.yaml, line \d+, column \d+: not valid YAML", out), out


def test_yaml_error_in_a_configfile_stops_within_the_bounds(work):
    """Snakemake reads --configfile files before any workflow code: its own three lines, no
    file name (docs/OWN_DATA.md, Troubleshooting); `python -m clipbias.config_check` names
    the line."""
    (work / "broken.yaml").write_text("experiment: x\nseeds: [1\n")
    out = _stop(work, "--configfile", "broken.yaml")
    assert "not valid JSON or YAML" in out


def test_planted_texts_for_other_shapes_and_colours(work):
    cfg = {
        "datasets": [
            {
                "name": "planted",
                "kind": "planted",
                "synth": {"classes": ["square", "cross"], "colours": ["white", "purple"]},
            }
        ]
    }
    out = _stop(work, "--configfile", _write(work, "shapes.yaml", cfg))
    assert "config/texts/planted.yaml does not fit dataset 'planted'" in out
    assert "written for classes ['circle', 'triangle'], the dataset has ['square', 'cross']" in out


def test_an_overlay_given_before_the_file_that_overrides_it(work):
    (work / "config/overlays/two_shards.yaml").write_text("features: {n_shards: 2}\n")
    exp = _write(work, "exp.yaml", {"features": {"n_shards": 5}})
    out = _stop(work, "--configfile", "config/overlays/two_shards.yaml", exp)
    assert "overrides its key(s) ['features.n_shards']" in out and "give overlays last" in out


def test_a_missing_checkpoint(work):
    cfg = _folder_cfg()
    cfg["models"][0]["pretrained"] = "checkpoints/mine.safetensors"
    out = _stop(work, "--configfile", _write(work, "ckpt.yaml", cfg))
    assert "the checkpoint 'checkpoints/mine.safetensors' of 'planted-vit-tiny' does not" in out


BAD_FOLDERS = {
    "missing index": (
        {"index": "my_images/labels.csv"},
        "my_images/labels.csv not found",
    ),
    "unknown column": (
        {"attributes": [{"name": "colour", "values": ["red", "yellow"]}],
         "spurious_attribute": ""},
        "my_images/index.csv: unknown column 'background'",
    ),
    "label without a class name": (
        {"classes": ["circle", "square"]},
        "label 'triangle' (lines",
    ),
    "attribute value not in the config": (
        {"attributes": [{"name": "background", "values": ["land", "sea"]},
                        {"name": "colour", "values": ["red", "yellow"]}]},
        "background value 'water'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_bad_folder_stops_before_any_job(work, case):
    over, message = BAD_FOLDERS[case]
    out = _stop(work, "--configfile", _write(work, "bad.yaml", _folder_cfg(**over)))
    assert message in out


def test_a_split_without_images(work):
    cfg = _folder_cfg()
    cfg["datasets"][0]["locate_split"] = "validation"
    out = _stop(work, "--configfile", _write(work, "split.yaml", cfg))
    assert "my_images/index.csv: split 'validation' has no images" in out


def test_missing_and_unreadable_images(work, tmp_path):
    copy = tmp_path / "imgs"
    import shutil

    shutil.copytree(work / "my_images", copy)
    first = (copy / "index.csv").read_text().splitlines()[1].split(",")[0]
    (copy / first).write_bytes(b"GIF? no")
    cfg = _folder_cfg(path=str(copy), index=str(copy / "index.csv"))
    out = _stop(work, "--configfile", _write(work, "unreadable.yaml", cfg))
    assert f"{copy / first} (line 2) is not an image file" in out
    (copy / first).unlink()
    out = _stop(work, "--configfile", _write(work, "missing.yaml", cfg))
    assert "1 image(s) not found" in out and first in out


def test_a_good_folder_plans_the_folder_rule(work):
    res = subprocess.run(
        [tool("snakemake"), "-n", "--configfile", _write(work, "own.yaml", _folder_cfg())],
        cwd=work, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "prepare_folder_dataset" in out and "results/own/data/shapes/index.parquet" in out
    assert "download_dataset" not in out and "fetch_weights" not in out


@pytest.mark.parametrize(
    "configfile, cores",
    [
        ("tests/config/tiny.yaml", 1),
        ("tests/config/tiny.yaml", 2),
        ("", 2),  # the default experiment (config/config.yaml): training asks for 4
        ("config/experiments/ltc_waterbirds.yaml", 2),  # a paper table: extraction asks for 4
    ],
)
def test_no_job_asks_for_more_threads_than_cores(work, configfile, cores):
    """Rules ask for up to 4 threads (training, extraction); Snakemake caps them at --cores
    (and the stages pass them to torch and BLAS)."""
    args = ["--configfile", configfile] if configfile else []
    res = subprocess.run(
        [tool("snakemake"), "-n", "-c", str(cores), *args],
        cwd=work, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    threads = [int(t) for t in re.findall(r"^\s+threads: (\d+)$", out, re.M)]
    asks_four = "train_small_clip" if not configfile.startswith("config/") else "extract_features"
    assert asks_four in out
    assert all(t <= cores for t in threads), sorted(set(threads))
    if cores == 2:
        assert 2 in threads  # the cap is what keeps them within: the rules ask for more
