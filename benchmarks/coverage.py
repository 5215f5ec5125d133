"""Measured coverage of every interval the audit prints (vlmbias.audit.coverage).

    python benchmarks/coverage.py [--replicates 100] [--n-boot 400] [--interval M ...] [--out coverage.csv]
                                  [--write-lookup]

Draws rankings from known group distributions at k = 20, 100, 200, 1000 for 2, 4, 7 and 9 classes
(gender, a 4-class age, race, FairFace's 9 age bins): parity (an unbiased model), a focal class at
0.3, 0.5 and 0.8 (iid down the ranking), and `decay` (the focal share falling from 0.8 at rank 1 to
0.5 at rank k). Runs them through `metrics.audit_tables` and prints, per interval, the share of
replicates whose 95% interval holds the true value (target 93-97%), every interval method on the
same simulated rankings. The dataset is balanced, so each `*_dataset` metric equals its `*_uniform`
twin: the counts below count each pair once. Independent of the workflow; docs/intervals.md's
coverage table comes from this script, and `--write-lookup` writes the table that
`metrics.undercovering` reads (src/vlmbias/audit/coverage_measured.csv; column
`interval_undercovers` of every metrics table).
"""
import argparse
import os
import platform
import time

import numpy as np
import pandas as pd

from vlmbias.audit import metrics
from vlmbias.audit.coverage import simulate_coverage, lookup_table


def _share(text: str):
    return text if text in ("parity", "decay") else float(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicates", type=int, default=100)
    p.add_argument("--n-boot", type=int, default=400)
    p.add_argument("--ks", type=int, nargs="+", default=[20, 100, 200, 1000])
    p.add_argument("--shares", type=_share, nargs="+", default=["parity", 0.3, 0.5, 0.8, "decay"])
    p.add_argument("--attributes", nargs="+", default=["gender", "age4", "race", "age"])
    p.add_argument("--interval", nargs="+", default=["dirichlet", "dirichlet-test"], choices=metrics.INTERVAL_METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the table as CSV")
    p.add_argument("--write-lookup", action="store_true",
                   help=f"write {metrics.COVERAGE_TABLE} (rows of interval methods not simulated here are kept)")
    p.add_argument("--from-csv", nargs="+", help="print (and --write-lookup) the union of earlier --out tables "
                   "instead of simulating (a grid run in parts)")
    a = p.parse_args()
    t0 = time.perf_counter()
    if a.from_csv:
        table = pd.concat([pd.read_csv(f) for f in a.from_csv], ignore_index=True)
        reps = int(table["replicates"].min())
        print(f"# the union of {len(a.from_csv)} tables, {reps}+ replicates per cell (Monte-Carlo SE of a coverage "
              f"near 0.95: {np.sqrt(0.95 * 0.05 / reps):.3f})")
    else:
        table = simulate_coverage(a.ks, a.shares, a.replicates, a.n_boot, a.seed, a.interval, a.attributes)
        mc = np.sqrt(0.95 * 0.05 / a.replicates)
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.replicates} replicates "
              f"(Monte-Carlo SE of a coverage near 0.95: {mc:.3f}), {a.n_boot} bootstrap resamples / posterior "
              f"draws, seed {a.seed}, {time.perf_counter() - t0:.0f} s")
    table["cell"] = np.where(table["scenario"] == "decay", "decay",
                             np.where(np.isclose(table["share"], 1.0 / table["classes"], atol=1e-3), "parity",
                                      table["share"].map("{:g}".format)))
    wide = table.pivot_table(index=["classes", "metric", "interval_method", "k"], columns="cell",
                             values="coverage", sort=False).round(3)
    with pd.option_context("display.width", 200, "display.max_rows", 2000):
        print(wide.to_string())
    print()
    once = table[~table["metric"].str.endswith("_dataset")]  # balanced dataset: *_dataset repeats *_uniform
    for method, t in once.groupby("interval_method", sort=False):
        c = t["coverage"]
        worst = t.loc[c.idxmin()]
        print(f"{method}: {int(c.between(0.93, 0.97).sum())} of {len(t)} (classes, metric, k, cell) cells cover "
              f"93-97%; {int((c < 0.93).sum())} under-cover, {int((c > 0.97).sum())} over-cover; worst "
              f"{worst['coverage']:.3f} ({worst['metric']}, {worst['classes']} classes, k {worst['k']}, {worst['cell']})")
    if a.out:
        table.drop(columns="cell").to_csv(a.out, index=False)
    if a.write_lookup:
        new = lookup_table(table)
        old = pd.read_csv(metrics.COVERAGE_TABLE) if metrics.COVERAGE_TABLE.exists() else new.iloc[:0]
        kept = old[~old["interval_method"].isin(set(new["interval_method"]))]
        pd.concat([kept, new], ignore_index=True).to_csv(metrics.COVERAGE_TABLE, index=False)


if __name__ == "__main__":
    main()
