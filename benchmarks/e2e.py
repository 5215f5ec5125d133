"""End to end: the default run's wall time and critical path, a rerun after changing only the queries,
and sharded vs unsharded image embedding on the world.

1. `snakemake --cores N` on config.yaml from an empty folder, for each N of `--cores` (default 2
   and 8: on a 2-core machine the workflow caps 8 at the CPUs it has, so both should take the same
   time). Each run prints its critical path: the chain of jobs that set the wall time, each job's
   seconds, its wait for a free core and its share of the wall (`_critical_path.py`, read from
   Snakemake's log). `--test-cuts` applies the default-run test's cuts (`vlmbias.testing.cut_default_run`).
2. Only the queries change (one query removed from `world_controls`): a dry run lists the jobs
   Snakemake would rerun (no `embed_images` job may be among them), then the rerun is timed.
   Target: under 30 s, no image re-embedding.
3. The world's image embedding unsharded and with shards of --shard-size images, each in a copy of
   the finished run's world, timed, and the embeddings compared bitwise.

    python benchmarks/e2e.py                   # the config as shipped, --cores 2 then --cores 8
    python benchmarks/e2e.py --cores 2         # one run
    python benchmarks/e2e.py --keep DIR        # run in DIR and keep it
    python benchmarks/e2e.py --from-run DIR    # parts 2-3 only, on a copy of a finished default run
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _critical_path import parse_log, report as critical_path_report  # noqa: E402
from _machine import footer, header  # noqa: E402

from vlmbias.testing import cut_default_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, cores: int = 2, timeout: int = 7200) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", str(cores), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # its own group: every job it started ends too
            out, err = proc.communicate()
    dt = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    return dt, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def jobs_of(dry_run_output: str) -> dict[str, int]:
    """rule -> count from a dry run's job-stats table."""
    jobs, table = {}, False
    for line in dry_run_output.splitlines():
        if line.strip().startswith("job") and "count" in line:
            table = True
            continue
        m = re.match(r"^\s*([A-Za-z_][\w]*)\s+(\d+)\s*$", line) if table else None
        if m and m.group(1) == "total":
            break  # the table ends here
        if m:
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def default_config(test_cuts: bool) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    return cut_default_run(config) if test_cuts else config  # exactly the default-run test's cuts


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


def sharded(workdir: Path, config: dict, shard_size: int, tmp: Path) -> None:
    res = Path(config.get("results_dir", "results")) / config["run_name"]
    target = res / "embeddings" / config["calibration"]["dataset"] / "world-clip" / "images.npy"
    outs = {}
    for size in (0, shard_size):
        wd = tmp / f"shard{size}"
        wd.mkdir()
        # the finished run's world (data and model), mtimes kept, so only the embedding runs
        shutil.copytree(workdir / res / "world", wd / res / "world", copy_function=shutil.copy2)
        write_config(wd, {**config, "embed": {**config["embed"], "shard_size": size}})
        dt, _ = snakemake(wd, str(target))
        outs[size] = np.load(wd / target, allow_pickle=False)
        print(f"embed_images, shard_size {size or 'unset (one shard)'}: {dt:.1f} s (snakemake wall, "
              f"{len(outs[size])} images)", flush=True)
    same = outs[0].shape == outs[shard_size].shape and np.array_equal(outs[0], outs[shard_size])
    print(f"sharded == unsharded bitwise: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-cuts", action="store_true", help="the default-run test's cuts")
    ap.add_argument("--keep", help="run in this folder and keep it")
    ap.add_argument("--cores", type=lambda v: [int(c) for c in v.split(",")], default=[2, 8],
                    help="--cores of the default runs, each from an empty folder (default 2,8)")
    ap.add_argument("--shard-size", type=int, default=256, help="a multiple of embed.batch_size (128)")
    ap.add_argument("--from-run", help="a finished default run's folder (config.yaml, results, .snakemake): "
                                       "copied, and only parts 2 and 3 are measured on the copy")
    a = ap.parse_args()
    info = header(f"end to end (snakemake --cores {','.join(map(str, a.cores))}, default config"
                  + (", test cuts)" if a.test_cuts else ")"),
                  ceiling=True)
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="vlmbias-e2e-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        wd = tmp / "run"
        if a.from_run:
            shutil.copytree(a.from_run, wd, symlinks=True, copy_function=shutil.copy2)  # mtimes kept
            config = yaml.safe_load((wd / "config.yaml").read_text(encoding="utf-8"))
            _, dry = snakemake(wd, "-n")
            print(f"reusing the finished run {a.from_run}; jobs pending before any change: "
                  f"{jobs_of(dry.stdout + dry.stderr) or 'none'}")
        else:
            config = default_config(a.test_cuts)
            for cores in a.cores:  # each from an empty folder; the first one's run is reused below
                run_dir = wd if cores == a.cores[0] else tmp / f"run-cores{cores}"
                run_dir.mkdir(exist_ok=True)
                write_config(run_dir, config)
                load = os.getloadavg()[0]
                dt, run = snakemake(run_dir, cores=cores)
                log = run.stdout + run.stderr
                print(f"\ndefault run, --cores {cores}: {dt:.0f} s wall ({sum(jobs_of(log).values())} jobs; "
                      f"load {load:.2f} at start, {os.getloadavg()[0]:.2f} at end)", flush=True)
                print(critical_path_report(parse_log(log)), flush=True)

        q = config["query_sets"]["world_controls"]["queries"]
        config["query_sets"]["world_controls"]["queries"] = q[:-1]  # drop one query: only the queries change
        write_config(wd, config)
        _, dry = snakemake(wd, "-n")
        jobs = jobs_of(dry.stdout + dry.stderr)
        print(f"after changing only world_controls' queries, snakemake reruns: "
              f"{', '.join(f'{k} x{v}' for k, v in sorted(jobs.items()))}")
        print(f"image embedding rerun: {'YES' if 'embed_images' in jobs else 'no'}")
        dt, _ = snakemake(wd)
        print(f"rerun after changing only the queries: {dt:.1f} s wall (target < 30 s: "
              f"{'met' if dt < 30 else 'NOT met'})", flush=True)

        sharded(wd, config, a.shard_size, tmp)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    footer(info)


if __name__ == "__main__":
    main()
