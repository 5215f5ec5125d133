"""The `vlmbias audit` image-embedding cache: one entry per (model, dataset content, precision), so
further queries on the same model and dataset cost only a text encoding."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("vlmbias.cli")

CACHE_FORMAT = 1  # bump when the cached files change meaning

def cache_root(arg: str | None) -> Path:
    return Path(arg or os.environ.get("VLMBIAS_CACHE") or Path.home() / ".cache" / "vlmbias").expanduser().absolute()


def _files_fingerprint(path: str) -> list:
    """Sizes and mtimes of a local model file or directory: retraining a model in place changes the key."""
    p = Path(path)
    if not p.exists():
        return []
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.relative_to(p)) if f != p else f.name, st.st_size, st.st_mtime_ns])
    return out


def cache_key(model: dict, manifest, precision: str) -> str:
    """Hash of the model spec (plus its local files' sizes/mtimes), the images (ids, sizes, mtimes), precision."""
    h = hashlib.sha256()
    local = {k: _files_fingerprint(str(model[k])) for k in ("name", "pretrained", "adapter") if model.get(k)}
    h.update(json.dumps({"format": CACHE_FORMAT, "model": model, "model_files": local, "precision": precision},
                        sort_keys=True, default=str).encode())
    for image_id, path in zip(manifest["image_id"], manifest["path"]):
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\n{image_id}\t{stamp}".encode())
    return h.hexdigest()[:32]


def read_cache(entry: Path, manifest):
    """(embeddings, row table, skipped table) from a cache entry, or None when absent or unusable."""
    import numpy as np

    from vlmbias.io import read_npy, read_table

    if not (entry / "images.npy").is_file() or not (entry / "images.parquet").is_file():
        return None
    try:
        emb, rows = read_npy(entry / "images.npy"), read_table(entry / "images.parquet")
        skipped = read_table(entry / "skipped.csv") if (entry / "skipped.csv").is_file() else None
        if emb.ndim != 2 or len(emb) != len(rows) or list(rows["row"]) != list(range(len(rows))):
            raise ValueError(f"embeddings {emb.shape} do not match {len(rows)} rows")
        if not np.isfinite(emb).all():
            raise ValueError("embeddings hold non-finite values (NaN or inf)")
        if not set(rows["image_id"]) <= set(manifest["image_id"]):
            raise ValueError("image ids differ from the dataset's")
    except Exception as e:  # a damaged entry is recomputed, never trusted
        log.warning("ignoring unusable cache entry %s (%s: %s)", entry, type(e).__name__, e)
        return None
    if skipped is None:
        import pandas as pd
        skipped = pd.DataFrame(columns=["image_id", "path", "reason"])
    return emb, rows, skipped


def write_cache(entry: Path, emb, rows, skipped, meta: dict) -> None:
    """Write all files into a temporary folder, then rename it into place: readers never see half an entry."""
    from vlmbias.io import temp_dir_beside, write_npy, write_table

    tmp = None
    try:
        tmp = temp_dir_beside(entry)
        write_table(rows, tmp / "images.parquet")
        write_table(skipped, tmp / "skipped.csv")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        write_npy(emb, tmp / "images.npy")
        if entry.exists():  # an unusable entry found earlier
            shutil.rmtree(entry)
        os.replace(tmp, entry)
        log.info("stored image embeddings in %s", entry)
    except OSError as e:  # the cache is an optimisation: failing to write it does not fail the audit
        log.warning("could not write the embedding cache at %s: %s", entry, e)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
