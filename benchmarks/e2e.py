"""End to end: the default run's wall time, a rerun after changing only the queries, and sharded vs
unsharded image embedding on the world.

1. `snakemake --cores 2` on config.yaml in a fresh temporary directory (world generation, world
   model training, audit, calibration, mitigation, experiments). `--test-cuts` applies the same
   cuts as the default-run test (tests/test_workflow.py: acquire limit 40, LoRA / SANER /
   prompt-array max_steps 3), which is what "the default run takes ~7 min" refers to; without it
   the config runs as shipped (full LoRA epochs: much longer).
2. Only the queries change (one query removed from `world_controls`): a dry run lists the jobs
   Snakemake would rerun (no `embed_images` job may be among them), then the rerun is timed.
   Target (issue 12): under 30 s, no image re-embedding.
3. `embed.shard_size` (issue 12): when the config schema knows the key,
   the world's image embedding is run unsharded and with shards of --shard-size images, each in a
   copy of the finished run's world, timed, and the embeddings compared bitwise. Otherwise the
   section reports that the key is not in this checkout.

    python benchmarks/e2e.py --test-cuts       # ~7 min on an idle 2-core machine
    python benchmarks/e2e.py                   # the config as shipped
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
from _machine import footer, header  # noqa: E402

from vlmbias.testing import cut_default_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, timeout: int = 7200) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
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


def shard_key_known() -> bool:
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text(encoding="utf-8"))
    return "shard_size" in schema["properties"]["embed"].get("properties", {})


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
    ap.add_argument("--test-cuts", action="store_true", help="the default-run test's cuts (~7 min idle)")
    ap.add_argument("--keep", help="run in this folder and keep it")
    ap.add_argument("--shard-size", type=int, default=256, help="a multiple of embed.batch_size (128)")
    ap.add_argument("--from-run", help="a finished default run's folder (config.yaml, results, .snakemake): "
                                       "copied, and only parts 2 and 3 are measured on the copy")
    a = ap.parse_args()
    info = header("end to end (snakemake --cores 2, default config" + (", test cuts)" if a.test_cuts else ")"),
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
            wd.mkdir(exist_ok=True)
            config = default_config(a.test_cuts)
            write_config(wd, config)
            dt, run = snakemake(wd)
            n_jobs = sum(jobs_of(run.stdout + run.stderr).values())
            print(f"default run: {dt:.0f} s wall ({n_jobs} jobs)", flush=True)

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

        if shard_key_known():
            sharded(wd, config, a.shard_size, tmp)
        else:
            print("sharded vs unsharded: pending (embed.shard_size is not in this checkout's config schema)")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    footer(info)


if __name__ == "__main__":
    main()
