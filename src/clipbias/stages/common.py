"""Small helpers shared by the stage modules (no third-party imports at module level)."""

from __future__ import annotations

import os
from pathlib import Path

FAIL_ONCE_ENV = "CLIPBIAS_FAIL_ONCE"


def maybe_fail_once(stage: str) -> None:
    """Fault injection for resilience tests.

    If ``CLIPBIAS_FAIL_ONCE`` is ``<stage>:<marker path>`` and the marker does not exist yet,
    create it and fail; the retry (marker present) succeeds.
    """
    spec = os.environ.get(FAIL_ONCE_ENV, "")
    if not spec or ":" not in spec:
        return
    name, marker = spec.split(":", 1)
    if name != stage or Path(marker).exists():
        return
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text("failed once\n")
    raise RuntimeError(f"injected transient failure in stage {stage} ({FAIL_ONCE_ENV})")


#: Thread-count variables that BLAS and OpenMP runtimes read when they are loaded.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def limit_blas_threads(threads: int | None) -> None:
    """Pin BLAS, OpenMP and torch threads to the rule's threads (Snakemake caps a rule's
    ``threads`` at ``--cores``; oversubscription slows numpy badly).

    threadpoolctl limits only the libraries already loaded; a method that imports torch
    later would start torch's OpenMP pool on every core of the node, so the thread
    variables are set too (read when a runtime loads), and torch's pool directly when torch
    is already imported."""
    if threads:
        import sys

        from threadpoolctl import threadpool_limits

        n = max(1, int(threads))
        for var in THREAD_VARIABLES:
            os.environ[var] = str(n)
        threadpool_limits(n)
        if "torch" in sys.modules:
            set_torch_threads(n)


def set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
