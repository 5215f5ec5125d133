"""The benchmark scripts' own helpers (not their timings): fast, known answers."""
import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_chunked_top_k_equals_full_sort(monkeypatch):
    """The 10M path (chunks of a memmap, per-chunk top-k, merge) returns the exact top-k."""
    r = _load("retrieve")
    monkeypatch.setattr(r, "CHUNK", 7)  # many chunks, a ragged last one
    rng = np.random.default_rng(0)
    images = rng.standard_normal((50, 8)).astype(np.float16)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    scores, idx = r._chunked(images, queries, 10)
    full = queries @ images.astype(np.float32).T
    np.testing.assert_array_equal(idx, np.argsort(-full, 1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-6)


def test_dry_run_job_table_parsed():
    e = _load("e2e")
    out = ("Building DAG of jobs...\nJob stats:\njob                count\n---------------  -------\n"
           "embed_queries          1\nretrieve               2\ntotal                  3\n\nReasons:\n  x 1\n")
    assert e.jobs_of(out) == {"embed_queries": 1, "retrieve": 2}


def test_critical_path_follows_the_dependency_that_finished_last():
    """Three jobs: c needs a's and b's outputs (b's via a file inside b's output directory); b ends
    later than a, so the path is b -> c, and c's wait for a core is counted from b's end."""
    cp = _load("_critical_path")
    log = """Select jobs to execute...
[Mon Dec  7 10:00:00 2026]
localrule a:
    output: out/a.txt
    jobid: 1
    resources: tmpdir=/tmp
[Mon Dec  7 10:00:00 2026]
rule b:
    output: out/bdir
    jobid: 2
    wildcards: x=1
    threads: 2
[Mon Dec  7 10:00:05 2026]
Finished jobid: 1 (Rule: a)
1 of 3 steps (33%) done
[Mon Dec  7 10:00:20 2026]
Finished jobid: 2 (Rule: b)
[Mon Dec  7 10:00:23 2026]
localcheckpoint c:
    input: out/a.txt, out/bdir/part.npy
    output: out/c.csv
    jobid: 3
[Mon Dec  7 10:00:30 2026]
Finished jobid: 3 (Rule: c)
"""
    jobs = cp.parse_log(log)
    assert {j: (v.rule, v.seconds) for j, v in jobs.items()} == {1: ("a", 5), 2: ("b", 20), 3: ("c", 7)}
    assert jobs[2].name == "b[x=1]"
    assert cp.dependencies(jobs) == {1: [], 2: [], 3: [1, 2]}
    path = cp.critical_path(jobs)
    assert [(j.rule, wait) for j, wait in path] == [("b", 0.0), ("c", 3.0)]
    text = cp.report(jobs)
    assert "wall 30 s" in text and "27 s running, 3 s waiting" in text
