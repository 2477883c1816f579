"""cluster/slurm-down.sh without a running cluster (no root, no SLURM packages needed)."""

from __future__ import annotations

import os
import subprocess

from conftest import REPO

DOWN = REPO / "cluster" / "slurm-down.sh"
MARKER = "# written by clipbias cluster/slurm-up.sh"


def _down(tmp_path, conf):
    env = {
        **os.environ,
        "SLURM_CONF": str(conf),
        "CLIPBIAS_SLURM_STATE": str(tmp_path / "state"),
    }
    return subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, text=True, timeout=60)


def test_down_removes_the_slurm_conf_that_slurm_up_wrote(tmp_path):
    # A slurm.conf naming a stopped controller makes every squeue/sacct call (and so every
    # snakemake start, through the SLURM executor plugin) wait ~9 s for it.
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"{MARKER} -- regenerate with it, do not edit by hand.\nClusterName=x\n")
    res = _down(tmp_path, conf)
    assert res.returncode == 0, res.stderr
    assert not conf.exists()
    # idempotent: nothing to stop, nothing to remove
    assert _down(tmp_path, conf).returncode == 0


def test_down_keeps_a_slurm_conf_it_did_not_write(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=site\n")
    res = _down(tmp_path, conf)
    assert res.returncode == 0, res.stderr
    assert conf.read_text() == "ClusterName=site\n"
