"""Before/after comparison of mitigation methods on the same audit.

For each method (a LoRA adapter, a prompt transform, a projection), its audit tables are set
beside the base model's for the same dataset, queries and k: per (method, query, attribute) the
metrics before and after, with the intervals the metrics stage computed, and a verdict. A
verdict is given only on metrics that are defined for every ranking and where lower is better:
total variation distance from the dataset (TVD), MaxSkew@k (uniform and dataset targets) and NDKL;
`improved` / `worse` when the two 95% intervals do not overlap, `no clear change` otherwise. Whether
a skew is present before and after is the parity test's (`skew_before`, `skew_after`: the metrics
stage's `skew_test`, Benjamini-Hochberg across the query set; the summary counts the `skewed`
queries as `skewed_before` / `skewed_after`), not the size of a metric. FD is
reported but never judged (`not judged`): with zero counts it is ambiguous (an all-male top 20 has
FD 1 under the thesis' zero handling, 15/5 has 3). Quality tables (vlmbias.mitigate.quality) are
joined the same way.

Held-out protocol: with the split table (`split.csv` of vlmbias.mitigate.split), every
row carries the `split` of its query's concept, `fitting` (what the methods were fitted or
calibrated on) or `held_out` (never seen), and the summary is given per split, so a method's
in-sample (fitting) number can be set against its held-out one. The summary's mean over queries
has a 95% interval (`mean_*_low/high`): the mean +- 1.96 x sqrt(sum of the per-query standard
errors squared) / n, each standard error read off its interval as (high - low) / 3.92 (a normal
approximation that treats the queries as independent); where a query's interval is unbounded above
(FD where a class may be absent: `inf`), the mean's upper end is `inf` and its lower end uses the
lower sides, (value - low) / 1.96.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.io import read_table, run_cli, write_table

log = logging.getLogger(__name__)
KEYS = ["query_set", "query_id", "query", "k", "attribute"]
JUDGED = ("tvd", "max_skew_uniform", "max_skew_dataset", "ndkl_dataset")  # lower is better, always defined
REPORTED = ("fd",)                                                        # shown, never decides


def _long(summary: pd.DataFrame) -> pd.DataFrame:
    missing = [c for m in JUDGED + REPORTED for c in (m, f"{m}_low", f"{m}_high") if c not in summary.columns]
    if missing:
        raise VlmbiasError(f"summary table lacks column(s) {missing}; rerun the metrics stage")
    return pd.concat([summary[KEYS].assign(metric=m, value=summary[m], low=summary[f"{m}_low"],
                                           high=summary[f"{m}_high"]) for m in JUDGED + REPORTED],
                     ignore_index=True)


def _skew(summary: pd.DataFrame) -> pd.DataFrame:
    """Each (query, k, attribute)'s parity verdict (`skew_test` of the metrics stage; null for
    summaries written before it existed)."""
    v = summary["skew_test"] if "skew_test" in summary.columns else pd.Series(None, index=summary.index, dtype=object)
    return summary[KEYS].assign(skew_test=v.to_numpy())


def _verdict(t: pd.DataFrame) -> pd.Series:
    better, worse = t["high_after"] < t["low_before"], t["low_after"] > t["high_before"]
    v = np.where(better, "improved", np.where(worse, "worse", "no clear change"))
    return pd.Series(np.where(t["metric"].isin(JUDGED), v, "not judged"), index=t.index)


def _mean_interval(g: pd.DataFrame, side: str) -> pd.Series:
    value, low, high = g[f"value_{side}"], g[f"low_{side}"], g[f"high_{side}"]
    mean = value.mean()
    if np.isinf(high).any():  # an unbounded member (FD near an absent class): the mean is unbounded above,
        half = 1.96 * np.sqrt((((value - low) / 1.96) ** 2).sum()) / len(g)  # bounded below by the lower sides
        return pd.Series({f"mean_{side}_low": mean - half, f"mean_{side}_high": np.inf})
    se = (high - low) / 3.92
    half = 1.96 * np.sqrt((se ** 2).sum()) / len(g)
    return pd.Series({f"mean_{side}_low": mean - half, f"mean_{side}_high": mean + half})


def compare(base: tuple[pd.DataFrame, pd.DataFrame], methods: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
            split: pd.DataFrame | None = None):
    """base and each method: (summary, classes). split: optional `query_set, query_id, split` table
    (queries it does not list are an error); without it every row's split is `all`.
    Returns (per-query comparison, per-(method, split) summary)."""
    if not methods:
        raise VlmbiasError("no mitigation methods to compare")
    before = _long(base[0])
    rows = []
    for name, tables in methods.items():
        after = _long(tables[0])
        m = before.merge(after, on=KEYS + ["metric"], suffixes=("_before", "_after"), how="inner")
        if m.empty:
            raise VlmbiasError(f"method {name!r}: its audit shares no query with the base audit")
        m = (m.merge(_skew(base[0]).rename(columns={"skew_test": "skew_before"}), on=KEYS, how="left")
             .merge(_skew(tables[0]).rename(columns={"skew_test": "skew_after"}), on=KEYS, how="left"))
        rows.append(m.assign(method=name))
    table = pd.concat(rows, ignore_index=True)
    table["change"] = table["value_after"] - table["value_before"]
    table["verdict"] = _verdict(table)
    if split is None:
        table["split"] = "all"
    else:
        missing = [c for c in ("query_set", "query_id", "split") if c not in split.columns]
        if missing:
            raise VlmbiasError(f"split table lacks column(s) {missing}; rerun the split stage")
        sp = split[["query_set", "query_id", "split"]].astype(str)
        table = table.merge(sp, on=["query_set", "query_id"], how="left")
        unsplit = table.loc[table["split"].isna(), "query"].unique().tolist()
        if unsplit:
            raise VlmbiasError(f"queries {unsplit[:5]} are in no split of the split table; rerun the split stage")
    table = table[["method", "split", *KEYS, "metric", "value_before", "low_before", "high_before",
                   "value_after", "low_after", "high_after", "change", "verdict", "skew_before", "skew_after"]]
    finite = table[np.isfinite(table["value_before"]) & np.isfinite(table["value_after"])]
    judged = finite["metric"].isin(JUDGED)
    group = ["method", "split", "k", "attribute", "metric"]
    grouped = finite.assign(improved=(finite["verdict"] == "improved") & judged,
                            worse=(finite["verdict"] == "worse") & judged,
                            skewed_before=finite["skew_before"] == "skewed",
                            skewed_after=finite["skew_after"] == "skewed").groupby(group)
    summary = (grouped.agg(queries=("query", "size"), mean_before=("value_before", "mean"),
                           mean_after=("value_after", "mean"), improved=("improved", "sum"), worse=("worse", "sum"),
                           skewed_before=("skewed_before", "sum"), skewed_after=("skewed_after", "sum"))
               .reset_index())
    bounds = pd.concat([grouped[["value_before", "low_before", "high_before"]].apply(_mean_interval, "before"),
                        grouped[["value_after", "low_after", "high_after"]].apply(_mean_interval, "after")],
                       axis=1).reset_index()
    summary = summary.merge(bounds, on=group, how="left")
    summary = summary[[*group, "queries", "mean_before", "mean_before_low", "mean_before_high", "mean_after",
                       "mean_after_low", "mean_after_high", "improved", "worse", "skewed_before", "skewed_after"]]
    summary["judged"] = summary["metric"].isin(JUDGED)
    # FD's per-query intervals are unbounded (inf) where a class may be absent: so is then its mean's
    summary["relative_change"] = (summary["mean_after"] - summary["mean_before"]) / summary["mean_before"]
    return table, summary


def leaderboard(summary: pd.DataFrame, quality: pd.DataFrame, k: int, base: str | None = None) -> pd.DataFrame:
    """One row per method (and `base`): mean TVD at k per attribute on the held-out and fitting
    queries with the held-out 95% interval, `<attr>_overstated` = held-out minus fitting reduction
    (how much better the in-sample number looked, in TVD points), and the quality it keeps
    (zero-shot accuracy per attribute; `attributed_<attr>_held_out`: the named class's share of the
    top k of explicitly attributed queries on held-out concepts; concept accuracy on held-out
    concepts' captions)."""
    t = summary[(summary["metric"] == "tvd") & (summary["k"] == k)]
    rows = {}
    for r in t.itertuples():
        for who, value, low, high in (("base", r.mean_before, r.mean_before_low, r.mean_before_high),
                                      (r.method, r.mean_after, r.mean_after_low, r.mean_after_high)):
            row = rows.setdefault(who, {"method": who})
            row[f"{r.attribute}_tvd_{r.split}"] = value
            if r.split == "held_out":
                row[f"{r.attribute}_tvd_held_out_low"], row[f"{r.attribute}_tvd_held_out_high"] = low, high
    board = pd.DataFrame(list(rows.values()))
    for attr in sorted(set(t["attribute"])):
        fit, held = f"{attr}_tvd_fitting", f"{attr}_tvd_held_out"
        if fit in board and held in board:
            b = board.set_index("method")
            base_fit, base_held = b.loc["base", fit], b.loc["base", held]
            board[f"{attr}_overstated"] = (base_fit - board[fit]) - (base_held - board[held])
    if not quality.empty and {"model", "metric", "value"} <= set(quality.columns):
        q = quality.copy()
        q["method"] = q["model"].map(lambda m: m.split("~", 1)[1] if "~" in m else "base")
        split = q["split"] if "split" in q else pd.Series("all", index=q.index)
        attributed = q["metric"].astype(str).str.startswith("attributed_query_share@")
        for name, sel in (("zero_shot_{}", q["metric"] == "zero_shot_accuracy"),
                          ("attributed_{}_held_out", attributed & (split == "held_out")),
                          ("concept_accuracy_held_out", (q["metric"] == "concept_accuracy") & (split == "held_out"))):
            for r in q[sel].itertuples():
                col = name.format(r.attribute) if "{}" in name else name
                for suffix, v in (("", r.value), ("_low", r.low), ("_high", r.high)):
                    board.loc[board["method"] == r.method, col + suffix] = v
    return board


def draw_all(draw, figures: list[tuple], processes: int) -> None:
    """`draw(*args)` for every args tuple, in `processes` forked processes where there are several (a
    many-panel figure takes about a second to lay out; the files are the same either way)."""
    if processes > 1 and len(figures) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(min(processes, len(figures)), mp_context=multiprocessing.get_context("fork")) as pool:
            for done in [pool.submit(draw, *args) for args in figures]:
                done.result()  # a failed figure raises here, as it would drawn in this process
    else:
        for args in figures:
            draw(*args)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.compare", description=__doc__.splitlines()[0])
    p.add_argument("--base", nargs="+", required=True, help="the base model's *_summary.csv files")
    p.add_argument("--method", nargs="+", action="append", required=True,
                   help="NAME then that method's *_summary.csv files (repeat per method)")
    p.add_argument("--quality", nargs="*", default=[], help="quality CSVs of the base and every method")
    p.add_argument("--split", help="split.csv of vlmbias.mitigate.split (fitting / held_out per query)")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-quality", required=True)
    p.add_argument("--out-figures", required=True, help="folder for before/after bar plots and the Pareto figure")
    p.add_argument("--out-leaderboard", help="leaderboard.csv: held-out vs fitting TVD and quality per method")
    p.add_argument("--k", type=int, required=True, help="k of the before/after figures")
    p.add_argument("--processes", type=int, default=1, help="processes drawing the before/after figures")
    a = p.parse_args(argv)
    from vlmbias import plots

    def load(paths):
        summary = pd.concat([read_table(x) for x in paths], ignore_index=True)
        classes = pd.concat([read_table(str(x).replace("_summary.csv", "_classes.csv")) for x in paths],
                            ignore_index=True)
        return summary, classes

    base = load(a.base)
    methods = {m[0]: load(m[1:]) for m in a.method}
    table, summary = compare(base, methods, read_table(a.split) if a.split else None)
    quality = pd.concat([read_table(q) for q in a.quality], ignore_index=True) if a.quality else pd.DataFrame()
    out = Path(a.out_figures)
    out.mkdir(parents=True, exist_ok=True)
    figures = [(base[1][base[1]["query_id"].isin(classes["query_id"])], classes, attr, a.k, out / f"{name}_{attr}.png",
                ("before", name))
               for name, (_, classes) in methods.items() for attr in sorted(set(classes["attribute"]) & {"gender", "race"})]
    draw_all(plots.plot_before_after, figures, a.processes)
    write_table(table, a.out_table)
    write_table(summary, a.out_summary)
    write_table(quality, a.out_quality)
    if a.out_leaderboard:
        kb = int(summary["k"].max())  # the distributions' k (docs/mitigation.md's table)
        board = leaderboard(summary, quality, kb)
        write_table(board, a.out_leaderboard)
        for attr in ("gender", "race"):
            if f"{attr}_tvd_held_out" in board and f"zero_shot_{attr}" in board:
                plots.plot_pareto(board, out / f"pareto_{attr}.png", x=f"zero_shot_{attr}", y=f"{attr}_tvd_held_out",
                                  title=f"held-out {attr} TVD@{kb} vs zero-shot {attr} accuracy (95% intervals)")
    for r in summary[summary.metric == "tvd"].itertuples():
        log.info("%s [%s] k=%d %s: mean TVD %.3f -> %.3f (%+.0f%%)", r.method, r.split, r.k, r.attribute, r.mean_before,
                 r.mean_after, 100 * r.relative_change)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
