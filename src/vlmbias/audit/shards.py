"""Sharded image embedding (config `embed.shard_size`): which manifest rows a shard embeds, and the
merge of the shards into the one images.npy / images.parquet / skipped.csv that later stages read.

Shard i embeds manifest rows [i * shard_size, (i + 1) * shard_size). The shard size is a multiple
of the batch size (config check), so every batch an encoder sees is the one the unsharded run
feeds it and the merged arrays are bitwise those of the unsharded run on the same device. The
`max_bad_fraction` check runs once, over the whole dataset, at the merge.
"""
from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.io import atomic_path, check_embeddings, file_digest, provenance, read_table, run_cli, write_table

log = logging.getLogger(__name__)


def shard_count(n_images: int, shard_size: int | None) -> int:
    """How many shards embed `n_images`; no shard size (None or 0) means one shard."""
    if not shard_size:
        return 1
    return max(1, math.ceil(n_images / shard_size))


def shard_rows(n_images: int, shard_size: int | None, shard: int) -> slice:
    """The manifest rows shard `shard` embeds."""
    n = shard_count(n_images, shard_size)
    if not 0 <= shard < n:
        raise VlmbiasError(f"shard {shard} does not exist: {n_images} images in shards of {shard_size} make {n}")
    if not shard_size:
        return slice(0, n_images)
    return slice(shard * shard_size, min(n_images, (shard + 1) * shard_size))


def manifest_shard_count(manifest_path, shard_size: int | None) -> int:
    """Shards of a written manifest, from the Parquet footer's row count (the table is not read)."""
    import pyarrow.parquet as pq

    return shard_count(pq.read_metadata(manifest_path).num_rows, shard_size)


def check_bad_fraction(skipped: pd.DataFrame, n: int, max_bad_fraction: float) -> None:
    """Raise when no image was given or more than `max_bad_fraction` of the `n` could not be read."""
    if n == 0:
        raise VlmbiasError("no images to embed")
    if len(skipped) > max_bad_fraction * n:
        need = math.ceil(len(skipped) / n * 10_000) / 10_000  # rounded up, so that it does allow them
        raise VlmbiasError(f"{len(skipped)} of {n} images could not be read (allowed fraction {max_bad_fraction}); "
                           f"first: {skipped['path'].iat[0]}: {skipped['reason'].iat[0]}; to skip them (reported in "
                           f"the skipped list) and go on, allow a fraction of at least {need:g}: --max-bad-fraction "
                           f"{need:g} on the command line, embed.max_bad_fraction in a workflow config")


def merge_shards(manifest: pd.DataFrame, shard_size: int, parts: list[tuple[np.ndarray, pd.DataFrame, pd.DataFrame]],
                 max_bad_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The unsharded run's row table and skipped list from the shards' (embeddings, rows, skipped), in
    shard order; raises like the unsharded run when too many images of the whole dataset were skipped.

    Each shard must account for exactly its manifest rows, in order (embedded or skipped): a shard
    left over from another manifest or shard size is an error, never silently merged. The
    embeddings are only counted here (they may be memory maps); `write_concatenated` joins them."""
    n = len(manifest)
    if len(parts) != shard_count(n, shard_size):
        raise VlmbiasError(f"{len(parts)} shard(s) given; {n} images in shards of {shard_size} make "
                           f"{shard_count(n, shard_size)}")
    ids = manifest["image_id"].to_numpy()
    for i, (emb, rows, skipped) in enumerate(parts):
        want = ids[shard_rows(n, shard_size, i)]
        got = set(rows["image_id"]) | set(skipped["image_id"])
        if len(emb) != len(rows) or len(rows) + len(skipped) != len(want) or got != set(want):
            raise VlmbiasError(f"shard {i} does not match the manifest (it holds {len(rows)} embedded + "
                               f"{len(skipped)} skipped images, the manifest's rows {i * shard_size}.. are "
                               f"{len(want)}); delete it and rerun")
        if not (rows["image_id"].to_numpy() == want[np.isin(want, rows["image_id"].to_numpy())]).all():
            raise VlmbiasError(f"shard {i}: its rows are not in manifest order; delete it and rerun")
    skipped = pd.concat([s for _, _, s in parts], ignore_index=True)[["image_id", "path", "reason"]]
    check_bad_fraction(skipped, n, max_bad_fraction)
    kept = np.concatenate([r["image_id"].to_numpy() for _, r, _ in parts])
    # built as embed.embed_images builds it: the same dtypes, so the same Parquet bytes
    rows = pd.DataFrame({"row": np.arange(len(kept)), "image_id": ids[np.isin(ids, kept)]})
    return rows, skipped


def write_concatenated(arrays: list[np.ndarray], path) -> tuple[tuple[int, int], str]:
    """Write the row-wise concatenation of `arrays` (memory maps welcome) as one .npy, one array at a
    time, atomically: the same bytes np.save writes for np.concatenate(arrays). Returns its shape
    and content digest (io.file_digest)."""
    filled = [a for a in arrays if len(a)]  # a shard whose every image was skipped has shape (0, 0)
    dims = {a.shape[1] for a in filled}
    if len(dims) > 1:
        raise VlmbiasError(f"the shards' embeddings differ in dimension {sorted(dims)}; were they made by one model?")
    shape = (sum(len(a) for a in filled), dims.pop() if dims else 0)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        start = 0
        for a in filled:
            out[start:start + len(a)] = a
            start += len(a)
        out.flush()
        del out
        digest = file_digest(tmp)
    return shape, digest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.shards",
                                description="Merge embedding shards into images.npy / images.parquet / skipped.csv.")
    p.add_argument("--manifest", required=True)
    p.add_argument("--shard-size", type=int, required=True)
    p.add_argument("--shards", nargs="+", required=True, help="the shards' .npy files in shard order; the "
                   "<i>.parquet row tables and <i>_skipped.parquet lists lie beside them")
    p.add_argument("--max-bad-fraction", type=float, default=0.01)
    p.add_argument("--out-npy", required=True)
    p.add_argument("--out-table", required=True)
    p.add_argument("--skipped", required=True)
    a = p.parse_args(argv)
    parts, models = [], set()
    for path in a.shards:
        stem = path[:-len(".npy")]
        # each shard and its row table belong together, are finite and come from this manifest
        emb, shard_rows_, meta = check_embeddings(path, f"{stem}.parquet", "embed_images", manifest=a.manifest)
        models.add((meta.get("inputs") or {}).get("model"))
        parts.append((emb, shard_rows_, read_table(f"{stem}_skipped.parquet", made_by="embed_images")))
    if len(models) > 1:
        raise VlmbiasError(f"the shards {a.shards[0]} .. {a.shards[-1]} were embedded with different model "
                           "settings; delete the shards folder and run snakemake again (rule embed_images)")
    rows, skipped = merge_shards(read_table(a.manifest, made_by="dataset_manifest"), a.shard_size, parts,
                                 a.max_bad_fraction)
    shape, digest = write_concatenated([e for e, _, _ in parts], a.out_npy)
    inputs = {"model": models.pop(), "manifest": file_digest(a.manifest)}
    write_table(skipped, a.skipped)
    # the record the unsharded embed_images writes, so the two row tables stay byte-identical
    write_table(rows, a.out_table, meta=provenance(len(rows), {k: v for k, v in inputs.items() if v},
                                                   npy={"digest": digest, "shape": list(shape)}))
    log.info("merged %d shards: %d images (dim %d), skipped %d", len(parts), shape[0], shape[1], len(skipped))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
