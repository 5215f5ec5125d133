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
