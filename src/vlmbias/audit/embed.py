"""Embedding stages: every image once per (dataset, model); queries per (model, query set).

Images are decoded in DataLoader workers and encoded in batches under `torch.inference_mode`.
An image that cannot be decoded, or that the image gate refuses (`vlmbias.imagegate`, more than
`images.max_pixels` pixels), is skipped and listed with the reason; the stage fails, writing
nothing, when the skipped fraction exceeds `max_bad_fraction`.
"""
from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlmbias.audit.queries import expand_query_set, strip_article
from vlmbias.audit.shards import check_bad_fraction, shard_rows
from vlmbias.encoders.models import Encoder, load_encoder
from vlmbias.encoders.transforms import apply_text_transforms
from vlmbias.imagegate import DEFAULT_MAX_PIXELS, check_limit, crop_to, open_image
from vlmbias import VlmbiasError
from vlmbias.io import file_digest, parse_json_arg, provenance, read_table, run_cli, text_digest, write_npy, write_table

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], preprocess, max_pixels: int, crops: list | None = None):
        self.paths, self.preprocess, self.max_pixels = paths, preprocess, max_pixels
        self.crops = crops

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = open_image(self.paths[i], self.max_pixels)
            if self.crops is not None:  # one person of a photo (the manifest's `crop`)
                img = crop_to(img, self.crops[i])
            return i, self.preprocess(img), ""
        except Exception as e:  # any decode failure is reported per image, never fatal here
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, r) for i, x, r in items if x is None]
    idx = [i for i, _ in ok]
    return idx, (torch.stack([x for _, x in ok]) if ok else None), bad


def embed_image_files(encoder: Encoder, paths: list[str], batch_size: int = 64, num_workers: int = 2,
                      progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, crops: list | None = None
                      ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Encode images; returns (embeddings of the readable ones, their indices into paths, [(index, reason)]).
    `crops`: per path an `x,y,width,height` box (or None) to encode instead of the whole image."""
    check_limit(max_pixels)  # a bad limit is one config error, not every image skipped
    files = _ImageFiles(paths, encoder.preprocess, max_pixels, crops)
    loader = torch.utils.data.DataLoader(files, batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate, shuffle=False)
    chunks, kept, bad = [], [], []
    for idx, pixels, failed in tqdm(loader, desc="embed images", unit="batch", disable=not progress):
        bad.extend(failed)
        if pixels is not None:
            chunks.append(check_finite(encoder.encode_images(pixels), [paths[i] for i in idx], "image"))
            kept.extend(idx)
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return emb, kept, bad


def check_finite(emb: np.ndarray, names: list[str], what: str) -> np.ndarray:
    """`emb` unchanged when every value is finite; else the encoder failed on these inputs (a broken
    checkpoint, fp16 overflow): refuse at the source, naming them, rather than rank NaN scores."""
    bad = np.flatnonzero(~np.isfinite(emb).reshape(len(emb), -1).all(axis=1))
    if len(bad):
        shown = ", ".join(str(names[i]) for i in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise VlmbiasError(f"the encoder returned non-finite values (NaN or inf) for {len(bad)} {what}(s): {shown}; "
                           "check the model's weights and precision (fp16 can overflow)")
    return emb


def embed_images(manifest: pd.DataFrame, encoder: Encoder, batch_size=64, num_workers=2, max_bad_fraction=0.01,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
    """Returns (embeddings, row-order table, skipped table); raises if too many images are unreadable.

    `max_bad_fraction=None` leaves that check to the caller (a shard: the merge checks the whole dataset)."""
    emb, kept, bad = embed_image_files(encoder, manifest["path"].tolist(), batch_size, num_workers,
                                       max_pixels=max_pixels,
                                       crops=manifest["crop"].tolist() if "crop" in manifest.columns else None)
    skipped = pd.DataFrame({"image_id": [manifest["image_id"].iat[i] for i, _ in bad],
                            "path": [manifest["path"].iat[i] for i, _ in bad],
                            "reason": [r for _, r in bad]}, columns=["image_id", "path", "reason"])
    for row in skipped.itertuples():
        log.warning("skipped %s: %s", row.path, row.reason)
    if max_bad_fraction is not None:
        check_bad_fraction(skipped, len(manifest), max_bad_fraction)
    rows = pd.DataFrame({"row": np.arange(len(kept)), "image_id": manifest["image_id"].to_numpy()[kept]})
    return emb, rows, skipped


def embed_queries(qset_name: str, qset_spec: dict, encoder: Encoder) -> tuple[np.ndarray, pd.DataFrame]:
    """One embedding per query: the normalised mean over its templates (CLIP's prompt ensembling)."""
    queries = expand_query_set(qset_name, qset_spec)
    flat = [t for texts in queries["texts"] for t in texts]
    emb = check_finite(encoder.encode_texts(flat), flat, "query text")
    out, start = [], 0
    for texts in queries["texts"]:
        m = emb[start:start + len(texts)].mean(0)
        out.append(m / np.linalg.norm(m))
        start += len(texts)
    out = np.stack(out).astype(np.float32)
    # each query's concept: its own, else its article-stripped text ("a doctor" -> "doctor")
    concepts = [c if isinstance(c, str) and c.strip() else strip_article(q)
                for c, q in zip(queries["concept"], queries["query"])]
    out = apply_text_transforms(encoder, out, concepts, queries["names_attribute"], qset_spec.get("transform"))
    check_finite(out, queries["query"].tolist(), "query")  # also after a mitigation's transform
    table = queries.assign(row=np.arange(len(queries)), text=queries["texts"].map(" | ".join)).drop(columns="texts")
    return out, table[["row", "query_id", "query", "text", "lang", "concept",
                                                      "names_attribute", "names_class"]]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.embed", description="Embed images or queries.")
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("images", "queries"):
        s = sub.add_parser(name)
        s.add_argument("--model-json", required=True, help="the model's config block as JSON")
        s.add_argument("--precision", default="fp32")
        s.add_argument("--device", default="cpu")
        s.add_argument("--threads", type=int, default=0)
        s.add_argument("--out-npy", required=True)
        s.add_argument("--out-table", required=True)
    s = sub.choices["images"]
    s.add_argument("--manifest", required=True)
    s.add_argument("--skipped", required=True)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--num-workers", type=int, default=2)
    s.add_argument("--max-bad-fraction", type=float, default=0.01)
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    s.add_argument("--shard", type=int, default=0, help="embed only this shard of the manifest (vlmbias.audit.shards)")
    s.add_argument("--shard-size", type=int, default=0, help="embed.shard_size; 0: the whole manifest, one shard")
    s = sub.choices["queries"]
    s.add_argument("--name", required=True)
    s.add_argument("--queries-json", required=True, help="the query set's config block as JSON")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model_spec = parse_json_arg(a.model_json, "--model-json")
    encoder = load_encoder(model_spec, a.device, a.precision)
    inputs = {"model": text_digest({"model": model_spec, "precision": a.precision})}
    if a.what == "images":
        manifest = read_table(a.manifest, made_by="dataset_manifest")
        inputs["manifest"] = file_digest(a.manifest)
        if a.shard_size:  # one shard; the merge checks max_bad_fraction over the whole dataset
            part = shard_rows(len(manifest), a.shard_size, a.shard)
            log.info("shard %d: manifest rows %d..%d of %d", a.shard, part.start, part.stop - 1, len(manifest))
            manifest = manifest.iloc[part].reset_index(drop=True)
        emb, rows, skipped = embed_images(manifest, encoder, a.batch_size, a.num_workers,
                                          None if a.shard_size else a.max_bad_fraction, a.max_pixels)
        write_table(skipped, a.skipped)
        log.info("embedded %d images (dim %d), skipped %d", len(rows), emb.shape[1], len(skipped))
    else:
        qspec = parse_json_arg(a.queries_json, "--queries-json")
        inputs["query_set"] = text_digest(qspec)
        emb, rows = embed_queries(a.name, qspec, encoder)
        log.info("embedded %d queries of set %s", len(rows), a.name)
    digest = write_npy(emb, a.out_npy)
    # the row table records the array it belongs to: readers refuse a mismatched pair (io.check_embeddings)
    write_table(rows, a.out_table, meta=provenance(len(rows), inputs, npy={"digest": digest, "shape": list(emb.shape)}))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
