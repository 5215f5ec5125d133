"""`vlmbias calibrate`: print the calibration checks the workflow wrote, each PASS, FAIL or
EXPECTED-LIMIT (a metric's known limit, not counted in the exit status)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vlmbias import VlmbiasError


def _calibration_targets(a: argparse.Namespace) -> tuple[Path, list[str] | None]:
    if a.config:
        from vlmbias.config import calibration_models, load_config, results_root

        config = load_config(a.config)
        results = Path(a.results) if a.results else Path(results_root(config))
        return results, ([a.model] if a.model else calibration_models(config) or None)
    return Path(a.results or "results/world"), ([a.model] if a.model else None)


def cmd_calibrate(a: argparse.Namespace) -> int:
    import pandas as pd

    from vlmbias.world.calibrate import LIMIT_CHECKS

    results, models = _calibration_targets(a)
    base = results / "calibration"
    if models is None:  # every model the workflow calibrated
        models = sorted(p.parent.name for p in base.glob("*/checks.csv"))
        if not models:
            raise VlmbiasError(
                f"no calibration results under {base}/ (expected {base}/<model>/checks.csv); run the workflow "
                f"first: `snakemake --cores 8` from the repository root, or `snakemake {base}/<model>/checks.csv`")
    failed_total, out = 0, []
    for model in models:
        path = base / model / "checks.csv"
        if not path.is_file():
            raise VlmbiasError(f"{path} not found; run the workflow first: `snakemake --cores 8` from the "
                               f"repository root, or `snakemake {path}`")
        try:
            checks = pd.read_csv(path, dtype={"check": str, "detail": str}, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise VlmbiasError(f"cannot read {path}: {e}") from None
        need = [c for c in ("check", "passed") if c not in checks.columns]
        if need:
            raise VlmbiasError(f"{path} lacks column(s) {need}; is it the calibration stage's checks.csv?")
        passed = checks["passed"].map(_truth)
        if passed.isna().any():
            bad = checks.loc[passed.isna(), "passed"].iloc[0]
            raise VlmbiasError(f"{path}: 'passed' must be true or false, found {bad!r}")
        passed = passed.astype(bool)
        # a "limit" check documents a metric's known ceiling (checks.csv `kind`; files written before
        # that column existed: the same checks by name): its failure is shown, never counted as a pass
        limit = (checks["kind"].astype(str).str.strip().str.lower() == "limit" if "kind" in checks.columns
                 else checks["check"].astype(str).isin(LIMIT_CHECKS))
        expected = ~passed & limit
        n_fail = int((~passed & ~limit).sum())
        failed_total += n_fail
        out.append(f"calibration checks of {model} ({path})")
        width = max([len(str(c)) for c in checks["check"]] + [5])
        for row, ok, lim in zip(checks.to_dict("records"), passed, expected):
            val = f"value {_short(row.get('value'))}" if "value" in row else ""
            thr = (f"{'needs ' + str(row['rule']) + ' ' if row.get('rule') else 'threshold '}"
                   f"{_short(row.get('threshold'))}" if "threshold" in row else "")
            word = "PASS" if ok else "EXPECTED-LIMIT" if lim else "FAIL"
            out.append(f"  {word:<14}  {str(row['check']):<{width}}  {val:<16}  {thr}".rstrip())
            if lim:
                why = LIMIT_CHECKS.get(str(row["check"]), "a known limit of the metric")
                out.append(f"        not passed, and not a failure of the audit: {why}; not counted in the exit status")
            if str(row.get("detail", "")).strip():
                out.append(f"        {row['detail']}")
        if len(checks) == 0:
            out.append("  (no checks: nothing was verified)")
            failed_total += 1
        n_pass = int(passed.sum())
        words = [f"{n_pass} of {len(checks)} checks passed"]
        if expected.any():
            words.append(f"{int(expected.sum())} at a known metric limit (EXPECTED-LIMIT: "
                         f"{', '.join(checks.loc[expected, 'check'].astype(str))})")
        if n_fail:
            words.append(f"FAILED: {', '.join(checks.loc[~passed & ~limit, 'check'].astype(str))}")
        elif len(checks):
            words.append("the audit found every planted bias it was checked on" if expected.any() else "all passed")
        else:
            words.append("no checks")
        out.append("; ".join(words))
        out.append("")
    print("\n".join(out).rstrip())
    return 1 if failed_total else 0


def _truth(v):
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    return {"true": True, "1": True, "pass": True, "false": False, "0": False, "fail": False}.get(s)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


CALIBRATE_EXAMPLES = """examples:
  vlmbias calibrate                                  # every model under results/world/calibration/
  vlmbias calibrate --results results/world --model world-clip
  vlmbias calibrate --config config.yaml             # results folder and models from a workflow config

Reads results/<run>/calibration/<model>/checks.csv, written by the workflow's `calibrate` rule
(`snakemake --cores 8`); it computes nothing itself. Exit code 1 if any check of the audit's recovery
of a planted bias failed. A check of kind "limit" (checks.csv `kind`) documents a metric's known
ceiling, e.g. the top-k share's dose response, which saturates by design once a plant reaches ~0.8:
when it fails it is shown as EXPECTED-LIMIT (never as PASS) and does not set the exit code."""


def register(sub, formatter) -> None:
    """Add this command's parser to the `vlmbias` subparsers."""
    s = sub.add_parser("calibrate", help="print the workflow's calibration checks (PASS, FAIL or EXPECTED-LIMIT)",
                       description="Print the calibration checks that the workflow computed on the synthetic world "
                                   "(does the audit recover the planted bias?), PASS, FAIL or EXPECTED-LIMIT (a "
                                   "metric's known limit) each.",
                       epilog=CALIBRATE_EXAMPLES, formatter_class=formatter)
    s.add_argument("--results", metavar="DIR", help="the run's results folder (default: results/world, or the "
                                                    "one --config names)")
    s.add_argument("--model", help="a calibrated model, e.g. world-clip (default: every one found)")
    s.add_argument("--config", metavar="FILE", help="take the results folder and calibrated models from this "
                                                    "workflow config")
    s.set_defaults(func=cmd_calibrate)
