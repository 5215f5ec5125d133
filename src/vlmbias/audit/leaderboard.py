"""The model leaderboard: headline bias metrics of every audited model side by side.

One row per (dataset, model, query set) at one k (`leaderboard.k`, default the largest of
retrieval.k). Per attribute, the mean over the set's queries of three metrics, read from the
metric summaries (`metrics/<dataset>/<model>/<qset>_summary.csv`, vlmbias.audit.metrics):

- `max_skew_uniform`: MaxSkew@k against the uniform target over the dataset's classes, in the
  summaries' convention (column `skew_convention`; `published` = raw retrieved share, a class
  absent from the top k counted as 1/k, natural log, scale x1: multiply by 100 for papers that
  print x100); 0 = every class equally retrieved.
- `ndkl_uniform`: NDKL of the ranking's top k against the uniform target (natural log).
- `tvd`: total variation distance between the top-k shares and the dataset's shares (0 to 1).

Lower is fairer for all three. Each mean has a 95% interval: mean +- 1.96 x sqrt(sum of the
per-query standard errors squared) / n, clipped to the metric's range, each standard error read
off the query's interval as max(value - low, high - value) / 1.96: exact for bootstrap-normal
intervals (clipping at a bound leaves the other side intact); for the default `dirichlet-test`, the
`dirichlet` and the percentile intervals, which are asymmetric, the wider side, so a conservative
approximation (a query whose interval is unbounded above, `inf`, makes the mean's upper end `inf`; its
lower end then uses the lower sides). It treats the set's queries as fixed and independent: it says
how precisely each model's mean is measured on these queries, not how it would vary over other
query lists. `<attribute>_queries` counts the queries whose top k had a labelled item for that
attribute (the mean's n); queries without one are left out of the mean.

The rows are in the order of the configuration (models, then query sets), not ranked: with
overlapping intervals a rank would claim more than the numbers hold.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.io import parse_json_arg, read_table, run_cli, write_table

log = logging.getLogger(__name__)

# each metric's range, to clip the mean's interval: MaxSkew against the uniform target is never
# negative (some class holds at least 1/C of the top k), though the summaries' bootstrap interval may be
METRICS = {"max_skew_uniform": (0.0, np.inf), "ndkl_uniform": (0.0, np.inf), "tvd": (0.0, 1.0)}
KEYS = ["dataset", "model", "model_id", "query_set", "k", "queries"]
Z = 1.959963984540054  # the 95% normal quantile


def model_id(spec: dict) -> str:
    """What a configured model is: "<arch>:<tag>" for open_clip, else its hub id or folder (kept
    free of torch: this stage runs in the report environment)."""
    if spec.get("backend") == "open_clip":
        return f"{spec.get('name')}:{spec.get('pretrained')}"
    return str(spec.get("name"))


def mean_interval(values, low, high) -> tuple[float, float, float, int]:
    """(mean, low, high, n) over the finite values: see the module docstring."""
    v, lo, hi = (np.asarray(x, dtype=float) for x in (values, low, high))
    keep = np.isfinite(v)
    n = int(keep.sum())
    if not n:
        return np.nan, np.nan, np.nan, 0
    v, lo, hi = v[keep], lo[keep], hi[keep]
    mean = float(v.mean())
    if np.isinf(hi).any():  # an unbounded member: the mean is unbounded above, bounded below by the lower sides
        return mean, mean - Z * float(np.sqrt((((v - lo) / Z) ** 2).sum())) / n, np.inf, n
    se = np.maximum(v - lo, hi - v) / Z
    half = Z * float(np.sqrt((se ** 2).sum())) / n
    return mean, mean - half, mean + half, n


def model_leaderboard(summary: pd.DataFrame, k: int, model_ids: dict | None = None) -> pd.DataFrame:
    """The leaderboard table (module docstring) from the concatenated summaries of every model."""
    need = ["dataset", "model", "query_set", "query_id", "k", "attribute", "skew_convention", "interval_method",
            *[c for m in METRICS for c in (m, f"{m}_low", f"{m}_high")]]
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise VlmbiasError(f"metric summaries lack column(s) {missing}; rerun the metrics stage")
    at_k = summary[summary["k"] == k]
    if at_k.empty:
        raise VlmbiasError(f"the metric summaries have no rows at k={k} (they have k {sorted(set(summary['k']))}); "
                           "leaderboard.k must be one of retrieval.k")
    dup = at_k.duplicated(["dataset", "model", "query_set", "query_id", "attribute"])
    if dup.any():
        r = at_k[dup].iloc[0]
        raise VlmbiasError(f"query {r['query_id']!r} of {r['dataset']}/{r['model']}/{r['query_set']} appears twice "
                           "at the same k: the same summary file given twice?")
    attributes = list(dict.fromkeys(at_k["attribute"]))
    rows = []
    for (dataset, model, qset), g in at_k.groupby(["dataset", "model", "query_set"], sort=False):
        row = {"dataset": dataset, "model": model, "model_id": (model_ids or {}).get(model, model),
               "query_set": qset, "k": k, "queries": g["query_id"].nunique()}
        for a in attributes:
            ga = g[g["attribute"] == a]
            row[f"{a}_queries"] = int(np.isfinite(ga["max_skew_uniform"].to_numpy(float)).sum())
            for m, (floor, ceil) in METRICS.items():
                mean, lo, hi, _ = mean_interval(ga[m], ga[f"{m}_low"], ga[f"{m}_high"])
                row.update({f"{a}_{m}": mean, f"{a}_{m}_low": max(lo, floor) if np.isfinite(lo) else lo,
                            f"{a}_{m}_high": min(hi, ceil) if np.isfinite(hi) else hi})
        for c in ("skew_convention", "interval_method"):
            row[c] = ";".join(sorted(map(str, g[c].dropna().unique())))
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("--summaries", nargs="+", required=True, help="every audited model's *_summary.csv")
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--model-specs-json", default="{}", help="{model: its config spec}, for the model_id column")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-figure", required=True)
    a = p.parse_args(argv)
    from vlmbias.plots.leaderboard import plot_model_leaderboard

    summary = pd.concat([read_table(f) for f in a.summaries], ignore_index=True)
    specs = parse_json_arg(a.model_specs_json, "--model-specs-json")
    board = model_leaderboard(summary, a.k, {m: model_id(s) for m, s in specs.items()})
    write_table(board, a.out_table)
    plot_model_leaderboard(board, "max_skew_uniform", Path(a.out_figure))
    log.info("model leaderboard: %d models x %d query sets at k=%d", board["model"].nunique(),
             board["query_set"].nunique(), a.k)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
