"""Embedding-stage benchmark: the pipeline against the thesis' loop, on the same model and images.

The thesis embedded one image at a time in fp32 and ranked with a per-image numpy cosine loop.
The pipeline batches, decodes in DataLoader workers, runs under inference_mode (fp32 or bf16) and
ranks all queries with one matrix product. This prints images/second of each, their ratio, and
how well bf16 rankings agree with fp32 (top-k overlap).

    python benchmarks/embed.py                       # ViT-B-32, random weights (offline)
    python benchmarks/embed.py --pretrained openai   # real weights, if they can be loaded
    python benchmarks/embed.py --hf results/world/world/models/clip --dataset results/world/world/data/fairface

Random weights give nearly equal similarities to every image, so bf16 rounding reorders them
freely: the bf16 agreement is only meaningful with trained weights (the second and third forms).

Targets (2-core CPU, ViT-B-32): pipeline bf16 >= 5x the thesis loop; top-20 overlap >= 0.95.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlmbias.audit.data import build_manifest
from vlmbias.audit.embed import embed_image_files
from vlmbias.audit.models import load_encoder
from vlmbias.audit.retrieve import top_k
from vlmbias.imagegate import open_image
from vlmbias.testing import make_fairface_folder

QUERIES = ["a doctor", "a nurse", "a teacher", "a scientist", "a software engineer", "a construction worker",
           "a police officer", "a domestic worker"]


def thesis_loop(encoder, paths, queries_emb, k):
    """One image at a time, fp32, then a Python loop of numpy cosine similarities per query."""
    feats = []
    with torch.no_grad():
        for p in paths:
            x = encoder.preprocess(open_image(p))[None]
            feats.append(encoder.encode_images(x)[0])
    ranked = []
    for q in queries_emb:
        sims = [float(np.dot(q, f) / (np.linalg.norm(q) * np.linalg.norm(f))) for f in feats]
        ranked.append(np.argsort(sims)[::-1][:k])
    return np.stack(feats), np.stack(ranked)


def pipeline(encoder, paths, queries_emb, k, batch_size, workers):
    emb, _, bad = embed_image_files(encoder, paths, batch_size, workers, progress=False)
    assert not bad, bad
    return emb, top_k(emb, queries_emb, k)[1]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--images", type=int, default=280, help="number of generated images (multiple of 14)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hf", help="a transformers CLIPModel directory or id instead of open_clip --model")
    ap.add_argument("--dataset", help="a FairFace-layout folder instead of generated images")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.dataset or make_fairface_folder(Path(tmp), per_cell=max(1, a.images // 14), size=96)
        paths = build_manifest({"type": "fairface", "root": str(root)})[0]["path"].tolist()[: a.images]
        spec = ({"backend": "hf", "name": a.hf} if a.hf else
                {"backend": "open_clip", "name": a.model, "pretrained": a.pretrained})
        fp32 = load_encoder(spec, a.device, "fp32")
        q = fp32.encode_texts(QUERIES)
        print(f"model {a.hf or f'{a.model}:{a.pretrained}'}, {len(paths)} images, {len(QUERIES)} queries, "
              f"{torch.get_num_threads()} threads, device {a.device}")

        t = time.perf_counter()
        thesis_emb, thesis_rank = thesis_loop(fp32, paths, q, a.k)
        t_thesis = time.perf_counter() - t
        print(f"thesis loop (1 image/step, fp32, numpy loop): {len(paths) / t_thesis:8.1f} img/s")

        results = {}
        for precision in ("fp32", "bf16"):
            enc = fp32 if precision == "fp32" else load_encoder(spec, a.device, "bf16")
            t = time.perf_counter()
            emb, rank = pipeline(enc, paths, q, a.k, a.batch_size, a.workers)
            dt = time.perf_counter() - t
            results[precision] = (emb, rank)
            print(f"pipeline {precision}: {len(paths) / dt:8.1f} img/s   speed-up vs thesis loop: {t_thesis / dt:5.2f}x")
        same = np.abs(results["fp32"][0] - thesis_emb).max()
        print(f"pipeline fp32 vs thesis embeddings: max abs difference {same:.2e}; "
              f"top-{a.k} overlap {overlap(results['fp32'][1], thesis_rank):.3f}")
        print(f"bf16 vs fp32 top-{a.k} overlap: {overlap(results['bf16'][1], results['fp32'][1]):.3f} "
              f"(target >= 0.95)")


if __name__ == "__main__":
    main()
