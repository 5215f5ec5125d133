"""Figures: retrieved-distribution bar plots, disparity heatmaps, image grids, before/after and
calibration plots. Matplotlib (Agg) only; every PNG is written atomically."""
from __future__ import annotations

import argparse
import hashlib
import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from vlmbias import VlmbiasError  # noqa: E402
from vlmbias.io import atomic_path, read_table, run_cli  # noqa: E402

log = logging.getLogger(__name__)
# Fallback fonts with CJK/Arabic glyphs, used when installed, so non-Latin queries render.
_EXTRA_FONTS = ["Noto Sans CJK JP", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Noto Sans Arabic", "DejaVu Sans"]
plt.rcParams["font.family"] = ["sans-serif"]
plt.rcParams["font.sans-serif"] = [f for f in _EXTRA_FONTS if any(f == e.name for e in font_manager.fontManager.ttflist)] \
    + list(plt.rcParams["font.sans-serif"])


def _require(df: pd.DataFrame, columns, what: str) -> None:
    if df is None or df.empty:
        raise VlmbiasError(f"{what}: nothing to plot (empty table)")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise VlmbiasError(f"{what}: missing column(s) {missing}")


def _save(fig, out_png) -> Path:
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def safe_name(text: str) -> str:
    """ASCII file stem that cannot escape a folder and stays unique (slug + short hash)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()[:40] or "query"
    return f"{slug}-{hashlib.sha1(str(text).encode()).hexdigest()[:8]}"


def plot_distributions(classes: pd.DataFrame, attribute: str, k: int, out_png, title: str | None = None) -> Path:
    """One panel per query: share of each class among the top-k (95% interval) vs the dataset share."""
    cols = ["query_id", "query", "k", "attribute", "class", "proportion", "proportion_low", "proportion_high",
            "dataset_proportion"]
    _require(classes, cols, "plot_distributions")
    d = classes[(classes["attribute"] == attribute) & (classes["k"] == k)]
    _require(d, cols, f"plot_distributions ({attribute}, k={k})")
    queries = list(dict.fromkeys(d["query_id"]))
    ncols = min(3, len(queries))
    nrows = int(np.ceil(len(queries) / ncols))
    n_cls = d["class"].nunique()
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.2, 0.45 * n_cls + 1.5) * ncols, 2.8 * nrows),
                             squeeze=False, sharey=True)
    for ax, qid in zip(axes.flat, queries):
        q = d[d["query_id"] == qid]
        x = np.arange(len(q))
        p = q["proportion"].to_numpy()
        err = np.vstack([p - q["proportion_low"].to_numpy(), q["proportion_high"].to_numpy() - p]).clip(min=0)
        ax.bar(x, p, color="#4c72b0", yerr=err, capsize=2, error_kw={"elinewidth": 0.8})
        ax.hlines(q["dataset_proportion"], x - 0.4, x + 0.4, colors="#c44e52", linestyles="--", linewidth=1)
        ax.set_xticks(x, q["class"], rotation=45, ha="right", fontsize=7)
        ax.set_title(str(q["query"].iat[0])[:40], fontsize=9)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(queries):]:
        ax.axis("off")
    axes[0, 0].set_ylabel(f"share of top-{k}")
    fig.suptitle(title or f"{attribute}: retrieved share (bars, 95% CI) vs dataset (dashed)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_disparity_heatmap(summary: pd.DataFrame, metric: str, k: int, out_png) -> Path:
    _require(summary, ["query", "k", "attribute", metric], "plot_disparity_heatmap")
    d = summary[summary["k"] == k]
    _require(d, [metric], f"plot_disparity_heatmap (k={k})")
    grid = d.pivot_table(index="query", columns="attribute", values=metric, aggfunc="first", sort=False)
    vals = grid.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 * grid.shape[1] + 3, 0.4 * grid.shape[0] + 1.2))
    shown = np.where(np.isfinite(vals), vals, np.nan)
    im = ax.imshow(shown, cmap="Reds", aspect="auto")
    for (i, j), v in np.ndenumerate(vals):
        ax.text(j, i, "inf" if np.isinf(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_yticks(range(grid.shape[0]), [str(q)[:40] for q in grid.index], fontsize=8)
    ax.set_title(f"{metric} at k={k}", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _save(fig, out_png)


def _tile(path: str, thumb: int) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB").resize((thumb, thumb))
    except Exception as e:  # an unreadable image must not sink the whole grid
        log.warning("grid: cannot read %s (%s); drawing a grey tile", path, e)
        tile = Image.new("RGB", (thumb, thumb), (128, 128, 128))
        ImageDraw.Draw(tile).text((4, thumb // 2 - 6), "unreadable", fill=(255, 255, 255))
        return tile


def image_grid(rankings: pd.DataFrame, query_id: str, k: int, out_png, paths, ncols: int = 5,
               label_columns=("gender", "race"), thumb: int = 96) -> Path:
    """Top-k images of one query in rank order, each captioned with rank and labels."""
    _require(rankings, ["query_id", "rank", "image_id"], "image_grid")
    paths = dict(zip(paths["image_id"], paths["path"])) if isinstance(paths, pd.DataFrame) else dict(paths)
    r = rankings[rankings["query_id"] == query_id].sort_values("rank").head(k)
    if r.empty:
        raise VlmbiasError(f"image_grid: no rankings for query {query_id!r}")
    labels = [c for c in label_columns if c in r.columns]
    caption_h = 12 * (1 + len(labels))
    ncols = min(ncols, len(r))
    nrows = int(np.ceil(len(r) / ncols))
    title_h = 18
    canvas = Image.new("RGB", (ncols * thumb, title_h + nrows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), str(r["query"].iat[0] if "query" in r else query_id)[:80], fill="black")
    for i, row in enumerate(r.itertuples(index=False)):
        x, y = (i % ncols) * thumb, title_h + (i // ncols) * (thumb + caption_h)
        canvas.paste(_tile(paths.get(row.image_id, ""), thumb), (x, y))
        text = [f"#{row.rank}"] + [str(getattr(row, c))[:16] for c in labels]
        for j, t in enumerate(text):
            draw.text((x + 2, y + thumb + 12 * j), t, fill="black")
    out = Path(out_png)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def query_grids(rankings: pd.DataFrame, manifest: pd.DataFrame, k: int, out_dir, ncols: int = 5) -> list[Path]:
    out_dir = Path(out_dir)
    return [image_grid(rankings, q, k, out_dir / f"grid_{safe_name(q)}.png", manifest, ncols)
            for q in dict.fromkeys(rankings["query_id"])]


def plot_before_after(before: pd.DataFrame, after: pd.DataFrame, attribute: str, k: int, out_png,
                      labels=("before", "after")) -> Path:
    """Paired bars per query and class (thesis Figures 4.37 and 4.40)."""
    cols = ["query_id", "query", "k", "attribute", "class", "proportion", "dataset_proportion"]
    _require(before, cols, "plot_before_after (before)")
    _require(after, cols, "plot_before_after (after)")
    sel = lambda t: t[(t["attribute"] == attribute) & (t["k"] == k)]
    b, a = sel(before), sel(after)
    queries = [q for q in dict.fromkeys(b["query_id"]) if q in set(a["query_id"])]
    if not queries:
        raise VlmbiasError(f"plot_before_after: no common queries for {attribute} at k={k}")
    ncols = min(3, len(queries))
    nrows = int(np.ceil(len(queries) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.9 * nrows), squeeze=False, sharey=True)
    for ax, qid in zip(axes.flat, queries):
        qb, qa = b[b["query_id"] == qid], a[a["query_id"] == qid].set_index("class").reindex(b[b["query_id"] == qid]["class"])
        x = np.arange(len(qb))
        ax.bar(x - 0.2, qb["proportion"], 0.4, label=labels[0], color="#8c8c8c")
        ax.bar(x + 0.2, qa["proportion"].to_numpy(), 0.4, label=labels[1], color="#55a868")
        ax.hlines(qb["dataset_proportion"], x - 0.4, x + 0.4, colors="#c44e52", linestyles="--", linewidth=1)
        ax.set_xticks(x, qb["class"], rotation=45, ha="right", fontsize=7)
        ax.set_title(str(qb["query"].iat[0])[:40], fontsize=9)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(queries):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].set_ylabel(f"share of top-{k}")
    fig.suptitle(f"{attribute}: {labels[0]} vs {labels[1]} (dashed: dataset share)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_calibration(table: pd.DataFrame, out_png, x="planted", y="measured", low="low", high="high",
                     hue="metric") -> Path:
    """Planted vs measured with interval bars, the identity line and the parity level."""
    _require(table, [x, y, low, high, hue], "plot_calibration")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, g in table.groupby(hue, sort=False):
        err = np.vstack([g[y] - g[low], g[high] - g[y]]).clip(min=0)
        ax.errorbar(g[x], g[y], yerr=err, fmt="o", ms=4, capsize=2, label=str(name))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="measured = planted")
    if "parity" in table:
        for p in sorted(set(table["parity"].round(3))):
            ax.axhline(p, color="#c44e52", lw=0.6, ls=":")
    ax.set_xlabel("planted share (training corpus)")
    ax.set_ylabel("measured share (top-k, balanced test split)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_losses(log_table: pd.DataFrame, out_png) -> Path:
    _require(log_table, ["epoch"], "plot_losses")
    cols = [c for c in log_table.columns if c not in ("epoch", "step_count", "seconds")]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c in cols:
        ax.plot(log_table["epoch"], log_table[c], marker="o", ms=3, label=c)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_png)


def audit_figures(classes, summary, rankings, manifest, out_dir, bar_k: int, grid_k: int, grid_cols: int) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k_bar = bar_k if bar_k in set(classes["k"]) else int(classes["k"].min())
    made = [plot_distributions(classes, a, k_bar, out_dir / f"bars_{a}.png") for a in dict.fromkeys(classes["attribute"])]
    for metric in ("fd", "ndkl_dataset", "max_skew_dataset"):
        made.append(plot_disparity_heatmap(summary, metric, k_bar, out_dir / f"heatmap_{metric}.png"))
    made += query_grids(rankings, manifest, grid_k, out_dir, grid_cols)
    return made


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.plots", description="Audit figures.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("audit")
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
