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


def limit_blas_threads(threads: int | None) -> None:
    """Pin BLAS threads to the rule's threads (oversubscription slows numpy badly)."""
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(threads))


def set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
