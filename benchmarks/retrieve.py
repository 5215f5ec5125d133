"""Retrieval cost by image count: exact (the pipeline's own `vlmbias.audit.retrieve.top_k`, plain
numpy and torch), faiss flat, and an approximate faiss IVF index with its recall against exact.

Synthetic L2-normalised embeddings (dim 512) clustered around 1,000 random centres (cosine to the
centre ~0.7; real CLIP embeddings are clustered too, and uniform random vectors would make any
approximate index look worse than it is), 100 queries drawn the same way, top-1000. Each
(method, N) runs in its own subprocess so its peak resident memory (ru_maxrss: counts numpy and
faiss buffers, which tracemalloc does not) is its own; `data MB` is the resident size (VmRSS) right
after the embeddings were loaded, so `peak - data` is what the method itself needs (plus any
transient of the load).

10M x 512 fp32 is 20 GB: more than this 24 GiB machine can hold beside the work. It is stored as a
float16 memmap on disk (10 GB) and searched in chunks of 1M rows (torch matmul + topk per chunk,
then a merge): only this chunked path is run at 10M here (the pipeline's `top_k` reads float32
memory maps; a 10M float32 file is 20 GB of disk).

    python benchmarks/retrieve.py                # 10k, 100k, 1M (a few minutes)
    python benchmarks/retrieve.py --full         # also 10M (chunked exact; ~10 GB on disk in --tmp)
    python benchmarks/retrieve.py --quick        # 10k, 30k: smoke run

Target: 1M images x 100 queries, top-1000, exact, under 2 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import footer, header, peak_rss_mb, rss_mb  # noqa: E402

DIM, N_QUERIES, K, CENTRES = 512, 100, 1000, 1000
CHUNK = 1_000_000
METHODS = ("pipeline exact", "pipeline faiss", "numpy matmul+argpartition", "torch matmul+topk", "faiss flat",
           "faiss IVF", "chunked torch (memmap fp16)")


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, DIM), dtype=np.float32) * (1 / DIM ** .5)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(folder: Path, n: int, fp16: bool) -> tuple[Path, Path]:
    """images_{n}.npy (float32, or float16 for the memmap case) and queries.npy, in chunks, seeded."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    q = folder / "queries.npy"
    if not q.exists():
        np.save(q, _clustered(np.random.default_rng(1), centres, N_QUERIES))
    path = folder / f"images_{n}{'_fp16' if fp16 else ''}.npy"
    if not path.exists():
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16 if fp16 else np.float32, shape=(n, DIM))
        for s in range(0, n, 250_000):  # a seed per chunk: the same rows whatever N is
            m = min(250_000, n - s)
            out[s:s + m] = _clustered(np.random.default_rng(1000 + s // 250_000), centres, m)
        out.flush()
        del out
    return path, q


def _torch_topk(images, queries, k):
    import torch

    s, i = torch.topk(torch.from_numpy(queries) @ torch.from_numpy(images).T, k, dim=1)
    return s.numpy(), i.numpy()


def _chunked(images, queries, k):
    """Exact top-k over a (memory-mapped) array read CHUNK rows at a time: [q, k] kept per chunk."""
    import torch

    q = torch.from_numpy(queries)
    best_s = torch.full((len(queries), 0), -np.inf)
    best_i = torch.zeros((len(queries), 0), dtype=torch.int64)
    for s in range(0, len(images), CHUNK):
        x = torch.from_numpy(np.asarray(images[s:s + CHUNK], dtype=np.float32))
        cs, ci = torch.topk(q @ x.T, min(k, len(x)), dim=1)
        best_s, pos = torch.topk(torch.cat([best_s, cs], 1), min(k, best_s.shape[1] + cs.shape[1]), dim=1)
        best_i = torch.gather(torch.cat([best_i, ci + s], 1), 1, pos)
    return best_s.numpy(), best_i.numpy()


def run_case(method: str, images_path: str, queries_path: str, nprobe: int) -> dict:
    """In the child process: load, run one method, report time, memory and (IVF) recall."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    mmap = "memmap" in method
    images = np.load(images_path, mmap_mode="r" if mmap else None)
    queries = np.load(queries_path)
    data_mb = rss_mb()  # resident after loading: interpreter, numpy, torch (~0.6 GB) and the array
    out = {"method": method, "n": len(images), "data_mb": data_mb, "build_s": 0.0}
    import faiss  # noqa: F401  (imports before the clock starts)

    from vlmbias.audit.retrieve import top_k
    t = time.perf_counter()
    if method == "pipeline exact":
        _, idx = top_k(images, queries, K, method="exact")
    elif method == "pipeline faiss":
        _, idx = top_k(images, queries, K, method="faiss")
    elif method == "numpy matmul+argpartition":
        sims = queries @ images.T
        part = np.argpartition(-sims, K - 1, axis=1)[:, :K]
        idx = np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, 1), 1), 1)
    elif method == "torch matmul+topk":
        _, idx = _torch_topk(images, queries, K)
    elif method == "chunked torch (memmap fp16)":
        _, idx = _chunked(images, queries, K)
    elif method == "faiss flat":
        index = faiss.IndexFlatIP(DIM)
        index.add(images)
        out["build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _, idx = index.search(queries, K)
    elif method == "faiss IVF":
        nlist = int(4 * math.sqrt(len(images)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = images[np.sort(rng.choice(len(images), min(len(images), 40 * nlist), replace=False))]
        index.train(sample)
        index.add(images)
        index.nprobe = nprobe
        out.update(build_s=time.perf_counter() - t, nlist=nlist, nprobe=nprobe)
        t = time.perf_counter()
        _, idx = index.search(queries, K)
    else:
        raise SystemExit(f"unknown method {method}")
    out["search_s"] = time.perf_counter() - t
    out["peak_mb"] = peak_rss_mb()
    if method == "faiss IVF":  # recall@K against exact (computed after the timing)
        exact = _chunked(images, queries, K)[1]
        out["recall"] = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(idx, exact)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated image counts (default 10000,100000,1000000)")
    ap.add_argument("--full", action="store_true", help="add 10M (chunked exact over a float16 memmap)")
    ap.add_argument("--quick", action="store_true", help="10k and 30k only")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--tmp", default=None, help="folder for the generated embeddings (kept if given)")
    ap.add_argument("--case", nargs=3, metavar=("METHOD", "IMAGES", "QUERIES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case[0], a.case[1], a.case[2], a.nprobe)))
        return
    sizes = ([10_000, 30_000] if a.quick else [int(s) for s in a.sizes.split(",")] if a.sizes
             else [10_000, 100_000, 1_000_000])
    if a.full and 10_000_000 not in sizes:
        sizes.append(10_000_000)
    info = header(f"retrieval: {N_QUERIES} queries, top-{K}, dim {DIM}", ceiling=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        folder = Path(a.tmp or tmp)
        for n in sizes:
            big = n * DIM * 4 > 8e9  # float32 copy would not fit beside the work on this machine
            t = time.perf_counter()
            images, queries = make_data(folder, n, fp16=big)
            print(f"\n-- N = {n:,} ({'float16 memmap' if big else 'float32'}; data made in "
                  f"{time.perf_counter() - t:.0f} s)", flush=True)
            methods = ["chunked torch (memmap fp16)"] if big else [m for m in METHODS if "memmap" not in m]
            if a.methods:
                methods = [m for m in methods if m in a.methods.split(",")]
            for m in methods:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
                p = subprocess.run([sys.executable, __file__, "--nprobe", str(a.nprobe), "--case", m, str(images),
                                    str(queries)], capture_output=True, text=True, env=env)
                if p.returncode:
                    print(f"{m:30s} failed: {(p.stderr.strip().splitlines() or ['?'])[-1][:150]}")
                    continue
                r = json.loads(p.stdout.strip().splitlines()[-1])
                r["gflops"] = 2 * n * DIM * N_QUERIES / r["search_s"] / 1e9
                r["ceiling_frac"] = r["gflops"] / info["ceiling"]["fp32"]
                rows.append(r)
                extra = f"; build {r['build_s']:.2f} s" if r["build_s"] else ""
                if "recall" in r:
                    extra += f"; nlist {r['nlist']}, nprobe {r['nprobe']}: recall@{K} {r['recall']:.3f}"
                rate = ("" if m == "faiss IVF" else  # IVF does not do the exact FLOPs: no rate
                        f" ({r['gflops']:5.1f} GFLOP/s, {r['ceiling_frac']:4.0%} of fp32 ceiling)")
                print(f"{m:30s} search {r['search_s']:7.3f} s{rate}; peak {r['peak_mb']:7.0f} MB "
                      f"(data {r['data_mb']:6.0f} MB){extra}", flush=True)
            if big:
                Path(images).unlink()
    print("\ngrowth with N (least-squares slope of log search time on log N):")
    for m in METHODS:
        pts = [(r["n"], r["search_s"]) for r in rows if r["method"] == m]
        if len(pts) >= 2:
            slope = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0]
            print(f"  {m:30s} time ~ N^{slope:.2f} over N = {', '.join(f'{p[0]:,}' for p in pts)}")
    one_m = [r for r in rows if r["n"] == 1_000_000 and r["method"] in ("pipeline exact", "pipeline faiss",
                                                                         "torch matmul+topk", "faiss flat")]
    for r in one_m:
        print(f"target 1M exact < 2 s: {r['method']}: {r['search_s']:.2f} s -> "
              f"{'met' if r['search_s'] < 2 else 'NOT met'}")
    footer(info)


if __name__ == "__main__":
    main()
