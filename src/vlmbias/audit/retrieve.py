"""Exact text-to-image retrieval: cosine similarity of every query with every image, top-k kept.

Embeddings are L2-normalised, so cosine similarity is a dot product: one matrix product for all
queries (numpy), or a faiss `IndexFlatIP` for large image sets. Both are exact; ties are broken by
image row (also at the top-k cut) so that rankings are reproducible and equal across methods.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.io import read_npy, read_table, run_cli, write_table

log = logging.getLogger(__name__)
FAISS_MIN_IMAGES = 50_000


def _select(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best scores, ordered by (-score, row): a tie at the cut keeps the lowest rows."""
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    above = np.flatnonzero(scores > kth)
    cand = np.concatenate([above, np.flatnonzero(scores == kth)[:k - len(above)]])
    return cand[np.lexsort((cand, -scores[cand]))]


def top_k(images: np.ndarray, queries: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, indices), each [n_queries, min(k, n_images)], best first.

    Both methods are exact and break ties by image row (the lower row ranks first, also at the
    top-k cut), so rankings are reproducible and identical across methods when scores tie exactly."""
    if images.ndim != 2 or queries.ndim != 2 or images.shape[1] != queries.shape[1]:
        raise VlmbiasError(f"embedding shapes do not match: images {images.shape}, queries {queries.shape}")
    if k < 1:
        raise VlmbiasError(f"k must be at least 1, got {k}")
    if len(images) == 0:
        raise VlmbiasError("no image embeddings to search")
    k = min(k, len(images))
    if method == "auto":
        method = "faiss" if len(images) >= FAISS_MIN_IMAGES else "exact"
    if method == "faiss":
        return _faiss_top_k(np.ascontiguousarray(images, np.float32), np.ascontiguousarray(queries, np.float32), k)
    if method != "exact":
        raise VlmbiasError(f"unknown retrieval method {method!r}; expected exact, faiss or auto")
    sims = queries.astype(np.float32) @ images.astype(np.float32).T
    idx = np.stack([_select(row, k) for row in sims])
    return np.take_along_axis(sims, idx, 1), idx


def _faiss_top_k(images: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(images.shape[1])
    index.add(images)
    n = len(images)
    # one extra neighbour tells whether a tie crosses the cut; faiss orders ties arbitrarily
    scores, idx = index.search(queries, min(k + 1, n))
    out_s, out_i = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
    for q in range(len(queries)):
        s, i = scores[q], idx[q]
        if len(s) > k and s[k] == s[k - 1]:  # every row scoring >= the cut value, then the row rule
            lims, d, ids = index.range_search(queries[q:q + 1], float(np.nextafter(s[k - 1], -np.inf)))
            s, i = d[lims[0]:lims[1]], ids[lims[0]:lims[1]]
        full = np.full(n, -np.inf, np.float32)
        full[i] = s
        sel = _select(full, k)
        out_s[q], out_i[q] = full[sel], sel
    return out_s, out_i


def rankings_table(scores: np.ndarray, idx: np.ndarray, image_rows: pd.DataFrame, queries: pd.DataFrame,
                   manifest: pd.DataFrame, model: str, dataset: str, query_set: str) -> pd.DataFrame:
    """One row per (query, rank) with the image's labels attached (docs/artifacts.md, Rankings)."""
    n_q, k = idx.shape
    qrep = queries.loc[queries.index.repeat(k)].reset_index(drop=True)
    image_ids = image_rows["image_id"].to_numpy()[idx.ravel()]
    labels = manifest.drop(columns=["path"]).set_index("image_id").loc[image_ids].reset_index(drop=True)
    out = pd.DataFrame({
        "model": model, "dataset": dataset, "query_set": query_set,
        "query_id": qrep["query_id"], "query": qrep["query"], "lang": qrep["lang"], "concept": qrep["concept"],
        "names_attribute": qrep["names_attribute"], "names_class": qrep["names_class"],
        "rank": np.tile(np.arange(1, k + 1), n_q), "image_id": image_ids, "score": scores.ravel().astype(np.float32),
    })
    return pd.concat([out, labels], axis=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.retrieve", description="Top-k retrieval for a query set.")
    p.add_argument("--images-npy", required=True)
    p.add_argument("--images-table", required=True)
    p.add_argument("--queries-npy", required=True)
    p.add_argument("--queries-table", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--k", type=int, required=True, help="the largest k any metric uses")
    p.add_argument("--method", default="auto")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--query-set", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    scores, idx = top_k(read_npy(a.images_npy), read_npy(a.queries_npy), a.k, a.method)
    table = rankings_table(scores, idx, read_table(a.images_table), read_table(a.queries_table),
                           read_table(a.manifest), a.model, a.dataset, a.query_set)
    write_table(table, a.out)
    log.info("retrieved top-%d for %d queries", idx.shape[1], idx.shape[0])


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
