"""Exact text-to-image retrieval: cosine similarity of every query with every image, top-k kept.

Embeddings are L2-normalised, so cosine similarity is a dot product: one matrix product for all
queries (numpy), or a faiss `IndexFlatIP` for large image sets. Both are exact; ties are broken by
image row so that rankings are reproducible.
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


def top_k(images: np.ndarray, queries: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, indices), each [n_queries, min(k, n_images)], best first."""
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
        import faiss

        index = faiss.IndexFlatIP(images.shape[1])
        index.add(np.ascontiguousarray(images, np.float32))
        scores, idx = index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, idx
    if method != "exact":
        raise VlmbiasError(f"unknown retrieval method {method!r}; expected exact, faiss or auto")
    sims = queries.astype(np.float32) @ images.astype(np.float32).T
    # argpartition narrows to the top k, then a stable sort on (-score, row) orders them
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(sims.shape[1]), (len(sims), 1))
    part.sort(axis=1)
    part_scores = np.take_along_axis(sims, part, 1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    return np.take_along_axis(sims, idx, 1), idx


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
