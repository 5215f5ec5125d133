"""The model leaderboard figure: one panel per (dataset, query set) x attribute, every audited
model a row with its mean metric and 95% interval (the table of vlmbias.audit.leaderboard)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vlmbias.plots.base import PALETTE, PlotInputError, figure_style, require, save_figure, wrap_label

LABELS = {"max_skew_uniform": "mean MaxSkew@{k} (uniform target, ln, x1)",
          "ndkl_uniform": "mean NDKL@{k} (uniform target)", "tvd": "mean TVD@{k} from the dataset"}


def plot_model_leaderboard(board: pd.DataFrame, metric: str, out_png) -> Path:
    """Models on the y axis in the table's order (the configuration's), `metric` on x with its
    `_low`/`_high` interval; 0 (parity) marked. Panels: rows = (dataset, query set), columns =
    the attributes that have `<attribute>_<metric>` columns."""
    require(board, ["dataset", "model", "query_set", "k"], "plot_model_leaderboard")
    attrs = [c[: -len(metric) - 1] for c in board.columns if c.endswith(f"_{metric}")]
    if not attrs:
        raise PlotInputError(f"plot_model_leaderboard: no '<attribute>_{metric}' column")
    sets = list(dict.fromkeys(zip(board["dataset"], board["query_set"])))
    models = list(dict.fromkeys(board["model"]))
    y = {m: i for i, m in enumerate(models)}
    k = ",".join(map(str, sorted(set(board["k"]))))
    heading = (f"{LABELS.get(metric, metric).format(k=k)} per model, 95% interval; "
               "lower is fairer, 0 = every class equally retrieved")
    with figure_style([*map(str, models), *[s for pair in sets for s in map(str, pair)], heading]):
        fig = Figure(figsize=(2.0 + 3.0 * len(attrs), 0.9 + len(sets) * (0.6 + 0.22 * len(models))),
                     layout="constrained")
        axes = fig.subplots(len(sets), len(attrs), squeeze=False, sharey=True)
        for row, (dataset, qset) in enumerate(sets):
            t = board[(board["dataset"] == dataset) & (board["query_set"] == qset)]
            for col, a in enumerate(attrs):
                ax = axes[row, col]
                v = t[f"{a}_{metric}"].to_numpy(float)
                lo = t.get(f"{a}_{metric}_low", pd.Series(v)).to_numpy(float)
                hi = t.get(f"{a}_{metric}_high", pd.Series(v)).to_numpy(float)
                pos = np.array([y[m] for m in t["model"]])
                err = np.vstack([np.nan_to_num(v - lo).clip(min=0), np.nan_to_num(hi - v).clip(min=0)])
                ax.errorbar(v, pos, xerr=err, fmt="o", color=PALETTE[col % len(PALETTE)], capsize=2,
                            elinewidth=0.8, markersize=3.5)
                ax.axvline(0.0, color="#888888", linewidth=0.7, linestyle="--")
                ax.set_title(wrap_label(f"{a} | {dataset} / {qset}", 40, 2))
                ax.grid(True, axis="x", color="#dddddd", linewidth=0.6)
                ax.set_yticks(range(len(models)), [wrap_label(str(m), 40, 1) for m in models])
                ax.set_ylim(len(models) - 0.5, -0.5)
        fig.suptitle(wrap_label(heading, 110, 2), fontsize=9)
        return save_figure(fig, out_png)
