"""workflow/scripts/_bootstrap.py puts this checkout's ``src`` first on sys.path, even when
another ``clipbias`` (another checkout's editable install, a PYTHONPATH entry) comes first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bootstrap_beats_a_decoy_package_on_the_path(tmp_path):
    decoy = tmp_path / "decoy" / "clipbias"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("DECOY = True\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import _bootstrap, clipbias; "
        "print(clipbias.__file__); print(hasattr(clipbias, 'DECOY'))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "decoy")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "workflow" / "scripts")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(out[0]).resolve() == (REPO / "src" / "clipbias" / "__init__.py").resolve()
    assert out[1] == "False"
