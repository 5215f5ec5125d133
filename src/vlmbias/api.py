"""The Python API: audit a model on a dataset in one call, and bias metrics on any ranking.

    import vlmbias
    result = vlmbias.audit_model("hf:path/to/clip", "path/to/images", ["a doctor", "a nurse"],
                                 csv="labels.csv", k=20)
    result.summary          # one row per (query, attribute): FD, MaxSkew, NDKL, ... with intervals
    result.save("my-audit")  # classes.csv, summary.csv, rankings.parquet, queries.csv

`audit_model` runs the same chain as `vlmbias audit` (dataset manifest, cached image embeddings,
query embeddings, exact top-k retrieval, the workflow's metric tables); its keyword arguments are
the command's options. The metric functions below take the labels of one ranking in rank order
(best first) and all share one signature, `(labels, k=None, target=None, classes=None)`; they
delegate to `vlmbias.audit.metrics`, whose conventions they follow.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from vlmbias import VlmbiasError
from vlmbias.audit import metrics as _m

__all__ = ["AuditResult", "audit_model", "counts", "shares", "fd", "rd", "skew", "max_skew", "min_skew",
           "ndkl", "kl", "tvd"]

# AuditResult.save(dir): file name -> attribute; the same columns as the workflow's artifacts
SAVED_TABLES = {"classes.csv": "classes", "summary.csv": "summary", "rankings.parquet": "rankings",
                "queries.csv": "queries"}


@dataclass
class AuditResult:
    """One audit's tables, with the columns of the workflow's artifacts (docs/artifacts.md):
    `classes` (one row per query, k, attribute and class), `summary` (one row per query, k and
    attribute), `rankings` (one row per query and rank: `image_id`, `score` = cosine similarity,
    then the image's labels), `queries` (the encoded text of each query), `distribution` (the
    dataset's class shares) and `info` (model, dataset, k, cache)."""
    classes: pd.DataFrame
    summary: pd.DataFrame
    rankings: pd.DataFrame
    queries: pd.DataFrame
    distribution: pd.DataFrame
    info: dict = field(default_factory=dict)

    def ranking(self, query: str) -> pd.DataFrame:
        """The ranked rows of one query (by its text or its query_id)."""
        r = self.rankings[(self.rankings["query"] == query) | (self.rankings["query_id"] == query)]
        if r.empty:
            raise VlmbiasError(f"no query {query!r} in this audit; it has {', '.join(self.queries['query'])}")
        return r.sort_values("rank").reset_index(drop=True)

    def save(self, folder) -> Path:
        """Write the tables into `folder` (created if needed): classes.csv, summary.csv,
        rankings.parquet, queries.csv, distribution.csv and info.json. Each file is written
        atomically. Returns the folder."""
        from vlmbias.io import atomic_path, write_table

        out = Path(folder).expanduser()
        if out.exists() and not out.is_dir():
            raise VlmbiasError(f"cannot save the audit into {out}: it is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        for name, attr in SAVED_TABLES.items():
            write_table(getattr(self, attr), out / name)
        write_table(self.distribution, out / "distribution.csv")
        with atomic_path(out / "info.json") as tmp:
            Path(tmp).write_text(json.dumps(self.info, indent=2, ensure_ascii=False, default=str) + "\n")
        return out


def audit_model(model: str, dataset, queries=None, *, csv=None, k: int = 20, attributes=None, templates=None,
                query_set: str | None = None, **options) -> AuditResult:
    """Audit `model` on the images of `dataset` for `queries`: retrieve the top `k` images of each
    query and measure their class shares, Fairness Disparity, Representation Disparity, MaxSkew,
    NDKL and a goodness-of-fit test against the dataset, with 95% intervals.

    model: a model spec as `vlmbias audit --model` takes it (`hf:DIR_OR_ID`, `NAME:PRETRAINED`, ...).
    dataset: a FairFace-layout folder, or any image folder with `csv=` (a file column and one column
    per attribute). queries: a string or a list of strings; or `query_set="PRESET:SET"` instead.
    Other keyword arguments are the command's options with `_` for `-` (`dataset_type`,
    `file_column`, `precision`, `device`, `batch_size`, `workers`, `n_boot`, `seed`,
    `skew_pseudocount`, `max_missing_fraction`, `max_bad_fraction`, `max_pixels`, `cache`), with
    the same defaults. Image embeddings are cached as the command caches them.
    """
    from vlmbias.cli import build_parser
    from vlmbias.cli.audit import compute_audit

    if isinstance(queries, str):
        queries = [queries]
    argv = ["audit", "--model", str(model), "--dataset", str(dataset)]
    if query_set is not None:
        argv += ["--query-set", str(query_set)]
    for q in queries or []:
        argv += ["--query", str(q)]
    a = build_parser().parse_args(argv)
    a.csv = None if csv is None else str(csv)
    a.k = k
    a.attributes = None if attributes is None else ([attributes] if isinstance(attributes, str) else list(attributes))
    a.template = None if templates is None else ([templates] if isinstance(templates, str) else list(templates))
    for name, value in options.items():
        if name in ("func", "command", "json") or not hasattr(a, name):
            known = sorted(n for n in vars(a) if n not in ("func", "command", "json", "model", "dataset", "query",
                                                           "query_set", "template"))
            raise VlmbiasError(f"audit_model() has no option {name!r}; options: {', '.join(known)}")
        setattr(a, name, value)
    run = compute_audit(a)
    from vlmbias.encoders.models import model_id

    info = {"model": run["model"], "model_id": model_id(run["model"]), "dataset": run["dataset"],
            "k": k, "k_used": run["k_used"], "attributes": run["attributes"],
            "n_images": int(len(run["images"])), "n_unreadable": int(len(run["skipped"])),
            "n_missing": int(len(run["missing"])), "precision": a.precision, "seed": a.seed, "n_boot": a.n_boot,
            "cache": run["cache"]}
    return AuditResult(classes=run["classes"], summary=run["summary"], rankings=run["rankings"],
                       queries=run["queries"], distribution=run["distribution"], info=info)


# ---------------------------------------------------------------- metrics on one ranking

def _ranking(labels, k, target, classes) -> tuple[pd.Series, list, pd.Series]:
    """(the first k labels, the class order, the target shares over it). Classes: `classes`, else the
    target's keys, else the distinct labels of the whole ranking in sorted order (a class absent from
    all of it cannot be counted then: pass `classes` or `target` for that)."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, pd.Series, np.ndarray, pd.Index)):
        raise _m.MetricsInputError("labels must be a sequence of class labels in rank order (best first), "
                                   f"got {type(labels).__name__}")
    lab = _m.labelled(list(labels))
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise _m.MetricsInputError(f"k must be a positive integer (the first k ranks), got {k!r}")
    if classes is None:
        if isinstance(target, (dict, pd.Series)):
            classes = list(pd.Series(target).index)
        else:
            classes = sorted(lab.dropna().unique().tolist(), key=str)
            if target is not None:
                raise _m.MetricsInputError("a target given as a list or array needs classes= in the same order "
                                           "(or give the target as a dict class -> share)")
    classes = list(classes)
    if k is not None:  # after inferring the classes: a class seen below rank k is absent, not unknown
        lab = lab.iloc[:int(k)]
    if not classes:
        raise _m.MetricsInputError("no classes: the ranking has no labelled item; pass classes=")
    index = pd.Index(classes, name="class")
    q = _m.uniform_target(classes) if target is None else pd.Series(_m._props(target, index, "target"), index=index)
    return lab, classes, q


def counts(labels, k=None, target=None, classes=None) -> pd.Series:
    """Number of items per class among the first k (all if k is None), zeros kept."""
    lab, classes, _ = _ranking(labels, k, target, classes)
    return _m.class_counts(lab, classes)


def shares(labels, k=None, target=None, classes=None) -> pd.Series:
    """Share of each class among the labelled items of the first k (sums to 1)."""
    c = counts(labels, k, target, classes)
    return (c / c.sum()).rename("share") if c.sum() else c.astype(float).rename("share") * np.nan


def fd(labels, k=None, target=None, classes=None, strict: bool = False) -> float:
    """Fairness Disparity (thesis eq. 3.1): count of the most over the least represented class; 1 is
    balanced. The target only names the classes (FD compares classes with each other); `strict`
    counts an absent class (inf), the default ignores it as the thesis does."""
    return _m.fairness_disparity(counts(labels, k, target, classes), strict=strict)


def rd(labels, k=None, target=None, classes=None) -> pd.Series:
    """Representation Disparity per class in percent (thesis eq. 3.2) against the target (default
    uniform; the workflow uses the dataset's shares): (retrieved% - target%) / target% * 100."""
    lab, classes, q = _ranking(labels, k, target, classes)
    return _m.representation_disparity(_m.class_counts(lab, classes), q)


def skew(labels, k=None, target=None, classes=None, eps: float | None = None) -> pd.Series:
    """Skew@k per class, ln(retrieved share / target share), in the published convention (an absent
    class counts as 1/k; `eps` smooths with a pseudo-count instead). Target default uniform."""
    lab, classes, q = _ranking(labels, k, target, classes)
    return _m.skew(_m.class_counts(lab, classes), q, eps)


def max_skew(labels, k=None, target=None, classes=None, eps: float | None = None) -> float:
    """MaxSkew@k: the largest Skew@k (the most over-represented class); 0 is balanced."""
    lab, classes, q = _ranking(labels, k, target, classes)
    return _m.max_skew(_m.class_counts(lab, classes), q, eps)


def min_skew(labels, k=None, target=None, classes=None, eps: float | None = None) -> float:
    """MinSkew@k: the smallest Skew@k (the most under-represented class); 0 is balanced."""
    lab, classes, q = _ranking(labels, k, target, classes)
    return _m.min_skew(_m.class_counts(lab, classes), q, eps)


def ndkl(labels, k=None, target=None, classes=None) -> float:
    """Normalised discounted KL divergence of every prefix of the first k against the target
    (Geyik et al. 2019; Berg et al. 2022); 0 is balanced at every rank. Target default uniform."""
    lab, classes, q = _ranking(labels, k, target, classes)
    return _m.ndkl(lab, classes, q)


def kl(labels, k=None, target=None, classes=None) -> float:
    """KL(retrieved shares of the first k || target), natural log, 0·ln 0 = 0; inf when a retrieved
    class has target share 0."""
    lab, classes, q = _ranking(labels, k, target, classes)
    c = _m.class_counts(lab, classes).to_numpy(float)
    if c.sum() == 0:
        return float("nan")
    return float(special.rel_entr(c / c.sum(), q.to_numpy()).sum())


def tvd(labels, k=None, target=None, classes=None) -> float:
    """Total variation distance between the retrieved shares of the first k and the target: half
    the sum of absolute differences, 0 to 1."""
    lab, classes, q = _ranking(labels, k, target, classes)
    return float(_m._tvd(_m.class_counts(lab, classes).to_numpy(float), q.to_numpy()))
