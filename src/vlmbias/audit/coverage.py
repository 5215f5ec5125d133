"""Coverage of the intervals the audit prints, measured by simulation rather than assumed.

Rankings are drawn from known group distributions (a focal class with share `s`, the other
classes sharing the rest evenly; items independent and identically distributed down the
ranking), pushed through the same `metrics.audit_tables` the workflow runs, and each printed 95%
interval is checked against the true value of what it estimates:

- `proportion` (Wilson and Clopper-Pearson): the focal class's share `s`;
- `rd`: 100 (s - q) / q for the focal class, q its dataset share;
- `fd` (thesis zero handling), `max_skew_uniform`, `max_skew_dataset`, `tvd`: the metric
  computed on the population distribution itself;
- `ndkl_uniform`, `ndkl_dataset`: NDKL depends on the order of the k items, so it has no
  population value; its estimand is its expectation over rankings of length k from the
  distribution, computed here by a separate large simulation.

Coverage = the share of replicates whose interval holds the true value; the target for a 95%
interval is 93-97%. `benchmarks/coverage.py` runs the grid and prints the table (README).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vlmbias.audit import metrics as m

ATTRIBUTES = {"gender": ["Male", "Female"],
              "race": ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic",
                       "Southeast Asian"]}
INTERVALS = {"fd": "fd", "tvd": "tvd", "max_skew_uniform": "max_skew_uniform",
             "max_skew_dataset": "max_skew_dataset", "ndkl_uniform": "ndkl_uniform", "ndkl_dataset": "ndkl_dataset"}
COLUMNS = ["attribute", "k", "share", "metric", "interval_method", "true_value", "coverage", "low_miss",
           "high_miss", "mean_width", "replicates"]


def population(share: float, n_classes: int) -> np.ndarray:
    """The focal class (index 0) at `share`, the others sharing the rest evenly."""
    rest = (1.0 - share) / (n_classes - 1)
    return np.array([share] + [rest] * (n_classes - 1))


def true_values(p: np.ndarray, q: np.ndarray, k: int, n_ndkl: int, rng: np.random.Generator) -> dict[str, float]:
    """The estimand of every summary metric for population p, dataset shares q and length k."""
    u = np.full(len(p), 1.0 / len(p))
    codes = rng.choice(len(p), size=(n_ndkl, k), p=p)
    return {"fd": float(p.max() / p[p > 0].min()), "tvd": float(0.5 * np.abs(p - q).sum()),
            "max_skew_uniform": float(np.max(np.log(p[p > 0] / u[p > 0]))),
            "max_skew_dataset": float(np.max(np.log(p[p > 0] / q[p > 0]))),
            "ndkl_uniform": float(m._ndkl_codes(codes, len(p), u).mean()),
            "ndkl_dataset": float(m._ndkl_codes(codes, len(p), q).mean())}


def simulate_coverage(ks=(20, 200, 1000), shares=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95), replicates: int = 200,
                      n_boot: int = 500, seed: int = 0, interval=m.INTERVAL_METHOD,
                      attributes=("gender", "race"), n_ndkl: int = 4000) -> pd.DataFrame:
    """Measured coverage of every 95% interval, one row per (attribute, k, share, metric, interval
    method). `interval`: one method of `metrics.INTERVAL_METHODS` or a list of them, each run on
    the same simulated rankings."""
    methods = [interval] if isinstance(interval, str) else list(interval)
    rng = np.random.default_rng(seed)
    rows = []
    for attr in attributes:
        classes = ATTRIBUTES[attr]
        q = np.full(len(classes), 1.0 / len(classes))  # a balanced dataset, as FairFace val roughly is
        dist = pd.DataFrame({"attribute": attr, "class": classes, "count": 1000, "percent": 100.0 / len(classes)})
        for k in ks:
            for share in shares:
                if share < 1.0 / len(classes):
                    continue
                p = population(share, len(classes))
                truth = true_values(p, q, k, n_ndkl, rng)
                codes = rng.choice(len(classes), size=(replicates, k), p=p)
                rankings = pd.DataFrame({"model": "sim", "dataset": "sim", "query_set": "sim",
                                         "query_id": np.repeat(np.arange(replicates).astype(str), k),
                                         "query": "q", "rank": np.tile(np.arange(1, k + 1), replicates),
                                         attr: np.asarray(classes, dtype=object)[codes.ravel()]})
                cell_seed = int(rng.integers(2 ** 31))
                for i, method in enumerate(methods):
                    cl, sm = m.audit_tables(rankings, dist, [k], n_boot=n_boot, seed=cell_seed, ci_method="wilson",
                                            n_sim=1, interval=method)
                    focal = cl[cl["class"] == classes[0]]
                    if i == 0:  # the share intervals do not depend on the interval method
                        rows.append(_row(attr, k, share, "proportion", "wilson", share, focal["proportion_low"],
                                         focal["proportion_high"]))
                        lo, hi = m.proportion_ci(focal["count"].to_numpy(), focal["n"].to_numpy(),
                                                 method="clopper-pearson")
                        rows.append(_row(attr, k, share, "proportion", "clopper-pearson", share, lo, hi))
                    rows.append(_row(attr, k, share, "rd", method, 100 * (share - q[0]) / q[0],
                                     focal["rd_low"], focal["rd_high"]))
                    for metric in INTERVALS:
                        rows.append(_row(attr, k, share, metric, method, truth[metric],
                                         sm[f"{metric}_low"], sm[f"{metric}_high"]))
    return pd.DataFrame(rows, columns=COLUMNS)


def lookup_table(table: pd.DataFrame) -> pd.DataFrame:
    """The slice `metrics.undercovering` reads (`coverage_measured.csv`): the interval methods'
    coverage per (classes, k, share, metric); share intervals are not looked up."""
    t = table[table["metric"] != "proportion"].copy()
    t["classes"] = t["attribute"].map(lambda a: len(ATTRIBUTES[a]))
    return t[["interval_method", "classes", "k", "share", "metric", "coverage"]].reset_index(drop=True)


def _row(attr, k, share, metric, method, truth, low, high) -> dict:
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    tol = 1e-9 * max(1.0, abs(truth))
    below, above = high < truth - tol, low > truth + tol
    return {"attribute": attr, "k": k, "share": share, "metric": metric, "interval_method": method,
            "true_value": truth, "coverage": float(1 - (below | above).mean()), "low_miss": float(above.mean()),
            "high_miss": float(below.mean()), "mean_width": float(np.mean(high - low)), "replicates": len(low)}
