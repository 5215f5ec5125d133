"""Figures: retrieved-distribution bar plots, disparity heatmaps, image grids, before/after,
calibration and loss plots.

Matplotlib with the Agg backend only (figures are built as `matplotlib.figure.Figure` objects, not
through pyplot, so nothing is left open when these functions run in a loop). Every function writes
one PNG atomically (a temporary file in the target folder, then `os.replace`), creates the
parent folders and returns the path written.

Inputs are the metric and ranking tables of docs/artifacts.md. Bad input raises
`PlotInputError` (a `ValueError`, and a `VlmbiasError` so the CLI prints one readable line):
missing columns are named, an empty table (or an empty selection, e.g. an attribute or k that
is not in the table) says so; the caller decides whether to skip.

Non-Latin text (Arabic, Chinese, ...) is drawn with whichever installed fonts have the glyphs
(matplotlib falls back font by font along a family list; matplotlib >= 3.11 also shapes Arabic
and lays it out right to left). Glyphs that no installed font has are drawn as boxes, with one
logged warning, never an exception.

CLI (used by workflow/rules/figures.smk)::

    python -m vlmbias.plots audit --classes C.csv --summary S.csv --rankings R.parquet \
        --manifest M.parquet --out DIR [--bar-k 20] [--grid-k 20] [--grid-cols 5]
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import math
import re
import textwrap
import unicodedata
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (rc_context only; figures never go through pyplot)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont, ImageOps  # noqa: E402

from vlmbias import VlmbiasError  # noqa: E402
from vlmbias.io import atomic_path, read_table, run_cli  # noqa: E402

__all__ = [
    "PlotInputError", "plot_distributions", "plot_disparity_heatmap", "image_grid", "query_grids",
    "grid_size", "safe_name", "plot_before_after", "plot_calibration", "plot_losses", "audit_figures",
]

log = logging.getLogger(__name__)

DPI = 110
# seaborn's "deep" palette, so the bars look like the thesis' seaborn plots
PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd"]
GREY = (128, 128, 128)


class PlotInputError(VlmbiasError, ValueError):
    """A table handed to a plot function cannot be drawn (missing columns, empty, ...)."""


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _require(df, columns, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise PlotInputError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if len(df) == 0:
        raise PlotInputError(f"{what}: the table is empty, nothing to plot")
    if missing:
        raise PlotInputError(f"{what}: missing column(s) {', '.join(map(repr, missing))} "
                             f"(have: {', '.join(map(str, df.columns))})")


def _select(df: pd.DataFrame, what: str, **equal) -> pd.DataFrame:
    """Rows where every column equals its value; an empty result is an error naming what exists."""
    mask = np.ones(len(df), bool)
    for col, val in equal.items():
        mask &= (df[col] == val).to_numpy()
    out = df[mask]
    if out.empty:
        have = "; ".join(f"{c} in {sorted(map(str, df[c].dropna().unique()))[:20]}" for c in equal)
        want = ", ".join(f"{c}={v!r}" for c, v in equal.items())
        raise PlotInputError(f"{what}: no rows with {want} ({have})")
    return out


def _check_k(k) -> int:
    try:
        k_int = int(k)
    except (TypeError, ValueError):
        raise PlotInputError(f"k must be a positive integer, got {k!r}") from None
    if k_int < 1 or k_int != k:
        raise PlotInputError(f"k must be a positive integer, got {k!r}")
    return k_int


def _query_labels(d: pd.DataFrame) -> dict:
    """query_id -> text to show (the `query` column when there is one)."""
    if "query" not in d.columns:
        return {q: str(q) for q in dict.fromkeys(d["query_id"])}
    first = d.drop_duplicates("query_id")
    return {q: (str(t) if pd.notna(t) and str(t) else str(q)) for q, t in zip(first["query_id"], first["query"])}


def _wrap(text: str, width: int = 28, max_lines: int = 3) -> str:
    text = " ".join(str(text).split())
    lines = textwrap.wrap(text, width=width, max_lines=max_lines, placeholder=" …", break_long_words=True)
    return "\n".join(lines) if lines else text


# ----------------------------------------------------------------------------------------------
# fonts
# ----------------------------------------------------------------------------------------------
# Families tried first, in order, when installed: a Latin font, then broad-coverage fonts for
# CJK, Arabic and other scripts. Anything still missing is searched for in every installed font.
_PREFERRED_FONTS = [
    "DejaVu Sans", "Noto Sans", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK JP",
    "Noto Sans CJK KR", "Noto Sans SC", "Noto Sans TC", "Source Han Sans SC", "Source Han Sans TC",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing TW", "AR PL UMing CN",
    "Noto Sans Arabic", "Noto Naskh Arabic", "Noto Sans Devanagari", "Noto Sans Hebrew", "Noto Sans Thai",
    "Arial Unicode MS", "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans GB", "Arial",
]
_LAST_RESORT = {"Last Resort High-Efficiency", "LastResort", "Last Resort"}
_warned_chars: set[str] = set()


@functools.lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset:
    try:
        from matplotlib.ft2font import FT2Font
        return frozenset(FT2Font(path).get_charmap())
    except Exception as e:  # an unreadable font file just covers nothing
        log.debug("cannot read font %s: %s", path, e)
        return frozenset()


@functools.lru_cache(maxsize=1)
def _installed_fonts() -> tuple:
    """(family, path) of installed fonts: preferred families first (regular faces first), then the rest."""
    entries = [e for e in font_manager.fontManager.ttflist if e.name not in _LAST_RESORT]

    def regular_first(e):
        return (e.style != "normal", abs((e.weight if isinstance(e.weight, int) else 400) - 400), e.fname)

    entries.sort(key=regular_first)
    rank = {n: i for i, n in enumerate(_PREFERRED_FONTS)}
    seen, out = set(), []
    for e in sorted(entries, key=lambda e: rank.get(e.name, len(rank))):
        if e.name not in seen:
            seen.add(e.name)
            out.append((e.name, e.fname, e.name in rank))
    return tuple(out)


def _needed_chars(texts) -> set[str]:
    """Printable non-ASCII characters of the texts (ASCII is always covered by DejaVu Sans)."""
    out = set()
    for t in texts:
        for c in str(t):
            if ord(c) > 127 and unicodedata.category(c)[0] not in "CZM":
                out.add(c)
    return out


def _warn_missing(missing: set[str]) -> None:
    new = missing - _warned_chars
    if new:
        _warned_chars.update(new)
        sample = "".join(sorted(new)[:12])
        log.warning("no installed font has glyphs for %d character(s) (%s%s); they are drawn as boxes. "
                    "Install e.g. fonts-noto-cjk / fonts-noto-core to render them.",
                    len(new), sample, "…" if len(new) > 12 else "")


@functools.lru_cache(maxsize=256)
def _families_for_chars(chars: frozenset) -> tuple:
    fonts = _installed_fonts()
    families = [name for name, _, preferred in fonts if preferred]
    covered = set()
    for name, path, preferred in fonts:
        if preferred:
            covered |= _charmap(path)
    missing = {c for c in chars if ord(c) not in covered}
    if missing:  # search every other installed font for what the preferred ones lack
        for name, path, preferred in fonts:
            if preferred:
                continue
            cm = _charmap(path)
            got = {c for c in missing if ord(c) in cm}
            if got:
                families.append(name)
                missing -= got
                if not missing:
                    break
    return tuple(families), frozenset(missing)


def _families_for(texts) -> list[str]:
    families, missing = _families_for_chars(frozenset(_needed_chars(texts)))
    if missing:
        _warn_missing(set(missing))
    return list(families) or ["DejaVu Sans"]


@contextmanager
def _style(texts=()):
    """rcParams for one figure: fonts that cover `texts`, a light seaborn-like look, and matplotlib's
    per-glyph 'missing from font' warnings silenced (we log one warning ourselves)."""
    rc = {
        "font.family": _families_for(texts) + ["sans-serif"],
        "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "axes.grid.axis": "y", "grid.color": "#dddddd", "grid.linewidth": 0.6,
        "axes.axisbelow": True, "axes.titlesize": 9, "axes.labelsize": 8,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "legend.frameon": False,
        "svg.hashsalt": "vlmbias",
    }
    with plt.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from (current )?font")
        warnings.filterwarnings("ignore", message=r".*[Mm]atplotlib currently does not support .*")
        yield


def _save(fig: Figure, out_png) -> Path:
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    fig.clear()
    return out


@functools.lru_cache(maxsize=64)
def _pil_font_cached(path: str | None, size: int):
    if path is None:
        return ImageFont.load_default(size)
    from PIL import features
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    try:
        return ImageFont.truetype(path, size, layout_engine=layout)
    except Exception as e:
        log.debug("PIL cannot load %s (%s); using its default font", path, e)
        return ImageFont.load_default(size)


def _pil_font(texts, size: int):
    """A PIL font for `texts`: the installed font that covers most of their characters."""
    chars = _needed_chars(texts)
    best_path, best = None, -1
    fonts = _installed_fonts()
    candidates = [f for f in fonts if f[2]] + [f for f in fonts if not f[2]] if chars else [f for f in fonts if f[2]]
    for name, path, _ in candidates:
        n = sum(ord(c) in _charmap(path) for c in chars)
        if n > best:
            best_path, best = path, n
        if n == len(chars):
            break
    if chars and best < len(chars):
        _warn_missing({c for c in chars if best_path is None or ord(c) not in _charmap(best_path)})
    return _pil_font_cached(best_path, size)


# ----------------------------------------------------------------------------------------------
# distributions, heatmap
# ----------------------------------------------------------------------------------------------
def _panel_grid(n: int, max_cols: int) -> tuple[int, int]:
    ncols = max(1, min(n, max_cols))
    return int(math.ceil(n / ncols)), ncols


def plot_distributions(classes: pd.DataFrame, attribute: str, k: int, out_png, title: str | None = None) -> Path:
    """For one attribute and k: one small bar chart per query (thesis Figures 4.7/4.13).

    x = class (in the order of the input rows), y = share of the top-k with its 95% interval as
    error bars (`proportion`, `proportion_low`, `proportion_high`), and the dataset share
    (`dataset_proportion`) as a dashed line across each bar. `classes` is a `*_classes.csv`
    table; needs `query_id, k, attribute, class, proportion, proportion_low, proportion_high,
    dataset_proportion` (`query`, when present, titles the panels)."""
    k = _check_k(k)
    cols = ["query_id", "k", "attribute", "class", "proportion", "proportion_low", "proportion_high",
            "dataset_proportion"]
    _require(classes, cols, "plot_distributions")
    d = _select(classes, "plot_distributions", attribute=attribute, k=k)
    dup = d.duplicated(["query_id", "class"])
    if dup.any():
        r = d[dup].iloc[0]
        raise PlotInputError(f"plot_distributions: several rows for query {r['query_id']!r}, class {r['class']!r} "
                             f"at k={k} (a table of several models or datasets? filter it first)")
    labels = _query_labels(d)
    queries = list(labels)
    n_cls = int(d.groupby("query_id", sort=False).size().max())
    nrows, ncols = _panel_grid(len(queries), 3 if n_cls > 4 else 4)
    vals = d[["proportion", "proportion_high", "dataset_proportion"]].to_numpy(float)
    top = np.nanmax(vals) if np.isfinite(vals).any() else 1.0
    ymax = min(1.0, math.ceil(top * 1.1 * 10) / 10) if top > 0 else 1.0
    panel_w = max(2.4, 0.38 * n_cls + 1.1)
    heading = title or f"{attribute}: share of the top-{k} per query"
    with _style([*labels.values(), *d["class"].astype(str), heading]):
        fig = Figure(figsize=(panel_w * ncols, 2.5 * nrows + 0.7), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        for ax, qid in zip(axes.flat, queries):
            q = d[d["query_id"] == qid]
            x = np.arange(len(q))
            p = q["proportion"].to_numpy(float)
            lo = np.nan_to_num(p - q["proportion_low"].to_numpy(float), nan=0.0).clip(min=0)
            hi = np.nan_to_num(q["proportion_high"].to_numpy(float) - p, nan=0.0).clip(min=0)
            colors = [PALETTE[i % len(PALETTE)] for i in range(len(q))]
            ax.bar(x, np.nan_to_num(p, nan=0.0), color=colors, width=0.75, yerr=np.vstack([lo, hi]), capsize=2,
                   error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
            ax.hlines(q["dataset_proportion"].to_numpy(float), x - 0.42, x + 0.42, colors="black",
                      linestyles="--", linewidth=1.0)
            ax.set_xticks(x, [_wrap(c, 16, 2) for c in q["class"].astype(str)], rotation=45, ha="right",
                          rotation_mode="anchor")
            ax.set_xlim(-0.6, len(q) - 0.4)
            ax.set_title(_wrap(labels[qid], max(18, int(panel_w * 9)), 2))
        for ax in list(axes.flat)[len(queries):]:
            ax.set_visible(False)
        axes[0, 0].set_ylim(0, ymax)
        for r in range(nrows):
            axes[r, 0].set_ylabel(f"share of top-{k}")
        handles = [Patch(color="#aaaaaa", label=f"share of the top-{k} (one colour per class)"),
                   Line2D([], [], color="#333333", marker="|", lw=0.8, label="95% interval"),
                   Line2D([], [], color="black", ls="--", lw=1.0, label="dataset share")]
        fig.legend(handles=handles, loc="outside upper right", ncols=3)
        fig.suptitle(_wrap(heading, 90, 2), fontsize=10, x=0.01, ha="left")
        return _save(fig, out_png)


def plot_disparity_heatmap(summary: pd.DataFrame, metric: str, k: int, out_png) -> Path:
    """Queries x attributes heatmap of one `*_summary.csv` metric at k (e.g. `fd`, `ndkl_dataset`,
    `max_skew_dataset`), values written in the cells. Needs `query_id` (or `query`), `k`,
    `attribute` and the metric column. Infinite values are shown as "inf" in the darkest colour,
    missing ones as "–" on grey."""
    k = _check_k(k)
    key = "query_id" if "query_id" in getattr(summary, "columns", ()) else "query"
    _require(summary, [key, "k", "attribute", metric], "plot_disparity_heatmap")
    d = _select(summary, "plot_disparity_heatmap", k=k)
    if d.duplicated([key, "attribute"]).any():
        log.warning("plot_disparity_heatmap: several rows per (%s, attribute) at k=%d; showing the first", key, k)
    labels = _query_labels(d) if key == "query_id" else {q: str(q) for q in dict.fromkeys(d["query"])}
    d = d.assign(**{metric: pd.to_numeric(d[metric], errors="coerce")})
    grid = d.pivot_table(index=key, columns="attribute", values=metric, aggfunc="first", sort=False, dropna=False)
    grid = grid.reindex(index=list(labels), columns=list(dict.fromkeys(d["attribute"])))
    vals = grid.to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0
    shown = np.where(np.isposinf(vals), vmax, np.where(np.isneginf(vals), vmin, vals))
    ylabels = [_wrap(labels[q], 45, 2) for q in grid.index]
    with _style([*ylabels, *map(str, grid.columns), metric]):
        nq, na = grid.shape
        fig = Figure(figsize=(1.25 * na + 3.6, 0.36 * nq + 1.4), layout="constrained")
        ax = fig.subplots()
        cmap = matplotlib.colormaps["Reds"].with_extremes(bad="#eeeeee")
        im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                       interpolation="nearest")
        for (i, j), v in np.ndenumerate(vals):
            if np.isnan(v):
                txt, dark = "–", False
            else:
                txt = ("inf" if v > 0 else "-inf") if np.isinf(v) else (f"{v:.2f}" if abs(v) < 1000 else f"{v:.3g}")
                dark = (shown[i, j] - vmin) / (vmax - vmin) > 0.6
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(na), [str(c) for c in grid.columns], fontsize=8)
        ax.set_yticks(range(nq), ylabels, fontsize=7)
        ax.tick_params(length=0)
        ax.grid(False)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.xaxis.tick_top()
        ax.set_title(f"{metric} at k={k}", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8, label=metric)
        return _save(fig, out_png)


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


def _tile(path, thumb: int, font) -> Image.Image:
    if path is None or (isinstance(path, float) and math.isnan(path)) or str(path) == "":
        log.warning("grid: no path for an image; drawing a grey tile")
        return _blank_tile(thumb, "missing", font)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGBA")
                bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, img)
            return ImageOps.fit(img.convert("RGB"), (thumb, thumb), method=Image.Resampling.BILINEAR)
    except Exception as e:  # one unreadable image must not sink the whole grid
        log.warning("grid: cannot read %s (%s: %s); drawing a grey tile", path, type(e).__name__, e)
        return _blank_tile(thumb, "unreadable", font)


def _path_lookup(paths, rankings: pd.DataFrame) -> dict:
    if paths is None:
        if "path" in rankings.columns:
            return dict(zip(rankings["image_id"], rankings["path"]))
        raise PlotInputError("image_grid: pass `paths` (image_id -> path mapping, or a manifest with "
                             "image_id and path columns); the rankings have no `path` column")
    if isinstance(paths, pd.DataFrame):
        _require(paths, ["image_id", "path"], "image_grid (manifest)")
        return dict(zip(paths["image_id"], paths["path"]))
    if isinstance(paths, Mapping):
        return dict(paths)
    raise PlotInputError(f"image_grid: `paths` must be a mapping or a DataFrame, got {type(paths).__name__}")


def image_grid(rankings: pd.DataFrame, query_id: str, k: int, out_png, ncols: int = 5,
               label_columns=("gender", "race"), thumb: int = 96, *, paths=None) -> Path:
    """The top-k images of one query as a grid (thesis Figures 4.8-4.34), in rank order.

    `rankings` is a Rankings table (`query_id, rank, image_id`, plus `query`, `score` and the
    label columns when present). Image files are found through `paths` (keyword): a mapping
    image_id -> path or a manifest DataFrame with `image_id, path`; when omitted the rankings'
    own `path` column is used. Each tile is captioned with `#rank` (and the score) and one line
    per column of `label_columns` that the rankings have. Unreadable images become grey tiles
    marked "unreadable" (ids without a path: "missing"), with a logged warning. Fewer than k
    ranked images give a smaller grid. Pixel size: `grid_size(n, ncols, thumb, n_labels)`."""
    if isinstance(ncols, (Mapping, pd.DataFrame)):  # the older call order image_grid(r, q, k, out, paths)
        paths, ncols = ncols, 5
    k = _check_k(k)
    if int(ncols) < 1 or int(thumb) < 16:
        raise PlotInputError(f"image_grid: ncols must be >= 1 and thumb >= 16 (got {ncols}, {thumb})")
    ncols, thumb = int(ncols), int(thumb)
    _require(rankings, ["query_id", "rank", "image_id"], "image_grid")
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
    font = _pil_font([*(c for cs in captions for c in cs)], size)
    title_font = _pil_font([title], size + 1)
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
        canvas.paste(_tile(lookup.get(image_id), thumb, font), (x, y))
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
                label_columns=("gender", "race"), thumb: int = 96, prefix: str = "grid_") -> list[Path]:
    """One `image_grid` per query (in order of first appearance) into `out_dir`, named
    `<prefix><safe_name(query_id)>.png`; returns the paths written. `manifest`: a manifest
    DataFrame (`image_id, path`) or a mapping image_id -> path, or None to use the rankings'
    `path` column."""
    _require(rankings, ["query_id", "rank", "image_id"], "query_grids")
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
    return [image_grid(rankings, q, k, out_dir / f"{prefix}{stem}.png", ncols, label_columns, thumb, paths=lookup)
            for stem, q in names.items()]


# ----------------------------------------------------------------------------------------------
# mitigation, calibration, training
# ----------------------------------------------------------------------------------------------
def plot_before_after(before: pd.DataFrame, after: pd.DataFrame, attribute: str, k: int, out_png,
                      labels=("before", "after")) -> Path:
    """Paired bars per query and class: the share of the top-k before and after mitigation
    (thesis Figures 4.37/4.40). Both tables are `*_classes.csv` tables (`query_id, k, attribute,
    class, proportion`; `proportion_low/high` give error bars, `dataset_proportion` a dashed
    line, `query` the panel titles, all when present). Queries are matched by `query_id`;
    classes follow `before`'s row order (classes only in `after` come last)."""
    k = _check_k(k)
    cols = ["query_id", "k", "attribute", "class", "proportion"]
    _require(before, cols, f"plot_before_after ({labels[0]})")
    _require(after, cols, f"plot_before_after ({labels[1]})")
    b = _select(before, f"plot_before_after ({labels[0]})", attribute=attribute, k=k)
    a = _select(after, f"plot_before_after ({labels[1]})", attribute=attribute, k=k)
    in_after = set(a["query_id"])
    queries = [q for q in dict.fromkeys(b["query_id"]) if q in in_after]
    if not queries:
        raise PlotInputError(f"plot_before_after: no query_id in both tables for {attribute} at k={k}")
    names = {**_query_labels(a), **_query_labels(b)}
    ci = all(c in t.columns for t in (b, a) for c in ("proportion_low", "proportion_high"))
    n_cls = len(dict.fromkeys(list(b["class"]) + list(a["class"])))
    nrows, ncols = _panel_grid(len(queries), 3 if n_cls > 4 else 4)
    panel_w = max(2.8, 0.55 * n_cls + 1.1)
    with _style([*names.values(), *b["class"].astype(str), *a["class"].astype(str), *labels]):
        fig = Figure(figsize=(panel_w * ncols, 2.6 * nrows + 0.7), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        top = 0.0
        for ax, qid in zip(axes.flat, queries):
            qb = b[b["query_id"] == qid].drop_duplicates("class").set_index("class")
            qa = a[a["query_id"] == qid].drop_duplicates("class").set_index("class")
            order = list(dict.fromkeys(list(qb.index) + list(qa.index)))
            qb, qa = qb.reindex(order), qa.reindex(order)
            x = np.arange(len(order))
            for off, t, color, lab in ((-0.2, qb, "#8c8c8c", labels[0]), (0.2, qa, PALETTE[0], labels[1])):
                p = t["proportion"].to_numpy(float)
                err = None
                if ci:
                    err = np.vstack([np.nan_to_num(p - t["proportion_low"].to_numpy(float), nan=0.0),
                                     np.nan_to_num(t["proportion_high"].to_numpy(float) - p, nan=0.0)]).clip(min=0)
                    top = max(top, np.nanmax(np.append(t["proportion_high"].to_numpy(float), 0)))
                top = max(top, np.nanmax(np.append(p, 0)))
                ax.bar(x + off, np.nan_to_num(p, nan=0.0), 0.4, label=lab, color=color, yerr=err, capsize=1.5,
                       error_kw={"elinewidth": 0.7, "ecolor": "#333333"})
            ref = qb["dataset_proportion"] if "dataset_proportion" in qb else qa.get("dataset_proportion")
            if ref is not None:
                ax.hlines(ref.to_numpy(float), x - 0.42, x + 0.42, colors="black", linestyles="--", linewidth=1.0)
                top = max(top, np.nanmax(np.append(ref.to_numpy(float), 0)))
            ax.set_xticks(x, [_wrap(c, 16, 2) for c in map(str, order)], rotation=45, ha="right", rotation_mode="anchor")
            ax.set_title(_wrap(names.get(qid, str(qid)), max(18, int(panel_w * 9)), 2))
        for ax in list(axes.flat)[len(queries):]:
            ax.set_visible(False)
        axes[0, 0].set_ylim(0, min(1.0, math.ceil(top * 1.1 * 10) / 10) if top > 0 else 1.0)
        for r in range(nrows):
            axes[r, 0].set_ylabel(f"share of top-{k}")
        handles = [Patch(color="#8c8c8c", label=str(labels[0])), Patch(color=PALETTE[0], label=str(labels[1]))]
        if "dataset_proportion" in b.columns or "dataset_proportion" in a.columns:
            handles.append(Line2D([], [], color="black", ls="--", lw=1.0, label="dataset share"))
        fig.legend(handles=handles, loc="outside upper right", ncols=len(handles))
        fig.suptitle(_wrap(f"{attribute}: {labels[0]} vs {labels[1]}, top-{k}", 90, 2), fontsize=10, x=0.01, ha="left")
        return _save(fig, out_png)


def plot_calibration(table: pd.DataFrame, out_png, x="planted", y="measured", low="low", high="high",
                     hue="metric", parity="parity", title: str | None = None,
                     xlabel: str = "planted share", ylabel: str = "measured share") -> Path:
    """Planted vs measured: one colour per `hue` value, interval bars from `low`/`high`, the identity
    line (measured = planted) and, when the table has a `parity` column, a dotted line at each
    parity level (e.g. 0.5 for gender, 1/7 for race). Axes are 0-1 when all values are shares."""
    _require(table, [x, y, low, high, hue], "plot_calibration")
    t = table.copy()
    for c in (x, y, low, high):
        t[c] = pd.to_numeric(t[c], errors="coerce")
    t = t[np.isfinite(t[x]) & np.isfinite(t[y])]
    if t.empty:
        raise PlotInputError(f"plot_calibration: no row with finite {x!r} and {y!r}")
    values = t[[x, y, low, high]].to_numpy(float)
    values = values[np.isfinite(values)]
    lo_lim, hi_lim = (0.0, 1.0) if values.min() >= 0 and values.max() <= 1 else (
        float(values.min()) - 0.05 * float(np.ptp(values) or 1), float(values.max()) + 0.05 * float(np.ptp(values) or 1))
    hues = list(dict.fromkeys(t[hue].astype(str)))
    with _style([*hues, title or "", xlabel, ylabel]):
        fig = Figure(figsize=(5.2, 4.6), layout="constrained")
        ax = fig.subplots()
        ax.grid(True, axis="both")
        ax.plot([lo_lim, hi_lim], [lo_lim, hi_lim], color="black", ls="--", lw=0.8, label="measured = planted")
        if parity and parity in t.columns:
            levels = sorted(set(pd.to_numeric(t[parity], errors="coerce").dropna().round(4)))
            for i, p in enumerate(levels):
                ax.axhline(p, color="#c44e52", ls=":", lw=0.9, label="parity" if i == 0 else None)
        for i, name in enumerate(hues):
            g = t[t[hue].astype(str) == name]
            yv = g[y].to_numpy(float)
            err = np.vstack([np.nan_to_num(yv - g[low].to_numpy(float), nan=0.0),
                             np.nan_to_num(g[high].to_numpy(float) - yv, nan=0.0)]).clip(min=0)
            ax.errorbar(g[x].to_numpy(float), yv, yerr=err, fmt="o", ms=4, capsize=2, elinewidth=0.8,
                        color=PALETTE[i % len(PALETTE)], label=name, alpha=0.9)
        ax.set_xlim(lo_lim, hi_lim)
        ax.set_ylim(lo_lim, hi_lim)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(_wrap(title, 60, 2))
        ax.legend(loc="upper left")
        return _save(fig, out_png)


def plot_losses(log: pd.DataFrame, out_png, title: str | None = None) -> Path:
    """Per-epoch loss curves from a losses.csv table: `epoch` plus one or more numeric loss columns
    (`step_count` and `seconds` are ignored; a column named `loss` is drawn as the thick total)."""
    _require(log, ["epoch"], "plot_losses")
    skip = {"epoch", "step_count", "seconds", "step", "steps"}
    cols = [c for c in log.columns if c not in skip and pd.api.types.is_numeric_dtype(log[c])]
    if not cols:
        raise PlotInputError("plot_losses: no numeric loss column besides 'epoch' "
                             f"(have: {', '.join(map(str, log.columns))})")
    t = log.sort_values("epoch", kind="stable")
    with _style([*map(str, cols), title or ""]):
        fig = Figure(figsize=(5.2, 3.4), layout="constrained")
        ax = fig.subplots()
        ax.grid(True, axis="both")
        for i, c in enumerate(cols):
            total = c == "loss"
            ax.plot(t["epoch"], t[c], marker="o", ms=3 if not total else 4, lw=2.2 if total else 1.2,
                    color="black" if total else PALETTE[i % len(PALETTE)], label=str(c), zorder=3 if total else 2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (mean over the epoch)")
        if pd.api.types.is_integer_dtype(t["epoch"]) and t["epoch"].nunique() <= 20:
            ax.set_xticks(sorted(t["epoch"].unique()))
        if title:
            ax.set_title(_wrap(title, 60, 2))
        if len(cols) > 1 or cols[0] != "loss":
            ax.legend()
        return _save(fig, out_png)


# ----------------------------------------------------------------------------------------------
# the audit figure set (rule `figures`)
# ----------------------------------------------------------------------------------------------
HEATMAP_METRICS = ("fd", "ndkl_dataset", "max_skew_dataset")


def audit_figures(classes, summary, rankings, manifest, out_dir, bar_k: int, grid_k: int, grid_cols: int) -> list[Path]:
    """bars_<attribute>.png per attribute, heatmap_<metric>.png per metric of HEATMAP_METRICS that
    the summary has, and grid_<safe query id>.png per query, into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _require(classes, ["k", "attribute"], "audit_figures (classes)")
    ks = set(classes["k"])
    k_bar = bar_k if bar_k in ks else int(min(ks))
    if k_bar != bar_k:
        log.warning("figures: bar_k=%s is not among the metric k values %s; using k=%d", bar_k, sorted(ks), k_bar)
    made = []
    for a in dict.fromkeys(classes["attribute"]):
        stem = str(a) if re.fullmatch(r"[A-Za-z0-9_-]{1,60}", str(a)) else safe_name(a)
        made.append(plot_distributions(classes, a, k_bar, out_dir / f"bars_{stem}.png"))
    for metric in HEATMAP_METRICS:
        if metric in summary.columns:
            made.append(plot_disparity_heatmap(summary, metric, k_bar, out_dir / f"heatmap_{metric}.png"))
    made += query_grids(rankings, manifest, grid_k, out_dir, grid_cols)
    return made


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.plots", description="Audit figures.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("audit", help="bar plots, heatmaps and image grids of one audit")
    for name in ("classes", "summary", "rankings", "manifest", "out"):
        s.add_argument(f"--{name}", required=True)
    s.add_argument("--bar-k", type=int, default=20)
    s.add_argument("--grid-k", type=int, default=20)
    s.add_argument("--grid-cols", type=int, default=5)
    a = p.parse_args(argv)
    made = audit_figures(read_table(a.classes), read_table(a.summary), read_table(a.rankings), read_table(a.manifest),
                         a.out, a.bar_k, a.grid_k, a.grid_cols)
    log.info("wrote %d figures to %s", len(made), a.out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
