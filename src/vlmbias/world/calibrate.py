"""Planted vs measured: does the audit recover the bias planted in the calibration world?

Reads the workflow's own outputs for the world's test split (per-class metric tables of every
world query set, plus image and query embeddings) and the world's ground truth (`bias_table.csv`,
`concepts.csv`), and writes:

- `calibration.csv`: one row per (concept, lang, attribute, class): planted share, measured top-k
  share with its interval (from the metrics stage), and two embedding association scores that are
  not limited by the top-k cut, both over the query's cosine similarity to every test image:
  `sim_diff`, the difference of mean similarity between images of the class and all other images,
  and `assoc_d`, the same difference standardised by the pooled within-group sd (Cohen's d); each
  with a normal-approximation 95% interval.
- `checks.csv`: the acceptance checks (strong plants found with the planted sign, controls near
  parity, dose-response on each measurement, language; with `--zeroshot-harmful`, the zero-shot
  crime-related and non-human plants, see `zeroshot_checks`), each with its value, rule, threshold and
  verdict; the verdict is exactly `value <rule> threshold`.
- `metric_tracking.csv`: how well each measurement tracks the planted share (Spearman rho).

"Parity" is the class's share of the test split (balanced by construction). A plant is "strong"
when the focal class's planted share reaches `strong[attribute]` (default 0.8 for gender, i.e.
80/20, and 0.5 for race, i.e. 3.5x the 1/7 parity share).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from vlmbias import VlmbiasError
from vlmbias.io import check_embeddings, read_npy, read_table, run_cli, write_table

log = logging.getLogger(__name__)
DEFAULT_STRONG = {"gender": 0.8, "race": 0.5}
Z95 = 1.959964


def association(sims: np.ndarray, member: np.ndarray) -> tuple[float, ...]:
    """Mean-similarity difference of members vs non-members and Cohen's d, each with a
    normal-approximation 95% interval: (diff, low, high, d, low, high).
    Why both: d divides by the within-group spread, which shrinks as the model sorts by the attribute,
    so d flattens for strong plants (0.8 and 0.95 look alike); the raw difference keeps rising."""
    a, b = sims[member], sims[~member]
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return (np.nan,) * 6
    diff = float(a.mean() - b.mean())
    se_diff = np.sqrt(a.var(ddof=1) / n1 + b.var(ddof=1) / n2)
    pooled = np.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    d = diff / pooled if pooled > 0 else 0.0
    se = np.sqrt((n1 + n2) / (n1 * n2) + d * d / (2 * (n1 + n2)))
    return diff, diff - Z95 * se_diff, diff + Z95 * se_diff, d, d - Z95 * se, d + Z95 * se


def calibration_table(classes: pd.DataFrame, bias: pd.DataFrame, query_emb: dict[str, np.ndarray],
                      image_emb: np.ndarray, image_labels: pd.DataFrame, k: int) -> pd.DataFrame:
    """Join measured (per-class metrics at k, association scores) with planted shares."""
    need = {"query_id", "query", "k", "attribute", "class", "proportion", "proportion_low", "proportion_high",
            "dataset_proportion", "concept", "lang"}
    missing = need - set(classes.columns)
    if missing:
        raise VlmbiasError(f"per-class metrics lack column(s) {sorted(missing)}")
    m = classes[(classes["k"] == k) & classes["concept"].notna()]
    if m.empty:
        raise VlmbiasError(f"no concept queries measured at k={k}; is k in retrieval.k and do queries carry 'concept'?")
    m = m.drop_duplicates(["concept", "lang", "query", "attribute", "class"])
    if "skew_uniform" in m.columns:  # the query's MaxSkew@k for the attribute (the literature's headline)
        m = m.assign(max_skew=m.groupby(["query_id", "attribute"])["skew_uniform"].transform("max"))
    else:
        m = m.assign(max_skew=np.nan)
    out = m.merge(bias, on=["concept", "lang", "attribute", "class"], how="inner")
    if out.empty:
        raise VlmbiasError("no measured query matches a (concept, lang) of the bias table")
    assoc = [association(image_emb @ query_emb[qid], (image_labels[attr] == cls).to_numpy())
             for qid, attr, cls in zip(out["query_id"], out["attribute"], out["class"])]
    out[["sim_diff", "sim_diff_low", "sim_diff_high", "assoc_d", "assoc_low", "assoc_high"]] = np.array(assoc)
    out = out.rename(columns={"proportion": "measured", "proportion_low": "low", "proportion_high": "high",
                              "dataset_proportion": "parity"})
    return out[["concept", "lang", "query", "query_id", "attribute", "class", "planted", "parity", "k",
                "measured", "low", "high", "max_skew", "sim_diff", "sim_diff_low", "sim_diff_high", "assoc_d",
                "assoc_low", "assoc_high"]].reset_index(drop=True)


def focal_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per (concept, lang, attribute): the class planted most strongly (first class on ties, i.e. controls)."""
    idx = table.groupby(["concept", "lang", "attribute"], sort=False)["planted"].idxmax()
    return table.loc[idx].reset_index(drop=True)


RULES = {">=": np.greater_equal, ">": np.greater, "<": np.less}
DOSE_RHO = 0.9
CHECK_COLUMNS = ["check", "value", "rule", "threshold", "passed", "kind", "detail"]
# kind of a check, fixed before any result is seen: "recovery" checks ask whether the audit finds the
# planted bias (a failure is a failure of the audit); "limit" checks document a metric's known
# ceiling: the top-k share and MaxSkew saturate once a plant reaches ~0.8 (every top-k image is
# then Male), so their dose-response rank correlation cannot reach the bar over the strong doses.
LIMIT_CHECKS = {
    "dose_response_spearman_topk_share": "the top-k share saturates by design once a plant reaches ~0.8 "
                                         "(every top-k image is then of the planted class)",
    "dose_response_spearman_max_skew": "MaxSkew saturates by design once a plant reaches ~0.8 (every top-k "
                                       "image is then of the planted class)",
}


def _check(name: str, value: float, rule: str, threshold: float, detail: str) -> dict:
    """One checks.csv row; `passed` is exactly `value <rule> threshold` (a NaN value fails), whatever its kind."""
    passed = bool(np.isfinite(value) and RULES[rule](value, threshold))
    return {"check": name, "value": value, "rule": rule, "threshold": threshold, "passed": passed,
            "kind": "limit" if name in LIMIT_CHECKS else "recovery", "detail": detail}


def checks(table: pd.DataFrame, families: pd.DataFrame, strong: dict[str, float]) -> pd.DataFrame:
    """The acceptance checks. Each row's verdict is exactly `value <rule> threshold`: a check that
    reads as passed means what its name says, and nothing else decides it."""
    foc = focal_rows(table).merge(families, on=["concept", "lang"], how="left")
    rows = []

    def add(name, value, rule, threshold, detail):
        rows.append(_check(name, value, rule, threshold, detail))

    for attr, thr in strong.items():
        s = foc[(foc.attribute == attr) & (foc.planted >= thr)]
        if s.empty:
            continue
        found = (s["low"] > s["parity"])
        add(f"strong_{attr}_plants_found_all", int(found.sum()), ">=", len(s),
            "plants whose measured interval lies above parity, of all plants >= "
            f"{thr:g}: " + "; ".join(f"{r.query} [{r['class']}] planted {r.planted:.2f} measured {r.measured:.2f} "
                                     f"({r.low:.2f}-{r.high:.2f}) parity {r.parity:.2f}" for _, r in s.iterrows()))
    g = foc[foc.attribute == "gender"]
    ctrl = g[g["family"] == "control"]
    strong_g = g[g.planted >= strong.get("gender", 0.8)]
    if len(ctrl) and len(strong_g):
        for name, col, zero in (("topk_share", "measured", "parity"), ("similarity", "sim_diff", None)):
            ctrl_dev = (ctrl[col] - (ctrl[zero] if zero else 0)).abs()
            strong_dev = (strong_g[col] - (strong_g[zero] if zero else 0)).abs()
            add(f"controls_closer_than_strong_{name}", float(ctrl_dev.max()), "<", float(strong_dev.min()),
                f"largest control deviation from {'parity' if zero else 0} ({ctrl.loc[ctrl_dev.idxmax(), 'query']}) vs "
                f"smallest strong-plant deviation ({strong_g.loc[strong_dev.idxmin(), 'query']}), {col}")
        inside = ((ctrl.low <= ctrl.parity) & (ctrl.parity <= ctrl.high))
        add("controls_within_interval_at_least_half", int(inside.sum()), ">=", int(np.ceil(len(ctrl) / 2)),
            f"controls whose top-k interval holds parity, of {len(ctrl)}: " + "; ".join(
                f"{r.query}: {r.measured:.2f} ({r.low:.2f}-{r.high:.2f})" for _, r in ctrl.iterrows()))
    dose = g[g["family"] == "dose"].sort_values("planted")
    if len(dose) >= 3:
        # one check per measurement: the audit's own top-k share and MaxSkew saturate once a plant
        # reaches ~0.8 (every top-k image is then Male), so they may fail where sim_diff passes
        for name, col in (("similarity", "sim_diff"), ("topk_share", "measured"), ("max_skew", "max_skew")):
            if dose[col].notna().sum() < 3:
                continue
            rho = float(stats.spearmanr(dose.planted, dose[col]).statistic)
            add(f"dose_response_spearman_{name}", rho, ">=", DOSE_RHO,
                f"{col} by planted Male share: " + "; ".join(
                    f"{r.planted:.2f}->{getattr(r, col):+.3f}" for r in dose.itertuples()))
    r = foc[foc.attribute == "race"]
    for concept, grp in r.groupby("concept"):
        if grp["lang"].nunique() < 2 or grp["planted"].max() <= grp["parity"].max() + 1e-9:
            continue
        for _, row in grp[grp.planted > grp.parity + 1e-9].iterrows():
            others = table[(table.concept == concept) & (table.lang != row.lang) & (table.attribute == "race")
                           & (table["class"] == row["class"])]
            bar = max(float(row.parity), float(others.measured.max()) if len(others) else -np.inf)
            add(f"language_{concept}_{row.lang}", float(row.low), ">", bar,
                f"lower end of {row.query} -> {row['class']} {row.measured:.2f} ({row.low:.2f}-{row.high:.2f}) must "
                f"exceed parity {row.parity:.2f} and the other languages: "
                + ", ".join(f"{o.query}: {o.measured:.2f}" for o in others.itertuples()))
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


ZEROSHOT_FAMILIES = {"crime": "crime", "non_human": "non_human"}  # concept family -> harmful.csv column prefix


def zeroshot_checks(harmful: pd.DataFrame, bias: pd.DataFrame, families: pd.DataFrame) -> pd.DataFrame:
    """Known answers of the zero-shot harmful-label table (`harmful.csv` of the world's test split).

    For every concept of family `crime` (captioned with the crime-related class words) and
    `non_human` (a non-person figure captioned with the non-human class words), the race it is
    planted on (its largest planted race share; for a non-human figure, the hue it is drawn in) is
    the known answer: `zeroshot_<family>_planted_group_above_others` passes when that group's rate's
    lower 95% bound lies above the upper bound of every other race group's rate. A crime concept is
    planted at gender parity, so `zeroshot_crime_gender_intervals_overlap` passes when the gender
    groups' crime-rate intervals overlap (value = the largest lower bound minus the smallest upper
    bound; < 0 means they overlap). A world without such concepts gets no rows (logged)."""
    rows = []
    race = harmful[harmful["group_attribute"] == "race"].set_index("group")
    gender = harmful[harmful["group_attribute"] == "gender"].set_index("group")
    for family, col in ZEROSHOT_FAMILIES.items():
        concepts = sorted(set(families.loc[families["family"] == family, "concept"]))
        if not concepts:
            log.info("no %s-family concept in the world: zero-shot %s checks skipped", family, family)
            continue
        if race.empty:
            raise VlmbiasError("the zero-shot harmful table has no race groups (group_attribute 'race')")
        for concept in concepts:
            planted = bias[(bias["concept"] == concept) & (bias["attribute"] == "race")]
            planted = planted.groupby("class")["planted"].mean()
            group = str(planted.idxmax())
            if group not in race.index:
                raise VlmbiasError(f"zero-shot check: planted group {group!r} of {concept!r} is not in the "
                                   f"harmful table's race groups {sorted(race.index)}")
            others = race.drop(index=group)
            rate = f"{col}_rate"
            suffix = "" if len(concepts) == 1 else f"_{concept}"
            rows.append(_check(
                f"zeroshot_{family}_planted_group_above_others{suffix}", float(race.at[group, f"{col}_low"]), ">",
                float(others[f"{col}_high"].max()),
                f"{concept} planted {planted.max():.2f} on {group}: lower bound of {group}'s {col} rate "
                f"{race.at[group, rate]:.3f} ({race.at[group, f'{col}_low']:.3f}-{race.at[group, f'{col}_high']:.3f}, "
                f"n {int(race.at[group, 'n'])}) vs the largest upper bound of the others; "
                + "; ".join(f"{g}: {r[rate]:.3f} ({r[f'{col}_low']:.3f}-{r[f'{col}_high']:.3f})"
                            for g, r in others.iterrows())))
            if family == "crime" and len(gender) >= 2:
                gap = float(gender[f"{col}_low"].max() - gender[f"{col}_high"].min())
                rows.append(_check(
                    f"zeroshot_crime_gender_intervals_overlap{suffix}", gap, "<", 0.0,
                    f"{concept} planted at gender parity: largest lower bound minus smallest upper bound of the "
                    "gender groups' crime rates (< 0: the intervals overlap); "
                    + "; ".join(f"{g}: {r[rate]:.3f} ({r[f'{col}_low']:.3f}-{r[f'{col}_high']:.3f})"
                                for g, r in gender.iterrows())))
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


def metric_tracking(table: pd.DataFrame, extra: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Spearman rho between planted share and each measurement, over every (concept, lang, attribute, class)."""
    rows = []
    sources = {f"top{int(table.k.iat[0])}_share": table.assign(value=table.measured)}
    sources["similarity_difference"] = table.assign(value=table.sim_diff)
    sources["association_d"] = table.assign(value=table.assoc_d)
    for name, t in (extra or {}).items():
        sources[name] = t.assign(value=t.measured)
    for name, t in sources.items():
        for attr, grp in t.groupby("attribute"):
            if grp.planted.nunique() > 1:
                rows.append({"metric": name, "attribute": attr, "n": len(grp),
                             "spearman_rho": float(stats.spearmanr(grp.planted, grp.value).statistic)})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.world.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True, help="generated world directory (bias_table.csv, concepts.csv)")
    p.add_argument("--classes", nargs="+", required=True, help="per-class metric CSVs of the world query sets")
    p.add_argument("--queries", nargs="+", required=True, help="query embedding .npy files (tables beside them)")
    p.add_argument("--images-npy", required=True)
    p.add_argument("--images-table", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--zeroshot-harmful", help="the zero-shot harmful.csv of the world's test split and this model: "
                                              "adds the crime / non-human checks (docs/experiments.md)")
    p.add_argument("--strong-gender", type=float, default=DEFAULT_STRONG["gender"])
    p.add_argument("--strong-race", type=float, default=DEFAULT_STRONG["race"])
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-checks", required=True)
    p.add_argument("--out-tracking", required=True)
    p.add_argument("--out-plot", required=True)
    a = p.parse_args(argv)
    from vlmbias import plots
    from vlmbias.world.generate import load_bias_table

    world = Path(a.world)
    bias = load_bias_table(world)
    families = pd.read_csv(world / "concepts.csv", dtype=str, keep_default_na=False)[["concept", "lang", "family"]]
    families = families.drop_duplicates(["concept", "lang"])
    query_emb, qmeta = {}, []
    for path in a.queries:
        q = read_table(Path(path).with_suffix(".parquet"))
        emb = read_npy(path)
        query_emb.update({qid: emb[r] for qid, r in zip(q["query_id"], q["row"])})
        qmeta.append(q[["query_id", "concept", "lang"]])
    # concept and lang of each query come from the query tables (the metric tables key on query_id)
    classes = pd.concat([read_table(p) for p in a.classes], ignore_index=True)
    classes = classes.drop(columns=[c for c in ("concept", "lang") if c in classes]).merge(
        pd.concat(qmeta).drop_duplicates("query_id"), on="query_id", how="left")
    images, rows, _ = check_embeddings(a.images_npy, a.images_table, "embed_images", manifest=a.manifest, mmap=False)
    labels = read_table(a.manifest).set_index("image_id").loc[rows["image_id"]].reset_index()
    table = calibration_table(classes, bias, query_emb, images, labels, a.k)
    extra = {}
    for k in sorted(set(classes["k"]) - {a.k}):
        extra[f"top{k}_share"] = calibration_table(classes, bias, query_emb, images, labels, k)
    result = checks(table, families, {"gender": a.strong_gender, "race": a.strong_race})
    if a.zeroshot_harmful:
        zs = zeroshot_checks(read_table(a.zeroshot_harmful), bias, families)
        result = pd.concat([result, zs], ignore_index=True) if len(zs) else result
    tracking = metric_tracking(table, extra)
    write_table(table, a.out_table)
    write_table(result, a.out_checks)
    write_table(tracking, a.out_tracking)
    foc = focal_rows(table)
    plots.plot_calibration(pd.concat([
        foc.assign(metric=f"top-{a.k} share", x=foc.planted, y=foc.measured, lo=foc.low, hi=foc.high),
    ]), a.out_plot, x="x", y="y", low="lo", high="hi", hue="metric")
    for r in result.itertuples():
        log.info("%s %s: %s (threshold %s) %s", "PASS" if r.passed else "FAIL", r.check, r.value, r.threshold, r.detail)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
