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

CLI (used by workflow/rules/audit.smk)::

    python -m vlmbias.plots audit --classes C.csv --summary S.csv --rankings R.parquet \
        --manifest M.parquet --out DIR [--bar-k 20] [--grid-k 20] [--grid-cols 5]
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pandas as pd

from vlmbias.imagegate import DEFAULT_MAX_PIXELS
from vlmbias.io import read_table
from vlmbias.plots.base import PlotInputError, require
from vlmbias.plots.charts import (
    plot_before_after,
    plot_calibration,
    plot_confusion,
    plot_disparity_heatmap,
    plot_distributions,
    plot_losses,
    plot_pareto,
)
from vlmbias.plots.grids import grid_size, image_grid, query_grids, safe_name

__all__ = [
    "PlotInputError", "plot_distributions", "plot_disparity_heatmap", "image_grid", "query_grids",
    "grid_size", "safe_name", "plot_pareto", "plot_before_after", "plot_calibration", "plot_confusion", "plot_losses", "audit_figures",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# the audit figure set (rule `figures`)
# ----------------------------------------------------------------------------------------------
HEATMAP_METRICS = ("max_skew_uniform", "max_skew_dataset", "ndkl_dataset", "fd")


def audit_figures(classes, summary, rankings, manifest, out_dir, bar_k: int, grid_k: int, grid_cols: int,
                  confusion: pd.DataFrame | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Path]:
    """bars_<attribute>.png per attribute, heatmap_<metric>.png per metric of HEATMAP_METRICS that
    the summary has, confusion_<attribute>.png per attribute the group-naming queries name, and
    grid_<safe query id>.png per query, into out_dir (grid images through the image gate, at most
    `max_pixels` pixels)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    require(classes, ["k", "attribute"], "audit_figures (classes)")
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
    if confusion is not None and len(confusion):
        k_conf = k_bar if k_bar in set(confusion["k"]) else int(min(confusion["k"]))
        for a in dict.fromkeys(confusion["attribute"]):
            made.append(plot_confusion(confusion, a, k_conf, out_dir / f"confusion_{safe_name(a)}.png"))
    made += query_grids(rankings, manifest, grid_k, out_dir, grid_cols, max_pixels=max_pixels)
    return made


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.plots", description="Audit figures.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("audit", help="bar plots, heatmaps and image grids of one audit")
    for name in ("classes", "summary", "rankings", "manifest", "out"):
        s.add_argument(f"--{name}", required=True)
    s.add_argument("--confusion", help="the metrics stage's *_confusion.csv")
    s.add_argument("--bar-k", type=int, default=20)
    s.add_argument("--grid-k", type=int, default=20)
    s.add_argument("--grid-cols", type=int, default=5)
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    a = p.parse_args(argv)
    made = audit_figures(read_table(a.classes), read_table(a.summary), read_table(a.rankings), read_table(a.manifest),
                         a.out, a.bar_k, a.grid_k, a.grid_cols, read_table(a.confusion) if a.confusion else None,
                         max_pixels=a.max_pixels)
    log.info("wrote %d figures to %s", len(made), a.out)


