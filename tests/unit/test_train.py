import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from clipbias.io import sha256_file
from clipbias.models import load_model
from clipbias.synth import generate
from clipbias.train import train_clip, zero_shot_group_accuracy

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NAME = "planted-vit-unittest"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg_dir = root / "configs"
    cfg_dir.mkdir()
    (cfg_dir / f"{NAME}.json").write_text(json.dumps(TINY_CFG))
    ds = generate(root / "ds", seed=3, n_train=256, n_val=32, n_test=64, image_size=16)
    return root, cfg_dir, ds


def _train(setup, tag, **kw):
    root, cfg_dir, ds = setup
    ckpt, log = root / f"{tag}.safetensors", root / f"{tag}.json"
    out = train_clip(
        ds,
        ckpt,
        log,
        model_name=NAME,
        model_config_dir=cfg_dir,
        epochs=1,
        batch_size=64,
        seed=5,
        device="cpu",
        num_threads=1,
        **kw,
    )
    return ckpt, log, out


def test_train_one_epoch_and_load(setup):
    ckpt, log, out = _train(setup, "a")
    assert ckpt.is_file() and log.is_file()
    rec = json.loads(log.read_text())
    assert rec == json.loads(json.dumps(out))
    assert [e["epoch"] for e in rec["epochs"]] == [1]
    for key in ("loss", "seconds"):
        assert rec["epochs"][0][key] > 0
    for key in ("wall_seconds", "seed", "config", "device", "torch_version", "open_clip_version"):
        assert key in rec
    assert 0 < rec["cpu_seconds"]  # CPU time of all threads (steadier than wall time)
    assert rec["seed"] == 5 and rec["device"] == "cpu" and rec["n_images"] == 256
    assert rec["config"]["model_name"] == NAME
    # trained on the threads it was given (rule train_small_clip passes Snakemake's capped
    # threads), not torch's default of every core
    assert rec["num_threads"] == 1

    model = open_clip.create_model(NAME, pretrained=str(ckpt))
    saved = load_file(str(ckpt))
    state = model.state_dict()
    assert saved.keys() == state.keys()
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    # the trained weights are not the random init
    init = open_clip.create_model(NAME).state_dict()
    assert not torch.equal(init["visual.conv1.weight"], saved["visual.conv1.weight"])

    loaded = load_model(NAME, pretrained=str(ckpt), device="cpu")
    assert loaded.checkpoint_sha256 == sha256_file(ckpt)
    assert torch.equal(loaded.model.state_dict()["logit_scale"], saved["logit_scale"])

    res = zero_shot_group_accuracy(model, open_clip.get_tokenizer(NAME), setup[2])
    assert res["n"] == 64 and set(res["group_counts"].values()) == {16}
    assert 0 <= res["worst_group_accuracy"] <= res["accuracy"] <= 1
    assert res["template"] == "a photo of a {}"


def test_training_is_deterministic(setup):
    a, _, _ = _train(setup, "det1")
    b, _, _ = _train(setup, "det2")
    assert a.read_bytes() == b.read_bytes()
    c, _, _ = _train(setup, "det3", lr=1e-4)
    assert a.read_bytes() != c.read_bytes()


def test_restores_global_torch_state(setup):
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    _train(setup, "state")
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


def test_too_few_images(setup):
    root, cfg_dir, ds = setup
    with pytest.raises(ValueError, match="batch_size"):
        train_clip(
            ds,
            root / "x.safetensors",
            root / "x.json",
            model_name=NAME,
            model_config_dir=cfg_dir,
            batch_size=512,
        )
    assert not (root / "x.safetensors").exists()
