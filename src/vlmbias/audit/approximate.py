"""Approximate retrieval (config `retrieval.method: approximate`): a faiss IVF or HNSW index, and its
recall against the exact top-k, measured in the same job on the same queries.

- `ivf`: `IndexIVFFlat` on inner product, `nlist` lists from spherical k-means trained on a seeded
  sample of at most 256 images per list (faiss's own cap, so faiss draws no further sample);
  `nprobe` lists searched per query. `nlist: null` = 4 sqrt(n), at most n / 39 (faiss wants 39
  training points per list).
- `hnsw`: `IndexHNSWFlat` on inner product, `m` links per node, `ef_construction`, `ef_search`.
  Built on one thread: faiss's parallel insertion makes the graph depend on thread timing.

Both are deterministic for a given seed. The returned neighbours are re-ordered by (-score, row)
like the exact path. Recall@k of a query = |approximate top-k & exact top-k| / min(k, n_images),
where the exact top-k is the one `retrieve.top_k` returns (ties at the cut kept by lowest row).
The index holds its own copy of the vectors (it is the index); they are added chunk by chunk from
the memory-mapped embeddings.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError

log = logging.getLogger(__name__)
DEFAULTS = {"index": "ivf", "nlist": None, "nprobe": 16, "m": 32, "ef_construction": 200, "ef_search": 128}
KEYS = {"ivf": {"index", "nlist", "nprobe"}, "hnsw": {"index", "m", "ef_construction", "ef_search"}}
TRAIN_PER_LIST = 256  # faiss's default max_points_per_centroid
MIN_PER_LIST = 39  # faiss's min_points_per_centroid


def check_spec(spec: dict | None) -> dict:
    """retrieval.approximate with defaults filled in; errors name the key."""
    spec = dict(spec or {})
    index = spec.get("index", DEFAULTS["index"])
    if index not in KEYS:
        raise VlmbiasError(f"retrieval.approximate.index must be one of {sorted(KEYS)}, got {index!r}")
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise VlmbiasError(f"retrieval.approximate has unknown key(s) {unknown} (known: {sorted(DEFAULTS)})")
    other = sorted(set(spec) - KEYS[index])
    if other:
        raise VlmbiasError(f"retrieval.approximate.{other[0]} does not apply to index {index!r} "
                           f"(its keys: {sorted(KEYS[index] - {'index'})})")
    spec = {**{k: v for k, v in DEFAULTS.items() if k in KEYS[index]}, **spec}
    for key in KEYS[index] - {"index"}:
        v = spec[key]
        if v is None and key == "nlist":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "m" else 1):
            raise VlmbiasError(f"retrieval.approximate.{key} must be an integer >= {2 if key == 'm' else 1}, got {v!r}")
    if index == "ivf" and spec["nlist"] is not None and spec["nprobe"] > spec["nlist"]:
        raise VlmbiasError(f"retrieval.approximate.nprobe ({spec['nprobe']}) exceeds nlist ({spec['nlist']}): "
                           "a query cannot probe more lists than the index has")
    return spec


def _nlist(spec: dict, n: int) -> int:
    if spec["nlist"] is None:
        return max(1, min(round(4 * math.sqrt(n)), n // MIN_PER_LIST))
    if spec["nlist"] > n:
        raise VlmbiasError(f"retrieval.approximate.nlist ({spec['nlist']}) exceeds the number of images ({n}); "
                           "k-means cannot make more lists than points")
    return spec["nlist"]


def build_index(images: np.ndarray, spec: dict, seed: int, chunk_rows: int):
    """A faiss index over `images` (a memory map is read chunk by chunk); (index, description)."""
    import faiss

    spec = check_spec(spec)
    n, d = images.shape
    if spec["index"] == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec["ef_construction"]
        index.hnsw.efSearch = spec["ef_search"]
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # parallel insertion is not deterministic
        try:
            for start in range(0, n, chunk_rows):
                index.add(np.ascontiguousarray(images[start:start + chunk_rows], np.float32))
        finally:
            faiss.omp_set_num_threads(threads)
        return index, (f"HNSW{spec['m']},Flat ef_construction={spec['ef_construction']} "
                       f"ef_search={spec['ef_search']}")
    nlist = _nlist(spec, n)
    nprobe = min(spec["nprobe"], nlist)
    if nprobe < spec["nprobe"]:
        log.info("nlist %d (4 sqrt(n), at most n/%d) is below nprobe %d: probing all %d lists",
                 nlist, MIN_PER_LIST, spec["nprobe"], nlist)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.spherical = True  # centroids on the unit sphere, like the embeddings
    rng = np.random.default_rng(seed)
    n_train = min(n, nlist * TRAIN_PER_LIST)
    sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
    index.train(np.ascontiguousarray(images[sample], np.float32))
    for start in range(0, n, chunk_rows):
        index.add(np.ascontiguousarray(images[start:start + chunk_rows], np.float32))
    index.nprobe = nprobe
    return index, f"IVF{nlist},Flat nprobe={nprobe} train={n_train} seed={seed}"


def search(index, queries: np.ndarray, k: int, description: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k from an approximate index, ordered by (-score, row); fewer than k found is an error."""
    scores, idx = index.search(np.ascontiguousarray(queries, np.float32), k)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):
        raise VlmbiasError(f"the approximate index ({description}) found fewer than {k} images for "
                           f"{len(short)} queries (first: query row {short[0]}); raise retrieval.approximate."
                           f"{'nprobe' if description.startswith('IVF') else 'ef_search'}")
    order = np.lexsort((idx, -scores), axis=-1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


def recall_table(approx_idx: np.ndarray, exact_idx: np.ndarray, query_ids, ks: list[int],
                 description: str) -> pd.DataFrame:
    """Recall@k per query: the share of the exact top-k that the approximate top-k found."""
    rows = []
    for k in sorted(set(ks)):
        kk = min(k, exact_idx.shape[1])
        for q, qid in enumerate(query_ids):
            found = len(np.intersect1d(approx_idx[q, :kk], exact_idx[q, :kk]))
            rows.append({"query_id": qid, "k": k, "n_exact": kk, "n_found": found, "recall": found / kk,
                         "index": description})
    return pd.DataFrame(rows, columns=["query_id", "k", "n_exact", "n_found", "recall", "index"])


def approximate_with_recall(images: np.ndarray, queries: np.ndarray, k: int, spec: dict, seed: int,
                            recall_ks: list[int], query_ids, chunk_rows: int,
                            exact_top_k: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]):
    """(scores, indices) from the approximate index, and its recall table against the exact top-k
    that `exact_top_k(images, queries, k)` returns (the caller's exact search, which also checks
    the shapes: `vlmbias.audit.retrieve.top_k`)."""
    _, exact = exact_top_k(images, queries, k)
    kk = exact.shape[1]
    bad = [r for r in recall_ks if r > k]
    if bad:
        raise VlmbiasError(f"recall asked at k {bad}, beyond the retrieved {k}")
    index, description = build_index(images, spec, seed, chunk_rows)
    scores, idx = search(index, queries, kk, description)
    recall = recall_table(idx, exact, query_ids, recall_ks, description)
    for r in sorted(set(recall_ks)):
        sel = recall[recall["k"] == r]["recall"]
        log.info("approximate %s: recall@%d mean %.4f, min %.4f over %d queries", description, r, sel.mean(),
                 sel.min(), len(sel))
    return scores, idx, recall
