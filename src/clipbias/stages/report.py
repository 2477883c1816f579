"""Rules of ``workflow/rules/report.smk``: execute a report notebook with papermill in the
rule's own Python (the env's Jupyter kernel), then export it to HTML with nbconvert.

The kernel is this interpreter (``sys.executable``), registered under a private kernel name
in a temporary ``JUPYTER_PATH`` entry, so a notebook never runs in some other Python that a
user-level ``python3`` kernelspec may point to.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KERNEL_NAME = "clipbias-report"


def _kernel_dir(root: Path) -> None:
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"clipbias report ({sys.executable})",
        "language": "python",
    }
    folder = root / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(spec))


def run_notebook(
    notebook: str | os.PathLike,
    out_ipynb: str | os.PathLike,
    out_html: str | os.PathLike,
    parameters: Mapping[str, Any],
    cwd: str | os.PathLike = ".",
) -> None:
    """Execute ``notebook`` with ``parameters`` (papermill) into ``out_ipynb`` and export it to
    ``out_html``. Both outputs are written atomically; a failing cell fails the stage (papermill's
    error names the cell) and leaves neither output behind."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from clipbias.io import atomic_path, rehearsal_banner

    out_ipynb, out_html = Path(out_ipynb), Path(out_html)
    with tempfile.TemporaryDirectory(prefix="clipbias-kernel-") as kdir:
        _kernel_dir(Path(kdir))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([kdir, *([old] if old else [])])
        executed = Path(kdir) / "executed.ipynb"
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters=dict(parameters),
                kernel_name=KERNEL_NAME,
                cwd=str(cwd),
                progress_bar=False,
                log_output=False,
            )
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
        banner = rehearsal_banner(out_ipynb)
        if banner:  # the first cell of a rehearsal's notebook says so
            nb = nbformat.read(executed, as_version=4)
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {banner}"))
            nbformat.write(nb, executed)
        with atomic_path(out_ipynb) as tmp:
            shutil.copyfile(executed, tmp)
    nb = nbformat.read(out_ipynb, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(body, encoding="utf-8")
    log.info("executed %s -> %s, %s", notebook, out_ipynb, out_html)
