"""Resource requests of the rules (``mem_mb``, ``runtime`` in minutes), from measured costs.

The coefficients live in ``workflow/resources.yaml``, which ``benchmarks/rehearse.py --fit``
writes from two measurements (docs/DESIGN.md, "Resources"):

* the rehearsal at the real model shapes (``benchmarks/results/rehearsal_jobs.csv``: every
  job's peak RSS, CPU time and size), for what depends on the architecture: the memory of a
  loaded model, the activations per image of the decomposition pass, the CPU seconds per
  image and per text;
* the streamed stages at 20,000 ViT-H-14-sized rows (``benchmarks/results/memory.csv``), for
  the CPU stages that read feature shards batch by batch: their peak RSS and throughput.

The workflow calls these functions when it schedules a job, with that job's sizes: the rows of
its feature shard (from the dataset index), the MiB of its cell's feature shards, the texts it
encodes. Pure Python: no numpy, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Forward FLOPs of one 224 px image (GFLOP) by architecture (README "Paper configurations").
GFLOP_PER_IMAGE = {"ViT-B-16": 17.6, "ViT-L-14": 77.8, "ViT-H-14": 167.0}
#: Effective throughput assumed for a GPU job (TFLOP/s, fp32, an A100-class card).
GPU_TFLOPS = 10.0
#: Safety factors: runtime requests are ``SAFETY_TIME`` x the estimate (never below
#: ``MIN_RUNTIME`` minutes), memory requests ``SAFETY_MEM`` x the measured need.
SAFETY_TIME = 3.0
SAFETY_MEM = 1.5
MIN_RUNTIME = 10
#: The extraction job keeps its shard's feature rows about three times over at its end:
#: per-batch arrays, their concatenation, the Arrow table (clipbias.extract.extract_shard).
SHARD_COPIES = 3.0
#: Host memory of a CUDA context and its pinned buffers (MB), added on GPU jobs.
CUDA_HOST_MB = 2000


def _round_mb(x: float) -> int:
    """Up to the next 500 MB."""
    return int(math.ceil(x / 500.0) * 500)


def feature_row_mib(
    n_layers: int, n_heads: int, dim: int, stored_layers: int, dtype: str = "float32"
) -> float:
    """MiB of one image's feature row in memory: the stored heads, ``rest`` and the
    embedding (``dim`` values each), in ``dtype`` (float32 in memory while extracting)."""
    del n_layers  # rows hold only the stored layers (the others are summed into rest)
    values = stored_layers * n_heads * dim + 2 * dim
    return values * (2 if dtype in ("float16", "bfloat16") else 4) / 2**20


def arch_costs(costs: Mapping[str, Any], arch: str) -> Mapping[str, Any]:
    """The measured coefficients of architecture ``arch``: exact name, else the longest
    known prefix (e.g. ``ViT-B-16-quickgelu`` -> ``ViT-B-16``). An unmeasured architecture
    gets the largest measured one's, so that it asks for too much rather than too little;
    when both have known forward FLOPs (:data:`GFLOP_PER_IMAGE`) and the unmeasured one is
    larger, its memory and CPU terms are scaled up by the FLOPs ratio (parameters and
    activations grow with width and depth as the FLOPs do; a ViT-H-14 with only ViT-B-16
    measured would otherwise ask for a third of what its text tower needs)."""
    models = costs["models"]
    if arch in models:
        return models[arch]
    prefix = [m for m in models if arch.startswith(m)]
    if prefix:
        return models[max(prefix, key=len)]
    name = max(models, key=lambda m: models[m]["model_mb"])
    known = models[name]
    base = next((g for m, g in GFLOP_PER_IMAGE.items() if name.startswith(m)), None)
    ratio = GFLOP_PER_IMAGE[arch] / base if base and arch in GFLOP_PER_IMAGE else 1.0
    if ratio <= 1.0:
        return known
    scaled = ("model_mb", "act_mb_per_image", "cpu_s_per_image", "cpu_s_per_text")
    return {**known, **{k: known[k] * ratio for k in scaled if k in known}}


def extract_mem_mb(
    costs: Mapping[str, Any],
    arch: str,
    rows: int,
    row_mib: float,
    batch_size: int,
    gpu: bool,
    attempt: int = 1,
) -> int:
    """Peak memory of a feature-extraction job: the loaded model, the activations of one
    batch, :data:`SHARD_COPIES` copies of the shard's rows, (GPU) the CUDA host share."""
    c = arch_costs(costs, arch)
    need = (
        c["model_mb"]
        + c["act_mb_per_image"] * min(rows, batch_size)
        + SHARD_COPIES * rows * row_mib
        + (CUDA_HOST_MB if gpu else 0)
    )
    return _round_mb(SAFETY_MEM * need * attempt)


def extract_runtime_min(costs: Mapping[str, Any], arch: str, rows: int, gpu: bool) -> int:
    """Wall minutes of a feature-extraction job: model load plus the forward passes, on a GPU
    from the architecture's FLOPs at :data:`GPU_TFLOPS` (image decoding runs in parallel
    loader threads), on a CPU from the measured CPU seconds per image."""
    c = arch_costs(costs, arch)
    if gpu:
        gflop = GFLOP_PER_IMAGE.get(arch, max(GFLOP_PER_IMAGE.values()))
        per_image = gflop / (GPU_TFLOPS * 1000.0)
    else:
        per_image = c["cpu_s_per_image"]
    seconds = c["load_s"] + rows * per_image
    return max(MIN_RUNTIME, int(math.ceil(SAFETY_TIME * seconds / 60.0)))


def text_mem_mb(costs: Mapping[str, Any], arch: str, gpu: bool, attempt: int = 1) -> int:
    """Peak memory of a text-encoding job (the model; text batches are small)."""
    c = arch_costs(costs, arch)
    return _round_mb(SAFETY_MEM * (c["model_mb"] + (CUDA_HOST_MB if gpu else 0)) * attempt)


def text_runtime_min(costs: Mapping[str, Any], arch: str, n_texts: int, gpu: bool) -> int:
    """Wall minutes of encoding ``n_texts`` prompts (a GPU: ~1/20 of the CPU time)."""
    c = arch_costs(costs, arch)
    per_text = c["cpu_s_per_text"] / (20.0 if gpu else 1.0)
    seconds = c["load_s"] + n_texts * per_text
    return max(MIN_RUNTIME, int(math.ceil(SAFETY_TIME * seconds / 60.0)))


def stream_mem_mb(costs: Mapping[str, Any], rule: str, attempt: int = 1) -> int:
    """Peak memory of a CPU stage that streams feature shards (independent of their size)."""
    r = costs["streamed"].get(rule, costs["streamed"]["default"])
    return _round_mb(SAFETY_MEM * r["mem_mb"] * attempt)


def stream_runtime_min(costs: Mapping[str, Any], rule: str, feature_mib: float) -> int:
    """Wall minutes of a streamed CPU stage reading ``feature_mib`` MiB of shards, at its
    measured throughput."""
    r = costs["streamed"].get(rule, costs["streamed"]["default"])
    seconds = r["fixed_s"] + feature_mib / r["mib_per_s"]
    return max(MIN_RUNTIME, int(math.ceil(SAFETY_TIME * seconds / 60.0)))
