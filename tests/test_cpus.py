"""`--cores` on a local run never means more CPUs than the machine has."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlmbias.cpus import local_cores, usable_cpus

REPO = Path(__file__).resolve().parents[1]


def test_local_cores_caps_at_the_machine():
    assert local_cores(8, available=2) == 2
    assert local_cores(1, available=2) == 1
    assert local_cores(None, available=2) is None  # a dry run without --cores


def test_a_cgroup_quota_limits_the_usable_cpus(tmp_path):
    affinity = usable_cpus(tmp_path / "absent")
    assert affinity >= 1
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs: rounded up
    assert usable_cpus(quota) == min(affinity, 2)
    quota.write_text("max 100000\n")
    assert usable_cpus(quota) == affinity


@pytest.mark.slow
def test_cores_beyond_the_machine_are_capped_with_the_threads_of_every_job(tmp_path, tiny_workflow_config):
    """Without the cap Snakemake would plan 64-thread jobs on this machine."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_workflow_config(threads=64)))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "64", "-n"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    n = usable_cpus()
    assert f"--cores 64: this machine has {n} usable CPU(s); scheduling jobs on {n}" in out
    threads = [int(t) for t in re.findall(r"^\s+threads: (\d+)$", out, re.M)]
    assert threads and max(threads) == n
