"""A small image folder in the layout of ``kind: folder`` datasets, for the worked example of
docs/OWN_DATA.md and the tests::

    python -m clipbias.data.example_folder my_images [--checkpoint my_images/tiny.safetensors]

writes ``my_images/images/<split>/<class>_<n>.png`` (shapes on backgrounds rendered by the
planted generator, :mod:`clipbias.synth`: 32 x 32 pixels), ``my_images/index.csv`` (columns
``image, split, label, background, colour``; the train split's plain drawings have no
background: an empty cell) and ``my_images/experiment.yaml``, an experiment on the folder
(:func:`example_config`) with the small CLIP that the default experiment trains
(:data:`TRAINED`). ``--checkpoint`` instead writes random weights of that architecture
(``planted-vit-tiny``) as a local open_clip checkpoint, so the example runs without training
(its numbers are those of an untrained model).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLASSES = ["circle", "triangle"]
ATTRIBUTES = {"background": ["land", "water"], "colour": ["red", "yellow"]}
MODEL = "planted-vit-tiny"
#: The small CLIP the default experiment trains (``snakemake`` with config/config.yaml).
TRAINED = f"results/planted/models/planted/{MODEL}/seed-42/checkpoint.safetensors"


def write_example_folder(
    out: str | os.PathLike,
    *,
    n_train: int = 40,
    n_val: int = 400,
    n_test: int = 80,
    seed: int = 0,
) -> Path:
    """Render the example folder into ``out`` (created; existing files are overwritten):
    images and ``index.csv``. Train and val follow the planted benchmark's 95 % agreement of
    class and background (val locates the biased heads), test is balanced. Returns the path
    of ``index.csv``."""
    import pandas as pd

    from clipbias.synth import generate

    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        src = generate(
            Path(tmp) / "planted",
            seed=int(seed),
            n_train=int(n_train),
            n_val=int(n_val),
            n_test=int(n_test),
            classes=CLASSES,
            colours=ATTRIBUTES["colour"],
            twin_splits=[],
        )
        index = pd.read_parquet(src / "index.parquet")
        rows = []
        for r in index.itertuples(index=False):
            rel = f"images/{r.split}/{CLASSES[r.label]}_{r.image_id.rsplit('_', 1)[-1]}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / r.path, out / rel)
            rows.append(
                {
                    "image": rel,
                    "split": r.split,
                    "label": CLASSES[r.label],
                    "background": ATTRIBUTES["background"][r.attr_background]
                    if r.attr_background >= 0
                    else "",
                    "colour": ATTRIBUTES["colour"][r.attr_colour],
                }
            )
    path = out / "index.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "split", "label", "background", "colour"])
        writer.writeheader()
        writer.writerows(rows)
    log.info("example folder: %d images, index %s", len(rows), path)
    return path


def example_config(folder: str, checkpoint: str, experiment: str = "my_images") -> dict[str, Any]:
    """An experiment on the example folder (paths as given, relative to the directory
    snakemake runs in): the small CLIP architecture with the weights ``checkpoint``, the
    planted benchmark's text file (its classes and attributes are the folder's) and every
    method of config/config.yaml (methods are not set here, so the default list applies)."""
    return {
        "experiment": experiment,
        "models": [{"name": MODEL, "pretrained": checkpoint}],
        "datasets": [
            {
                "name": "shapes",
                "kind": "folder",
                "locate_split": "val",
                "test_split": "test",
                "texts": "config/texts/planted.yaml",
                "folder": {
                    "path": folder,
                    "index": f"{folder}/index.csv",
                    "classes": list(CLASSES),
                    "attributes": [{"name": k, "values": list(v)} for k, v in ATTRIBUTES.items()],
                    "spurious_attribute": "background",
                    "protected_attribute": "colour",
                },
            }
        ],
    }


def write_random_checkpoint(out: str | os.PathLike, seed: int = 0) -> Path:
    """Random weights of ``planted-vit-tiny`` as an open_clip safetensors checkpoint."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clipbias.io import atomic_path
    from clipbias.open_clip_configs import register_model_configs

    register_model_configs()
    torch.manual_seed(int(seed))
    model = open_clip.create_model(MODEL, pretrained=None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return out


def main(argv: list[str] | None = None) -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="folder to write (e.g. my_images)")
    ap.add_argument(
        "--checkpoint",
        default="",
        help=f"write random {MODEL} weights here and use them (default: the trained {TRAINED})",
    )
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--n-val", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    index = write_example_folder(
        args.folder, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed
    )
    checkpoint = args.checkpoint or TRAINED
    if args.checkpoint:
        write_random_checkpoint(args.checkpoint, seed=args.seed)
    cfg = Path(args.folder) / "experiment.yaml"
    cfg.write_text(yaml.safe_dump(example_config(args.folder, checkpoint), sort_keys=False))
    log.info("wrote %s and %s; run: snakemake --configfile %s", index, cfg, cfg)


if __name__ == "__main__":
    main()
