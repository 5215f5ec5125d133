"""Coverage of the intervals the audit prints, measured by simulation rather than assumed.

Rankings are drawn from known group distributions, pushed through the same `metrics.audit_tables`
the workflow runs, and each printed 95% interval is checked against the true value of what it
estimates. Two kinds of ranking:

- `iid`: a focal class with share `s` at every rank, the other classes sharing the rest evenly;
  `s = 1/C` is parity (an unbiased model);
- `decay`: the focal class's share falls linearly from 0.8 at rank 1 to 0.5 at rank k (the
  others sharing the rest evenly), as real retrieval lists do; its `share` column is the mean
  focal share over the k ranks.

The true values: `proportion` (Wilson and Clopper-Pearson) the focal class's mean share `s`;
`rd` 100 (s - q) / q for the focal class, q its dataset share; `fd` (thesis zero handling),
`max_skew_uniform`, `max_skew_dataset`, `tvd` the metric of the expected composition of the top
k; `ndkl_uniform`, `ndkl_dataset`: NDKL depends on the order of the k items, so its estimand is
its expectation over rankings of length k from the same process, computed by a separate large
simulation. The dataset is balanced, so a `*_dataset` metric equals its `*_uniform` twin in every
cell; `benchmarks/coverage.py` counts each such pair once.

Coverage = the share of replicates whose interval holds the true value; the target for a 95%
interval is 93-97% (with R replicates its Monte-Carlo standard error is sqrt(c (1 - c) / R)).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vlmbias.audit import metrics as m

ATTRIBUTES = {"gender": ["Male", "Female"],
              "age4": ["child", "young adult", "adult", "senior"],
              "race": ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic",
                       "Southeast Asian"],
              "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]}
PARITY, DECAY = "parity", "decay"  # scenario names accepted among `shares`
INTERVALS = {"fd": "fd", "tvd": "tvd", "max_skew_uniform": "max_skew_uniform",
             "max_skew_dataset": "max_skew_dataset", "ndkl_uniform": "ndkl_uniform", "ndkl_dataset": "ndkl_dataset"}
COLUMNS = ["attribute", "classes", "k", "scenario", "share", "metric", "interval_method", "true_value", "coverage", "low_miss",
           "high_miss", "mean_width", "replicates"]


def population(share: float, n_classes: int) -> np.ndarray:
    """The focal class (index 0) at `share`, the others sharing the rest evenly."""
    rest = (1.0 - share) / (n_classes - 1)
    return np.array([share] + [rest] * (n_classes - 1))


def rank_profile(share, n_classes: int, k: int) -> np.ndarray:
    """[k, C] class probabilities at each rank: `share` a number (iid, focal share at every rank),
    `parity` (1/C) or `decay` (focal share 0.8 at rank 1 falling linearly to 0.5 at rank k)."""
    if share == PARITY:
        share = 1.0 / n_classes
    if share == DECAY:
        focal = np.linspace(0.8, 0.5, k) if k > 1 else np.array([0.8])
        rest = (1.0 - focal) / (n_classes - 1)
        return np.column_stack([focal] + [rest] * (n_classes - 1))
    return np.tile(population(float(share), n_classes), (k, 1))


def draw_codes(profile: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, k] class codes, rank j drawn from profile[j] independently."""
    cum = np.cumsum(profile, axis=1)
    cum[:, -1] = 1.0
    u = rng.random((n, len(profile)))
    return (u[:, :, None] >= cum[None, :, :]).sum(axis=2)


def true_values(p: np.ndarray, q: np.ndarray, k: int, n_ndkl: int, rng: np.random.Generator) -> dict[str, float]:
    """The estimand of every summary metric for population p ([C], or [k, C] per rank), dataset
    shares q and length k: count metrics on the expected composition of the top k, NDKL's mean
    over `n_ndkl` simulated rankings."""
    profile = np.tile(p, (k, 1)) if np.ndim(p) == 1 else np.asarray(p)
    p = profile.mean(axis=0)
    u = np.full(len(p), 1.0 / len(p))
    codes = draw_codes(profile, n_ndkl, rng)
    return {"fd": float(p.max() / p[p > 0].min()), "tvd": float(0.5 * np.abs(p - q).sum()),
            "max_skew_uniform": float(np.max(np.log(p[p > 0] / u[p > 0]))),
            "max_skew_dataset": float(np.max(np.log(p[p > 0] / q[p > 0]))),
            "ndkl_uniform": float(m._ndkl_codes(codes, len(p), u).mean()),
            "ndkl_dataset": float(m._ndkl_codes(codes, len(p), q).mean())}


def simulate_coverage(ks=(20, 200, 1000), shares=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95), replicates: int = 200,
                      n_boot: int = 500, seed: int = 0, interval=m.INTERVAL_METHOD,
                      attributes=("gender", "race"), n_ndkl: int = 4000, n_sim: int = 2000) -> pd.DataFrame:
    """Measured coverage of every 95% interval, one row per (attribute, k, scenario/share, metric,
    interval method). `shares`: focal shares (those below 1/C are skipped for C classes), `parity`
    and/or `decay`. `interval`: one method of `metrics.INTERVAL_METHODS` or a list of them, each run
    on the same simulated rankings. `n_sim`: draws of the goodness-of-fit null (methods that use
    the test)."""
    methods = [interval] if isinstance(interval, str) else list(interval)
    rng = np.random.default_rng(seed)
    rows = []
    for attr in attributes:
        classes = ATTRIBUTES[attr]
        C = len(classes)
        q = np.full(C, 1.0 / C)  # a balanced dataset, as FairFace val roughly is
        dist = pd.DataFrame({"attribute": attr, "class": classes, "count": 1000, "percent": 100.0 / C})
        for k in ks:
            for share in shares:
                if not isinstance(share, str) and share < 1.0 / C - 1e-9:
                    continue
                if share == PARITY and any(not isinstance(s, str) and abs(s - 1.0 / C) < 1e-9 for s in shares):
                    continue  # parity already listed as a number
                profile = rank_profile(share, C, k)
                s_mean = float(profile[:, 0].mean())
                cell = {"attribute": attr, "classes": C, "k": k, "share": round(s_mean, 4),
                        "scenario": DECAY if share == DECAY else "iid"}
                truth = true_values(profile, q, k, n_ndkl, rng)
                codes = draw_codes(profile, replicates, rng)
                rankings = pd.DataFrame({"model": "sim", "dataset": "sim", "query_set": "sim",
                                         "query_id": np.repeat(np.arange(replicates).astype(str), k),
                                         "query": "q", "rank": np.tile(np.arange(1, k + 1), replicates),
                                         attr: np.asarray(classes, dtype=object)[codes.ravel()]})
                cell_seed = int(rng.integers(2 ** 31))
                for i, method in enumerate(methods):
                    cl, sm = m.audit_tables(rankings, dist, [k], n_boot=n_boot, seed=cell_seed, ci_method="wilson",
                                            n_sim=n_sim, interval=method)
                    focal = cl[cl["class"] == classes[0]]
                    if i == 0:  # the share intervals do not depend on the interval method
                        rows.append(_row(cell, "proportion", "wilson", s_mean, focal["proportion_low"],
                                         focal["proportion_high"]))
                        lo, hi = m.proportion_ci(focal["count"].to_numpy(), focal["n"].to_numpy(),
                                                 method="clopper-pearson")
                        rows.append(_row(cell, "proportion", "clopper-pearson", s_mean, lo, hi))
                    rows.append(_row(cell, "rd", method, 100 * (s_mean - q[0]) / q[0], focal["rd_low"], focal["rd_high"]))
                    for metric in INTERVALS:
                        rows.append(_row(cell, metric, method, truth[metric], sm[f"{metric}_low"], sm[f"{metric}_high"]))
    return pd.DataFrame(rows, columns=COLUMNS)


def lookup_table(table: pd.DataFrame) -> pd.DataFrame:
    """The slice `metrics.undercovering` reads (`coverage_measured.csv`): the interval methods'
    coverage per (classes, k, share, metric) of the iid rankings; share intervals are not looked up."""
    t = table[(table["metric"] != "proportion") & (table["scenario"] == "iid")].copy()
    return t[["interval_method", "classes", "k", "share", "metric", "coverage"]].reset_index(drop=True)


def _row(cell: dict, metric, method, truth, low, high) -> dict:
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    tol = 1e-9 * max(1.0, abs(truth))
    below, above = high < truth - tol, low > truth + tol
    with np.errstate(invalid="ignore"):
        width = high - low
    return {**cell, "metric": metric, "interval_method": method, "true_value": truth,
            "coverage": float(1 - (below | above).mean()), "low_miss": float(above.mean()),
            "high_miss": float(below.mean()), "mean_width": float(np.mean(width)), "replicates": len(low)}
