"""Repeated splits (`mitigation.split.folds` > 1): the per-fold comparisons, averaged over folds.

Each fold has its own concept split, its own fitted methods and its own comparison
(`mitigation/folds/<fold>/comparison_summary.csv`, vlmbias.mitigate.compare). This stage sets them
side by side:
- `comparison.csv`: every fold's per-query table, with a `fold` column first;
- `comparison_summary.csv`: per (method, split, k, attribute, metric), the mean over folds of each
  fold's number. `folds` says over how many folds. `mean_before_fold_low/high`,
  `mean_after_fold_low/high` and `change_fold_low/high` are Student-t 95% intervals over folds
  (mean +- t(0.975, folds - 1) x sd / sqrt(folds), sd with ddof 1; empty with one fold), the
  spread of the split itself. Beside them, `mean_before_low/high` and `mean_after_low/high` are the
  folds' per-query intervals (vlmbias.mitigate.compare) averaged bound by bound; `queries`,
  `improved`, `worse`, `skewed_before` and `skewed_after` are per-fold means; `change` is
  mean_after - mean_before and `relative_change` change / mean_before;
- `quality.csv`: every fold's quality rows with a `fold` column (a fitted method's model named
  without its fold tag, so that one method is one name);
- `leaderboard.csv`: vlmbias.mitigate.compare's leaderboard of the summary over folds and of the
  quality averaged over folds, plus `<attr>_tvd_held_out_fold_low/high`, the t-interval over folds.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd
from scipy import stats

from vlmbias import VlmbiasError
from vlmbias.io import read_table, run_cli, write_table

log = logging.getLogger(__name__)
GROUP = ["method", "split", "k", "attribute", "metric"]
AVERAGED = ["queries", "mean_before", "mean_before_low", "mean_before_high", "mean_after", "mean_after_low",
            "mean_after_high", "improved", "worse", "skewed_before", "skewed_after"]
COLUMNS = [*GROUP, "folds", "queries", "mean_before", "mean_before_low", "mean_before_high", "mean_before_fold_low",
           "mean_before_fold_high", "mean_after", "mean_after_low", "mean_after_high", "mean_after_fold_low",
           "mean_after_fold_high", "change", "change_fold_low", "change_fold_high", "improved", "worse",
           "skewed_before", "skewed_after", "judged", "relative_change"]


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of `values` (df = n - 1); NaN bounds for one value."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise VlmbiasError("a t-interval needs at least one fold's value")
    mean = float(v.mean())
    if v.size < 2 or not np.isfinite(v).all():
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


def combine(summaries: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """{fold: that fold's comparison_summary} -> the summary over folds (module docstring)."""
    if not summaries:
        raise VlmbiasError("no fold comparison to combine")
    frames = []
    for fold, s in summaries.items():
        missing = [c for c in GROUP + AVERAGED + ["judged"] if c not in s.columns]
        if missing:
            raise VlmbiasError(f"fold {fold}'s comparison summary lacks column(s) {missing}; rerun its compare stage")
        frames.append(s.assign(fold=fold, change=s["mean_after"] - s["mean_before"]))
    rows = []
    for key, g in pd.concat(frames, ignore_index=True).groupby(GROUP, sort=True):
        row = dict(zip(GROUP, key))
        row["folds"] = g["fold"].nunique()
        row.update(g[AVERAGED].mean().to_dict())
        for col, out in (("mean_before", "mean_before_fold"), ("mean_after", "mean_after_fold"), ("change", "change_fold")):
            _, row[f"{out}_low"], row[f"{out}_high"] = t_interval(g[col])
        row["change"] = row["mean_after"] - row["mean_before"]
        row["judged"] = bool(g["judged"].iloc[0])
        row["relative_change"] = row["change"] / row["mean_before"] if row["mean_before"] else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)[COLUMNS]


def fold_quality(qualities: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Every fold's quality rows, `fold` first, `<base>~<method>~fold<f>` named `<base>~<method>`."""
    frames = [q.assign(fold=f) for f, q in qualities.items() if not q.empty]
    if not frames:
        return pd.DataFrame()
    q = pd.concat(frames, ignore_index=True)
    q["model"] = q["model"].astype(str).str.replace(r"~fold\d+$", "", regex=True)
    return q[["fold", *[c for c in q.columns if c != "fold"]]]


def fold_leaderboard(summary: pd.DataFrame, quality: pd.DataFrame, k: int) -> pd.DataFrame:
    """The leaderboard (vlmbias.mitigate.compare.leaderboard) of the means over folds, with the
    held-out TVD's t-interval over folds beside its averaged per-query one."""
    from vlmbias.mitigate.compare import leaderboard

    if not quality.empty:
        keys = ["model", "metric", "attribute", "split"]
        quality = quality.groupby(keys, dropna=False)[["value", "low", "high", "n"]].mean().reset_index()
    board = leaderboard(summary, quality, k)
    held = summary[(summary["metric"] == "tvd") & (summary["k"] == k) & (summary["split"] == "held_out")]
    for r in held.itertuples():
        for who, side in (("base", "before"), (r.method, "after")):
            for end in ("low", "high"):
                board.loc[board["method"] == who, f"{r.attribute}_tvd_held_out_fold_{end}"] = getattr(
                    r, f"mean_{side}_fold_{end}")
    return board


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.folds", description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", required=True, help="every fold's comparison.csv, in fold order")
    p.add_argument("--summaries", nargs="+", required=True, help="every fold's comparison_summary.csv, in fold order")
    p.add_argument("--qualities", nargs="*", default=[], help="every fold's quality.csv, in fold order")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-quality")
    p.add_argument("--out-leaderboard")
    a = p.parse_args(argv)
    if len(a.tables) != len(a.summaries):
        raise VlmbiasError(f"{len(a.tables)} comparison tables but {len(a.summaries)} summaries; give one of each per fold")
    table = pd.concat([read_table(t).assign(fold=f) for f, t in enumerate(a.tables)], ignore_index=True)
    table = table[["fold", *[c for c in table.columns if c != "fold"]]]
    summary = combine({f: read_table(s) for f, s in enumerate(a.summaries)})
    quality = fold_quality({f: read_table(q) for f, q in enumerate(a.qualities)})
    write_table(table, a.out_table)
    write_table(summary, a.out_summary)
    if a.out_quality:
        write_table(quality, a.out_quality)
    if a.out_leaderboard:
        write_table(fold_leaderboard(summary, quality, int(summary["k"].max())), a.out_leaderboard)
    for r in summary[(summary.metric == "tvd") & (summary.split == "held_out")].itertuples():
        log.info("%s k=%d %s: held-out mean TVD over %d folds %.3f -> %.3f [%.3f, %.3f]", r.method, r.k, r.attribute,
                 r.folds, r.mean_before, r.mean_after, r.mean_after_fold_low, r.mean_after_fold_high)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
