"""Bias metrics for one ranking: small pure functions plus the workflow's table builder.

Usable from a notebook on any ranking (``from vlmbias import metrics``). Inputs are plain:

- ``labels``: a sequence of class labels in rank order (best first). Null labels (unlabelled
  images) are dropped everywhere; a non-null label outside ``classes`` is an error.
- ``classes``: the attribute's full class order, so that absent classes count as 0.
- proportions (``dataset_props``, ``target_props``): a dict/Series class -> weight, or an array
  aligned with the counts. Weights are normalised to sum to 1, so counts, proportions and
  percentages are all accepted; classes missing from a dict/Series get weight 0.

Conventions (see each function; docs/metrics.md "How to compare with published numbers"): Fairness
Disparity follows the thesis' zero handling, with a strict variant; Representation Disparity is in
percent and NaN where the dataset has 0% of a class; Skew@k, MaxSkew@k and MinSkew@k follow the
published definition by default (Geyik et al. 2019; Berg et al. 2022 and its code, reused by
BendVLM, SANER and FairerCLIP): the raw retrieved share, a class absent from the top k counted as
1/k, natural log, scale x1 (papers often print x100), NaN where the target is 0. An additive
pseudo-count is available as an explicit option (``eps``). KL divergences use the natural log
with 0·log 0 = 0. "Top k" is always the first k ranks; unlabelled items among them are not
counted, and ``n`` says how many labelled items there were (shares divide by n; absent = 1/n).
Empty or blank labels are unlabelled, never a class.

References: thesis eqs. 3.1-3.2 and code 4.6-4.7; Geyik, Ambler & Kenthapadi (2019), "Fairness-aware
ranking in search & recommendation systems" (Skew@k, NDKL); Berg et al. (2022), "A prompt array
keeps the bias away" (MaxSkew, NDKL for CLIP retrieval).
"""
from __future__ import annotations

import argparse
import functools
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special  # not scipy.stats: its import costs every metrics job about 0.3 s

from vlmbias import VlmbiasError

log = logging.getLogger(__name__)

__all__ = [
    "MetricsInputError", "class_counts", "fairness_disparity", "representation_disparity", "skew",
    "max_skew", "min_skew", "ndkl", "kl_divergence", "uniform_target", "proportion_ci", "bootstrap_ci",
    "goodness_of_fit", "adjust_p", "skew_verdicts",
    "match_rate", "confusion_matrix", "confusion_table", "audit_tables", "CLASS_COLUMNS", "SUMMARY_COLUMNS",
]

KEY_COLUMNS = ["model", "dataset", "query_set", "query_id", "query"]
CONVENTION_COLUMNS = ["skew_convention", "interval_method", "interval_undercovers"]
# why a row measures fewer than k items, ';'-joined (empty: it measures k): `k_above_images`, the
# query's rankings hold fewer than k images (k above the dataset size); `k_above_labelled`, the
# dataset labels fewer than k images for this attribute. A warning in the log; an error when strict.
FLAG_COLUMNS = ["flags"]
COVERAGE_TABLE = Path(__file__).with_name("coverage_measured.csv")  # written by benchmarks/coverage.py
CLASS_COLUMNS = KEY_COLUMNS + [
    "k", "n", "attribute", "class", "count", "proportion", "proportion_low", "proportion_high",
    "dataset_proportion", "rd", "rd_low", "rd_high", "skew_uniform", "skew_dataset"] + CONVENTION_COLUMNS + FLAG_COLUMNS
SUMMARY_COLUMNS = KEY_COLUMNS + [
    "k", "n", "attribute", "fd", "fd_low", "fd_high", "fd_strict", "tvd", "tvd_low", "tvd_high",
    "max_skew_uniform", "max_skew_uniform_low", "max_skew_uniform_high", "min_skew_uniform",
    "max_skew_dataset", "max_skew_dataset_low", "max_skew_dataset_high", "min_skew_dataset",
    "ndkl_uniform", "ndkl_uniform_low", "ndkl_uniform_high", "ndkl_dataset", "ndkl_dataset_low",
    "ndkl_dataset_high", "kl_dataset", "chi2", "p_value", "p_adjusted", "skew_test", "named_class", "match_rate",
    "match_low", "match_high"] + CONVENTION_COLUMNS + FLAG_COLUMNS
SKEW_CONVENTION = "published"  # raw share, absent class = 1/n (Geyik 2019; Berg 2022)
INTERVAL_METHOD = "dirichlet-test"  # test inversion at the target; fewest measured shortfalls (benchmarks/COVERAGE.txt)
N_SIM = 10_000
SKEW_TEST = "benjamini-hochberg"  # multiplicity adjustment of `p_value` across a query set's queries
SKEW_ALPHA = 0.05  # a query is `skewed` where its adjusted p-value is at most this


class MetricsInputError(VlmbiasError, ValueError):
    """Bad input to a metric: a ValueError, and a VlmbiasError so the CLI prints it as one line."""


# ---------------------------------------------------------------- helpers

def labelled(labels) -> pd.Series:
    """The labels as an object Series with null, empty and blank labels set to None (unlabelled)."""
    lab = pd.Series(labels, dtype=object) if not isinstance(labels, pd.Series) else labels.astype(object)
    blank = lab.map(lambda v: isinstance(v, str) and not v.strip())
    return lab.where(lab.notna() & ~blank, None)


def _codes(labels, classes: Sequence) -> np.ndarray:
    """Class index of each labelled item, in rank order (null, empty and blank labels dropped)."""
    lab = labelled(labels)
    lab = lab[lab.notna()]
    codes = pd.Index(list(classes)).get_indexer(lab)
    bad = codes < 0
    if bad.any():
        raise MetricsInputError(f"label(s) {sorted(map(str, pd.unique(lab[bad])))[:5]} not among classes {list(classes)}")
    return codes.astype(np.intp)


def _counts_array(counts) -> tuple[np.ndarray, pd.Index]:
    s = counts if isinstance(counts, pd.Series) else pd.Series(np.asarray(counts))
    arr = s.to_numpy(dtype=float)
    if arr.ndim != 1 or (arr < 0).any():
        raise MetricsInputError("counts must be a 1-d vector of non-negative numbers")
    return arr, s.index


def _props(props, index: pd.Index, what: str = "proportions") -> np.ndarray:
    """Weights aligned to `index` (dict/Series reindexed, missing -> 0; arrays by position), summing to 1."""
    if isinstance(props, (dict, pd.Series)):
        p = pd.Series(props, dtype=float).reindex(index, fill_value=0.0).to_numpy(dtype=float)
    else:
        p = np.asarray(props, dtype=float)
        if p.shape != (len(index),):
            raise MetricsInputError(f"{what}: expected {len(index)} values aligned with the counts, got shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or p.sum() <= 0:
        raise MetricsInputError(f"{what} must be non-negative with a positive sum over the classes {list(index)} "
                                "(pass counts as a Series indexed by class, or proportions as an aligned array)")
    return p / p.sum()


def _fd(c: np.ndarray, strict: bool) -> np.ndarray:
    """FD over the last axis of a counts array (vectorised form of `fairness_disparity`)."""
    c = np.asarray(c, dtype=float)
    mx = c.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if strict:
            return np.where((c == 0).any(axis=-1), np.inf, mx / c.min(axis=-1))
        mn = np.where(c > 0, c, np.inf).min(axis=-1)
        return np.where(np.isfinite(mn), mx / mn, mx)


def _rd(c: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = 100.0 * c / c.sum(axis=-1, keepdims=True)
        return np.where(q > 0, (ret - 100.0 * q) / q, np.nan)  # (ret% - q%) / q% * 100


def _skew(c: np.ndarray, q: np.ndarray, eps: float | None = None) -> np.ndarray:
    """Skew over the last axis. eps None: the published convention (raw share, a zero count counted
    as one item, i.e. 1/n); eps >= 0: additive pseudo-count (eps = 0 gives -inf for a zero count)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = c.sum(axis=-1, keepdims=True)
        if eps is None:
            p = np.where(c > 0, c, 1.0) / n
        else:
            p = (c + eps) / (n + eps * c.shape[-1])
        return np.where(q > 0, np.log(p / q), np.nan)


def skew_convention(eps: float | None) -> str:
    """The name written beside skew columns: `published` or `pseudocount=<eps>`."""
    return SKEW_CONVENTION if eps is None else f"pseudocount={eps:g}"


def _tvd(c: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance between the retrieved shares and q over the last axis."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * np.abs(c / c.sum(axis=-1, keepdims=True) - q).sum(axis=-1)


def _ndkl_codes(codes: np.ndarray, n_classes: int, q: np.ndarray) -> np.ndarray:
    """NDKL of each row of a [B, k] matrix of class codes (rank order along axis 1).

    Uses KL(top-i || q) = (1/i) sum_c n_c ln n_c - ln i - (1/i) sum_{j<=i} ln q(code_j), with
    sum_c n_c ln n_c updated incrementally from each item's occurrence number, so no [B, k, C] array.
    """
    return _ndkl_codes_targets(codes, n_classes, [q])[0]


def _occurrences(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """[B, k]: each item's occurrence number of its class within its row so far (1 for the first)."""
    if n_classes <= 6 or codes.size == 0:  # a cumulative count per class
        occ = np.zeros(codes.shape, dtype=np.intp)
        for c in range(n_classes):
            mask = codes == c
            occ += mask * np.cumsum(mask, axis=1)
        return occ
    # many classes: one stable sort by (row, class) keeps rank order within each run of equal keys,
    # and an item's occurrence number is its place in its run (the same integers, 1.5-3x faster)
    key = (codes + n_classes * np.arange(codes.shape[0])[:, None]).ravel()
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    place = np.arange(key.size)
    run_start = np.maximum.accumulate(np.where(np.r_[True, sorted_key[1:] != sorted_key[:-1]], place, 0))
    occ = np.empty(key.size, dtype=np.intp)
    occ[order] = place - run_start + 1
    return occ.reshape(codes.shape)


def _ndkl_codes_targets(codes: np.ndarray, n_classes: int, targets: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`_ndkl_codes` of the same codes against each target in `targets`: the occurrence numbers and
    the n ln n increments, which do not depend on the target, are computed once."""
    codes = np.atleast_2d(codes)
    k = codes.shape[1]
    if k == 0:
        return [np.full(codes.shape[0], np.nan) for _ in targets]
    occ = _occurrences(codes, n_classes)
    xlx = special.xlogy(np.arange(k + 1), np.arange(k + 1))   # n ln n, 0 ln 0 = 0
    xlx_inc = xlx[occ] - xlx[occ - 1]
    i = np.arange(1, k + 1)
    w = 1.0 / np.log2(i + 1)
    out = []
    for q in targets:
        with np.errstate(divide="ignore"):
            inc = xlx_inc - np.log(q)[codes]
        kl = np.cumsum(inc, axis=1) / i - np.log(i)   # [B, k]
        kl[kl < 1e-12] = 0.0  # the incremental sum leaves ~1e-17 where the prefix matches the target exactly
        out.append(kl @ w / w.sum())
    return out


INTERVAL_METHODS = ("bootstrap-normal", "bootstrap-percentile", "dirichlet", "dirichlet-test")
INTERVAL_WORDS = {"bootstrap-normal": "bootstrap (estimate +- 1.96 SE, clipped)",
                  "bootstrap-percentile": "bootstrap percentile",
                  "dirichlet": "Dirichlet posterior of the shares (prior 1/C per class), holding the estimate",
                  "dirichlet-test": "test inversion for TVD and MaxSkew (reaching 0 where the goodness-of-fit "
                                    "test keeps parity), posteriors of blocks of ranks for NDKL, simultaneous "
                                    "share intervals for FD (inf where a share may be 0)"}
PRIOR_MASS = 1.0  # Dirichlet prior: 1/C per class (Perks), total one item; Jeffreys' 1/2 for two classes


def prior(n_classes: int) -> float:
    """Prior pseudo-count per class of the `dirichlet` interval: PRIOR_MASS / n_classes."""
    return PRIOR_MASS / max(n_classes, 1)
NDKL_INNER = 8  # predictive rankings averaged per share draw for NDKL (interval method `dirichlet`)


def _hold(lo, hi, estimate, bounds=(-np.inf, np.inf)):
    """Widen (lo, hi) just enough to hold the estimate, then clip to the metric's range."""
    est = np.asarray(estimate, dtype=float)
    lo = np.where(np.isfinite(est), np.fmin(lo, est), np.nan)
    hi = np.where(np.isfinite(est), np.fmax(hi, est), np.nan)
    return np.clip(lo, *bounds), np.clip(hi, *bounds)


def posterior_shares(counts, active, n_draws: int, seed) -> np.ndarray:
    """[n_draws, C] draws of the class shares from their posterior Dirichlet(counts + 1/C) over the
    `active` classes (those the dataset has); inactive classes get share 0. Seeded: the same
    counts and seed give the same draws."""
    c = np.asarray(counts, dtype=float)
    active = np.asarray(active, dtype=bool)
    out = np.zeros((n_draws, len(c)))
    out[:, active] = np.random.default_rng(seed).dirichlet(c[active] + prior(int(active.sum())), size=n_draws)
    return out


def posterior_codes(shares: np.ndarray, k: int, seed) -> np.ndarray:
    """One ranking of k class codes per row of `shares` ([B, C]), items drawn independently:
    the posterior predictive ranking that NDKL (an order-dependent metric) is computed on."""
    cum = np.cumsum(shares, axis=1)
    cum[:, -1] = 1.0
    u = np.random.default_rng(seed).random((len(shares), k))
    code = np.zeros(u.shape, dtype=np.intp)  # the class boundaries each draw passes, one class at a time
    for c in range(cum.shape[1]):               # (no [B, k, C] array: 2-5x faster, the same codes)
        code += u >= cum[:, c:c + 1]
    return np.minimum(code, shares.shape[1] - 1)


def shares_hold_target(counts, target, level: float) -> bool:
    """Whether every active class's equal-tailed posterior interval (the Beta marginal of
    Dirichlet(counts + 1/C)) holds its target share: then a distance-to-target metric's
    interval reaches down to its value at the target (a distance cannot be negative, so the
    posterior of |p - q| lies wholly above 0 even when p = q; this keeps it from excluding 0)."""
    c = np.asarray(counts, dtype=float)
    t = np.asarray(target, dtype=float)
    act = t > 0
    a = c[act] + prior(int(act.sum()))
    b = a.sum() - a
    alpha = 1.0 - level
    lo, hi = special.betaincinv(a, b, alpha / 2), special.betaincinv(a, b, 1 - alpha / 2)
    return bool(np.all((lo <= t[act]) & (t[act] <= hi)))


def _boot_interval(values: np.ndarray, estimate, level: float, method: str, bounds=(-np.inf, np.inf)):
    """Bootstrap interval over axis 0. ``bootstrap-normal``: estimate +- z * SE of the resampled
    values, clipped to the metric's range, so the interval always holds its estimate (a percentile
    interval of a biased statistic such as NDKL can lie wholly above it). ``bootstrap-percentile``:
    the plain percentile interval. NaN where the estimate or every resampled value is NaN."""
    if method == "bootstrap-percentile":
        return _interval(values, level)
    if method != "bootstrap-normal":
        raise MetricsInputError(f"unknown interval method {method!r}; expected one of {list(INTERVAL_METHODS)}")
    values = np.asarray(values, dtype=float)
    z = special.ndtri(0.5 + level / 2.0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN
        finite = np.where(np.isfinite(values), values, np.nan)
        se = np.nanstd(finite, axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
    est = np.asarray(estimate, dtype=float)
    se = np.where(np.isfinite(est), se, np.nan)
    return np.clip(est - z * se, *bounds), np.clip(est + z * se, *bounds)


def _interval(values: np.ndarray, level: float):
    """Percentile interval over axis 0, ignoring NaN; NaN where every value is NaN."""
    a = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN
        lo, hi = np.nanquantile(np.asarray(values, dtype=float), [a, 1.0 - a], axis=0)
    return lo, hi


def _nanext(fn, x: np.ndarray) -> float:
    """np.nanmax/np.nanmin that returns NaN (no warning) when every value is NaN."""
    x = np.asarray(x, dtype=float)
    return float(fn(x)) if (~np.isnan(x)).any() else np.nan


def _boot_index(k: int, n_boot: int, seed) -> np.ndarray:
    """One [n_boot, k] draw of positions with replacement, each row sorted (rank order kept)."""
    return np.sort(np.random.default_rng(seed).integers(0, k, size=(n_boot, k)), axis=1)


def _resample(codes: np.ndarray, n_classes: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap resamples of `codes` by an index matrix: (codes [n_boot, k], counts [n_boot, C])."""
    bc = codes[idx]
    n_boot = len(idx)
    counts = np.bincount((bc + n_classes * np.arange(n_boot)[:, None]).ravel(),
                         minlength=n_boot * n_classes).reshape(n_boot, n_classes)
    return bc, counts


def monte_carlo_p(observed: float, null: np.ndarray) -> float:
    """Monte-Carlo p-value (1 + #{null >= observed}) / (1 + n_sim), never 0 (Davison & Hinkley 1997, ch. 4).
    The small tolerance counts statistics equal up to float rounding as ties."""
    hits = int((np.asarray(null) >= observed - 1e-9 * max(1.0, observed)).sum())
    return (1 + hits) / (1 + len(null))


def _gof_null(n: int, p: np.ndarray, n_sim: int, seed) -> np.ndarray:
    """Chi-square statistics of `n_sim` multinomial(n, p) draws (p restricted to p > 0)."""
    e = n * p
    sims = np.random.default_rng(seed).multinomial(n, p, size=n_sim)
    return ((sims - e) ** 2 / e).sum(axis=1)


def _gof(c: np.ndarray, p: np.ndarray, n_sim: int, seed, cache: dict | None = None) -> tuple[float, float]:
    n = int(round(c.sum()))
    if n == 0:
        return np.nan, np.nan
    pos = p > 0
    if (c[~pos] > 0).any():
        return np.inf, 0.0
    e = n * p[pos]
    chi2 = float(((c[pos] - e) ** 2 / e).sum())
    key = (n, p.tobytes())
    null = cache.get(key) if cache is not None else None
    if null is None:
        null = _gof_null(n, p[pos], n_sim, seed)
        if cache is not None:
            cache[key] = null
    return chi2, monte_carlo_p(chi2, null)


def adjust_p(p_values, method: str = SKEW_TEST) -> np.ndarray:
    """Multiplicity-adjusted p-values over a family of tests; NaN stays NaN and is not counted.
    ``benjamini-hochberg`` (false discovery rate; under the global null, as for a fair model, it
    also bounds the chance of any false "skewed" by alpha): p_(i) m / i, made monotone from the
    largest down; ``holm`` (family-wise error): max over j <= i of p_(j) (m - j + 1); ``none``."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if not m:
        return out
    order = np.argsort(p[ok], kind="stable")
    ps = p[ok][order]
    i = np.arange(1, m + 1)
    if method == "benjamini-hochberg":
        adj = np.minimum.accumulate((ps * m / i)[::-1])[::-1]
    elif method == "holm":
        adj = np.maximum.accumulate(ps * (m - i + 1))
    elif method == "none":
        adj = ps
    else:
        raise MetricsInputError(f"unknown p-value adjustment {method!r}; expected benjamini-hochberg, holm or none")
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def skew_verdicts(summary: pd.DataFrame, method: str = SKEW_TEST, alpha: float = SKEW_ALPHA) -> pd.DataFrame:
    """`summary` with `p_adjusted` (its `p_value` adjusted by `method` across the queries of each
    (model, dataset, query set, k, attribute)) and `skew_test`: `skewed` where p_adjusted <= alpha,
    `no skew shown` where not, null where untested (no labelled item)."""
    out = summary.copy()
    keys = ["model", "dataset", "query_set", "k", "attribute"]
    adj = pd.Series(np.nan, index=out.index)
    for _, g in out.groupby(keys, sort=False, dropna=False):
        adj.loc[g.index] = adjust_p(g["p_value"].to_numpy(dtype=float), method)
    out["p_adjusted"] = adj
    out["skew_test"] = np.where(adj.isna(), None, np.where(adj <= alpha, "skewed", "no skew shown"))
    return out


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise MetricsInputError(f"level must be in (0, 1), got {level}")


# ---------------------------------------------------------------- public metrics

def class_counts(labels, classes: Sequence) -> pd.Series:
    """Number of labels per class, indexed by `classes` in that order, zeros kept (nulls dropped)."""
    c = np.bincount(_codes(labels, classes), minlength=len(classes))
    return pd.Series(c.astype(int), index=pd.Index(list(classes), name="class"), name="count")


def uniform_target(classes: Sequence) -> pd.Series:
    """Uniform target distribution: 1/C for each of the C classes."""
    return pd.Series(1.0 / len(classes), index=pd.Index(list(classes), name="class"), name="proportion")


def fairness_disparity(counts, strict: bool = False) -> float:
    """Fairness Disparity (thesis eq. 3.1): count of the most / of the least represented class.

    1 is perfect, larger is more biased. ``strict=False`` reproduces the thesis code (4.6): the
    minimum is taken over the classes with a non-zero count, so a ranking with a single class
    present gets max/max = 1 (e.g. 20 Male, 0 Female -> 1.0), and when no non-zero count exists
    the max count itself is returned (all zero -> 0.0). ``strict=True`` returns ``inf`` as soon
    as any class has zero count (20 Male, 0 Female -> inf).
    """
    c, _ = _counts_array(counts)
    if c.size == 0:
        raise MetricsInputError("counts is empty")
    return float(_fd(c, strict))


def representation_disparity(counts, dataset_props) -> pd.Series:
    """Representation Disparity per class (thesis eq. 3.2), in percent.

    RD = (retrieved% - dataset%) / dataset% * 100; 0 matches the dataset, > 0 over-represented.
    E.g. 19 of 20 Male, FairFace val 5792 Male / 5162 Female: (95 - 52.8757) / 52.8757 * 100 =
    79.67 (thesis Table 4.3; the rounded 52.88% would give 79.65). NaN where the dataset
    proportion is 0 (the thesis code divided by 1e-6 instead).
    """
    c, idx = _counts_array(counts)
    return pd.Series(_rd(c, _props(dataset_props, idx, "dataset_props")), index=idx, name="rd")


def skew(counts, target_props, eps: float | None = None) -> pd.Series:
    """Skew@k per class (Geyik et al. 2019): ln(p_retrieved / p_target).

    Default (``eps=None``), the published convention of Geyik et al. and of Berg et al.'s code:
    p_retrieved = count / n, and a class with count 0 is counted as 1/n (no log of 0), so with
    n = k it is 1/k. E.g. 15 of 20 Male against a uniform target: ln(0.75 / 0.5) = 0.4055.
    ``eps >= 0`` instead smooths with an additive pseudo-count, p = (count + eps) / (n + eps * C)
    (eps = 0.5: Jeffreys / Krichevsky-Trofimov, 0.3895 in the example; ``eps=0``: -inf for a zero
    count). NaN where the target proportion is 0.
    """
    if eps is not None and eps < 0:
        raise MetricsInputError(f"eps must be >= 0, got {eps}")
    c, idx = _counts_array(counts)
    return pd.Series(_skew(c, _props(target_props, idx, "target_props"), eps), index=idx, name="skew")


def max_skew(counts, target_props, eps: float | None = None) -> float:
    """MaxSkew@k: the largest Skew@k over classes (the most over-represented class); NaN classes ignored."""
    return _nanext(np.nanmax, skew(counts, target_props, eps).to_numpy())


def min_skew(counts, target_props, eps: float | None = None) -> float:
    """MinSkew@k: the smallest Skew@k over classes (the most under-represented class); NaN classes ignored."""
    return _nanext(np.nanmin, skew(counts, target_props, eps).to_numpy())


def ndkl(labels, classes: Sequence, target_props) -> float:
    """Normalised discounted KL divergence (Geyik et al. 2019; Berg et al. 2022).

    NDKL = (1/Z) * sum_{i=1..k} KL(D_top-i || D_target) / log2(i + 1), Z = sum_{i=1..k} 1/log2(i + 1),
    with KL(P||Q) = sum_c P_c ln(P_c / Q_c) (natural log, 0·ln 0 = 0). 0 only when every prefix
    matches the target; +inf when a retrieved class has target 0; NaN for an empty ranking.
    """
    q = _props(target_props, pd.Index(list(classes)), "target_props")
    return float(_ndkl_codes(_codes(labels, classes)[None, :], len(classes), q)[0])


def _kl(c: np.ndarray, q: np.ndarray) -> float:
    p = c / c.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return float(terms.sum())


def kl_divergence(counts, target_props) -> float:
    """KL@k = KL(P_topk || P_target) = sum_c p_c ln(p_c / q_c), natural log, 0·ln 0 = 0, no
    smoothing: p = the top k's class shares (its labelled items), q = the target mix (the dataset's
    for the summary column `kl_dataset`). The retrieval KL of BendVLM (Gerych et al., NeurIPS 2024;
    its released code's `get_kl`: the same direction against the dataset's attribute prior, natural
    log, absent classes adding 0; its 1e-10 floor on the ratio never binds for a top k drawn from the
    dataset), which SEM also reports; 0 when the mixes match, +inf when the top k holds a class the
    target gives 0, NaN with no labelled item."""
    c, index = _counts_array(counts)
    q = _props(target_props, index, "target_props")
    return _kl(c, q) if c.sum() > 0 else float("nan")


def proportion_ci(count, n, level: float = 0.95, method: str = "wilson"):
    """Confidence interval (low, high) for a binomial proportion count/n, vectorised over arrays.

    ``wilson``: Wilson score interval; ``clopper-pearson`` (alias ``exact``): Beta quantiles,
    low = Beta(a/2; x, n-x+1), high = Beta(1-a/2; x+1, n-x). NaN where n = 0. Scalars in, floats out.
    """
    _check_level(level)
    x, n = np.asarray(count, dtype=float), np.asarray(n, dtype=float)
    if (x < 0).any() or (x > n).any():
        raise MetricsInputError("proportion_ci: need 0 <= count <= n")
    alpha = 1.0 - level
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "wilson":
            z = special.ndtri(1.0 - alpha / 2.0)
            p = x / n
            den = 1.0 + z * z / n
            centre = (p + z * z / (2 * n)) / den
            half = z / den * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
            low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
        elif method in ("clopper-pearson", "exact"):
            low = np.where(x > 0, special.betaincinv(x, n - x + 1, alpha / 2), 0.0)
            high = np.where(x < n, special.betaincinv(x + 1, n - x, 1 - alpha / 2), 1.0)
        else:
            raise MetricsInputError(f"unknown CI method {method!r}; expected wilson or clopper-pearson")
    low, high = np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def bootstrap_ci(labels, classes: Sequence, statistic: Callable, n_boot: int = 1000, level: float = 0.95,
                 seed=0, vectorized: bool = False):
    """Percentile bootstrap interval (low, high) of ``statistic(counts)``.

    The k retrieved labels are treated as a sample of what the model retrieves for the query and
    resampled with replacement: one [n_boot, k] index matrix is drawn from ``numpy.random
    .default_rng(seed)``, so a given seed gives identical intervals. ``statistic`` maps a counts
    vector (np.ndarray aligned to ``classes``) to a number or a 1-d array (then low/high are
    arrays); with ``vectorized=True`` it receives the whole [n_boot, C] matrix and returns
    [n_boot] or [n_boot, m]. NaN values are ignored; the interval is NaN for an empty ranking.
    """
    _check_level(level)
    if n_boot < 1:
        raise MetricsInputError(f"n_boot must be at least 1, got {n_boot}")
    codes = _codes(labels, classes)
    if len(codes) == 0:
        return np.nan, np.nan
    _, counts = _resample(codes, len(classes), _boot_index(len(codes), n_boot, seed))
    values = statistic(counts) if vectorized else np.array([statistic(c) for c in counts])
    lo, hi = _interval(np.asarray(values, dtype=float), level)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def goodness_of_fit(counts, dataset_props, n_sim: int = N_SIM, seed=0) -> tuple[float, float]:
    """Pearson chi-square of the retrieved counts against the dataset distribution, Monte-Carlo p-value.

    chi2 = sum_c (O_c - E_c)^2 / E_c with E = n * dataset proportion. With k = 20 and several
    classes the expected counts are small and the chi-square approximation is unreliable, so the
    p-value is simulated: p = (1 + #{simulated chi2 >= observed}) / (1 + n_sim) over ``n_sim``
    multinomial(n, dataset proportions) draws (seeded). Classes with dataset proportion 0 are left
    out; a retrieved count in such a class gives (inf, 0.0). (NaN, NaN) when n = 0.
    """
    c, idx = _counts_array(counts)
    return _gof(c, _props(dataset_props, idx, "dataset_props"), n_sim, seed)


def match_rate(labels, named_class, level: float = 0.95, method: str = "wilson") -> tuple[float, float, float]:
    """Aggregation bias: share of the (non-null) labels equal to the class the query names, with its CI.

    E.g. "a Black person" -> named_class "Black". Returns (rate, low, high); NaN for no labels.
    """
    lab = pd.Series(labels, dtype=object)
    lab = lab[lab.notna()]
    n, x = len(lab), int((lab == named_class).sum())
    if n == 0:
        return np.nan, np.nan, np.nan
    low, high = proportion_ci(x, n, level, method)
    return x / n, low, high


def confusion_matrix(named_classes, retrieved_labels, classes: Sequence) -> pd.DataFrame:
    """Named class (rows) x retrieved class (columns) counts, both in ``classes`` order, zeros kept.

    ``named_classes`` and ``retrieved_labels`` are parallel: for each retrieved image, the class
    its query names and the image's label (e.g. all rows of the group-naming queries).
    """
    named = pd.Series(named_classes, dtype=object).reset_index(drop=True)
    got = pd.Series(retrieved_labels, dtype=object).reset_index(drop=True)
    if len(named) != len(got):
        raise MetricsInputError(f"named_classes ({len(named)}) and retrieved_labels ({len(got)}) differ in length")
    keep = named.notna() & got.notna()
    r, c = _codes(named[keep], classes), _codes(got[keep], classes)
    m = np.bincount(r * len(classes) + c, minlength=len(classes) ** 2).reshape(len(classes), len(classes))
    return pd.DataFrame(m, index=pd.Index(list(classes), name="named"),
                        columns=pd.Index(list(classes), name="retrieved"))


# ---------------------------------------------------------------- the workflow's table builder

def _validate(rankings: pd.DataFrame, distribution: pd.DataFrame, ks, attributes):
    for name, df, need in (("distribution", distribution, ["attribute", "class", "count", "percent"]),
                           ("rankings", rankings, KEY_COLUMNS + ["rank"])):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise MetricsInputError(f"{name} table lacks column(s) {missing}")
    if rankings.empty:
        raise MetricsInputError("rankings table is empty: no retrieved images to measure")
    ks = sorted({int(k) for k in ks}) if ks is not None else []
    if not ks:
        raise MetricsInputError("no k given")
    if ks[0] < 1:
        raise MetricsInputError(f"k must be at least 1, got {ks[0]}")
    known = list(pd.unique(distribution["attribute"]))
    attributes = list(attributes) if attributes else known
    absent = [a for a in attributes if a not in known]
    if absent:
        raise MetricsInputError(f"attribute(s) {absent} absent from the dataset distribution (has {known})")
    no_col = [a for a in attributes if a not in rankings.columns]
    if no_col:
        raise MetricsInputError(f"rankings table lacks attribute column(s) {no_col}")
    return ks, attributes


def audit_tables(rankings: pd.DataFrame, distribution: pd.DataFrame, ks: list[int],
                 attributes: list[str] | None = None, n_boot: int = 1000, seed=0,
                 ci_method: str = "wilson", level: float = 0.95, n_sim: int = N_SIM,
                 skew_eps: float | None = None, interval: str = INTERVAL_METHOD,
                 strict: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class and per-(query, k, attribute) metric tables (docs/artifacts.md, "Metrics").

    For each query (rows sorted by ``rank``), each k and each attribute, the first k ranks are
    used; unlabelled items among them (null or blank label) are left out of that attribute and
    ``n`` reports how many labelled items remain (shares divide by n, never by k); when a query has
    fewer rows than k all of them are used. Skew, MaxSkew and MinSkew follow the published
    convention unless ``skew_eps`` sets a pseudo-count (column ``skew_convention``); the uniform
    target spreads over the classes the dataset has. Intervals: ``proportion_*`` by ``ci_method``;
    ``rd_*``, ``fd_*``, ``max_skew_*`` and ``ndkl_*`` by the bootstrap (``n_boot`` resamples of the
    top k, rank order kept for NDKL, ``seed`` reused for every (query, k, attribute)) with method
    ``interval`` (column ``interval_method``). ``p_value`` is the Monte-Carlo goodness-of-fit
    p-value against the dataset distribution; ``p_adjusted`` and ``skew_test`` the parity verdict
    across the query set (`skew_verdicts`: Benjamini-Hochberg, skewed at adjusted p <= 0.05). For queries that name a group (columns ``names_attribute``/``names_class``), the
    summary row of the named attribute carries ``named_class`` and ``match_rate`` with its
    interval; other rows have them null. ``attributes`` empty or None means every attribute.
    A k above the images ranked per query or above the images the dataset labels is flagged
    (column ``flags``) and warned about once, or refused when ``strict``.
    """
    ks, attributes = _validate(rankings, distribution, ks, attributes)
    _check_level(level)
    if n_boot < 1 or n_sim < 1:
        raise MetricsInputError(f"n_boot and n_sim must be at least 1, got {n_boot} and {n_sim}")
    if interval not in INTERVAL_METHODS:
        raise MetricsInputError(f"unknown interval method {interval!r}; expected one of {list(INTERVAL_METHODS)}")
    if skew_eps is not None and skew_eps < 0:
        raise MetricsInputError(f"skew pseudo-count must be >= 0 or null, got {skew_eps}")
    classes = {a: g["class"].tolist() for a, g in distribution.groupby("attribute", sort=False)}
    dprops = {}
    for a in attributes:
        g = distribution[distribution["attribute"] == a]
        w = g["count"].to_numpy(dtype=float)
        if not w.sum() > 0:
            w = g["percent"].to_numpy(dtype=float)
        dprops[a] = _props(w, pd.Index(classes[a]), f"dataset distribution of {a!r}")
    has_names = {"names_attribute", "names_class"} <= set(rankings.columns)
    convention = {"skew_convention": skew_convention(skew_eps), "interval_method": interval}
    shrunk = _check_k(rankings, distribution, ks, attributes, strict)

    ranked = rankings.sort_values("rank", kind="stable")
    class_parts, summary_rows = [], []
    boot_idx, gof_null = {}, {}  # same seed for every group: draw once per n (and per n, p)
    for key, g in ranked.groupby(KEY_COLUMNS, sort=False, dropna=False):
        keyd = dict(zip(KEY_COLUMNS, key))
        names = (g["names_attribute"].dropna(), g["names_class"].dropna()) if has_names else ((), ())
        named_attr = names[0].iloc[0] if len(names[0]) else None
        named_cls = names[1].iloc[0] if len(names[1]) else None
        for a in attributes:
            cls, q, C = classes[a], dprops[a], len(classes[a])
            u = np.where(q > 0, 1.0 / (q > 0).sum(), 0.0)
            for k in ks:
                flags = ";".join(f for f in ("k_above_images", "k_above_labelled") if (a, k, f) in shrunk
                                 or (f == "k_above_images" and len(g) < k))
                codes = _codes(g[a].iloc[:k], cls)  # the first k ranks, then their labelled items
                n = len(codes)
                c = np.bincount(codes, minlength=C).astype(float)
                nan_c = np.full(C, np.nan)
                convention["interval_undercovers"] = undercovering(int((q > 0).sum()), n,
                                                                   c.max() / n if n else np.nan, interval)
                sk_u, sk_d = _skew(c, u, skew_eps), _skew(c, q, skew_eps)
                est = {"fd": float(_fd(c, False)) if n else np.nan, "tvd": float(_tvd(c, q)) if n else np.nan,
                       "max_skew_uniform": _nanext(np.nanmax, sk_u), "max_skew_dataset": _nanext(np.nanmax, sk_d),
                       "ndkl_uniform": float(_ndkl_codes(codes[None, :], C, u)[0]),
                       "ndkl_dataset": float(_ndkl_codes(codes[None, :], C, q)[0])}
                rd = _rd(c, q) if n else nan_c
                ci = {}
                if n and interval == "dirichlet":
                    ci, (rd_lo, rd_hi) = _posterior_intervals(c, est, rd, q, u, n_boot, seed, level, skew_eps)
                    chi2, pval = _gof(c, q, n_sim, seed, gof_null)
                    p_lo, p_hi = proportion_ci(c, np.full(C, n), level, ci_method)
                elif n and interval == "dirichlet-test":
                    chi2, pval = _gof(c, q, n_sim, seed, gof_null)
                    p_u = pval if np.allclose(u, q) else _gof(c, u, n_sim, seed, gof_null)[1]
                    ci, (rd_lo, rd_hi) = _test_intervals(codes, c, est, rd, q, u, n_boot, seed, level, skew_eps,
                                                         {"dataset": pval, "uniform": p_u})
                    p_lo, p_hi = proportion_ci(c, np.full(C, n), level, ci_method)
                elif n:
                    if n not in boot_idx:
                        boot_idx[n] = _boot_index(n, n_boot, seed)
                    bc, bcounts = _resample(codes, C, boot_idx[n])
                    bcounts = bcounts.astype(float)
                    boot = {"fd": (_fd(bcounts, False), (1.0, np.inf)), "tvd": (_tvd(bcounts, q), (0.0, 1.0)),
                            # the largest share is at least its target share, so MaxSkew >= 0
                            "max_skew_uniform": (_rowmax(_skew(bcounts, u, skew_eps)), (0.0, np.inf)),
                            "max_skew_dataset": (_rowmax(_skew(bcounts, q, skew_eps)), (0.0, np.inf)),
                            "ndkl_uniform": (_ndkl_codes(bc, C, u), (0.0, np.inf)),
                            "ndkl_dataset": (_ndkl_codes(bc, C, q), (0.0, np.inf))}
                    for m, (values, bounds) in boot.items():
                        ci[m] = _boot_interval(values, est[m], level, interval, bounds)
                    rd_lo, rd_hi = _boot_interval(_rd(bcounts, q), rd, level, interval, (-100.0, np.inf))
                    chi2, pval = _gof(c, q, n_sim, seed, gof_null)
                    p_lo, p_hi = proportion_ci(c, np.full(C, n), level, ci_method)
                else:
                    log.warning("%s: no labelled %s in the top %d", keyd["query"], a, k)
                    rd_lo = rd_hi = p_lo = p_hi = nan_c
                    chi2 = pval = np.nan
                with np.errstate(divide="ignore", invalid="ignore"):
                    prop = c / n if n else nan_c
                class_parts.append(pd.DataFrame({
                    **keyd, "k": k, "n": n, "attribute": a, "class": cls, "count": c.astype(int), "proportion": prop,
                    "proportion_low": p_lo, "proportion_high": p_hi, "dataset_proportion": q,
                    "rd": rd, "rd_low": rd_lo, "rd_high": rd_hi,
                    "skew_uniform": sk_u if n else nan_c, "skew_dataset": sk_d if n else nan_c, **convention,
                    "flags": flags}))
                row = {**keyd, "k": k, "n": n, "attribute": a, "fd_strict": float(_fd(c, True)) if n else np.nan,
                       "min_skew_uniform": _nanext(np.nanmin, sk_u), "min_skew_dataset": _nanext(np.nanmin, sk_d),
                       "kl_dataset": _kl(c, q) if n else np.nan,
                       "chi2": chi2, "p_value": pval, "named_class": None, "match_rate": np.nan,
                       "match_low": np.nan, "match_high": np.nan, **convention, "flags": flags}
                for m, v in est.items():
                    lo, hi = ci.get(m, (np.nan, np.nan))
                    row.update({m: v, f"{m}_low": float(lo), f"{m}_high": float(hi)})
                if named_attr == a and named_cls is not None:
                    rate, lo, hi = match_rate(np.asarray(cls, dtype=object)[codes], named_cls, level, ci_method)
                    row.update(named_class=named_cls, match_rate=rate, match_low=lo, match_high=hi)
                summary_rows.append(row)
    classes_df = pd.concat(class_parts, ignore_index=True)[CLASS_COLUMNS]
    summary_df = skew_verdicts(pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS))
    return classes_df, summary_df


def _check_k(rankings: pd.DataFrame, distribution: pd.DataFrame, ks: list[int], attributes: list[str],
             strict: bool) -> set[tuple[str, int, str]]:
    """The (attribute, k, flag)s of a k no top-k can fill: above the most images a query ranks
    (`k_above_images`) or above the images the dataset labels for the attribute (`k_above_labelled`).
    Each is one warning (not one per query), or a MetricsInputError when `strict`."""
    most = int(rankings.groupby(KEY_COLUMNS, sort=False, dropna=False).size().max())
    found, lines = set(), []
    for k in ks:
        if k > most:
            found |= {(a, k, "k_above_images") for a in attributes}
            lines.append(f"k {k} is more than the {most} images ranked per query (the dataset's size or the "
                         f"rankings' depth), so its rows measure at most {most}")
        for a in attributes:
            labelled_n = int(distribution.loc[distribution["attribute"] == a, "count"].sum())
            if most >= k > labelled_n > 0:
                found.add((a, k, "k_above_labelled"))
                lines.append(f"k {k} is more than the {labelled_n} images the dataset labels for {a!r}, so "
                             f"its rows measure at most {labelled_n}")
    if lines and strict:
        raise MetricsInputError(lines[0] + "; lower k, or turn strictness off (metrics.strict, vlmbias audit --strict)")
    for line in lines:
        log.warning("%s (column flags)", line)
    return found


def _posterior_intervals(c, est, rd, q, u, n_draws, seed, level, skew_eps):
    """Interval method ``dirichlet`` for one (query, k, attribute). The class shares get their
    posterior under a Dirichlet(1/C per class) prior (Perks; Jeffreys' Beta(1/2, 1/2) for two
    classes): Dirichlet(counts + 1/C), `n_draws` draws. Every count-based metric (RD, TVD, MaxSkew,
    FD) is computed on each draw; NDKL, whose estimand is its expectation over rankings of length
    n, as the mean over NDKL_INNER posterior-predictive rankings of n_draws / NDKL_INNER draws. The
    interval is the equal-tailed `level` interval of those values, except FD with more than two
    classes (estimate +- z posterior SD, see below); a distance-to-target metric's lower end goes
    down to its value at the target when every class's posterior interval holds its target share
    (`shares_hold_target`); finally the interval is widened to hold the estimate (`_hold`).
    Returns ({metric: (low, high)}, (rd_low, rd_high))."""
    n, C = int(c.sum()), len(c)
    shares = posterior_shares(c, q > 0, n_draws, seed)
    dc = shares * n  # posterior "counts": every metric below divides by their sum
    # NDKL's estimand is its expectation over rankings of length n: each of n_draws / NDKL_INNER share
    # draws gets the mean NDKL of NDKL_INNER predictive rankings (same cost as the bootstrap's n_draws)
    m_in = max(1, min(NDKL_INNER, n_draws // 20))
    pred = posterior_codes(np.repeat(shares[: n_draws // m_in], m_in, axis=0), n,
                           None if seed is None else int(seed) + 1)
    ndkl = lambda t: _ndkl_codes(pred, C, t).reshape(-1, m_in).mean(axis=1)
    smooth = skew_eps is not None  # a smoothed MaxSkew is not 0 at its target: no floor for it
    # metric: (posterior values, range, (target shares, value at the target) or None)
    post = {"fd": (_fd(dc, False), (1.0, np.inf), (u, 1.0)), "tvd": (_tvd(dc, q), (0.0, 1.0), (q, 0.0)),
            "max_skew_uniform": (_rowmax(_skew(dc, u, skew_eps)), (-np.inf, np.inf), None if smooth else (u, 0.0)),
            "max_skew_dataset": (_rowmax(_skew(dc, q, skew_eps)), (-np.inf, np.inf), None if smooth else (q, 0.0)),
            "ndkl_uniform": (ndkl(u), (0.0, np.inf), None), "ndkl_dataset": (ndkl(q), (0.0, np.inf), None)}
    ci = {}
    for m, (values, bounds, floor) in post.items():
        if m == "fd" and (q > 0).sum() > 2:
            # FD's denominator is the smallest of several shares: the minimum of their posterior draws
            # sits below the observed minimum (itself biased low), so FD's posterior lies above the truth
            # (measured coverage 0.1-0.3 with 7 classes); estimate +- z posterior SD instead
            ci[m] = _boot_interval(values, est[m], level, "bootstrap-normal", bounds)
            if (c[q > 0] == 0).any():  # the SD is then ruled by draws near 0: say unbounded, not a random 1e25
                ci[m] = (ci[m][0], np.inf)
            continue
        lo, hi = _interval(values, level)
        if floor is not None and shares_hold_target(c, floor[0], level):
            lo = min(lo, floor[1])
        ci[m] = _hold(lo, hi, est[m], bounds)
    rd_lo, rd_hi = _interval(_rd(dc, q), level)
    return ci, _hold(rd_lo, rd_hi, rd, (-100.0, np.inf))


def fd_simultaneous(c, active, level: float) -> tuple[float, float]:
    """FD interval from simultaneous share intervals: each active class's Clopper-Pearson interval
    at level 1 - (1 - level) / C (Bonferroni), so all C hold together with probability >= level;
    FD = largest / smallest share then lies in [max(1, max low / min high), max high / min low].
    The upper end is inf (unbounded) where a class may have share 0 (a zero count)."""
    x = np.asarray(c, dtype=float)[np.asarray(active, dtype=bool)]
    n, C = x.sum(), len(x)
    a = (1.0 - level) / C
    lo = np.where(x > 0, special.betaincinv(x, n - x + 1, a / 2), 0.0)
    hi = np.where(x < n, special.betaincinv(x + 1, n - x, 1 - a / 2), 1.0)
    with np.errstate(divide="ignore"):
        return max(1.0, float(lo.max() / hi.min())), float(hi.max() / lo.min()) if lo.min() > 0 else np.inf


RAY_POINTS, RAY_SIMS = 41, 200  # test inversion along the ray: grid points, simulated rankings per point
# NDKL interval of `dirichlet-test`: up to NDKL_BLOCKS blocks of ranks of at least NDKL_BLOCK_ITEMS and 10 x C
# items each (the shares may change down the ranking; smaller blocks' diffuse posteriors inflate NDKL), NDKL_INNER_TEST predictive rankings per share draw
NDKL_BLOCKS, NDKL_BLOCK_ITEMS, NDKL_INNER_TEST = 8, 25, 4


@functools.lru_cache(maxsize=256)
def _ndkl_at_target(n: int, q_bytes: bytes, draws: int = 4000) -> float:
    """NDKL's estimand where the model retrieves at the target q: its mean over `draws` rankings of
    n items drawn from q (a fixed seed: a property of (n, q), not of the data), less 3 Monte-Carlo
    standard errors so that simulation noise cannot lift a lower end that reaches it above it."""
    q = np.frombuffer(q_bytes)
    values = _ndkl_codes(np.random.default_rng(12345).choice(len(q), size=(draws, n), p=q), len(q), q)
    return float(values.mean() - 3.0 * values.std(ddof=1) / np.sqrt(draws))


def ray_interval(c, t, metric: Callable, p_target: float, level: float, seed, points: int = RAY_POINTS,
                 sims: int = RAY_SIMS, draws: dict | None = None) -> tuple[float, float]:
    """Test inversion of a count metric along the ray from the target shares t through the observed
    shares: the shares p(l) = t + l (counts / n - t) for l from 0 (the target) to where a share
    reaches 0, on a coarse grid and then a fine one across the kept stretch. Each p(l) is kept unless
    the observed metric lies in either (1 - level) / 2 tail of the metric of `sims` multinomial(n, p(l)) draws; p(0), the target, is kept unless the goodness-of-fit
    test rejects it (`p_target` <= 1 - level), so the lower end reaches the metric's value at the
    target exactly when the test does not reject. Returns (min, max) of the metric over the kept
    points, (nan, nan) if none is kept. `metric` maps a [B, C] counts array to [B] values.
    `draws`: a dict shared by calls on the same counts and seed (metrics with the same target walk
    the same ray): a grid whose simulated counts one call drew is not drawn again by the next, which
    gets the very same counts (each entry is keyed by every grid drawn before it on that seed's stream
    and keeps the stream's state after it). Unused unless `seed` is an integer."""
    n = int(round(c.sum()))
    d = c / n - t
    neg = d < 0
    lmax = float(np.min(t[neg] / -d[neg])) if neg.any() else 1.0
    est = float(metric(c[None, :].astype(float))[0])
    tol = 1e-9 * max(1.0, abs(est))
    alpha = 1.0 - level
    shared = draws is not None and isinstance(seed, (int, np.integer))  # a fixed stream: draws can be shared
    draws = draws if shared else {}
    path, state, rng = (n, sims, int(seed) if shared else None), None, None  # grids drawn so far, state after

    def test(lam):
        nonlocal path, state, rng
        p = np.clip(t[None, :] + lam[:, None] * d[None, :], 0.0, None)
        p /= p.sum(axis=1, keepdims=True)
        path = path + (p.tobytes(),)
        if path not in draws:
            rng = np.random.default_rng(seed) if rng is None else rng
            if state is not None:
                rng.bit_generator.state = state
            draws[path] = (rng.multinomial(n, p, size=(sims, len(lam))), rng.bit_generator.state)
        counts, state = draws[path]
        sim = metric(counts.astype(float).reshape(-1, len(c))).reshape(sims, -1)
        kept = ((sim >= est - tol).mean(axis=0) > alpha / 2) & ((sim <= est + tol).mean(axis=0) > alpha / 2)
        return kept, metric(p * n)

    # a coarse grid over the whole ray, then a fine one across the kept stretch and one step beyond
    # it (with k = 1000 the interval is narrower than a coarse step)
    lam = np.linspace(0.0, lmax, points)
    kept, values = test(lam)
    kept[0] = p_target > alpha
    inner = np.flatnonzero(kept[1:]) + 1
    lo_v, hi_v = ([values[0]] if kept[0] else []), ([values[0]] if kept[0] else [])
    if len(inner):
        step = lmax / (points - 1)
        fine = np.linspace(max(lam[inner[0]] - step, step / points), min(lam[inner[-1]] + step, lmax), points)
        kept_f, values_f = test(fine)
        if kept_f.any():
            lo_v.append(values_f[kept_f].min())
            hi_v.append(values_f[kept_f].max())
        lo_v.append(values[inner].min())
        hi_v.append(values[inner].max())
    if not lo_v:
        return np.nan, np.nan
    return float(min(lo_v)), float(max(hi_v))


def _test_intervals(codes, c, est, rd, q, u, n_draws, seed, level, skew_eps, p_target):
    """Interval method ``dirichlet-test`` for one (query, k, attribute).

    - TVD and MaxSkew: the lower end by test inversion along the ray from the target through the
      observed shares (`ray_interval`): at the target's value (0) exactly when the goodness-of-fit
      test against that target (`p_target`: {"uniform": p, "dataset": p}) does not reject, so a
      model at parity has its interval hold 0 as often as the test keeps parity. The upper end:
      the larger of the ray's and the Dirichlet(counts + 1/C) posterior's (as ``dirichlet``),
      since the truth need not lie on the ray.
    - NDKL: its estimand is its expectation over rankings of length n. The ranking is cut into
      blocks of ranks (one per max(NDKL_BLOCK_ITEMS, 10 C) items, at most NDKL_BLOCKS), each block's shares
      drawn from its own Dirichlet posterior, so shares that change down the ranking are kept
      (a single posterior treats ranks as exchangeable, while NDKL weights the top ranks); each
      draw's NDKL is the mean over NDKL_INNER_TEST predictive rankings; equal-tailed interval.
      Lower end: NDKL's expectation at the target where the test does not reject it.
    - FD: two classes, the posterior interval with the target's value 1 kept where the test does
      not reject; more classes, `fd_simultaneous` (inf where a share may be 0).
    - RD: the posterior interval, as ``dirichlet``.
    Every interval is clipped to the metric's range and widened to hold its estimate.
    Returns ({metric: (low, high)}, (rd_low, rd_high))."""
    n, C = int(c.sum()), len(c)
    alpha = 1.0 - level
    active = q > 0
    shares = posterior_shares(c, active, n_draws, seed)
    dc = shares * n
    ray_seed = None if seed is None else int(seed) + 2
    ray_draws: dict = {}  # TVD and MaxSkew at the same target walk the same ray: draw its counts once
    ci = {}
    for m, t, fn, bounds in (
            ("tvd", q, lambda x: _tvd(x, q), (0.0, 1.0)),
            ("max_skew_uniform", u, lambda x: _rowmax(_skew(x, u, skew_eps)), (-np.inf, np.inf)),
            ("max_skew_dataset", q, lambda x: _rowmax(_skew(x, q, skew_eps)), (-np.inf, np.inf))):
        target = "uniform" if t is u else "dataset"
        post_lo, post_hi = _interval(fn(dc), level)
        if (c[~active] > 0).any():  # a retrieved class the target lacks: the ray is undefined
            ci[m] = _hold(post_lo, post_hi, est[m], bounds)
            continue
        lo, hi = ray_interval(c, t, fn, p_target[target], level, ray_seed, draws=ray_draws)
        if not np.isfinite(lo):
            lo, hi = post_lo, post_hi
        ci[m] = _hold(lo, max(hi, post_hi), est[m], bounds)
    if active.sum() <= 2:
        lo, hi = _interval(_fd(dc, False), level)
        if p_target["uniform"] > alpha:
            lo = min(lo, 1.0)
        ci["fd"] = _hold(lo, hi, est["fd"], (1.0, np.inf))
    else:
        ci["fd"] = _hold(*fd_simultaneous(c, active, level), est["fd"], (1.0, np.inf))
    # NDKL: share draws block by block (each block of ranks from its own counts), each draw's NDKL
    # the mean over NDKL_INNER_TEST predictive rankings
    blocks = int(np.clip(n // max(NDKL_BLOCK_ITEMS, 10 * int(active.sum())), 1, NDKL_BLOCKS))
    edges = np.linspace(0, n, blocks + 1).round().astype(int)
    outer = max(n_draws // NDKL_INNER_TEST, 1)
    rng = np.random.default_rng(None if seed is None else int(seed) + 3)
    pred = np.concatenate([
        posterior_codes(np.repeat(posterior_shares(np.bincount(codes[a:b], minlength=C), active, outer, rng),
                                  NDKL_INNER_TEST, axis=0), b - a, rng)
        for a, b in zip(edges[:-1], edges[1:])], axis=1)
    pred_ndkl = _ndkl_codes_targets(pred, C, [u, q])
    for (m, t), values in zip((("ndkl_uniform", u), ("ndkl_dataset", q)), pred_ndkl):
        target = "uniform" if m == "ndkl_uniform" else "dataset"
        lo, hi = _interval(values.reshape(outer, NDKL_INNER_TEST).mean(axis=1), level)
        if p_target[target] > alpha and np.isfinite(lo):
            lo = min(lo, _ndkl_at_target(n, np.ascontiguousarray(t, dtype=float).tobytes()))
        ci[m] = _hold(lo, hi, est[m], (0.0, np.inf))
    rd_lo, rd_hi = _interval(_rd(dc, q), level)
    return ci, _hold(rd_lo, rd_hi, rd, (-100.0, np.inf))


CONFUSION_COLUMNS = ["model", "dataset", "query_set", "k", "attribute", "named_class", "retrieved_class",
                     "count", "share"]


def confusion_table(rankings: pd.DataFrame, distribution: pd.DataFrame, ks: list[int]) -> pd.DataFrame:
    """For the queries that name a group (``names_attribute``/``names_class``): per k and named
    attribute, the named class (rows) against the retrieved class (columns) of the labelled items
    in the first k ranks, pooled over the queries naming the same class, in long form with each
    row's share. Empty (header only) when no query names a group."""
    if not {"names_attribute", "names_class"} <= set(rankings.columns):
        return pd.DataFrame(columns=CONFUSION_COLUMNS)
    classes = {a: g["class"].tolist() for a, g in distribution.groupby("attribute", sort=False)}
    named = rankings[rankings["names_attribute"].notna() & rankings["names_class"].notna()]
    named = named.sort_values("rank", kind="stable")
    parts = []
    for (model, dataset, qset, attr), g in named.groupby(["model", "dataset", "query_set", "names_attribute"],
                                                          sort=False):
        if attr not in classes or attr not in g.columns:
            log.warning("queries name attribute %r, which the dataset does not label; no confusion matrix", attr)
            continue
        for k in sorted({int(k) for k in ks}):
            top = g.groupby("query_id", sort=False).head(k)
            cm = confusion_matrix(top["names_class"], labelled(top[attr]), classes[attr])
            cm = cm.loc[[c for c in cm.index if c in set(top["names_class"])]]
            long = cm.stack().rename("count").reset_index()
            long.columns = ["named_class", "retrieved_class", "count"]
            totals = long.groupby("named_class")["count"].transform("sum")
            parts.append(long.assign(model=model, dataset=dataset, query_set=qset, k=k, attribute=attr,
                                     share=np.where(totals > 0, long["count"] / totals.where(totals > 0, 1), np.nan)))
    return pd.concat(parts, ignore_index=True)[CONFUSION_COLUMNS] if parts else pd.DataFrame(columns=CONFUSION_COLUMNS)


@functools.lru_cache(maxsize=1)
def _coverage() -> pd.DataFrame:
    return pd.read_csv(COVERAGE_TABLE)


def undercovering(n_classes: int, k: int, top_share: float, interval: str = INTERVAL_METHOD) -> str:
    """The intervals (of method `interval`) whose measured coverage (benchmarks/coverage.py) fell
    below 93% in the simulated cell nearest to this row (2 or 7 classes, k in 20/200/1000, the top
    class's share), ';'-joined; `not measured` for an interval method the simulation did not run."""
    cell = _coverage_cell(interval, n_classes, k)
    if cell is None:
        return "not measured"
    if not np.isfinite(top_share):
        return ""
    shares, notes = cell
    return notes[min(shares, key=lambda v: abs(v - top_share))]


@functools.lru_cache(maxsize=256)
def _coverage_cell(interval: str, n_classes: int, k: int):
    """(the simulated shares, {share: its `undercovering` text}) of the cell nearest to (n_classes, k)
    for `interval`, None where it was not simulated: looked up once per job, not once per row."""
    t = _coverage()
    t = t[t["interval_method"] == interval]
    if t.empty:
        return None
    c = t[t["classes"] == min(t["classes"].unique(), key=lambda v: abs(v - n_classes))]
    c = c[c["k"] == min(c["k"].unique(), key=lambda v: abs(np.log(v) - np.log(max(k, 1))))]
    shares = c["share"].unique()
    return shares, {s: ";".join(sorted(c.loc[(c["share"] == s) & (c["coverage"] < 0.93), "metric"].unique()))
                    for s in shares}


def _rowmax(x: np.ndarray) -> np.ndarray:
    """np.nanmax over the last axis without the all-NaN warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(x, axis=-1)


# ---------------------------------------------------------------- CLI (the workflow's `metrics` rule)

def _pseudocount(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "null", "") else float(text)


def main(argv=None) -> None:
    from vlmbias.io import file_digest, provenance, read_table, write_table

    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.metrics", description="Disparity metrics of one rankings table.")
    p.add_argument("--rankings", required=True)
    p.add_argument("--distribution", required=True)
    p.add_argument("--k", type=int, nargs="+", required=True)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--ci-method", default="wilson", choices=["wilson", "clopper-pearson"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attributes", nargs="*", default=[], help="default: every attribute of the distribution")
    p.add_argument("--skew-pseudocount", type=_pseudocount, default=None,
                   help="smooth Skew with this additive pseudo-count; None (default): the published convention")
    p.add_argument("--interval", default=INTERVAL_METHOD, choices=INTERVAL_METHODS)
    p.add_argument("--strict", action="store_true", help="a k no top-k can fill is an error, not a flagged row")
    p.add_argument("--out-classes", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-confusion", help="confusion matrix of the group-naming queries (header only if none)")
    a = p.parse_args(argv)
    rankings = read_table(a.rankings, made_by="retrieve")
    distribution = read_table(a.distribution, made_by="dataset_manifest")
    classes, summary = audit_tables(rankings, distribution, a.k, a.attributes or None,
                                    n_boot=a.n_boot, seed=a.seed, ci_method=a.ci_method,
                                    skew_eps=a.skew_pseudocount, interval=a.interval, strict=a.strict)
    inputs = {"rankings": file_digest(a.rankings), "distribution": file_digest(a.distribution)}
    write_table(classes, a.out_classes, meta=provenance(len(classes), inputs))
    write_table(summary, a.out_summary, meta=provenance(len(summary), inputs))
    if a.out_confusion:
        confusion = confusion_table(rankings, distribution, a.k)
        write_table(confusion, a.out_confusion, meta=provenance(len(confusion), inputs))
    log.info("metrics for %d queries x %d k x %d attributes", summary["query_id"].nunique(), len(set(a.k)),
             summary["attribute"].nunique())


if __name__ == "__main__":
    from vlmbias.io import run_cli

    raise SystemExit(run_cli(main))
