"""Offline weights: a tiny open_clip model in a Hugging Face cache layout, loaded with no network.

The offline loads run in a child process started with ``HF_HUB_OFFLINE=1`` and ``HF_HOME``
set (huggingface_hub reads both at import, as a compute-node job does) and with sockets
disabled, so any attempt to reach the network fails loudly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip import pretrained as oc_pretrained
from safetensors.torch import save_file

from clipbias.io import sha256_file
from clipbias.models import MODEL_CONFIG_DIR, register_model_configs
from clipbias.weights import (
    WeightsError,
    WeightsNotCachedError,
    check_offline,
    hub_cache_dir,
    quickgelu_setting,
    weights_source,
)

REPO = Path(__file__).resolve().parents[2]
TINY = "planted-vit-tiny"
TAG_REPO = "clipbias-test/planted-vit-tiny"
HUB_REPO = "clipbias-test/planted-vit-tiny-hub"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_hf_cache(hub: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Files of a model repo in the hub cache layout: models--org--repo/snapshots/<rev>/."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    snap = folder / "snapshots" / REVISION
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    return snap


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[Path, bytes]:
    """A random planted-vit-tiny state dict as safetensors bytes (and its file)."""
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, path.read_bytes()


@pytest.fixture
def tiny_tags(monkeypatch):
    """Pretrained tags for the tiny model (a GELU one and a QuickGELU one), test-only."""
    register_model_configs()
    monkeypatch.setitem(
        oc_pretrained._PRETRAINED,
        TINY,
        {
            "testtag": oc_pretrained._pcfg(hf_hub=f"{TAG_REPO}/"),
            "testtag_qg": oc_pretrained._pcfg(hf_hub=f"{TAG_REPO}/", quick_gelu=True),
        },
    )


CHILD = textwrap.dedent(
    """
    import json, os, socket, sys

    def _blocked(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    socket.socket.connect = _blocked
    socket.create_connection = _blocked

    import huggingface_hub
    import torch
    from open_clip import pretrained as P
    from safetensors.torch import load_file

    from clipbias.models import load_model, register_model_configs
    from clipbias.weights import WeightsError, check_offline, fetch_weights, hub_cache_dir

    register_model_configs()
    P._PRETRAINED["planted-vit-tiny"] = {
        "testtag": P._pcfg(hf_hub="clipbias-test/planted-vit-tiny/"),
        "testtag_qg": P._pcfg(hf_hub="clipbias-test/planted-vit-tiny/", quick_gelu=True),
        "missing": P._pcfg(hf_hub="clipbias-test/not-cached/"),
    }
    hf_home, ref_path, record_path = sys.argv[1:4]
    hub = hub_cache_dir(hf_home)
    ref = load_file(ref_path)
    out = {"offline": huggingface_hub.constants.HF_HUB_OFFLINE}

    def same(model):
        sd = model.state_dict()
        return set(sd) == set(ref) and all(torch.equal(sd[k], v) for k, v in ref.items())

    def act(model):
        return type(model.visual.transformer.resblocks[0].mlp.gelu).__name__

    out["check"] = {k: str(v) for k, v in check_offline("planted-vit-tiny", "testtag", hf_home).items()}
    out["record"] = fetch_weights("planted-vit-tiny", "testtag", hf_home, record_path)
    lm = load_model("planted-vit-tiny", "testtag", device="cpu", cache_dir=hub)
    out["tag_same"], out["tag_act"], out["tag_forced"] = same(lm.model), act(lm.model), lm.quick_gelu_forced
    with torch.no_grad():
        out["embed_shape"] = list(lm.model.encode_image(torch.zeros(2, 3, 32, 32)).shape)
    qg = load_model("planted-vit-tiny", "testtag_qg", device="cpu", cache_dir=hub)
    out["qg_same"], out["qg_act"], out["qg_forced"] = same(qg.model), act(qg.model), qg.quick_gelu_forced
    name = "hf-hub:clipbias-test/planted-vit-tiny-hub"
    hubm = load_model(name, device="cpu", cache_dir=hub)
    out["hub_same"] = same(hubm.model)
    out["hub_record"] = fetch_weights(name, None, hf_home)
    try:
        fetch_weights("planted-vit-tiny", "missing", hf_home)
        out["missing_error"] = None
    except WeightsError as exc:
        out["missing_error"] = str(exc)
    print("RESULT " + json.dumps(out))
    """
)


def test_tiny_model_loads_offline_from_the_hf_cache(tiny_weights, tmp_path):
    weights_file, data = tiny_weights
    hf_home = tmp_path / "hf"
    hub = hub_cache_dir(hf_home)
    snap = write_hf_cache(hub, TAG_REPO, {"open_clip_model.safetensors": data})
    model_cfg = json.loads((MODEL_CONFIG_DIR / f"{TINY}.json").read_text())
    hub_config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    write_hf_cache(
        hub,
        HUB_REPO,
        {
            "open_clip_model.safetensors": data,
            "open_clip_config.json": json.dumps(hub_config).encode(),
        },
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(hf_home),
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    record = tmp_path / "weights.json"
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(hf_home), str(weights_file), str(record)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])

    assert out["offline"] is True
    assert out["check"]["weights"] == str(snap / "open_clip_model.safetensors")
    rec = out["record"]
    assert rec["repo_id"] == TAG_REPO and rec["file"] == "open_clip_model.safetensors"
    assert rec["revision"] == REVISION and rec["sha256"] == sha256_file(weights_file)
    assert rec["size"] == len(data) and rec["force_quick_gelu"] is False
    assert json.loads(record.read_text()) == rec
    assert out["tag_same"] and out["tag_act"] == "GELU" and out["tag_forced"] is False
    assert out["embed_shape"] == [2, 64]
    # a QuickGELU tag on the GELU config: same weights, built with QuickGELU
    assert out["qg_same"] and out["qg_act"] == "QuickGELU" and out["qg_forced"] is True
    assert out["hub_same"]
    assert out["hub_record"]["config"]["file"] == "open_clip_config.json"
    assert out["hub_record"]["sha256"] == sha256_file(weights_file)
    assert "clipbias-test/not-cached" in out["missing_error"]
    assert "login node" in out["missing_error"]


def test_missing_weights_name_the_fetch_command(tiny_tags, tmp_path):
    hf_home = tmp_path / "hf"
    with pytest.raises(WeightsNotCachedError) as exc:
        check_offline(TINY, "testtag", hf_home)
    msg = str(exc.value)
    assert TAG_REPO in msg and str(hub_cache_dir(hf_home)) in msg
    assert "fetch_weights" in msg and "login node" in msg
    assert f"python -m clipbias.weights fetch {TINY} testtag --hf-home {hf_home}" in msg
    # the real tags resolve to their Hugging Face repos without any network
    with pytest.raises(WeightsNotCachedError, match="laion/CLIP-ViT-B-16-laion2B-s34B-b88K"):
        check_offline("ViT-B-16", "laion2b_s34b_b88k", hf_home)
    # an hf-hub model also needs its config
    write_hf_cache(hub_cache_dir(hf_home), HUB_REPO, {"open_clip_model.safetensors": b"x"})
    with pytest.raises(WeightsNotCachedError, match="open_clip_config.json"):
        check_offline(f"hf-hub:{HUB_REPO}", None, hf_home)


def test_weights_source_of_real_tags():
    src = weights_source("ViT-B-16", "openai")
    assert src.repo_id == "timm/vit_base_patch16_clip_224.openai"
    assert src.filenames == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    assert src.quick_gelu is True
    src = weights_source("ViT-L-14", "laion2b_s32b_b82k")
    assert src.repo_id == "laion/CLIP-ViT-L-14-laion2B-s32B-b82K" and src.quick_gelu is False
    with pytest.raises(WeightsError, match="not an open_clip pretrained tag.*laion2b_s34b_b88k"):
        weights_source("ViT-B-16", "laion9b")
    with pytest.raises(WeightsError, match="nothing to fetch"):
        weights_source("ViT-B-16", None)


def test_quickgelu_mismatch_is_fixed_or_refused(tiny_tags, monkeypatch):
    assert quickgelu_setting("ViT-B-16", "openai") is True  # GELU config, QuickGELU weights
    assert quickgelu_setting("ViT-B-16-quickgelu", "openai") is False
    assert quickgelu_setting("ViT-B-16", "laion2b_s34b_b88k") is False
    assert quickgelu_setting(TINY, "testtag_qg") is True
    assert quickgelu_setting(TINY, None) is False
    cfg = {**json.loads((MODEL_CONFIG_DIR / f"{TINY}.json").read_text()), "quick_gelu": True}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-qg", cfg)
    monkeypatch.setitem(
        oc_pretrained._PRETRAINED, "tiny-qg", {"geluweights": oc_pretrained._pcfg(hf_hub="a/b/")}
    )
    with pytest.raises(WeightsError, match="uses QuickGELU but pretrained tag 'geluweights'"):
        quickgelu_setting("tiny-qg", "geluweights")
