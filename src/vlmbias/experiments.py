"""Thesis experiments built on the per-class metric tables: architectures side by side, and web data vs model.

``architecture_table`` (the architecture experiment): the same queries on several models, one row
per (model pair A vs B, query, attribute, class). Columns: ``model_a, model_b, [query_set,] query_id,
query, k, attribute, class, count_a, n_a, proportion_a, count_b, n_b, proportion_b, difference``
(proportion_b - proportion_a), ``difference_low, difference_high`` (95% Newcombe hybrid score
interval, built on Wilson intervals), and per (query, attribute), repeated on its class rows: ``chi2,
dof, test, p_value, p_holm, significant``. The test is a chi-square test of homogeneity of the 2 x C
count table (classes with no count on either side dropped). When every expected count is >= 5 the
asymptotic Pearson p-value is used (``test="chi2"``, no Yates correction, so the statistic is the
same in both branches); otherwise (usual at k = 20) the p-value is Monte-Carlo (``test="monte-carlo"``):
the exact conditional test given both margins, drawing ``n_sim`` tables from the multivariate
hypergeometric distribution (seeded), p = (1 + #{chi2_sim >= chi2}) / (1 + n_sim). Fisher's test would
only cover 2 x 2 tables; this covers any C alike. ``p_holm`` is Holm-adjusted across all (query,
attribute) tests of the pair; ``significant`` is p_holm < 0.05.

``training_data_table`` (thesis 4.6.1.2): for a caption, the labelled class distribution of the
web-search images of its keyword against the model's top-k for the same caption. Columns: ``keyword,
[concept,] [query_set,] query_id, query, k, attribute, class, web_count, web_proportion,
retrieved_count, retrieved_proportion, n_web, n_retrieved, tvd, js_divergence, chi2, p_value, note``.
Only classes present on both sides are kept and both distributions are renormalised over them;
``note`` names the classes missing from one side. ``tvd`` = 0.5 * sum |p - q|; ``js_divergence`` is the
Jensen-Shannon divergence in bits (0..1); ``chi2``/``p_value`` test the retrieved counts against the web
proportions with `vlmbias.audit.metrics.goodness_of_fit` (Monte-Carlo p-value, seeded).
"""
from __future__ import annotations

import argparse
import itertools
import logging

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from vlmbias import VlmbiasError
from vlmbias.audit.metrics import N_SIM, goodness_of_fit, monte_carlo_p, proportion_ci
from vlmbias.audit.queries import caption_key
from vlmbias.io import read_table, run_cli, write_table

log = logging.getLogger(__name__)
CLASS_NEED = ["query_id", "query", "k", "attribute", "class", "count"]
LABEL_NEED = ["keyword", "attribute", "class", "count"]
ALPHA = 0.05


def _need(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise VlmbiasError(f"{what} lacks column(s) {missing}")


def _at_k(df: pd.DataFrame, k: int, what: str) -> pd.DataFrame:
    _need(df, CLASS_NEED, what)
    out = df[df["k"] == k]
    if out.empty:
        raise VlmbiasError(f"{what} has no rows at k={k} (has k {sorted(pd.unique(df['k']).tolist())})")
    return out


def _unique(df: pd.DataFrame, cols: list[str], what: str) -> None:
    dup = df.duplicated(cols)
    if dup.any():
        raise VlmbiasError(f"{what} repeats (query, attribute, class) rows at one k, e.g. "
                           f"{df.loc[dup, cols].iloc[0].tolist()}; keep the query_set column")


def _keys(*tables: pd.DataFrame) -> list[str]:
    # query_id repeats across query sets ("a doctor" is in several), so query_set is a key when known.
    return (["query_set"] if all("query_set" in t.columns for t in tables) else []) + ["query_id", "query"]


def newcombe_diff_ci(x_a, n_a, x_b, n_b, level: float = 0.95):
    """Newcombe's (1998, method 10) hybrid score interval for p_b - p_a from two Wilson intervals; NaN if an n is 0."""
    x_a, n_a, x_b, n_b = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_a, p_b = x_a / n_a, x_b / n_b
    la, ua = proportion_ci(x_a, n_a, level)
    lb, ub = proportion_ci(x_b, n_b, level)
    d = p_b - p_a
    return d - np.sqrt((p_b - lb) ** 2 + (ua - p_a) ** 2), d + np.sqrt((ub - p_b) ** 2 + (p_a - la) ** 2)


def homogeneity_test(a, b, n_sim: int = N_SIM, seed=0) -> tuple[float, int, str, float]:
    """Chi-square test that two count vectors share one class distribution: (chi2, dof, test, p)."""
    t = np.vstack([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])
    t = t[:, t.sum(axis=0) > 0]
    if (t.sum(axis=1) == 0).any():
        return np.nan, 0, "none", np.nan
    if t.shape[1] < 2:  # both sides entirely in one class: identical distributions
        return 0.0, 0, "single-class", 1.0
    chi2, p, dof, expected = stats.chi2_contingency(t, correction=False)
    if (expected >= 5).all():
        return float(chi2), int(dof), "chi2", float(p)
    cols, n_a = t.sum(axis=0).astype(np.int64), int(t[0].sum())
    sim_a = np.random.default_rng(seed).multivariate_hypergeometric(cols, n_a, size=n_sim)
    sims = np.stack([sim_a, cols - sim_a], axis=1)  # [n_sim, 2, C]; margins fixed, so expected is too
    null = ((sims - expected) ** 2 / expected).sum(axis=(1, 2))
    return float(chi2), int(dof), "monte-carlo", monte_carlo_p(chi2, null)


def holm(p) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN stays NaN and does not count as a test."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return out


def architecture_table(tables: dict[str, pd.DataFrame], k: int, n_sim: int = N_SIM, seed=0) -> pd.DataFrame:
    """Every pair of models (in the given order, A before B) on their shared queries at k; see module doc."""
    if len(tables) < 2:
        raise VlmbiasError(f"need at least two models to compare, got {list(tables)}")
    at_k = {m: _at_k(t, k, f"classes table of model {m!r}") for m, t in tables.items()}
    keys = _keys(*at_k.values())
    group = keys + ["attribute"]
    for m, t in at_k.items():
        _unique(t, group + ["class"], f"classes table of model {m!r}")
    out = []
    for a, b in itertools.combinations(at_k, 2):
        # outer join: a class one model never retrieved still has count 0 in its table; fill in case not.
        m = at_k[a][group + ["class", "count"]].merge(at_k[b][group + ["class", "count"]], on=group + ["class"],
                                                        how="outer", suffixes=("_a", "_b"), sort=False)
        shared = at_k[a][group].drop_duplicates().merge(at_k[b][group].drop_duplicates(), on=group)
        m = m.merge(shared, on=group)  # only the (query, attribute) both models answered
        if m.empty:
            raise VlmbiasError(f"models {a!r} and {b!r} share no (query, attribute) at k={k}")
        m[["count_a", "count_b"]] = m[["count_a", "count_b"]].fillna(0).astype(int)
        g = m.groupby(group, sort=False)
        m["n_a"], m["n_b"] = g["count_a"].transform("sum"), g["count_b"].transform("sum")
        with np.errstate(divide="ignore", invalid="ignore"):
            m["proportion_a"], m["proportion_b"] = m["count_a"] / m["n_a"], m["count_b"] / m["n_b"]
        m["difference"] = m["proportion_b"] - m["proportion_a"]
        m["difference_low"], m["difference_high"] = newcombe_diff_ci(m["count_a"], m["n_a"], m["count_b"], m["n_b"])
        tests = pd.DataFrame([(*key, *homogeneity_test(d["count_a"], d["count_b"], n_sim, seed))
                              for key, d in g], columns=group + ["chi2", "dof", "test", "p_value"])
        tests["p_holm"] = holm(tests["p_value"])
        tests["significant"] = tests["p_holm"] < ALPHA
        out.append(m.merge(tests, on=group, sort=False).assign(model_a=a, model_b=b, k=k))
        log.info("%s vs %s at k=%d: %d of %d (query, attribute) differ (Holm, alpha %.2f)", a, b, k,
                 int(tests["significant"].sum()), len(tests), ALPHA)
    cols = ["model_a", "model_b", *keys, "k", "attribute", "class", "count_a", "n_a", "proportion_a", "count_b",
            "n_b", "proportion_b", "difference", "difference_low", "difference_high", "chi2", "dof", "test",
            "p_value", "p_holm", "significant"]
    return pd.concat(out, ignore_index=True)[cols]


def _match(keywords, classes: pd.DataFrame, keys: list[str], match: dict[str, str] | None) -> pd.DataFrame:
    """(keyword, *keys) pairs: explicit `match` keyword -> query_id first, the rest by normalised text."""
    queries = classes[keys].drop_duplicates()
    match = dict(match or {})
    unknown = sorted(set(match.values()) - set(queries["query_id"].astype(str)))
    if unknown:
        raise VlmbiasError(f"match names query_id(s) {unknown} absent from the classes table at this k")
    by_text = queries.assign(_norm=queries["query"].map(caption_key))
    rows = []
    for kw in keywords:
        hit = (queries[queries["query_id"].astype(str) == match[kw]] if kw in match
               else by_text[by_text["_norm"] == caption_key(kw)])
        rows.append(hit[keys].assign(keyword=kw))
    return pd.concat(rows, ignore_index=True)


def _compare(web: pd.DataFrame, got: pd.DataFrame, n_sim: int, seed) -> pd.DataFrame | None:
    w = web.groupby("class", sort=False)["count"].sum()
    r = got.set_index("class")["count"]
    common = [c for c in w.index if c in r.index]
    miss = [f"only in web labels: {sorted(set(w.index) - set(common))}" if len(w) > len(common) else "",
            f"only in retrievals: {sorted(set(r.index) - set(common))}" if len(r) > len(common) else ""]
    note = "; ".join(x for x in miss if x)
    if not common:
        return None
    w, r = w[common].astype(float), r[common].astype(float)
    if w.sum() == 0 or r.sum() == 0:
        p = q = pd.Series(np.nan, index=common)
        tvd = js = chi2 = pval = np.nan
        note = "; ".join(x for x in [note, "no labelled image on one side"] if x)
    else:
        p, q = w / w.sum(), r / r.sum()  # renormalised over the shared classes
        tvd = 0.5 * float((p - q).abs().sum())
        js = float(jensenshannon(p, q, base=2) ** 2)  # scipy returns the JS distance (its square root)
        chi2, pval = goodness_of_fit(r, p, n_sim, seed)
    return pd.DataFrame({"class": common, "web_count": w.to_numpy(), "web_proportion": p.to_numpy(),
                         "retrieved_count": r.to_numpy(), "retrieved_proportion": q.to_numpy(),
                         "n_web": w.sum(), "n_retrieved": r.sum(), "tvd": tvd, "js_divergence": js,
                         "chi2": chi2, "p_value": pval, "note": note})


def training_data_table(labels_dist: pd.DataFrame, classes: pd.DataFrame, k: int,
                        match: dict[str, str] | None = None, n_sim: int = N_SIM, seed=0) -> pd.DataFrame:
    """Web-image label distribution per keyword vs the model's top-k for the matching caption; see module doc."""
    _need(labels_dist, LABEL_NEED, "labels distribution")
    classes = _at_k(classes, k, "classes table")
    keys = _keys(classes)
    _unique(classes, keys + ["attribute", "class"], "classes table")
    keywords = list(pd.unique(labels_dist["keyword"]))
    pairs = _match(keywords, classes, keys, match)
    if pairs.empty:
        raise VlmbiasError(f"no keyword of the labels distribution ({keywords[:5]}...) matches a query of the "
                           "classes table; pass an explicit keyword -> query_id match")
    extra = ["concept"] if "concept" in labels_dist.columns else []
    out = []
    for pair in pairs.itertuples(index=False):
        web = labels_dist[labels_dist["keyword"] == pair.keyword]
        mine = classes.merge(pd.DataFrame([pair])[keys], on=keys)
        for attr in [a for a in pd.unique(web["attribute"]) if a in set(mine["attribute"])]:
            t = _compare(web[web["attribute"] == attr], mine[mine["attribute"] == attr], n_sim, seed)
            if t is None:
                log.warning("keyword %r, attribute %r: no class shared with the retrievals", pair.keyword, attr)
                continue
            head = {"keyword": pair.keyword, **{c: web[c].iloc[0] for c in extra},
                    **{c: getattr(pair, c) for c in keys}, "k": k, "attribute": attr}
            out.append(t.assign(**head))
    if not out:
        raise VlmbiasError("matched keywords and queries share no attribute with a common class")
    table = pd.concat(out, ignore_index=True)
    return table[["keyword", *extra, *keys, "k", "attribute", "class", "web_count", "web_proportion",
                  "retrieved_count", "retrieved_proportion", "n_web", "n_retrieved", "tvd", "js_divergence",
                  "chi2", "p_value", "note"]]


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    bad = [x for x in items if "=" not in x]
    if bad:
        raise VlmbiasError(f"{what} must be NAME=VALUE, got {bad}")
    return [tuple(x.split("=", 1)) for x in items]


def _read(path: str) -> pd.DataFrame:
    try:
        return read_table(path)
    except FileNotFoundError:
        raise VlmbiasError(f"table {path} does not exist") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.experiments", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    arch = sub.add_parser("architecture", help="models side by side on the same queries")
    arch.add_argument("--classes", nargs="+", required=True,
                      help="MODEL=PATH of *_classes.csv files (repeat a MODEL to join several query sets)")
    web = sub.add_parser("training-data", help="web-image label distribution vs model retrievals")
    web.add_argument("--labels", required=True, help="mitigation/labels/distribution.csv")
    web.add_argument("--classes", nargs="+", required=True, help="the model's *_classes.csv file(s)")
    web.add_argument("--match", nargs="*", default=[], help="KEYWORD=QUERY_ID, overriding text matching")
    for s in (arch, web):
        s.add_argument("--k", type=int, required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo p-values")
        s.add_argument("--n-sim", type=int, default=N_SIM, help="Monte-Carlo draws per test")
    a = p.parse_args(argv)
    load = lambda paths: pd.concat([_read(x) for x in paths], ignore_index=True)  # noqa: E731
    if a.command == "architecture":
        paths: dict[str, list[str]] = {}
        for model, path in _pairs(a.classes, "--classes"):
            paths.setdefault(model, []).append(path)
        table = architecture_table({m: load(ps) for m, ps in paths.items()}, a.k, a.n_sim, a.seed)
    else:
        match = dict(_pairs(a.match, "--match"))
        table = training_data_table(_read(a.labels), load(a.classes), a.k, match, a.n_sim, a.seed)
    write_table(table, a.out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
