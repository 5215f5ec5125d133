"""Image grids: the top-k retrieved images of a query with their labels, one PNG per query."""
from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from vlmbias.imagegate import DEFAULT_MAX_PIXELS, check_limit, crop_to, open_image
from vlmbias.io import atomic_path
from vlmbias.plots.base import GREY, PlotInputError, check_k, pil_font, require

log = logging.getLogger("vlmbias.plots")

# ----------------------------------------------------------------------------------------------
# image grids
# ----------------------------------------------------------------------------------------------
GRID_PAD = 4  # pixels around and between tiles


def _grid_fonts(thumb: int) -> tuple[int, int]:
    """(caption font size, caption line height) for a thumbnail size."""
    size = max(9, min(14, thumb // 8))
    return size, size + 4


def grid_size(n_images: int, ncols: int, thumb: int = 96, n_labels: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of an `image_grid` of `n_images` tiles: `min(ncols, n_images)`
    columns of `thumb` px tiles with `GRID_PAD` px gaps and borders, a two-line title band, and
    under each tile one caption line for the rank plus one per label column."""
    cols = max(1, min(ncols, n_images))
    rows = int(math.ceil(n_images / cols))
    _, line = _grid_fonts(thumb)
    title_h = 2 * (line + 2) + GRID_PAD
    caption_h = line * (1 + n_labels)
    return (GRID_PAD + cols * (thumb + GRID_PAD),
            title_h + rows * (thumb + caption_h + GRID_PAD) + GRID_PAD)


def _fit(text: str, font, width: int) -> str:
    """`text` shortened with an ellipsis until it fits in `width` pixels."""
    text = str(text)
    if font.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid].rstrip() + "…") <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


def _wrap_px(text: str, font, width: int, max_lines: int) -> list[str]:
    """Break `text` into at most `max_lines` lines of at most `width` px (at spaces where possible)."""
    text = " ".join(str(text).split())
    lines = []
    while text and len(lines) < max_lines - 1:
        if font.getlength(text) <= width:
            break
        cut = len(_fit(text, font, width).rstrip("…"))
        space = text.rfind(" ", 0, cut + 1)
        cut = space if space > 0 else max(cut, 1)
        lines.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        lines.append(_fit(text, font, width))
    return lines


def _blank_tile(thumb: int, label: str, font) -> Image.Image:
    tile = Image.new("RGB", (thumb, thumb), GREY)
    draw = ImageDraw.Draw(tile)
    draw.line([(0, 0), (thumb - 1, thumb - 1)], fill=(150, 150, 150))
    draw.line([(0, thumb - 1), (thumb - 1, 0)], fill=(150, 150, 150))
    label = _fit(label, font, thumb - 4)
    w = font.getlength(label)
    draw.rectangle([(0, thumb // 2 - 9), (thumb - 1, thumb // 2 + 9)], fill=GREY)
    draw.text(((thumb - w) / 2, thumb // 2 - 7), label, fill=(255, 255, 255), font=font)
    return tile


def _tile(path, thumb: int, font, max_pixels: int = DEFAULT_MAX_PIXELS, crop=None) -> Image.Image:
    if path is None or (isinstance(path, float) and math.isnan(path)) or str(path) == "":
        log.warning("grid: no path for an image; drawing a grey tile")
        return _blank_tile(thumb, "missing", font)
    try:
        # mode kept: alpha goes on white; a person's box (manifest `crop`) is in the stored orientation
        cropped = crop is not None and isinstance(crop, str) and crop.strip() != ""
        img = open_image(path, max_pixels, mode=None, exif_transpose=not cropped)
        if cropped:
            img = crop_to(img, crop)
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        return ImageOps.fit(img.convert("RGB"), (thumb, thumb), method=Image.Resampling.BILINEAR)
    except Exception as e:  # one unreadable (or refused) image must not sink the whole grid
        log.warning("grid: cannot read %s (%s: %s); drawing a grey tile", path, type(e).__name__, e)
        return _blank_tile(thumb, "unreadable", font)


def _path_lookup(paths, rankings: pd.DataFrame) -> dict:
    if paths is None:
        if "path" in rankings.columns:
            return dict(zip(rankings["image_id"], rankings["path"]))
        raise PlotInputError("image_grid: pass `paths` (image_id -> path mapping, or a manifest with "
                             "image_id and path columns); the rankings have no `path` column")
    if isinstance(paths, pd.DataFrame):
        require(paths, ["image_id", "path"], "image_grid (manifest)")
        return dict(zip(paths["image_id"], paths["path"]))
    if isinstance(paths, Mapping):
        return dict(paths)
    raise PlotInputError(f"image_grid: `paths` must be a mapping or a DataFrame, got {type(paths).__name__}")


def image_grid(rankings: pd.DataFrame, query_id: str, k: int, out_png, ncols: int = 5,
               label_columns=("gender", "race"), thumb: int = 96, *, paths=None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """The top-k images of one query as a grid (thesis Figures 4.8-4.34), in rank order.

    `rankings` is a Rankings table (`query_id, rank, image_id`, plus `query`, `score` and the
    label columns when present). Image files are found through `paths` (keyword): a mapping
    image_id -> path or a manifest DataFrame with `image_id, path`; when omitted the rankings'
    own `path` column is used. Each tile is captioned with `#rank` (and the score) and one line
    per column of `label_columns` that the rankings have. Unreadable images become grey tiles
    marked "unreadable" (ids without a path: "missing"), with a logged warning; so do images the
    image gate refuses (more than `max_pixels` pixels, config images.max_pixels). Fewer than k
    ranked images give a smaller grid. Pixel size: `grid_size(n, ncols, thumb, n_labels)`."""
    if isinstance(ncols, (Mapping, pd.DataFrame)):  # the older call order image_grid(r, q, k, out, paths)
        paths, ncols = ncols, 5
    k = check_k(k)
    check_limit(max_pixels)
    if int(ncols) < 1 or int(thumb) < 16:
        raise PlotInputError(f"image_grid: ncols must be >= 1 and thumb >= 16 (got {ncols}, {thumb})")
    ncols, thumb = int(ncols), int(thumb)
    require(rankings, ["query_id", "rank", "image_id"], "image_grid")
    lookup = _path_lookup(paths, rankings)
    r = rankings[rankings["query_id"] == query_id]
    if r.empty:
        raise PlotInputError(f"image_grid: no rankings for query {query_id!r}")
    r = r.sort_values("rank", kind="stable").head(k)
    if len(r) < k:
        log.info("image_grid: query %r has %d ranked images (< k=%d)", query_id, len(r), k)
    if isinstance(label_columns, str):
        label_columns = (label_columns,)
    labels = [c for c in label_columns if c in r.columns]
    if len(labels) < len(label_columns):
        log.debug("image_grid: label columns %s not in the rankings", [c for c in label_columns if c not in labels])
    qtext = str(r["query"].iat[0]) if "query" in r.columns and pd.notna(r["query"].iat[0]) else str(query_id)
    title = f"{qtext} (top {len(r)})"
    captions = [[str(v) for v in row] for row in r[labels].itertuples(index=False)] if labels else [[]] * len(r)

    size, line = _grid_fonts(thumb)
    font = pil_font([*(c for cs in captions for c in cs)], size)
    title_font = pil_font([title], size + 1)
    width, height = grid_size(len(r), ncols, thumb, len(labels))
    cols = min(ncols, len(r))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(_wrap_px(title, title_font, width - 2 * GRID_PAD, 2)):
        draw.text((GRID_PAD, GRID_PAD // 2 + i * (line + 2)), text, fill="black", font=title_font)
    top = 2 * (line + 2) + GRID_PAD
    scores = r["score"].to_numpy(float) if "score" in r.columns else None
    for i, (rank, image_id) in enumerate(zip(r["rank"], r["image_id"])):
        x = GRID_PAD + (i % cols) * (thumb + GRID_PAD)
        y = top + (i // cols) * (thumb + line * (1 + len(labels)) + GRID_PAD)
        crop = r["crop"].iat[i] if "crop" in r.columns else None  # one person of a photo (FACET)
        canvas.paste(_tile(lookup.get(image_id), thumb, font, max_pixels, crop), (x, y))
        head = f"#{rank}" + (f"  {scores[i]:.3f}" if scores is not None and np.isfinite(scores[i]) else "")
        for j, t in enumerate([head, *captions[i]]):
            draw.text((x + 1, y + thumb + 1 + j * line), _fit(t, font, thumb - 2), fill="black", font=font)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def safe_name(text, max_slug: int = 40) -> str:
    """ASCII file stem for an id: a slug of its ASCII-foldable letters and digits plus 8 hex digits
    of its SHA-1, so it cannot leave a folder (no '/', '\\' or '..') and distinct ids stay distinct."""
    s = str(text)
    ascii_ = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")[:max_slug].strip("-") or "query"
    return f"{slug}-{hashlib.sha1(s.encode('utf-8')).hexdigest()[:8]}"


def query_grids(rankings: pd.DataFrame, manifest, k: int, out_dir, ncols: int = 5,
                label_columns=("gender", "race"), thumb: int = 96, prefix: str = "grid_", *,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Path]:
    """One `image_grid` per query (in order of first appearance) into `out_dir`, named
    `<prefix><safe_name(query_id)>.png`; returns the paths written. `manifest`: a manifest
    DataFrame (`image_id, path`) or a mapping image_id -> path, or None to use the rankings'
    `path` column."""
    require(rankings, ["query_id", "rank", "image_id"], "query_grids")
    if not re.fullmatch(r"[A-Za-z0-9_.-]*", prefix) or ".." in prefix:
        raise PlotInputError(f"query_grids: prefix {prefix!r} must be plain ASCII letters, digits, '_', '-', '.'")
    lookup = _path_lookup(manifest, rankings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names: dict[str, object] = {}
    for q in dict.fromkeys(rankings["query_id"]):
        stem = safe_name(q)
        if stem in names:  # an 8-hex-digit collision: fall back to the full hash
            stem = f"{stem.rsplit('-', 1)[0]}-{hashlib.sha1(str(q).encode('utf-8')).hexdigest()}"
        names[stem] = q
    return [image_grid(rankings, q, k, out_dir / f"{prefix}{stem}.png", ncols, label_columns, thumb, paths=lookup,
                       max_pixels=max_pixels)
            for stem, q in names.items()]


