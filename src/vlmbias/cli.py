"""The `vlmbias` command: audit one model on one dataset from the shell, read calibration results,
list models.

    vlmbias audit --model ViT-B-32:openai --dataset ~/data/fairface --query "a doctor" --query "a nurse"
    vlmbias calibrate                      # PASS/FAIL of the workflow's calibration checks
    vlmbias models [--name ViT-B-32]       # backends, known models, open_clip pretrained tags
    vlmbias --version

The command is a thin front end: it calls the same modules as the Snakemake workflow
(`data.build_manifest`, `models.load_encoder`, `embed`, `retrieve`, `metrics.audit_tables`), and
`calibrate` only reads what the workflow's `calibrate` rule wrote. Image embeddings are cached
per (model, dataset content, precision) so that further queries on the same model and dataset
cost only a text encoding.

Exit codes: 0 ok, 1 failed calibration check(s), 2 user error (bad arguments, missing files,
unloadable model...), printed as one `error: ...` line on stderr.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from vlmbias import VlmbiasError, __version__

log = logging.getLogger("vlmbias.cli")

MODEL_FORMS = ("open_clip:NAME:PRETRAINED, NAME:PRETRAINED (open_clip, e.g. ViT-B-32:openai), "
               "hf:ID_OR_DIR (a transformers CLIPModel hub id or local directory) or "
               "hf:DIR+adapter=ADAPTER_DIR")
FAIRFACE_LABELS = "fairface_label_val.csv"
CACHE_FORMAT = 1  # bump when the cached files change meaning
QUERY_SET = "cli"


# ---------------------------------------------------------------- argument parsing helpers

def parse_model_spec(text: str) -> dict:
    """`--model` string -> a model spec dict as `models.load_encoder` takes it (strict; see MODEL_FORMS)."""
    raw = text
    text = (text or "").strip()

    def bad(why: str) -> VlmbiasError:
        return VlmbiasError(f"malformed --model {raw!r}: {why}; accepted forms: {MODEL_FORMS}")

    if not text:
        raise bad("it is empty")
    if text.startswith("hf:"):
        rest, adapter = text[3:], None
        m = re.fullmatch(r"(.*)\+([A-Za-z_][\w-]*)=(.*)", rest)
        if m:
            rest, key, adapter = m.groups()
            if key != "adapter":
                raise bad(f"unknown option '+{key}=' (only '+adapter=' is accepted)")
            if not adapter.strip():
                raise bad("the adapter directory after '+adapter=' is empty")
        if not rest.strip():
            raise bad("no model id or directory after 'hf:'")
        spec = {"backend": "hf", "name": _abs_if_local(rest.strip())}
        if adapter is not None:
            spec["adapter"] = _abs_if_local(adapter.strip())
        return spec
    if text.startswith("open_clip:"):
        parts = text[len("open_clip:"):].split(":", 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise bad("open_clip models need both a NAME and a PRETRAINED tag or checkpoint path")
        name, pretrained = parts[0].strip(), parts[1].strip()
    else:
        parts = text.split(":")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            hint = ""
            if len(parts) == 1 and ("/" in text or Path(text).exists()):
                hint = f" (did you mean hf:{text}?)"
            elif len(parts) > 2:
                hint = " (for a PRETRAINED path containing ':' use the open_clip:NAME:PRETRAINED form)"
            raise bad("expected exactly one ':' between NAME and PRETRAINED" + hint)
        name, pretrained = parts[0].strip(), parts[1].strip()
    if "+adapter=" in pretrained:
        raise bad("adapters are supported for hf models only")
    return {"backend": "open_clip", "name": name, "pretrained": _abs_if_local(pretrained)}


def _abs_if_local(value: str) -> str:
    """Local paths become absolute (same cache key from any working directory); hub ids stay as they are."""
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def format_model_spec(spec: dict) -> str:
    if spec["backend"] == "hf":
        return f"hf:{spec['name']}" + (f"+adapter={spec['adapter']}" if spec.get("adapter") else "")
    return f"open_clip:{spec['name']}:{spec.get('pretrained')}"


def dataset_spec(path: str, kind: str, csv: str | None, file_column: str) -> dict:
    """`--dataset/--dataset-type/--csv` -> a dataset spec dict as `data.build_manifest` takes it."""
    root = Path(path).expanduser()
    if not root.exists():
        raise VlmbiasError(f"dataset folder not found: {path}")
    if not root.is_dir():
        raise VlmbiasError(f"--dataset must be a folder, but {path} is a file")
    root = root.resolve()
    if kind == "auto":
        if csv:
            kind = "labelled-folder"
        elif (root / FAIRFACE_LABELS).is_file():
            kind = "fairface"
        else:
            raise VlmbiasError(
                f"{root} is not a FairFace-layout folder (no {FAIRFACE_LABELS} inside); for any other "
                "image folder pass --dataset-type labelled-folder --csv LABELS.csv")
    if kind == "fairface":
        if csv:
            raise VlmbiasError("--csv applies to --dataset-type labelled-folder only; a FairFace folder "
                               f"reads its own {FAIRFACE_LABELS}")
        return {"type": "fairface", "root": str(root)}
    if not csv:
        raise VlmbiasError("--dataset-type labelled-folder needs --csv: a CSV with a file column and one "
                           "column per attribute")
    csv_path = Path(csv).expanduser()
    if not csv_path.is_absolute() and csv_path.exists():  # relative to the working directory...
        csv_path = csv_path.resolve()                       # ...else build_manifest reads it inside the folder
    return {"type": "labelled-folder", "root": str(root), "csv": str(csv_path), "file_column": file_column}


def _check_queries(queries: list[str], templates: list[str]) -> None:
    for i, q in enumerate(queries, 1):
        if not q.strip():
            raise VlmbiasError(f"--query number {i} is empty; give the text to search for, e.g. --query \"a doctor\"")
    dup = sorted({q.strip() for q in queries if sum(x.strip() == q.strip() for x in queries) > 1})
    if dup:
        raise VlmbiasError(f"--query {dup[0]!r} is given more than once")
    for t in templates:
        if t.count("{}") != 1:
            raise VlmbiasError(f"--template {t!r} must contain exactly one '{{}}' where the query goes")


# ---------------------------------------------------------------- image-embedding cache

def cache_root(arg: str | None) -> Path:
    return Path(arg or os.environ.get("VLMBIAS_CACHE") or Path.home() / ".cache" / "vlmbias").expanduser().absolute()


def _files_fingerprint(path: str) -> list:
    """Sizes and mtimes of a local model file or directory: retraining a model in place changes the key."""
    p = Path(path)
    if not p.exists():
        return []
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.relative_to(p)) if f != p else f.name, st.st_size, st.st_mtime_ns])
    return out


def cache_key(model: dict, manifest, precision: str) -> str:
    """Hash of the model spec (plus its local files' sizes/mtimes), the images (ids, sizes, mtimes), precision."""
    h = hashlib.sha256()
    local = {k: _files_fingerprint(str(model[k])) for k in ("name", "pretrained", "adapter") if model.get(k)}
    h.update(json.dumps({"format": CACHE_FORMAT, "model": model, "model_files": local, "precision": precision},
                        sort_keys=True, default=str).encode())
    for image_id, path in zip(manifest["image_id"], manifest["path"]):
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\n{image_id}\t{stamp}".encode())
    return h.hexdigest()[:32]


def read_cache(entry: Path, manifest):
    """(embeddings, row table, skipped table) from a cache entry, or None when absent or unusable."""
    from vlmbias.io import read_npy, read_table

    if not (entry / "images.npy").is_file() or not (entry / "images.parquet").is_file():
        return None
    try:
        emb, rows = read_npy(entry / "images.npy"), read_table(entry / "images.parquet")
        skipped = read_table(entry / "skipped.csv") if (entry / "skipped.csv").is_file() else None
        if emb.ndim != 2 or len(emb) != len(rows) or list(rows["row"]) != list(range(len(rows))):
            raise ValueError(f"embeddings {emb.shape} do not match {len(rows)} rows")
        if not set(rows["image_id"]) <= set(manifest["image_id"]):
            raise ValueError("image ids differ from the dataset's")
    except Exception as e:  # a damaged entry is recomputed, never trusted
        log.warning("ignoring unusable cache entry %s (%s: %s)", entry, type(e).__name__, e)
        return None
    if skipped is None:
        import pandas as pd
        skipped = pd.DataFrame(columns=["image_id", "path", "reason"])
    return emb, rows, skipped


def write_cache(entry: Path, emb, rows, skipped, meta: dict) -> None:
    """Write all files into a temporary folder, then rename it into place: readers never see half an entry."""
    from vlmbias.io import write_npy, write_table

    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
        write_table(rows, tmp / "images.parquet")
        write_table(skipped, tmp / "skipped.csv")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        write_npy(emb, tmp / "images.npy")
        if entry.exists():  # an unusable entry found earlier
            shutil.rmtree(entry)
        os.replace(tmp, entry)
        log.info("stored image embeddings in %s", entry)
    except OSError as e:  # the cache is an optimisation: failing to write it does not fail the audit
        log.warning("could not write the embedding cache at %s: %s", entry, e)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- audit

def run_audit(a: argparse.Namespace) -> dict:
    """Everything `vlmbias audit` computes, as a JSON-ready dict (also the basis of the text report)."""
    model = parse_model_spec(a.model)
    if a.k < 1:
        raise VlmbiasError(f"--k must be at least 1, got {a.k}")
    if a.n_boot < 1:
        raise VlmbiasError(f"--n-boot must be at least 1, got {a.n_boot}")
    if a.batch_size < 1 or a.workers < 0:
        raise VlmbiasError(f"--batch-size must be at least 1 and --workers at least 0, got {a.batch_size} "
                           f"and {a.workers}")
    for name in ("max_missing_fraction", "max_bad_fraction"):
        if not 0 <= getattr(a, name) <= 1:
            raise VlmbiasError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(a, name)}")
    templates = a.template or ["{}"]
    _check_queries(a.query, templates)
    dspec = dataset_spec(a.dataset, a.dataset_type, a.csv, a.file_column)

    from vlmbias.data import build_manifest, classes_from_distribution

    manifest, dist, missing = build_manifest(dspec, a.max_missing_fraction)
    classes = classes_from_distribution(dist)
    attributes = list(dict.fromkeys(a.attributes)) if a.attributes else list(classes)
    unknown = [x for x in attributes if x not in classes]
    if unknown:
        raise VlmbiasError(f"unknown attribute(s) {', '.join(unknown)}; this dataset has {', '.join(classes)}")

    from vlmbias.embed import embed_images, embed_queries
    from vlmbias.metrics import audit_tables
    from vlmbias.models import load_encoder, model_id
    from vlmbias.retrieve import rankings_table, top_k

    key = cache_key(model, manifest, a.precision)
    entry = cache_root(a.cache) / "image-embeddings" / key
    cached = read_cache(entry, manifest)
    encoder = load_encoder(model, a.device, a.precision)
    if cached is not None:
        log.info("using cached image embeddings from %s", entry)
        emb, rows, skipped = cached
    else:
        log.info("embedding %d images with %s (cache miss; key %s)", len(manifest), encoder.name, key)
        emb, rows, skipped = embed_images(manifest, encoder, a.batch_size, a.workers, a.max_bad_fraction)
        write_cache(entry, emb, rows, skipped, {
            "model": format_model_spec(model), "dataset": dspec, "precision": a.precision,
            "n_images": int(len(rows)), "n_skipped": int(len(skipped)), "vlmbias": __version__})

    qspec = {"queries": list(a.query), "templates": templates}
    qemb, qtable = embed_queries(QUERY_SET, qspec, encoder)
    scores, idx = top_k(emb, qemb, a.k)
    dataset_name = Path(dspec["root"]).name
    rankings = rankings_table(scores, idx, rows, qtable, manifest, model_id(model), dataset_name, QUERY_SET)
    cls_df, sum_df = audit_tables(rankings, dist, [a.k], attributes, n_boot=a.n_boot, seed=a.seed)

    queries = []
    for q in qtable.itertuples():
        entry_q = {"query_id": q.query_id, "query": q.query, "text": q.text, "attributes": {}}
        for attr in attributes:
            c = cls_df[(cls_df["query_id"] == q.query_id) & (cls_df["attribute"] == attr)]
            s = sum_df[(sum_df["query_id"] == q.query_id) & (sum_df["attribute"] == attr)].iloc[0]
            entry_q["attributes"][attr] = {
                "classes": [{col: _jsonable(r[col]) for col in (
                    "class", "count", "proportion", "proportion_low", "proportion_high", "dataset_proportion",
                    "rd", "rd_low", "rd_high", "skew_uniform", "skew_dataset")} for _, r in c.iterrows()],
                "summary": {col: _jsonable(s[col]) for col in sum_df.columns
                            if col not in ("model", "dataset", "query_set", "query_id", "query", "k", "attribute")},
            }
        entry_q["n"] = int(sum_df.loc[sum_df["query_id"] == q.query_id, "n"].max())
        queries.append(entry_q)
    return {
        "vlmbias": __version__,
        "model": {"spec": format_model_spec(model), "backend": model["backend"], "id": model_id(model),
                  "precision": a.precision, "device": a.device},
        "dataset": {"root": dspec["root"], "type": dspec["type"], "n_images": int(len(rows)),
                    "n_unreadable": int(len(skipped)), "n_missing": int(len(missing))},
        "k": a.k, "k_used": int(idx.shape[1]), "attributes": attributes, "templates": templates,
        "cache": {"hit": cached is not None, "key": key, "path": str(entry)},
        "queries": queries,
    }


def _jsonable(v):
    """Plain Python values; NaN -> null, infinities -> "inf"/"-inf" (strict JSON has neither)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def _num(v, fmt: str = "{:.2f}") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):  # "inf"
        return v
    return fmt.format(v)


def _pct(v) -> str:
    return _num(v if v is None or isinstance(v, str) else 100 * v, "{:.1f}%")


def _interval(lo, hi, fmt: str = "{:.2f}") -> str:
    return f"[{_num(lo, fmt)}, {_num(hi, fmt)}]"


def format_audit(res: dict) -> str:
    """The human-readable report: one block per query, one class table per attribute, then the metrics."""
    ds, m = res["dataset"], res["model"]
    lines = [
        f"model    {m['spec']}  ({m['precision']}, {m['device']})",
        f"dataset  {ds['root']}  ({ds['type']}, {ds['n_images']} images"
        + (f", {ds['n_unreadable']} unreadable" if ds["n_unreadable"] else "")
        + (f", {ds['n_missing']} missing" if ds["n_missing"] else "") + ")",
        f"top-k    {res['k_used']} by cosine similarity"
        + (f" (asked for {res['k']}; the dataset has only {res['k_used']} images)" if res["k_used"] < res["k"] else "")
        + ("; templates: " + " | ".join(res["templates"]) if res["templates"] != ["{}"] else ""),
        "intervals 95%: Wilson for shares, bootstrap for FD, RD and NDKL; MaxSkew and NDKL against the dataset;",
        "FD as in the thesis ignores absent classes ('strict' counts them: inf when a class is absent)",
    ]
    for q in res["queries"]:
        lines += ["", f"== {q['query']!r}" + (f"  (encoded: {q['text']})" if q["text"] != q["query"] else "")
                  + f"  top {q['n']} =="]
        for attr, t in q["attributes"].items():
            width = max([len(attr)] + [len(str(c["class"])) for c in t["classes"]]) + 2
            lines.append(f"  {attr:<{width}}{'count':>6}  {'share':>6}  {'95% interval':<16}{'dataset':>8}")
            for c in t["classes"]:
                lines.append(f"    {str(c['class']):<{width - 2}}{c['count']:>6}  {_pct(c['proportion']):>6}  "
                             f"{_interval(_pct_raw(c['proportion_low']), _pct_raw(c['proportion_high']), '{:.1f}'):<16}"
                             f"{_pct(c['dataset_proportion']):>8}")
        lines.append("")
        head = ["attribute", "n", "FD", "RD of top class (%)", "MaxSkew", "NDKL", "fit p"]
        rows = []
        for attr, t in q["attributes"].items():
            s = t["summary"]
            top = _top_class(t["classes"])
            rd = (f"{top['class']} {_num(top['rd'], '{:+.1f}')} {_interval(top['rd_low'], top['rd_high'], '{:+.1f}')}"
                  if top else "n/a")
            fd = f"{_num(s['fd'])} {_interval(s['fd_low'], s['fd_high'])}"
            if s["fd_strict"] != s["fd"]:  # the thesis' FD ignores absent classes; say so when it matters
                fd += f" strict {_num(s['fd_strict'])}"
            rows.append([attr, str(s["n"]), fd, rd,
                         _num(s["max_skew_dataset"]),
                         f"{_num(s['ndkl_dataset'], '{:.3f}')} "
                         f"{_interval(s['ndkl_dataset_low'], s['ndkl_dataset_high'], '{:.3f}')}",
                         _num(s["p_value"], "{:.3g}")])
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _pct_raw(v):
    return v if v is None or isinstance(v, str) else 100 * v


def _top_class(classes: list[dict]) -> dict | None:
    """The most retrieved class (ties: the larger RD, then class order)."""
    if not classes or not any(c["count"] for c in classes):
        return None
    rd = [c["rd"] if isinstance(c["rd"], (int, float)) else -math.inf for c in classes]
    best = max(range(len(classes)), key=lambda i: (classes[i]["count"], rd[i], -i))
    return classes[best]


def cmd_audit(a: argparse.Namespace) -> int:
    res = run_audit(a)
    print(json.dumps(res, indent=2, ensure_ascii=False) if a.json else format_audit(res))
    return 0


# ---------------------------------------------------------------- calibrate

def _calibration_targets(a: argparse.Namespace) -> tuple[Path, list[str] | None]:
    if a.config:
        from vlmbias.config import calibration_models, load_config, results_root

        config = load_config(a.config)
        results = Path(a.results) if a.results else Path(results_root(config))
        return results, ([a.model] if a.model else calibration_models(config) or None)
    return Path(a.results or "results/world"), ([a.model] if a.model else None)


def cmd_calibrate(a: argparse.Namespace) -> int:
    import pandas as pd

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
        n_fail = int((~passed.astype(bool)).sum())
        failed_total += n_fail
        out.append(f"calibration checks of {model} ({path})")
        width = max([len(str(c)) for c in checks["check"]] + [5])
        for row, ok in zip(checks.to_dict("records"), passed):
            val = f"value {_short(row.get('value'))}" if "value" in row else ""
            thr = f"threshold {_short(row.get('threshold'))}" if "threshold" in row else ""
            out.append(f"  {'PASS' if ok else 'FAIL'}  {str(row['check']):<{width}}  {val:<16}  {thr}".rstrip())
            if str(row.get("detail", "")).strip():
                out.append(f"        {row['detail']}")
        if len(checks) == 0:
            out.append("  (no checks: nothing was verified)")
            failed_total += 1
        verdict = "all passed" if n_fail == 0 and len(checks) else \
            f"FAILED: {', '.join(checks.loc[~passed.astype(bool), 'check'].astype(str))}" if n_fail else "no checks"
        out.append(f"{len(checks) - n_fail} of {len(checks)} checks passed; {verdict}")
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


# ---------------------------------------------------------------- models

def cmd_models(a: argparse.Namespace) -> int:
    from vlmbias.models import BACKENDS, KNOWN_MODELS

    lines = ["backends: " + ", ".join(BACKENDS), "", "known models (as --model takes them):"]
    for backend in BACKENDS:
        for name in KNOWN_MODELS.get(backend, []):
            lines.append(f"  {backend:<10} {'hf:' + name if backend == 'hf' else name}")
    lines += ["", f"--model forms: {MODEL_FORMS}.",
              "Any open_clip architecture or transformers CLIPModel works, not only those listed; "
              "`vlmbias models --name NAME` lists an open_clip architecture's pretrained tags."]
    if a.name:
        import open_clip

        known = open_clip.list_models()
        if a.name not in known:
            import difflib

            close = difflib.get_close_matches(a.name, known, n=8, cutoff=0.5)
            raise VlmbiasError(f"unknown open_clip model {a.name!r}; similar names: {', '.join(close or known[:8])}")
        tags = open_clip.list_pretrained_tags_by_model(a.name)
        lines += ["", f"open_clip pretrained tags of {a.name}:"]
        lines += [f"  {a.name}:{t}" for t in tags] or ["  (none: random weights or a local checkpoint only)"]
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- parser and entry point

class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout; shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


AUDIT_EXAMPLES = """examples:
  vlmbias audit --model ViT-B-32:openai --dataset ~/data/fairface --query "a doctor" --query "a nurse"
  vlmbias audit --model hf:openai/clip-vit-base-patch32 --dataset ~/data/fairface \\
      --query "a CEO" --k 50 --attributes gender race --template "a photo of {}" --json
  vlmbias audit --model hf:results/world/world/models/clip --dataset results/world/world/data/fairface \\
      --query "a doctor"
  vlmbias audit --model "hf:results/world/world/models/clip+adapter=results/world/mitigation/adapters/lora-thesis" \\
      --dataset results/world/world/data/fairface --query "a nurse"
  vlmbias audit --model RN50:openai --dataset ~/photos --dataset-type labelled-folder --csv ~/photos/labels.csv \\
      --query "a scientist" --attributes gender

Image embeddings are cached in --cache (default $VLMBIAS_CACHE or ~/.cache/vlmbias), keyed by the
model, the dataset's images (ids, sizes, modification times) and the precision: a second audit of
the same model and dataset only encodes the queries. --json prints every number (NaN as null,
infinities as "inf")."""

CALIBRATE_EXAMPLES = """examples:
  vlmbias calibrate                                  # every model under results/world/calibration/
  vlmbias calibrate --results results/world --model world-clip
  vlmbias calibrate --config config.yaml             # results folder and models from a workflow config

Reads results/<run>/calibration/<model>/checks.csv, written by the workflow's `calibrate` rule
(`snakemake --cores 8`); it computes nothing itself. Exit code 1 if any check failed."""

MODELS_EXAMPLES = """examples:
  vlmbias models
  vlmbias models --name ViT-B-32        # open_clip pretrained tags, e.g. ViT-B-32:openai

Lists names only: no weights are loaded and the network is not used."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vlmbias", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Audit social bias in CLIP-style vision-language models (text-to-image retrieval).",
        epilog="examples:\n"
               "  vlmbias audit --model ViT-B-32:openai --dataset ~/data/fairface --query \"a doctor\"\n"
               "  vlmbias calibrate\n"
               "  vlmbias models --name ViT-B-32\n\n"
               "The full experiment is a Snakemake workflow: `snakemake --cores 8` (see README.md).\n"
               "Run `vlmbias COMMAND --help` for each command's options.")
    p.add_argument("--version", action="version", version=f"vlmbias {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("audit", help="retrieve the top-k images for neutral queries and measure their demographics",
                       description="Embed a labelled image set once, retrieve the top-k images for each query by "
                                   "cosine similarity, and report who comes back: class counts and shares per "
                                   "attribute, Fairness Disparity, Representation Disparity, MaxSkew, NDKL and a "
                                   "goodness-of-fit test against the dataset, with 95% intervals.",
                       epilog=AUDIT_EXAMPLES, formatter_class=_Formatter)
    s.add_argument("--model", required=True, metavar="SPEC", help=f"the model: {MODEL_FORMS}")
    s.add_argument("--dataset", required=True, metavar="DIR",
                   help=f"image folder: FairFace layout (val/ + {FAIRFACE_LABELS}), detected automatically, "
                        "or any folder with --dataset-type labelled-folder --csv")
    s.add_argument("--dataset-type", choices=["auto", "fairface", "labelled-folder"], default="auto",
                   help="how to read --dataset; auto: FairFace if its label file is there, labelled-folder if "
                        "--csv is given")
    s.add_argument("--csv", metavar="FILE", help="labelled-folder: CSV with a file column (paths relative to "
                                                 "--dataset) and one column per attribute")
    s.add_argument("--file-column", default="file", help="labelled-folder: the CSV's file column")
    s.add_argument("--query", action="append", required=True, metavar="TEXT",
                   help="a neutral query such as \"a doctor\"; repeat for several")
    s.add_argument("--k", type=int, default=20, help="how many top images to measure")
    s.add_argument("--attributes", nargs="+", metavar="ATTR",
                   help="attributes to measure (default: all of the dataset's, e.g. gender race age)")
    s.add_argument("--template", action="append", metavar="TEMPLATE",
                   help="prompt template with one {}, e.g. \"a photo of {}\"; repeat to average several "
                        "(default: the query as is)")
    s.add_argument("--cache", metavar="DIR", help="image-embedding cache (default: $VLMBIAS_CACHE or ~/.cache/vlmbias)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="numeric precision of the model (part of the cache key)")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    s.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    s.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (0: none)")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the FD, RD and NDKL intervals")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the goodness-of-fit simulation")
    s.add_argument("--max-missing-fraction", type=float, default=0.0,
                   help="share of listed images allowed to be missing on disk")
    s.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="share of images allowed to be unreadable (skipped and reported)")
    s.add_argument("--json", action="store_true", help="print a machine-readable JSON object instead of tables")
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("calibrate", help="print the workflow's calibration checks (PASS/FAIL)",
                       description="Print the calibration checks that the workflow computed on the synthetic world "
                                   "(does the audit recover the planted bias?), PASS or FAIL each.",
                       epilog=CALIBRATE_EXAMPLES, formatter_class=_Formatter)
    s.add_argument("--results", metavar="DIR", help="the run's results folder (default: results/world, or the "
                                                    "one --config names)")
    s.add_argument("--model", help="a calibrated model, e.g. world-clip (default: every one found)")
    s.add_argument("--config", metavar="FILE", help="take the results folder and calibrated models from this "
                                                    "workflow config")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("models", help="list backends, known models and open_clip pretrained tags",
                       description="List the encoder backends and known model names, without loading weights.",
                       epilog=MODELS_EXAMPLES, formatter_class=_Formatter)
    s.add_argument("--name", metavar="ARCH", help="an open_clip architecture whose pretrained tags to list")
    s.set_defaults(func=cmd_models)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (so captured streams in tests see the messages)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("vlmbias: %(message)s"))


def _setup_logging() -> None:
    """Progress messages of vlmbias's own modules on stderr; other libraries' logging is left alone."""
    logger = logging.getLogger("vlmbias")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vlmbias` console script; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    if a.command is None:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging()
    try:
        return a.func(a)
    except VlmbiasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
