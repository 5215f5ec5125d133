"""What the HTML report opens on and what produced the run.

- `run-info`: the configuration exactly as the workflow saw it (schema defaults filled in) and one
  row per package that can change the numbers (`package, version`), plus Python, the platform and
  whether torch sees a GPU.
- `summary`: the report's landing page (`summary.rst`, included by workflow/report/workflow.rst):
  what was run, the headline at a glance (a query x attribute matrix of MaxSkew@k), the calibration
  verdict, zero-shot accuracy, and the full headline table, MaxSkew@k
  against a uniform target (published convention, x1) per query and model with its interval,
  also written as `headline.csv` (`query_set, query, attribute, k, model, max_skew_uniform, low,
  high, p_adjusted, skew_test, interval_undercovers`). Whether a skew is present is said by the
  parity test (`skew_test`: the goodness-of-fit test against the dataset, Benjamini-Hochberg
  across the query set's queries), not by the size of MaxSkew or whether its interval holds 0.
"""
from __future__ import annotations

import argparse
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from vlmbias import config as vconfig
from vlmbias.io import atomic_path, parse_json_arg, read_table, run_cli, write_table

PACKAGES = ["vlmbias", "torch", "torchvision", "open_clip_torch", "transformers", "peft", "tokenizers",
            "safetensors", "faiss-cpu", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "pillow",
            "snakemake", "deepface", "onnxruntime", "simple-image-download"]


def software_versions() -> pd.DataFrame:
    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    try:
        import torch
    except ImportError:
        return pd.DataFrame(rows, columns=["package", "version"])
    rows.append(("cuda", torch.version.cuda or "none"))
    rows.append(("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"))
    return pd.DataFrame(rows, columns=["package", "version"])


HEADLINE_ATTRIBUTES = ("gender", "race")


def headline_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """MaxSkew@k (uniform target) per query and model at each query set's largest k."""
    s = summaries[summaries["attribute"].isin(HEADLINE_ATTRIBUTES)]
    s = s[s["k"] == s.groupby("query_set")["k"].transform("max")]
    cols = {"max_skew_uniform_low": "low", "max_skew_uniform_high": "high"}
    keep = ["query_set", "query", "attribute", "k", "model", "max_skew_uniform", *cols, "p_adjusted", "skew_test",
            "skew_convention", "interval_method", "interval_undercovers"]
    return s[[c for c in keep if c in s.columns]].rename(columns=cols).reset_index(drop=True)


def _verdict(r) -> str:
    """The parity verdict after a headline cell: `skewed` or `no skew shown` (nothing for old tables)."""
    v = getattr(r, "skew_test", None)
    return f" {v}" if isinstance(v, str) and v else ""


def _rst_table(header: list[str], rows: list[list[str]]) -> str:
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        out.append("   * - " + str(row[0]))
        out += [f"     - {v}" for v in row[1:]]
    return "\n".join(out) + "\n"


def _sections(config: dict) -> list[str]:
    """The report categories this config produces (each is a link target on the landing page)."""
    optional = [("zeroshot", "Zero-shot"), ("calibration", "Calibration"), ("mitigation", "Mitigation"),
                ("experiments", "Experiments")]
    board = ["Leaderboard"] if vconfig.leaderboard_models(config) else []
    return ["Audit", *board, *[name for key, name in optional if config.get(key)], "Run"]


def _conventions(config: dict, headline: pd.DataFrame) -> str:
    """The conventions as the metric tables name them (their `skew_convention` / `interval_method`)."""
    def named(col, default):
        vals = sorted(set(headline[col].dropna().astype(str))) if col in headline else []
        return ", ".join(vals) or default
    skew = named("skew_convention", "published")
    skew_text = ("as published (raw share, a class absent from the top k at 1/k, natural log, x1)"
                 if skew == "published" else f"with {skew}")
    ci = (config.get("metrics") or {}).get("ci_method", "wilson")
    return (f"Conventions: MaxSkew {skew_text}, uniform target; 95% intervals: shares {ci}, the rest "
            f"{named('interval_method', 'bootstrap')} (docs/intervals.md gives their measured coverage). A skew is "
            "reported where the goodness-of-fit test against the dataset rejects parity at a Benjamini-Hochberg "
            "adjusted p <= 0.05 across the query set's queries.")


def glance_rst(headline: pd.DataFrame) -> list[str]:
    """The headline at a glance: per query set one compact matrix, a row per query and a column per
    attribute (and model, when several), the cell MaxSkew@k alone, in bold where the parity test
    finds a skew (`skew_test`), the same verdict as the full table's."""
    if headline.empty:
        return []
    models = list(dict.fromkeys(headline["model"]))
    attrs = [a for a in HEADLINE_ATTRIBUTES if a in set(headline["attribute"])]
    cols = [(a, m) for a in attrs for m in models]
    out = ["At a glance", "-----------", "",
           "MaxSkew@k against a uniform target per query (0: every class equally often in the top k; "
           "ln 2 = 0.693: one of two classes only). **Bold**: the parity test finds a skew (Benjamini-Hochberg "
           "adjusted p <= 0.05 across the query set). "
           "Intervals, conventions and undercovering notes follow in the full table below.", ""]
    for qset, g in headline.groupby("query_set", sort=False):
        k = int(g["k"].max())
        cells = {(r.query, r.attribute, r.model): (r.max_skew_uniform, _verdict(r).strip() == "skewed")
                 for r in g.itertuples()}
        rows = []
        for query in dict.fromkeys(g["query"]):
            row = [str(query)]
            for a, m in cols:
                v, skewed = cells.get((query, a, m), (None, False))
                text = "" if v is None or pd.isna(v) else f"{v:.2f}"
                row.append(f"**{text}**" if text and skewed else text)
            rows.append(row)
        header = [f"{qset} (k = {k})", *[a if len(models) == 1 else f"{a}, {m}" for a, m in cols]]
        out.append(_rst_table(header, rows))
    return out


def published_rst(published: pd.DataFrame) -> list[str]:
    """The protocol's published values beside ours (leaderboard/published_comparison.csv)."""
    if published is None or published.empty:
        return []
    proto = ", ".join(dict.fromkeys(published["protocol"].astype(str)))
    lines = [f"Ours beside published ({proto})", "-" * len(f"Ours beside published ({proto})"), "",
             f"{int((published['comparable'] == 'comparable').sum())} of {len(published)} rows comparable "
             "(same model, dataset and protocol); the others are shown for orientation only.", ""]
    rows = []

    def fmt(v) -> str:
        return "" if pd.isna(v) else f"{v:.3f}"

    for _, r in published.iterrows():
        ours = fmt(r["ours"]) + (f" [{fmt(r['ours_low'])}, {fmt(r['ours_high'])}]" if pd.notna(r["ours_low"]) else "")
        what = " / ".join(str(r[c]) for c in ("query", "attribute", "class") if pd.notna(r[c]) and str(r[c]))
        verdict = "comparable" if r["comparable"] == "comparable" else f"not comparable: {r['why_not_comparable']}"
        rows.append([str(r["model"]), str(r["metric"]), what, str(r["k"]), ours, fmt(r["published"]),
                     fmt(r["difference"]), "" if pd.isna(r["published_inside"]) else str(r["published_inside"]),
                     verdict])
    lines.append(_rst_table(["model", "metric", "query / attribute / class", "k", "ours [95%]", "published",
                             "difference", "inside", "comparable"], rows))
    lines.append("")
    return lines


def summary_rst(config: dict, headline: pd.DataFrame, checks: dict[str, pd.DataFrame],
                zeroshot: pd.DataFrame | None, published: pd.DataFrame | None = None) -> str:
    """The landing page in reStructuredText; `Audit_`-style links point to the report's categories."""
    # the audited datasets: reference and caption sets are listed in the config but not audited
    datasets = (config.get("audit") or {}).get("datasets") or list(config.get("datasets") or {})
    models = list(config.get("models") or {})
    lines = ["Summary", "=======", "",
             f"Run ``{config.get('run_name', 'default')}``: {len(datasets)} dataset(s) ({', '.join(datasets)}), "
             f"{len(models)} model(s) ({', '.join(models)}), {len(config.get('query_sets') or {})} query sets, "
             f"k = {', '.join(map(str, config.get('retrieval', {}).get('k', [])))}. {_conventions(config, headline)} "
             "Sections: " + ", ".join(f"{c}_" for c in _sections(config)) + ".", ""]
    lines += glance_rst(headline)
    if checks:
        lines += ["Calibration verdict", "-------------------", ""]
        for model, c in checks.items():
            passed = c["passed"].astype(bool)
            # a "limit" check records a metric's known ceiling (checks.csv `kind`): shown, never a failure
            limit = c["kind"].astype(str).eq("limit") if "kind" in c.columns else pd.Series(False, index=c.index)
            failed = c.loc[~passed & ~limit, "check"].tolist()
            at_limit = c.loc[~passed & limit, "check"].tolist()
            lines.append(f"- ``{model}``: {int(passed.sum())} of {len(c)} checks passed"
                         + (f"; failed: {', '.join(failed)}" if failed else "")
                         + (f"; at a known metric limit: {', '.join(at_limit)}" if at_limit else "") + ".")
        lines.append("")
    if zeroshot is not None and len(zeroshot):
        overall = zeroshot[zeroshot["group"] == "all"]
        lines += ["Zero-shot classification", "------------------------", ""]
        lines += [f"- ``{r.model}`` on ``{r.dataset}``: {r.attribute} accuracy {r.accuracy:.3f} "
                  f"[{r.accuracy_low:.3f}, {r.accuracy_high:.3f}], {r.n} images." for r in overall.itertuples()]
        lines.append("")
    lines += published_rst(published)
    lines += ["Headline: MaxSkew@k, uniform target", "-----------------------------------", ""]
    if headline.empty:
        lines.append("No audit summaries.")
    else:
        models_ = list(dict.fromkeys(headline["model"]))
        rows = []
        for (qset, query, attr, k), g in headline.groupby(["query_set", "query", "attribute", "k"], sort=False):
            cells = {r.model: f"{r.max_skew_uniform:.3f} [{r.low:.3f}, {r.high:.3f}]{_verdict(r)}"
                     for r in g.itertuples()}
            rows.append([qset, query, attr, str(k), *[cells.get(m, "") for m in models_]])
        if "skew_test" in headline:
            tested = headline[headline["skew_test"].notna()]
            lines.append(f"{int((tested['skew_test'] == 'skewed').sum())} of {len(tested)} (query, model) rows "
                         "show a skew (parity test, Benjamini-Hochberg adjusted p <= 0.05).")
            lines.append("")
        lines.append(_rst_table(["query set", "query", "attribute", "k", *models_], rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.report", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("run-info", help="write the run's configuration and software versions")
    info.add_argument("--config-json", required=True)
    info.add_argument("--out-config", required=True)
    info.add_argument("--out-versions", required=True)
    summ = sub.add_parser("summary", help="write the report's landing page and the headline table")
    summ.add_argument("--config-json", required=True)
    summ.add_argument("--summaries", nargs="+", required=True, help="the audit's *_summary.csv files")
    summ.add_argument("--checks", nargs="*", default=[], help="calibration checks.csv files (calibration/<model>/)")
    summ.add_argument("--zeroshot", nargs="*", default=[], help="zero-shot accuracy.csv files")
    summ.add_argument("--published", help="leaderboard/published_comparison.csv, when the run follows a protocol")
    summ.add_argument("--out-rst", required=True)
    summ.add_argument("--out-csv", required=True)
    a = p.parse_args(argv)
    config = parse_json_arg(a.config_json, "--config-json")
    if a.command == "summary":
        headline = headline_table(pd.concat([read_table(f) for f in a.summaries], ignore_index=True))
        checks = {Path(f).parent.name: read_table(f) for f in a.checks}
        zs = pd.concat([read_table(f) for f in a.zeroshot], ignore_index=True) if a.zeroshot else None
        write_table(headline, a.out_csv)
        with atomic_path(a.out_rst) as tmp:
            pub = read_table(a.published) if a.published else None
            tmp.write_text(summary_rst(config, headline, checks, zs, pub), encoding="utf-8")
        return
    with atomic_path(a.out_config) as tmp:
        tmp.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    write_table(software_versions(), a.out_versions)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
