#!/usr/bin/env python
"""Benchmark the decomposition pass against a plain ``encode_image`` (and feature storage).

For one open_clip model (default ViT-B-16, random weights) and batches of random
preprocessed-size images, on CUDA when present (else CPU), measure in one run:

* images/s of ``model.encode_image`` and of ``clipbias.decompose.decompose`` on the same model
  and the same batches (warm-up first, then ``--repeats`` interleaved timings; medians), and
  their ratio (decompose throughput / encode_image throughput; target >= 0.9);
* with ``clipbias.features`` (skip with ``--no-features``): bytes per image on disk of the
  Parquet feature shards (float32 and float16; all layers and the last 4 layers), and the
  read throughput of ``FeatureSet.iter_batches`` over those shards.

Writes a CSV with columns metric,value,unit,device,notes (default
benchmarks/results/extract.csv). Usage::

    .venv/bin/python benchmarks/extract.py [--model ViT-B-16] [--batch-size 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import torch

from clipbias.decompose import decompose
from clipbias.io import atomic_path
from clipbias.models import register_model_configs, resolve_device

FIELDS = ["metric", "value", "unit", "device", "notes"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="timed batches per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per method first")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--no-features",
        action="store_true",
        help="skip the Parquet storage / reader measurements (clipbias.features)",
    )
    p.add_argument("--read-repeats", type=int, default=5, help="full passes over the shards")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/extract.csv"))
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(model, batches, device, warmup: int):
    """Interleaved timings (encode, decompose) per batch; returns times and decompositions."""
    enc_t, dec_t, decs = [], [], []
    for i, x in enumerate(batches):
        x = x.to(device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.encode_image(x)
        _sync(device)
        t1 = time.perf_counter()
        dec = decompose(model, x)
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
            decs.append(dec)
        print(f"batch {i}: encode_image {t1 - t0:.3f} s, decompose {t2 - t1:.3f} s", flush=True)
    return enc_t, dec_t, decs


def storage_metrics(decs, model_name: str, device: str, read_repeats: int) -> list[dict]:
    """Bytes per image of feature shards and reader throughput (needs clipbias.features)."""
    from clipbias import features

    heads = torch.cat([d.heads for d in decs]).numpy()
    n, n_layers, n_heads, dim = heads.shape
    emb = torch.cat([d.embedding for d in decs]).numpy()
    norm = torch.cat([d.norm for d in decs]).numpy()
    mu = torch.cat([d.ln_mu for d in decs]).numpy()
    sig = torch.cat([d.ln_sigma for d in decs]).numpy()
    cls_mlp = torch.cat([d.cls + d.mlp.sum(1) for d in decs]).numpy()
    index = pd.DataFrame(
        {
            "image_id": [f"img{i:06d}" for i in range(n)],
            "path": [f"images/img{i:06d}.png" for i in range(n)],
            "split": "test",
            "label": np.arange(n) % 2,
            "group": np.arange(n) % 4,
        }
    )
    rows = []
    last4 = list(range(max(0, n_layers - 4), n_layers))
    for layers, tag in ((list(range(n_layers)), "all_layers"), (last4, "last4_layers")):
        other = [l for l in range(n_layers) if l not in layers]
        rest = cls_mlp + (heads[:, other].sum((1, 2)) if other else 0.0)
        for dtype in ("float32", "float16"):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                meta = {
                    "model": model_name,
                    "pretrained": None,
                    "layers": layers,
                    "n_layers": n_layers,
                    "n_heads": n_heads,
                    "dim": dim,
                    "dtype": dtype,
                }
                table = features.build_table(
                    index, heads[:, layers], rest, emb, norm, mu, sig, layers, dtype, meta
                )
                shard = folder / "shard-00000.parquet"
                features.write_shard(table, shard)
                features.write_manifest([shard], folder / "manifest.json")
                size = shard.stat().st_size
                rows.append(
                    {
                        "metric": f"bytes_per_image_{dtype}_{tag}",
                        "value": size / n,
                        "unit": "B/image",
                        "device": "disk",
                        "notes": f"zstd Parquet shard of {n} random-weight {model_name} images, "
                        f"{len(layers)} layers x {n_heads} heads x {dim} + rest/embedding",
                    }
                )
                fs = features.FeatureSet.open(folder)
                times = []
                for _ in range(read_repeats):
                    t0 = time.perf_counter()
                    got = sum(h.shape[0] for _, h, _ in fs.iter_batches(layers))
                    times.append(time.perf_counter() - t0)
                    assert got == n
                t = statistics.median(times)
                rows.append(
                    {
                        "metric": f"parquet_read_images_per_s_{dtype}_{tag}",
                        "value": n / t,
                        "unit": "images/s",
                        "device": "cpu",
                        "notes": f"FeatureSet.iter_batches (decoded to float32 numpy), "
                        f"median of {read_repeats} passes over {n} rows, "
                        f"{size / t / 2**20:.1f} MiB/s of file",
                    }
                )
                print(
                    f"{dtype} {tag}: {size / n / 1024:.1f} KiB/image, read {n / t:.0f} images/s",
                    flush=True,
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    register_model_configs()
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.model, pretrained=None, device=device).eval()
    size = model.visual.image_size
    g = torch.Generator().manual_seed(args.seed)
    n_batches = args.warmup + args.repeats
    # distinct images per batch (so the storage metrics see distinct rows); both methods get
    # exactly the same batches
    batches = [torch.randn(args.batch_size, 3, *size, generator=g) for _ in range(n_batches)]
    print(
        f"{args.model} random weights, batch {args.batch_size}, device {device}, "
        f"{torch.get_num_threads()} threads, {args.warmup} warm-up + {args.repeats} timed",
        flush=True,
    )
    enc_t, dec_t, decs = time_methods(model, batches, device, args.warmup)
    enc_ips = args.batch_size / statistics.median(enc_t)
    dec_ips = args.batch_size / statistics.median(dec_t)
    per_batch = statistics.median(e / d for e, d in zip(enc_t, dec_t, strict=True))
    dev = str(device) if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    common = f"{args.model} random weights, batch {args.batch_size}, median of {args.repeats}"
    rows = [
        {
            "metric": "encode_image_images_per_s",
            "value": enc_ips,
            "unit": "images/s",
            "device": dev,
            "notes": common,
        },
        {
            "metric": "decompose_images_per_s",
            "value": dec_ips,
            "unit": "images/s",
            "device": dev,
            "notes": common + "; all layers and heads, float32, CPU outputs",
        },
        {
            "metric": "decompose_vs_encode_throughput_ratio",
            "value": dec_ips / enc_ips,
            "unit": "ratio",
            "device": dev,
            "notes": f"ratio of medians (target >= 0.9); median per-batch ratio {per_batch:.3f}",
        },
    ]
    print(
        f"encode_image {enc_ips:.2f} img/s, decompose {dec_ips:.2f} img/s, "
        f"ratio {dec_ips / enc_ips:.3f} (per-batch median {per_batch:.3f})",
        flush=True,
    )
    if not args.no_features:
        try:
            import clipbias.features  # noqa: F401
        except ImportError:
            print("clipbias.features not available: storage metrics skipped", file=sys.stderr)
        else:
            rows += storage_metrics(decs, args.model, dev, args.read_repeats)
    notes_env = f"torch {torch.__version__}, open_clip {open_clip.__version__}, {platform.node()}"
    rows.append(
        {"metric": "environment", "value": "", "unit": "", "device": dev, "notes": notes_env}
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "value": f"{r['value']:.6g}" if r["value"] != "" else ""})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
