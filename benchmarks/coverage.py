"""Measured coverage of every interval the audit prints (vlmbias.audit.coverage).

    python benchmarks/coverage.py [--replicates 200] [--n-boot 500] [--interval M ...] [--out coverage.csv]
                                  [--write-lookup]

Draws rankings from known group distributions at k = 20, 200, 1000 and focal shares 0.5 ... 0.95
(2 classes: gender; 7 classes: race), runs them through `metrics.audit_tables` and prints, per
interval, the share of replicates whose 95% interval holds the true value (target 93-97%).
Every interval method given is run on the same simulated rankings. Independent of the workflow;
the README's coverage table comes from this script, and `--write-lookup` writes the table that
`metrics.undercovering` reads (src/vlmbias/audit/coverage_measured.csv; column
`interval_undercovers` of every metrics table).
"""
import argparse
import os
import platform
import time

import pandas as pd

from vlmbias.audit import metrics
from vlmbias.audit.coverage import lookup_table, simulate_coverage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--ks", type=int, nargs="+", default=[20, 200, 1000])
    p.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    p.add_argument("--interval", nargs="+", default=["bootstrap-normal", "dirichlet"], choices=metrics.INTERVAL_METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the table as CSV")
    p.add_argument("--write-lookup", action="store_true", help=f"write {metrics.COVERAGE_TABLE}")
    a = p.parse_args()
    t0 = time.perf_counter()
    table = simulate_coverage(a.ks, a.shares, a.replicates, a.n_boot, a.seed, a.interval)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.replicates} replicates, "
          f"{a.n_boot} bootstrap resamples / posterior draws, seed {a.seed}, {time.perf_counter() - t0:.0f} s")
    wide = table.pivot_table(index=["attribute", "metric", "interval_method", "k"], columns="share",
                             values="coverage").round(3)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(wide.to_string())
    print()
    for method, t in table.groupby("interval_method", sort=False):
        c = t["coverage"]
        print(f"{method}: {int(c.between(0.93, 0.97).sum())} of {len(t)} (metric, k, share) cells cover 93-97%; "
              f"{int((c < 0.93).sum())} under-cover, {int((c > 0.97).sum())} over-cover")
    if a.out:
        table.to_csv(a.out, index=False)
    if a.write_lookup:
        lookup_table(table).to_csv(metrics.COVERAGE_TABLE, index=False)


if __name__ == "__main__":
    main()
