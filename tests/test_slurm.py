"""profiles/slurm on a real SLURM: a single-node cluster started here (tests/slurm_cluster.py) runs a
small audit submitted with `snakemake --profile profiles/slurm`; every job must be a SLURM job with
the resources its rule declares, and the metrics must equal a local run's byte for byte.

Skipped, with the reason, where SLURM is not installed and cannot be (not root, no apt-get);
.ci/run installs it, so CI runs it."""
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

import slurm_cluster

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TIMEOUT = 600  # seconds per snakemake run; then SIGINT to its process group (SIGTERM does not stop it)
# the jobs of the tiny audit (rule -> count) and what each rule asks SLURM for (workflow/rules/common.smk)
JOBS = {"dataset_manifest": 1, "embed_images": 1, "embed_queries": 2, "retrieve": 2, "metrics": 2, "figures": 2,
        "run_info": 1, "summary": 1}


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: float = TIMEOUT) -> tuple[str, float]:
    """Run the workflow in workdir; returns (its output, seconds). Fails the test on error or timeout."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(env or os.environ, HF_HUB_OFFLINE="1")
    # the jobs start `python -m snakemake` again inside each allocation: the same interpreter must come first
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    log = workdir / "snakemake.log"
    t0 = time.monotonic()
    rc, timed_out = slurm_cluster.run_with_sigint_timeout(cmd, workdir, env, timeout, log)
    seconds = time.monotonic() - t0
    out = log.read_text(errors="replace")
    assert not timed_out, f"snakemake stopped with SIGINT after {timeout} s:\n{out[-4000:]}"
    assert rc == 0, out[-4000:]
    return out, seconds


def project(tmp_path_factory, name: str, config: dict) -> Path:
    wd = tmp_path_factory.mktemp(name)
    (wd / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return wd


@pytest.fixture(scope="module")
def config(tiny_workflow_config):
    return tiny_workflow_config(threads=1)  # one CPU per job: two jobs at a time on a 2-core node


@pytest.fixture(scope="module")
def timings():
    found = {}
    yield found
    print("\nSLURM test timings (s):", json.dumps({k: round(v, 2) for k, v in found.items()}))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, timings):
    try:
        slurm_cluster.ensure_installed(verbose=False)
    except slurm_cluster.ClusterError as e:
        pytest.skip(f"SLURM is not available here: {e}")
    t0 = time.monotonic()
    handle = slurm_cluster.start_cluster(tmp_path_factory.mktemp("slurm"))  # stops what it started on failure
    timings["cluster_start"] = time.monotonic() - t0
    try:
        yield handle
    finally:
        t0 = time.monotonic()
        slurm_cluster.stop_cluster(handle)
        timings["cluster_stop"] = time.monotonic() - t0
        alive = {name: pid for name, pid in handle.pids.items() if slurm_cluster.pid_alive(pid)}
        assert not alive, f"daemons still running after stop: {alive}"


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, config, timings):
    wd = project(tmp_path_factory, "on_slurm", config)
    out, timings["slurm_run"] = snakemake(wd, "--profile", str(REPO / "profiles/slurm"), env=cluster.env)
    return wd, out


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, config, timings):
    wd = project(tmp_path_factory, "local", config)
    _, timings["local_run"] = snakemake(wd, "--profile", str(REPO / "profiles/local"), "--cores", "2")
    return wd


def slurm_jobs(workdir: Path) -> dict[str, list[int]]:
    """rule -> SLURM job ids, from the plugin's logs: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log"""
    jobs: dict[str, list[int]] = {}
    for log in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")):
        rule = next(p for p in log.relative_to(workdir).parts if p.startswith("rule_"))[len("rule_"):]
        jobs.setdefault(rule, []).append(int(log.stem))
    return jobs


def test_every_job_ran_as_a_slurm_job_with_its_rules_resources(slurm_run, cluster):
    wd, out = slurm_run
    jobs = slurm_jobs(wd)
    assert {rule: len(ids) for rule, ids in jobs.items()} == JOBS, out[-3000:]
    ids = [i for rule_ids in jobs.values() for i in rule_ids]
    assert len(set(ids)) == len(ids)
    submitted = [int(m) for m in re.findall(r"has been submitted with SLURM jobid (\d+)", out)]
    assert sorted(submitted) == sorted(ids), out[-3000:]
    for rule, rule_ids in jobs.items():
        for job_id in rule_ids:
            info = slurm_cluster.job_info(cluster, job_id)  # finished jobs stay known for MinJobAge=300 s
            assert info.get("JobState") == "COMPLETED", (rule, job_id, info)
            assert info["Partition"] == "main" and info["NumCPUs"] == "1", (rule, info)
            assert str(wd) in info["WorkDir"], info["WorkDir"]
    # what rule_resources declares reaches sbatch: embed_images asks for 8000 MB and 240 minutes
    embed = slurm_cluster.job_info(cluster, jobs["embed_images"][0])
    assert embed["MinMemoryNode"] == "8000M" and embed["TimeLimit"] == "04:00:00", embed
    assert slurm_cluster.job_info(cluster, jobs["run_info"][0])["MinMemoryNode"] == "1000M"
    # each job's own log holds the in-job snakemake run of its rule
    log = next((wd / ".snakemake" / "slurm_logs" / "rule_metrics").rglob("*.log")).read_text(errors="replace")
    assert "rule metrics:" in log and "1 of 1 steps (100%) done" in log, log[-2000:]


def test_slurm_results_equal_a_local_run(slurm_run, local_run):
    wd, _ = slurm_run
    res_slurm, res_local = wd / "results" / "smoke", local_run / "results" / "smoke"
    metrics = sorted(p.relative_to(res_local) for p in (res_local / "metrics").rglob("*.csv"))
    assert len(metrics) == 6  # classes, summary and confusion tables of two query sets
    assert sorted(p.relative_to(res_slurm) for p in (res_slurm / "metrics").rglob("*.csv")) == metrics
    differ = [str(p) for p in metrics if (res_slurm / p).read_bytes() != (res_local / p).read_bytes()]
    assert not differ, f"metrics differ between the SLURM and the local run: {differ}"
    figures = sorted(p.relative_to(res_local) for p in (res_local / "figures").rglob("*.png"))
    assert figures and sorted(p.relative_to(res_slurm) for p in (res_slurm / "figures").rglob("*.png")) == figures
    # rule logs stay where a local run puts them
    for rule in JOBS:
        assert list((res_slurm / "logs" / rule).glob("*.log")) or (res_slurm / "logs" / f"{rule}.log").is_file(), rule
