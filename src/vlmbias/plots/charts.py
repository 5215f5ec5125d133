"""Charts: retrieved-distribution bars, disparity heatmaps, before/after bars, calibration and loss plots."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vlmbias.plots.base import (
    PALETTE,
    PlotInputError,
    check_k,
    figure_style,
    query_labels,
    require,
    save_figure,
    select_rows,
    wrap_label,
)

log = logging.getLogger("vlmbias.plots")

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
    k = check_k(k)
    cols = ["query_id", "k", "attribute", "class", "proportion", "proportion_low", "proportion_high",
            "dataset_proportion"]
    require(classes, cols, "plot_distributions")
    d = select_rows(classes, "plot_distributions", attribute=attribute, k=k)
    dup = d.duplicated(["query_id", "class"])
    if dup.any():
        r = d[dup].iloc[0]
        raise PlotInputError(f"plot_distributions: several rows for query {r['query_id']!r}, class {r['class']!r} "
                             f"at k={k} (a table of several models or datasets? filter it first)")
    labels = query_labels(d)
    queries = list(labels)
    n_cls = int(d.groupby("query_id", sort=False).size().max())
    nrows, ncols = _panel_grid(len(queries), 3 if n_cls > 4 else 4)
    vals = d[["proportion", "proportion_high", "dataset_proportion"]].to_numpy(float)
    top = np.nanmax(vals) if np.isfinite(vals).any() else 1.0
    ymax = min(1.0, math.ceil(top * 1.1 * 10) / 10) if top > 0 else 1.0
    panel_w = max(2.4, 0.38 * n_cls + 1.1)
    heading = title or f"{attribute}: share of the top-{k} per query"
    with figure_style([*labels.values(), *d["class"].astype(str), heading]):
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
            ax.set_xticks(x, [wrap_label(c, 16, 2) for c in q["class"].astype(str)], rotation=45, ha="right",
                          rotation_mode="anchor")
            ax.set_xlim(-0.6, len(q) - 0.4)
            ax.set_title(wrap_label(labels[qid], max(18, int(panel_w * 9)), 2))
        for ax in list(axes.flat)[len(queries):]:
            ax.set_visible(False)
        axes[0, 0].set_ylim(0, ymax)
        for r in range(nrows):
            axes[r, 0].set_ylabel(f"share of top-{k}")
        handles = [Patch(color="#aaaaaa", label=f"share of the top-{k} (one colour per class)"),
                   Line2D([], [], color="#333333", marker="|", lw=0.8, label="95% interval"),
                   Line2D([], [], color="black", ls="--", lw=1.0, label="dataset share")]
        fig.legend(handles=handles, loc="outside upper right", ncols=3)
        fig.suptitle(wrap_label(heading, 90, 2), fontsize=10, x=0.01, ha="left")
        return save_figure(fig, out_png)


def plot_disparity_heatmap(summary: pd.DataFrame, metric: str, k: int, out_png) -> Path:
    """Queries x attributes heatmap of one `*_summary.csv` metric at k (e.g. `fd`, `ndkl_dataset`,
    `max_skew_dataset`), values written in the cells. Needs `query_id` (or `query`), `k`,
    `attribute` and the metric column. Infinite values are shown as "inf" in the darkest colour,
    missing ones as "–" on grey."""
    k = check_k(k)
    key = "query_id" if "query_id" in getattr(summary, "columns", ()) else "query"
    require(summary, [key, "k", "attribute", metric], "plot_disparity_heatmap")
    d = select_rows(summary, "plot_disparity_heatmap", k=k)
    if d.duplicated([key, "attribute"]).any():
        log.warning("plot_disparity_heatmap: several rows per (%s, attribute) at k=%d; showing the first", key, k)
    labels = query_labels(d) if key == "query_id" else {q: str(q) for q in dict.fromkeys(d["query"])}
    d = d.assign(**{metric: pd.to_numeric(d[metric], errors="coerce")})
    grid = d.pivot_table(index=key, columns="attribute", values=metric, aggfunc="first", sort=False, dropna=False)
    grid = grid.reindex(index=list(labels), columns=list(dict.fromkeys(d["attribute"])))
    vals = grid.to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0
    shown = np.where(np.isposinf(vals), vmax, np.where(np.isneginf(vals), vmin, vals))
    ylabels = [wrap_label(labels[q], 45, 2) for q in grid.index]
    with figure_style([*ylabels, *map(str, grid.columns), metric]):
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
        return save_figure(fig, out_png)



# ----------------------------------------------------------------------------------------------
# mitigation, calibration, training
# ----------------------------------------------------------------------------------------------
def plot_confusion(confusion: pd.DataFrame, attribute: str, k: int, out_png) -> Path:
    """Named class (rows) x retrieved class (columns) of the group-naming queries at k, from a
    `*_confusion.csv` table: cell colour is the row share, the text its count. The diagonal is
    the match rate; off-diagonal mass is aggregation bias (the named group retrieved as another)."""
    k = check_k(k)
    require(confusion, ["k", "attribute", "named_class", "retrieved_class", "count", "share"], "plot_confusion")
    d = select_rows(confusion, "plot_confusion", k=k, attribute=attribute)
    counts = d.pivot_table(index="named_class", columns="retrieved_class", values="count", aggfunc="sum",
                           sort=False, fill_value=0)
    counts = counts.reindex(columns=list(dict.fromkeys(d["retrieved_class"])), fill_value=0)
    totals = counts.sum(axis=1).to_numpy(dtype=float)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(totals > 0, counts.to_numpy(dtype=float) / totals, np.nan)
    rows, cols = [str(r) for r in counts.index], [str(c) for c in counts.columns]
    with figure_style([*rows, *cols, attribute]):
        fig = Figure(figsize=(0.75 * len(cols) + 3.2, 0.5 * len(rows) + 1.8), layout="constrained")
        ax = fig.subplots()
        cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#eeeeee")
        im = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        for (i, j), v in np.ndenumerate(counts.to_numpy()):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(cols)), [wrap_label(c, 12, 2) for c in cols], fontsize=7, rotation=45, ha="left")
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        ax.set_ylabel("class the query names")
        ax.set_title(f"retrieved {attribute} at k={k} (count; colour: row share)", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row")
        return save_figure(fig, out_png)


def plot_before_after(before: pd.DataFrame, after: pd.DataFrame, attribute: str, k: int, out_png,
                      labels=("before", "after")) -> Path:
    """Paired bars per query and class: the share of the top-k before and after mitigation
    (thesis Figures 4.37/4.40). Both tables are `*_classes.csv` tables (`query_id, k, attribute,
    class, proportion`; `proportion_low/high` give error bars, `dataset_proportion` a dashed
    line, `query` the panel titles, all when present). Queries are matched by `query_id`;
    classes follow `before`'s row order (classes only in `after` come last)."""
    k = check_k(k)
    cols = ["query_id", "k", "attribute", "class", "proportion"]
    require(before, cols, f"plot_before_after ({labels[0]})")
    require(after, cols, f"plot_before_after ({labels[1]})")
    b = select_rows(before, f"plot_before_after ({labels[0]})", attribute=attribute, k=k)
    a = select_rows(after, f"plot_before_after ({labels[1]})", attribute=attribute, k=k)
    in_after = set(a["query_id"])
    queries = [q for q in dict.fromkeys(b["query_id"]) if q in in_after]
    if not queries:
        raise PlotInputError(f"plot_before_after: no query_id in both tables for {attribute} at k={k}")
    names = {**query_labels(a), **query_labels(b)}
    ci = all(c in t.columns for t in (b, a) for c in ("proportion_low", "proportion_high"))
    n_cls = len(dict.fromkeys(list(b["class"]) + list(a["class"])))
    nrows, ncols = _panel_grid(len(queries), 3 if n_cls > 4 else 4)
    panel_w = max(2.8, 0.55 * n_cls + 1.1)
    with figure_style([*names.values(), *b["class"].astype(str), *a["class"].astype(str), *labels]):
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
            ax.set_xticks(x, [wrap_label(c, 16, 2) for c in map(str, order)], rotation=45, ha="right", rotation_mode="anchor")
            ax.set_title(wrap_label(names.get(qid, str(qid)), max(18, int(panel_w * 9)), 2))
        for ax in list(axes.flat)[len(queries):]:
            ax.set_visible(False)
        axes[0, 0].set_ylim(0, min(1.0, math.ceil(top * 1.1 * 10) / 10) if top > 0 else 1.0)
        for r in range(nrows):
            axes[r, 0].set_ylabel(f"share of top-{k}")
        handles = [Patch(color="#8c8c8c", label=str(labels[0])), Patch(color=PALETTE[0], label=str(labels[1]))]
        if "dataset_proportion" in b.columns or "dataset_proportion" in a.columns:
            handles.append(Line2D([], [], color="black", ls="--", lw=1.0, label="dataset share"))
        fig.legend(handles=handles, loc="outside upper right", ncols=len(handles))
        fig.suptitle(wrap_label(f"{attribute}: {labels[0]} vs {labels[1]}, top-{k}", 90, 2), fontsize=10, x=0.01, ha="left")
        return save_figure(fig, out_png)


def plot_calibration(table: pd.DataFrame, out_png, x="planted", y="measured", low="low", high="high",
                     hue="metric", parity="parity", title: str | None = None,
                     xlabel: str = "planted share", ylabel: str = "measured share") -> Path:
    """Planted vs measured: one colour per `hue` value, interval bars from `low`/`high`, the identity
    line (measured = planted) and, when the table has a `parity` column, a dotted line at each
    parity level (e.g. 0.5 for gender, 1/7 for race). Axes are 0-1 when all values are shares."""
    require(table, [x, y, low, high, hue], "plot_calibration")
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
    with figure_style([*hues, title or "", xlabel, ylabel]):
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
            ax.set_title(wrap_label(title, 60, 2))
        ax.legend(loc="upper left")
        return save_figure(fig, out_png)


def plot_losses(log: pd.DataFrame, out_png, title: str | None = None) -> Path:
    """Per-epoch loss curves from a losses.csv table: `epoch` plus one or more numeric loss columns
    (`step_count` and `seconds` are ignored; a column named `loss` is drawn as the thick total)."""
    require(log, ["epoch"], "plot_losses")
    skip = {"epoch", "step_count", "seconds", "step", "steps"}
    cols = [c for c in log.columns if c not in skip and pd.api.types.is_numeric_dtype(log[c])]
    if not cols:
        raise PlotInputError("plot_losses: no numeric loss column besides 'epoch' "
                             f"(have: {', '.join(map(str, log.columns))})")
    t = log.sort_values("epoch", kind="stable")
    with figure_style([*map(str, cols), title or ""]):
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
            ax.set_title(wrap_label(title, 60, 2))
        if len(cols) > 1 or cols[0] != "loss":
            ax.legend()
        return save_figure(fig, out_png)




def plot_pareto(board: pd.DataFrame, out_png, x: str, y: str, title: str | None = None) -> Path:
    """One point per method (the `method` column): fairness `y` (lower is better) against quality
    `x` (higher is better), with `<col>_low`/`<col>_high` as error bars when present."""
    require(board, ["method", x, y], "plot_pareto")
    t = board.dropna(subset=[x, y])
    if t.empty:
        raise PlotInputError(f"plot_pareto: no method has both {x} and {y}")
    with figure_style([*t["method"].astype(str), x, y]):
        fig = Figure(figsize=(6.4, 4.6), layout="constrained")
        ax = fig.subplots()
        for i, r in enumerate(t.itertuples(index=False)):
            d = r._asdict()
            err = lambda c: (np.array([[max(d[c] - d.get(f"{c}_low", d[c]), 0)], [max(d.get(f"{c}_high", d[c]) - d[c], 0)]])
                             if f"{c}_low" in d else None)
            ax.errorbar(d[x], d[y], xerr=err(x), yerr=err(y), fmt="o", color=PALETTE[i % len(PALETTE)], capsize=2,
                        elinewidth=0.8, label=str(d["method"]))
            ax.annotate(str(d["method"]), (d[x], d[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{x} (higher is better)")
        ax.set_ylabel(f"{y} (lower is better)")
        ax.set_title(wrap_label(title or f"{y} vs {x}", 80, 2), fontsize=9)
        return save_figure(fig, out_png)
