"""Named query sets from config -> a table of queries.

A query set is `{queries: [...], templates: ["a photo of {}"], transform: {...}}`. `templates` is one
list for every query, or a mapping language -> list (a query takes its `lang`'s list, "en" by default),
so a multilingual set can ensemble each query over templates in its own language. Each query is a
string or `{text, id, lang, concept, names: {attribute: class}}`; `names` marks queries that name
a group ("a Black person" names race=Black) for the aggregation-bias metrics.
"""
from __future__ import annotations

import re
import unicodedata

import pandas as pd

from vlmbias import VlmbiasError

# A leading article (English, with its space) or Chinese measure word ("一位医生" = "a doctor").
_ARTICLE = re.compile(r"^(?:(?:a|an|the)\s+|一位|一个|一名)", re.IGNORECASE)


def strip_article(text: str) -> str:
    """'a  doctor' -> 'doctor' (spaces collapsed, case kept): the concept a caption names."""
    return _ARTICLE.sub("", " ".join(str(text).split()))


def caption_key(text: str) -> str:
    """Case-, space-, Unicode-form- and article-insensitive form for matching captions and keywords."""
    return strip_article(unicodedata.normalize("NFC", str(text))).lower()

QUERY_COLUMNS = ["query_id", "query", "texts", "lang", "concept", "names_attribute", "names_class"]


def expand_query_set(name: str, spec: dict) -> pd.DataFrame:
    """One row per query with the list of texts to encode (one per template, after transforms)."""
    entries = spec.get("queries") or []
    if not entries:
        raise VlmbiasError(f"query set {name!r} has no queries")
    templates = spec.get("templates") or ["{}"]
    by_lang = templates if isinstance(templates, dict) else None
    for t in [t for ts in (by_lang or {"": templates}).values() for t in ts]:
        if t.count("{}") != 1:
            raise VlmbiasError(f"query set {name!r}: template {t!r} must contain exactly one '{{}}'")
    suffix = (spec.get("transform") or {}).get("suffix", "")
    rows = []
    for i, e in enumerate(entries):
        e = {"text": e} if isinstance(e, str) else dict(e)
        text = str(e.get("text", "")).strip()
        if not text:
            raise VlmbiasError(f"query set {name!r}: entry {i} has no text")
        names = e.get("names") or {}
        if len(names) > 1:
            raise VlmbiasError(f"query set {name!r}: query {text!r} names more than one attribute: {names}")
        (attr, cls), = names.items() if names else ((None, None),)
        lang = e.get("lang", "en")
        if by_lang is not None and lang not in by_lang:
            raise VlmbiasError(f"query set {name!r}: query {text!r} is in language {lang!r}, which has no "
                               f"templates (have {sorted(by_lang)})")
        own = by_lang[lang] if by_lang is not None else templates
        rows.append({
            "query_id": str(e.get("id", text)), "query": text,
            "texts": [t.format(text + suffix) for t in own],
            "lang": lang, "concept": e.get("concept"),
            "names_attribute": attr, "names_class": None if cls is None else str(cls),
        })
    df = pd.DataFrame(rows, columns=QUERY_COLUMNS)
    dup = df["query_id"][df["query_id"].duplicated()]
    if len(dup):
        raise VlmbiasError(f"query set {name!r}: duplicate query id(s) {dup.tolist()}; give them distinct 'id's")
    return df
