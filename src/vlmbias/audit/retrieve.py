"""Text-to-image retrieval: cosine similarity of every query with every image, top-k kept.

Embeddings are L2-normalised, so cosine similarity is a dot product. The image embeddings are read
memory-mapped and scored `chunk_rows` rows at a time (numpy, or a faiss `IndexFlatIP` per chunk
for large image sets), the best k of each chunk merged into a running top-k: a job holds one chunk,
never the whole array. Both are exact; ties are broken by image row (also at the top-k cut), so
rankings are reproducible and equal across methods and chunk sizes. Scores are computed per chunk,
so past `CHUNK_ROWS` images they may differ from one whole-array product in the last bit (BLAS
picks its kernel by shape); up to that size they are that product's.

`approximate` searches a faiss IVF or HNSW index (vlmbias.audit.approximate) and measures its
recall against the exact top-k in the same job.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.io import check_embeddings, file_digest, parse_json_arg, provenance, read_table, run_cli, write_table

log = logging.getLogger(__name__)
CHUNK_ROWS = 65_536  # a multiple of faiss's 1024-row BLAS block, so faiss scores do not depend on chunking
METHODS = ("auto", "exact", "faiss", "approximate")


def _select(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best scores, ordered by (-score, row): a tie at the cut keeps the lowest rows."""
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    above = np.flatnonzero(scores > kth)
    cand = np.concatenate([above, np.flatnonzero(scores == kth)[:k - len(above)]])
    return cand[np.lexsort((cand, -scores[cand]))]


# Up to this many scores a chunk's cut is numpy's argpartition; beyond, torch.topk (multi-threaded).
# The two pick the same columns (ties at the cut are settled by `_select` either way); below it,
# importing torch would cost more than the cut (seconds per job, against milliseconds).
TORCH_TOPK_FROM = 1 << 21


def _select_rows(sims: np.ndarray, k: int) -> np.ndarray:
    """`_select`'s columns for every row of sims at once, in no order: argpartition or torch.topk
    picks k columns per row. Where a tie crosses the cut (more columns score the k-th value than
    were kept), the pick among them is arbitrary, so that row goes through `_select`."""
    if k == sims.shape[1]:
        idx = np.broadcast_to(np.arange(k), sims.shape)
        vals = sims
    elif sims.size < TORCH_TOPK_FROM:
        idx = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, sims.shape[1] - k:]
        vals = np.take_along_axis(sims, idx, 1)
    else:
        import torch

        vals, idx = (t.numpy() for t in torch.topk(torch.from_numpy(sims), k, dim=1, sorted=False))
    out = np.array(idx)  # in no order: merge_top_k orders by (-score, row)
    kth = vals.min(axis=1, keepdims=True)
    for r in np.flatnonzero((sims == kth).sum(1) > (vals == kth).sum(1)):
        out[r] = _select(sims[r], k)
    return out


def check_shapes(images: np.ndarray, queries: np.ndarray, k: int) -> int:
    """The k a search can return (at most every image); raises on unusable inputs."""
    if images.ndim != 2 or queries.ndim != 2 or images.shape[1] != queries.shape[1]:
        raise VlmbiasError(f"embedding shapes do not match: images {images.shape}, queries {queries.shape}")
    if k < 1:
        raise VlmbiasError(f"k must be at least 1, got {k}")
    if len(images) == 0:
        raise VlmbiasError("no image embeddings to search")
    return min(k, len(images))


def merge_top_k(best: tuple[np.ndarray, np.ndarray] | None, scores: np.ndarray, idx: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of a running top-k and a new chunk's, per query, ordered by (-score, row).

    The order is total (rows are unique), so the top k of a union is the top k of the parts' top ks."""
    if best is not None:
        scores, idx = np.concatenate([best[0], scores], axis=1), np.concatenate([best[1], idx], axis=1)
    order = np.lexsort((idx, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


def top_k(images: np.ndarray, queries: np.ndarray, k: int, method: str = "auto",
          chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, indices), each [n_queries, min(k, n_images)], best first, exact.

    `images` may be a read-only memory map (np.load(mmap_mode='r')): it is read `chunk_rows` rows
    at a time. Ties are broken by image row (the lower row ranks first, also at the top-k cut), so
    rankings are reproducible and identical across methods and chunk sizes when scores tie exactly."""
    k = check_shapes(images, queries, k)
    if chunk_rows < 1:
        raise VlmbiasError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if method == "auto":
        method = "exact"  # faster than faiss's flat index at every size measured (benchmarks/RESULTS.md)
    if method not in ("exact", "faiss"):
        raise VlmbiasError(f"unknown exact retrieval method {method!r}; expected exact, faiss or auto")
    q = np.ascontiguousarray(queries, np.float32)
    best = None
    for start in range(0, len(images), chunk_rows):
        chunk = np.ascontiguousarray(images[start:start + chunk_rows], np.float32)  # reads only this chunk
        kc = min(k, len(chunk))
        if method == "faiss":
            s, i = _faiss_top_k(chunk, q, kc)
        elif best is not None and best[0].shape[1] == k:
            s, i = _above(q @ chunk.T, best[0][:, -1:])
        else:
            sims = q @ chunk.T
            i = _select_rows(sims, kc)
            s = np.take_along_axis(sims, i, 1)
        best = merge_top_k(best, s, i + start, k)
    return best


def _above(sims: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns scoring at least `floor` (the running k-th best: nothing below it can
    enter the top k), padded to one width with -inf scores, which sort last. After the first chunks
    few columns pass, so most chunks cost one comparison instead of a top-k search."""
    rows, cols = np.nonzero(sims >= floor)
    pos = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position within its row
    width = int(pos.max()) + 1 if len(pos) else 1
    scores = np.full((len(sims), width), -np.inf, np.float32)
    idx = np.full((len(sims), width), np.iinfo(np.int64).max // 2, np.int64)
    scores[rows, pos], idx[rows, pos] = sims[rows, cols], cols
    return scores, idx


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
    p.add_argument("--images-npy", required=True, help="read memory-mapped, chunk by chunk")
    p.add_argument("--images-table", required=True)
    p.add_argument("--queries-npy", required=True)
    p.add_argument("--queries-table", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--k", type=int, required=True, help="the largest k any metric uses")
    p.add_argument("--method", default="auto", choices=METHODS)
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="image rows scored at once")
    p.add_argument("--approximate-json", default="{}", help="retrieval.approximate as JSON (method approximate)")
    p.add_argument("--seed", type=int, default=0, help="seeds the approximate index's training sample")
    p.add_argument("--recall-k", type=int, nargs="*", default=[], help="the ks recall is reported at "
                   "(retrieval.k); method approximate")
    p.add_argument("--out-recall", help="recall of the approximate top-k against the exact one (method approximate)")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--query-set", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    # every input checked against the others before anything is ranked (io.check_embeddings)
    images, image_rows, image_meta = check_embeddings(a.images_npy, a.images_table, "embed_images",
                                                      manifest=a.manifest, chunk_rows=a.chunk_rows)
    queries, query_rows, _ = check_embeddings(a.queries_npy, a.queries_table, "embed_queries", mmap=False)
    manifest = read_table(a.manifest, made_by="dataset_manifest")
    missing = sorted(set(image_rows["image_id"]) - set(manifest["image_id"]))
    if missing:
        raise VlmbiasError(f"{a.images_table} lists {len(missing)} image(s) that {a.manifest} does not, e.g. "
                           f"{missing[0]}; delete the embeddings and run snakemake again (rule embed_images)")
    if a.k > len(images):  # the metrics flag these rows too (flags column k_above_images)
        log.warning("k %d is more than the %d images embedded: each query's rankings hold all %d", a.k,
                    len(images), len(images))
    recall = None
    if a.method == "approximate":
        from vlmbias.audit.approximate import approximate_with_recall

        if not a.out_recall:
            raise VlmbiasError("method approximate writes its recall table: give --out-recall")
        scores, idx, recall = approximate_with_recall(
            images, queries, a.k, parse_json_arg(a.approximate_json, "--approximate-json"), a.seed,
            a.recall_k or [a.k], query_rows["query_id"], a.chunk_rows,
            lambda im, q, k: top_k(im, q, k, "auto", a.chunk_rows))
    else:
        scores, idx = top_k(images, queries, a.k, a.method, a.chunk_rows)
    table = rankings_table(scores, idx, image_rows, query_rows, manifest, a.model, a.dataset, a.query_set)
    if recall is not None:
        write_table(recall, a.out_recall)
    # what the rankings were made from: a reader can tell they belong to these embeddings
    inputs = {"images": (image_meta.get("npy") or {}).get("digest") or file_digest(a.images_npy),
              "queries": file_digest(a.queries_npy), "manifest": file_digest(a.manifest)}
    write_table(table, a.out, meta=provenance(len(table), inputs, k=int(idx.shape[1]), k_asked=a.k,
                                              n_images=len(images)))
    log.info("retrieved top-%d for %d queries (%s)", idx.shape[1], idx.shape[0], a.method)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
