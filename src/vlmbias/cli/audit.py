"""`vlmbias audit`: embed a labelled image set once, retrieve the top-k images per query and print
who comes back, through the same modules as the workflow (`data.build_manifest`,
`models.load_encoder`, `embed`, `retrieve`, `metrics.audit_tables`)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path

from vlmbias import VlmbiasError, __version__
from vlmbias.audit import presets
from vlmbias.cli.cache import cache_key, cache_root, read_cache, write_cache
from vlmbias.imagegate import DEFAULT_MAX_PIXELS

log = logging.getLogger("vlmbias.cli")

MODEL_FORMS = ("open_clip:NAME:PRETRAINED, NAME:PRETRAINED (open_clip, e.g. ViT-B-32:openai), "
               "hf-hub:ORG/NAME (an open_clip model on the Hugging Face hub), "
               "hf:ID_OR_DIR (a transformers CLIPModel hub id or local directory) or "
               "hf:DIR+adapter=ADAPTER_DIR")
FAIRFACE_LABELS = "fairface_label_val.csv"
QUERY_SET = "cli"


def parse_model_spec(text: str) -> dict:
    """`--model` string -> a model spec dict as `models.load_encoder` takes it (strict; see MODEL_FORMS)."""
    raw = text
    text = (text or "").strip()

    def bad(why: str) -> VlmbiasError:
        return VlmbiasError(f"malformed --model {raw!r}: {why}; accepted forms: {MODEL_FORMS}")

    if not text:
        raise bad("it is empty")
    if text.startswith("hf-hub:"):  # open_clip's own hub form (architecture and weights in one repo)
        if not text[len("hf-hub:"):].strip():
            raise bad("no hub id after 'hf-hub:'")
        return {"backend": "open_clip", "name": text, "pretrained": None}
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
    if str(spec["name"]).startswith("hf-hub:") and not spec.get("pretrained"):
        return spec["name"]
    if spec["backend"] == "hf":
        return f"hf:{spec['name']}" + (f"+adapter={spec['adapter']}" if spec.get("adapter") else "")
    return f"open_clip:{spec['name']}:{spec.get('pretrained')}"


def dataset_spec(path: str, kind: str, csv: str | None, file_column: str, strict_labels: bool = False) -> dict:
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
    elif not csv_path.is_absolute() and not (root / csv_path).exists():
        raise VlmbiasError(f"--csv {csv} not found (looked in the working directory {Path.cwd()} and in the "
                           f"dataset folder {root})")
    elif csv_path.is_absolute() and not csv_path.exists():
        raise VlmbiasError(f"--csv {csv} not found")
    return {"type": "labelled-folder", "root": str(root), "csv": str(csv_path), "file_column": file_column,
            "strict_labels": strict_labels}


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


def _query_spec(a: argparse.Namespace) -> dict:
    """--query (with --template) or a literature preset's query set (--query-set PRESET:SET)."""
    if bool(a.query) == bool(a.query_set):
        raise VlmbiasError("give either --query (repeatable) or --query-set PRESET:SET "
                           f"(presets: {', '.join(presets.available())}), not both or neither")
    if a.query_set:
        if a.template:
            raise VlmbiasError("--template applies to --query; a preset's query set brings its own templates")
        return dict(presets.query_set(a.query_set)[1])
    templates = a.template or ["{}"]
    _check_queries(a.query, templates)
    return {"queries": list(a.query), "templates": templates}


def compute_audit(a: argparse.Namespace) -> dict:
    """The audit chain shared by `vlmbias audit` and `vlmbias.audit_model`: check the options, build the
    dataset manifest, embed the images (cached) and the queries, retrieve the top k and measure it.
    Returns the workflow's tables (`rankings`, `classes`, `summary`, `queries`, `manifest`,
    `distribution`) and what was used (`model`, `dataset`, `query_spec`, `attributes`, `k_used`, ...)."""
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
    qspec = _query_spec(a)
    dspec = dataset_spec(a.dataset, a.dataset_type, a.csv, a.file_column, a.strict_labels)

    from vlmbias.audit.data import build_manifest, classes_from_distribution

    manifest, dist, missing = build_manifest(dspec, a.max_missing_fraction)
    classes = classes_from_distribution(dist)
    attributes = list(dict.fromkeys(a.attributes)) if a.attributes else list(classes)
    unknown = [x for x in attributes if x not in classes]
    if unknown:
        raise VlmbiasError(f"unknown attribute(s) {', '.join(unknown)}; this dataset has {', '.join(classes)}")

    from vlmbias.audit.embed import embed_images, embed_queries
    from vlmbias.audit.metrics import audit_tables
    from vlmbias.encoders.models import load_encoder, model_id
    from vlmbias.audit.retrieve import rankings_table, top_k

    key = cache_key(model, manifest, a.precision)
    entry = cache_root(a.cache) / "image-embeddings" / key
    cached = read_cache(entry, manifest)
    encoder = load_encoder(model, a.device, a.precision)
    if cached is not None:
        log.info("using cached image embeddings from %s", entry)
        emb, rows, skipped = cached
    else:
        log.info("embedding %d images with %s (cache miss; key %s)", len(manifest), encoder.name, key)
        emb, rows, skipped = embed_images(manifest, encoder, a.batch_size, a.workers, a.max_bad_fraction,
                                          a.max_pixels)
        write_cache(entry, emb, rows, skipped, {
            "model": format_model_spec(model), "dataset": dspec, "precision": a.precision,
            "n_images": int(len(rows)), "n_skipped": int(len(skipped)), "vlmbias": __version__})

    qemb, qtable = embed_queries(QUERY_SET, qspec, encoder)
    scores, idx = top_k(emb, qemb, a.k)
    dataset_name = Path(dspec["root"]).name
    rankings = rankings_table(scores, idx, rows, qtable, manifest, model_id(model), dataset_name, QUERY_SET)
    cls_df, sum_df = audit_tables(rankings, dist, [a.k], attributes, n_boot=a.n_boot, seed=a.seed,
                                  skew_eps=a.skew_pseudocount, strict=getattr(a, "strict", False))
    return {"model": model, "dataset": dspec, "query_spec": qspec, "attributes": attributes,
            "manifest": manifest, "distribution": dist, "missing": missing, "images": rows, "skipped": skipped,
            "queries": qtable, "rankings": rankings, "classes": cls_df, "summary": sum_df,
            "k_used": int(idx.shape[1]), "cache": {"hit": cached is not None, "key": key, "path": str(entry)}}


def run_audit(a: argparse.Namespace, tables: dict | None = None) -> dict:
    """Everything `vlmbias audit` computes, as a JSON-ready dict (also the basis of the text report).
    `tables`, when given, receives the workflow's tables as DataFrames: rankings, classes, summary."""
    run = compute_audit(a)
    if tables is not None:
        tables.update(rankings=run["rankings"], classes=run["classes"], summary=run["summary"])
    model, dspec, qspec, attributes = run["model"], run["dataset"], run["query_spec"], run["attributes"]
    qtable, cls_df, sum_df = run["queries"], run["classes"], run["summary"]
    rows, skipped, missing = run["images"], run["skipped"], run["missing"]
    from vlmbias.encoders.models import model_id

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
        ranked = run["rankings"][run["rankings"]["query_id"] == q.query_id]
        entry_q["ranking"] = [{"rank": int(r["rank"]), "image_id": str(r["image_id"]), "score": _jsonable(r["score"]),
                               **{attr: _jsonable(r[attr]) for attr in attributes}} for _, r in ranked.iterrows()]
        queries.append(entry_q)
    return {
        "vlmbias": __version__,
        "model": {"spec": format_model_spec(model), "backend": model["backend"], "id": model_id(model),
                  "precision": a.precision, "device": a.device},
        "dataset": {"root": dspec["root"], "type": dspec["type"], "n_images": int(len(rows)),
                    "n_unreadable": int(len(skipped)), "n_missing": int(len(missing))},
        "k": a.k, "k_used": run["k_used"], "attributes": attributes, "templates": qspec.get("templates") or ["{}"],
        "cache": run["cache"],
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
    from vlmbias.audit.metrics import INTERVAL_METHOD, INTERVAL_WORDS

    ds, m = res["dataset"], res["model"]
    lines = [
        f"model    {m['spec']}  ({m['precision']}, {m['device']})",
        f"dataset  {ds['root']}  ({ds['type']}, {ds['n_images']} images"
        + (f", {ds['n_unreadable']} unreadable" if ds["n_unreadable"] else "")
        + (f", {ds['n_missing']} missing" if ds["n_missing"] else "") + ")",
        f"top-k    {res['k_used']} by cosine similarity"
        + (f" (asked for {res['k']}; the dataset has only {res['k_used']} images)" if res["k_used"] < res["k"] else "")
        + ("; templates: " + " | ".join(res["templates"]) if res["templates"] != ["{}"] else ""),
        f"intervals 95%: Wilson for shares, {INTERVAL_WORDS[INTERVAL_METHOD]} for FD, RD, MaxSkew and NDKL;",
        "MaxSkew@k as published (raw share, absent class = 1/k, ln, x1) against a uniform target; NDKL against"
        " the dataset;",
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
        head = ["attribute", "n", "FD", "RD of top class (%)", "MaxSkew (uniform)", "NDKL", "fit p"]
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
                         f"{_num(s['max_skew_uniform'], '{:.3f}')} "
                         f"{_interval(s['max_skew_uniform_low'], s['max_skew_uniform_high'], '{:.3f}')}",
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


OUTPUT_FILES = {"rankings": "rankings.csv", "classes": "classes.csv", "summary": "summary.csv"}


def check_output_dir(path: str) -> Path:
    """--output must be a folder (created if absent), not a file; checked before any work is done."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise VlmbiasError(f"--output must be a folder, but {path} is a file")
    return out


def write_outputs(out: Path, res: dict, tables: dict) -> list[Path]:
    """The audit's tables (columns as the workflow's artifacts, docs/artifacts.md) and its JSON, each
    written whole or not at all."""
    from vlmbias.io import atomic_path, write_table

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VlmbiasError(f"cannot create --output folder {out}: {e.strerror}") from None
    written = []
    for name, file in OUTPUT_FILES.items():
        write_table(tables[name], out / file)
        written.append(out / file)
    with atomic_path(out / "audit.json") as tmp:
        Path(tmp).write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written.append(out / "audit.json")
    return written


def cmd_audit(a: argparse.Namespace) -> int:
    out = check_output_dir(a.output) if a.output else None
    tables: dict = {}
    res = run_audit(a, tables)
    if out is not None:
        written = write_outputs(out, res, tables)
        log.info("wrote %s", ", ".join(str(p) for p in written))
    print(json.dumps(res, indent=2, ensure_ascii=False) if a.json else format_audit(res))
    return 0


AUDIT_EXAMPLES = """examples:
  vlmbias audit --model ViT-B-32:openai --dataset ~/data/fairface --query "a doctor" --query "a nurse"
  vlmbias audit --model hf:openai/clip-vit-base-patch32 --dataset ~/data/fairface \\
      --query "a CEO" --k 50 --attributes gender race --template "a photo of {}" --json
  vlmbias audit --model hf:results/world/world/models/clip --dataset results/world/world/data/fairface \\
      --query "a doctor"
  vlmbias audit --model "hf:results/world/world/models/clip+adapter=results/world/mitigation/adapters/lora-thesis" \\
      --dataset results/world/world/data/fairface --query "a nurse"
  vlmbias audit --model RN50:openai --dataset ~/photos --dataset-type labelled-folder --csv ~/photos/labels.csv \\
      --query "a scientist" --attributes gender --output audit-out/

Image embeddings are cached in --cache (default $VLMBIAS_CACHE or ~/.cache/vlmbias), keyed by the
model, the dataset's images (ids, sizes, modification times) and the precision: a second audit of
the same model and dataset only encodes the queries. --json prints every number (NaN as null,
infinities as "inf"), including each query's ranking (rank, image id, score, labels). --output DIR
writes rankings.csv, classes.csv, summary.csv (the workflow's columns, docs/artifacts.md) and
audit.json."""


def register(sub, formatter) -> None:
    """Add this command's parser to the `vlmbias` subparsers."""
    s = sub.add_parser("audit", help="retrieve the top-k images for neutral queries and measure their demographics",
                       description="Embed a labelled image set once, retrieve the top-k images for each query by "
                                   "cosine similarity, and report who comes back: class counts and shares per "
                                   "attribute, Fairness Disparity, Representation Disparity, MaxSkew, NDKL and a "
                                   "goodness-of-fit test against the dataset, with 95% intervals.",
                       epilog=AUDIT_EXAMPLES, formatter_class=formatter)
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
    s.add_argument("--strict-labels", action="store_true",
                   help="labelled-folder: refuse labels that differ only in case or surrounding space "
                        "('Female' and 'female') instead of merging them with a warning")
    s.add_argument("--query", action="append", metavar="TEXT",
                   help="a neutral query such as \"a doctor\"; repeat for several")
    s.add_argument("--query-set", metavar="PRESET:SET",
                   help="a literature preset's query set instead of --query, e.g. berg2022:berg2022_test "
                        "(presets: thesis, berg2022, bendvlm; see docs/configuration.md)")
    s.add_argument("--k", type=int, default=20, help="how many top images to measure")
    s.add_argument("--attributes", nargs="+", metavar="ATTR",
                   help="attributes to measure (default: all of the dataset's, e.g. gender race age)")
    s.add_argument("--template", action="append", metavar="TEMPLATE",
                   help="prompt template with one {}, e.g. \"a photo of {}\"; repeat to average several "
                        "(default: the query as is)")
    s.add_argument("--cache", metavar="DIR", help="image-embedding cache (default: $VLMBIAS_CACHE or ~/.cache/vlmbias)")
    s.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="numeric precision of the model (part of the cache key); int8: the image tower's MLP "
                        "layers dynamically quantised, CPU only")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    s.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    s.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (0: none)")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the FD, RD and NDKL intervals")
    s.add_argument("--skew-pseudocount", type=float, metavar="EPS",
                   help="smooth Skew/MaxSkew with this pseudo-count (default: the published convention, raw share "
                        "with an absent class at 1/k)")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the goodness-of-fit simulation")
    s.add_argument("--strict", action="store_true",
                   help="stop with an error when --k is more than the dataset's images (or its labelled images "
                        "of an attribute) instead of measuring fewer and flagging it")
    s.add_argument("--max-missing-fraction", type=float, default=0.0,
                   help="share of listed images allowed to be missing on disk")
    s.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="share of images allowed to be unreadable (skipped and reported)")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger images are refused before decoding (decompression bombs); config images.max_pixels")
    s.add_argument("--json", action="store_true", help="print a machine-readable JSON object instead of tables")
    s.add_argument("--output", metavar="DIR",
                   help="also write the tables to this folder: rankings.csv (image ids and scores per query), "
                        "classes.csv, summary.csv (columns as the workflow's) and audit.json")
    s.set_defaults(func=cmd_audit)
