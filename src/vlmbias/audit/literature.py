"""Published numbers beside ours: every value the shipped table (`published_values.csv`, sources
in presets/SOURCES.md) holds for the run's protocol, next to the run's own value, for every
audited (dataset, model).

Ours is read from the metric tables: a summary metric (`max_skew_dataset`, `kl_dataset`,
`max_skew_uniform`, `ndkl_uniform`, `fd`, ...) is the mean over the protocol's query set at the
published k (or one query's value where the published row names a query), with the leaderboard's
95% interval of a mean (vlmbias.audit.leaderboard.mean_interval); `share` (a class's share of the
top k) and `rd` (Representation Disparity) are one query's class row of the classes table, with its
interval. Ours is put on the published value's scale (x1 or x100) before the difference is taken.

A row is `comparable` only when the audited model is the published one (the same weights under
either backend's name), the dataset is the published one, the run keeps every protocol-fixed field
(no `protocol_deviations`) and ours exists with a full top k (no `k_above_images` /
`k_above_labelled` flag in the metric tables); otherwise `not comparable`, with the reasons. Where
ours has an interval, `published_inside` says whether the published value lies inside it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.audit.leaderboard import mean_interval, model_id
from vlmbias.io import parse_json_arg, read_table, run_cli, write_table

log = logging.getLogger(__name__)

PUBLISHED_TABLE = Path(__file__).with_name("published_values.csv")
PUBLISHED_COLUMNS = ["protocol", "model", "dataset", "query_set", "query", "attribute", "class", "k", "metric", "value",
                     "interval_half_width", "scale", "convention", "source", "table", "verified", "note"]
COMPARISON_COLUMNS = ["protocol", "dataset", "model", "model_id", "query_set", "query", "attribute", "class", "k",
                      "metric", "scale", "ours", "ours_low", "ours_high", "ours_n", "published",
                      "published_half_width", "difference", "published_inside", "comparable", "why_not_comparable",
                      "deviations", "published_model", "published_dataset", "convention", "source", "table",
                      "verified"]
# metrics read from the classes table (one query's class row), with the scale they are stored in
CLASS_METRICS = {"share": ("proportion", 1), "rd": ("rd", 100)}
# the same OpenAI weights under the Hugging Face and open_clip names
MODEL_ALIASES = {"openai/clip-vit-base-patch32": "ViT-B-32:openai", "openai/clip-vit-base-patch16": "ViT-B-16:openai",
                 "openai/clip-vit-large-patch14": "ViT-L-14:openai",
                 "openai/clip-vit-large-patch14-336": "ViT-L-14-336:openai",
                 **{f"{a}-quickgelu:openai": f"{a}:openai" for a in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")}}


def same_model(ours: str, published: str) -> bool:
    return MODEL_ALIASES.get(str(ours), str(ours)) == MODEL_ALIASES.get(str(published), str(published))


def read_published(extra: str | Path | None = None) -> pd.DataFrame:
    """The shipped table, plus a user's table of further values (same columns) where given."""
    tables = [PUBLISHED_TABLE] + ([Path(extra)] if extra else [])
    parts = []
    for path in tables:
        if not Path(path).is_file():
            raise VlmbiasError(f"published values table not found: {path}")
        df = pd.read_csv(path, dtype={"query": str, "class": str, "query_set": str})
        missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
        if missing:
            raise VlmbiasError(f"{path} lacks column(s) {missing}; expected {PUBLISHED_COLUMNS}")
        bad = df[~df["verified"].isin(["yes", "no"])]
        if len(bad):
            raise VlmbiasError(f"{path} line {bad.index[0] + 2}: verified must be yes or no, got {bad['verified'].iloc[0]!r}")
        if not pd.to_numeric(df["value"], errors="coerce").notna().all():
            raise VlmbiasError(f"{path}: every value must be a number")
        parts.append(df[PUBLISHED_COLUMNS])
    return pd.concat(parts, ignore_index=True)


def _blank(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x)) or str(x).strip() == ""


def _pick_query(df: pd.DataFrame, query) -> pd.DataFrame:
    return df if _blank(query) else df[(df["query"] == query) | (df["query_id"] == query)]


def short_of_k(rows: pd.DataFrame) -> str:
    """The metric tables' flags saying a top k held fewer than k items (';'-joined), '' if none."""
    if "flags" not in rows.columns:
        return ""
    flags = {f for v in rows["flags"].dropna().astype(str) for f in v.split(";") if f.strip()}
    return ";".join(sorted(flags))


def ours_value(row: pd.Series, summary: pd.DataFrame, classes: pd.DataFrame) -> tuple[float, float, float, int]:
    """(value, low, high, n) of ours for one published row, on ours' stored scale."""
    k = int(row["k"])
    if row["metric"] in CLASS_METRICS:
        col, _ = CLASS_METRICS[row["metric"]]
        c = classes[(classes["query_set"] == row["query_set"]) & (classes["k"] == k)
                    & (classes["attribute"] == row["attribute"]) & (classes["class"].astype(str) == str(row["class"]))]
        c = _pick_query(c, row["query"])
        if len(c) != 1 or _blank(row["query"]):
            return np.nan, np.nan, np.nan, 0
        r = c.iloc[0]
        return float(r[col]), float(r.get(f"{col}_low", np.nan)), float(r.get(f"{col}_high", np.nan)), 1
    m = row["metric"]
    if m not in summary.columns:
        raise VlmbiasError(f"published metric {m!r} is not a column of the metric summaries")
    s = summary[(summary["query_set"] == row["query_set"]) & (summary["k"] == k)
                & (summary["attribute"] == row["attribute"])]
    s = _pick_query(s, row["query"])
    if s.empty:
        return np.nan, np.nan, np.nan, 0
    lo = s[f"{m}_low"] if f"{m}_low" in s.columns else np.full(len(s), np.nan)
    hi = s[f"{m}_high"] if f"{m}_high" in s.columns else np.full(len(s), np.nan)
    mean, low, high, n = mean_interval(s[m], lo, hi)
    return mean, low, high, n


def published_comparison(summary: pd.DataFrame, classes: pd.DataFrame, protocol: str, published: pd.DataFrame,
                         model_ids: dict[str, str], dataset_types: dict[str, str],
                         deviations: list[str] | None = None) -> pd.DataFrame:
    """One row per (audited dataset, model) and published value of `protocol` (module docstring)."""
    pub = published[published["protocol"] == protocol]
    deviations = list(deviations or [])
    pairs = summary[["dataset", "model"]].drop_duplicates().itertuples(index=False)
    rows = []
    for dataset, model in pairs:
        s = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
        c = classes[(classes["dataset"] == dataset) & (classes["model"] == model)] if len(classes) else classes
        mid = model_ids.get(model, model)
        for _, p in pub.iterrows():
            value, low, high, n = ours_value(p, s, c)
            at_k = s[(s["k"] == int(p["k"])) & (s["attribute"] == p["attribute"])
                     & (s["query_set"] == p["query_set"])] if len(s) else s
            short = short_of_k(at_k)
            native = CLASS_METRICS.get(p["metric"], (None, 1))[1]
            factor = float(p["scale"]) / native
            value, low, high = value * factor, low * factor, high * factor
            why = []
            if not same_model(mid, p["model"]):
                why.append(f"model {mid} is not the published model {p['model']}")
            if dataset_types.get(dataset, dataset) != p["dataset"]:
                why.append(f"dataset {dataset} ({dataset_types.get(dataset, '?')}) is not the published {p['dataset']}")
            if deviations:
                why.append("the run deviates from the protocol in " + ", ".join(deviations))
            if not np.isfinite(value):
                why.append("the run has no value for this row")
            elif short:
                why.append(f"our top {int(p['k'])} holds fewer than {int(p['k'])} labelled images ({short})")
            inside = ("" if not (np.isfinite(low) and np.isfinite(high))
                      else "yes" if low <= float(p["value"]) <= high else "no")
            rows.append({"protocol": protocol, "dataset": dataset, "model": model, "model_id": mid,
                         "query_set": p["query_set"], "query": p["query"], "attribute": p["attribute"],
                         "class": p["class"], "k": int(p["k"]), "metric": p["metric"], "scale": p["scale"],
                         "ours": value, "ours_low": low, "ours_high": high, "ours_n": n, "published": float(p["value"]),
                         "published_half_width": p["interval_half_width"],
                         "difference": value - float(p["value"]), "published_inside": inside,
                         "comparable": "not comparable" if why else "comparable",
                         "why_not_comparable": "; ".join(why), "deviations": ";".join(deviations),
                         "published_model": p["model"], "published_dataset": p["dataset"],
                         "convention": p["convention"], "source": p["source"], "table": p["table"],
                         "verified": p["verified"]})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.literature", description=__doc__.splitlines()[0])
    p.add_argument("--summaries", nargs="*", default=[], help="the protocol's *_summary.csv files")
    p.add_argument("--classes", nargs="*", default=[], help="the matching *_classes.csv files")
    p.add_argument("--protocol", required=True)
    p.add_argument("--model-specs-json", default="{}", help="{model: its config spec}")
    p.add_argument("--dataset-types-json", default="{}", help="{dataset: its type}")
    p.add_argument("--deviations", default="", help="the protocol-fixed fields the run changes, comma-separated")
    p.add_argument("--published-values", help="a further table of published values (the shipped one is always read)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    summary = pd.concat([read_table(f) for f in a.summaries], ignore_index=True) if a.summaries else pd.DataFrame(
        columns=["dataset", "model"])
    classes = pd.concat([read_table(f) for f in a.classes], ignore_index=True) if a.classes else pd.DataFrame()
    specs = parse_json_arg(a.model_specs_json, "--model-specs-json")
    table = published_comparison(summary, classes, a.protocol, read_published(a.published_values),
                                 {m: model_id(s) for m, s in specs.items()},
                                 parse_json_arg(a.dataset_types_json, "--dataset-types-json"),
                                 [d for d in a.deviations.split(",") if d])
    write_table(table, a.out)
    log.info("published comparison (%s): %d rows, %d comparable", a.protocol, len(table),
             int((table["comparable"] == "comparable").sum()))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
