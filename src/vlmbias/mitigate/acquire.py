"""Acquire fine-tuning images per keyword (rule `acquire`) into one gated, content-addressed folder.

Config block (one per keyword list): `{source, keywords, limit, ...source options}`.

Sources:
- `web-search`: an image search engine, as in the thesis (`simple-image-download`, Google Images),
  through `vlmbias.mitigate.websearch` (why the package itself is not called: see there).
- `urls`: image URLs given in config, per keyword (`urls: {keyword: [url, ...]}` or `urls` on a
  keyword item).
- `folder`: images already on disk, `<root>/<keyword>/` (or the item's `folder`), taken in file-name
  order. The calibration world writes its search-engine stand-in this way (docs/calibration-world.md).

Every URL fetched (the search page, each scraped or listed link, every redirect) must resolve to
public addresses only: loopback, private, link-local, multicast, reserved and unspecified addresses
are refused after DNS resolution (see `vlmbias.mitigate.websearch`), since a scraped link must not
reach the machine's own services or its network. `allow_private_addresses: true` (or a list of
networks, e.g. `["10.1.0.0/16"]`) lifts that for tests and intranet image servers.

Keyword items are strings or `{keyword, concept?, urls?, folder?}`. `concept` defaults to the
keyword without a leading article ("a doctor" -> "doctor").
`exclude_concepts` (list) drops every keyword of those concepts before anything is searched: the
workflow passes the mitigation split's held-out concepts, so a fine-tuned model never sees them.

The gate, the same for every source: size cap in bytes, known image format, the project's image
gate (`vlmbias.imagegate`: at most `images.max_pixels` pixels, read from the header before any
pixel is decoded, so decompression bombs are refused), full decode. Accepted bytes are stored unchanged
at `<out_dir>/<slug>/<sha1[:16]>.<ext>`. The slug is ASCII, carries a hash of the keyword (so "../x"
cannot escape and two keywords never share a folder) and the file name is the content hash (so
names never collide and a rerun rewrites nothing).

Manifest (`acquired.parquet`), one row per candidate plus one per keyword that had no candidate:
`image_id` (`<slug>/<file>`, ok rows only), `path` (for duplicates the kept copy; stored relative to
`out_dir`, which the file's metadata records, and absolute again through `vlmbias.io.read_table`),
`source, keyword, concept, caption, lang, origin` (URL or source path), `sha1`, `status`
(ok, duplicate, not-image, too-large, undecodable, fetch-error, no-results, search-blocked,
search-error), `reason`.

Resuming: rows of earlier runs come from the old manifest and from a journal that is rewritten
after every keyword (`<out_dir>/.acquire-journal.parquet`, never pruned); stored images whose row
was lost are found on disk and adopted. A rerun keeps every stored image, does not fetch an origin
again unless it failed in transit (fetch-error), and stops at `limit` usable images per keyword.
A keyword with no usable image is logged and recorded; the stage fails only when every keyword
came back empty.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
from PIL import UnidentifiedImageError
from tqdm import tqdm

from vlmbias import VlmbiasError
from vlmbias.audit.queries import strip_article
from vlmbias.imagegate import DEFAULT_MAX_PIXELS, ImageRefused, check_limit, open_image
from vlmbias.io import atomic_path, parse_json_arg, read_table, run_cli, write_table
from vlmbias.mitigate.websearch import (
    CAPTCHA_MARKERS,
    AddressRefused,
    Fetcher,
    FetchError,
    allowed_networks,
    extract_image_links,
    package_user_agent,
    search_url,
    simple_image_download_version,
    urllib_fetch,
)

log = logging.getLogger(__name__)

SOURCES = ("web-search", "urls", "folder")
MANIFEST_COLUMNS = ["image_id", "path", "source", "keyword", "concept", "caption", "lang", "origin", "sha1",
                    "status", "reason"]
# statuses of a single candidate that a rerun does not retry (the same bytes give the same verdict)
FINAL_REJECTIONS = {"duplicate", "not-image", "too-large", "undecodable"}
KEYWORD_STATUSES = {"no-results", "search-blocked", "search-error"}
JOURNAL_NAME = ".acquire-journal.parquet"
RECOVERED = "file on disk: "      # origin of a stored image adopted without a record

DEFAULTS = {
    "limit": 50,                 # usable images kept per keyword
    "max_bytes": 20 * 2 ** 20,   # per downloaded file
    "timeout": 20.0,             # seconds per network operation
    "delay": 1.0,                # seconds between two search-engine requests (rate limits)
}
SPEC_KEYS = {"source", "keywords", "concepts", "urls", "root", "lang", "search_url", "user_agent",
             "allow_private_addresses", "exclude_concepts", *DEFAULTS}

# Image formats kept, with the extension they are stored under.
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
              "MPO": ".jpg"}
_STORED_NAME = re.compile(r"^[0-9a-f]{16}(?:[0-9a-f]{24})?\.(?:jpg|png|gif|webp|bmp|tif)$")

# ---------------------------------------------------------------------------------------- the gate

def slugify(keyword: str) -> str:
    """ASCII folder name for a keyword: a readable part plus a hash of the exact keyword."""
    ascii_part = unicodedata.normalize("NFKD", keyword).encode("ascii", "ignore").decode().lower()
    ascii_part = re.sub(r"[^a-z0-9]+", "-", ascii_part).strip("-")[:40].strip("-")
    digest = hashlib.sha1(keyword.encode("utf-8")).hexdigest()[:8]
    return f"{ascii_part}-{digest}" if ascii_part else f"kw-{digest}"


def check_image(data: bytes, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, str, str | None]:
    """(status, reason, extension) of candidate bytes; status 'ok' only for a fully decodable image
    that the image gate (`vlmbias.imagegate`, at most `max_pixels` pixels) lets through."""
    if len(data) > max_bytes:
        return "too-large", f"{len(data)} bytes > max_bytes {max_bytes}", None
    if not data:
        return "not-image", "empty file", None
    try:
        fmt = open_image(data, max_pixels, mode=None).format
    except ImageRefused as e:
        return "too-large", str(e), None
    except UnidentifiedImageError:
        return "not-image", "not a recognised image format", None
    except Exception as e:  # truncated/corrupt data surfaces as many exception types inside PIL
        return "undecodable", f"{type(e).__name__}: {e}", None
    if fmt not in EXTENSIONS:
        return "not-image", f"unsupported image format {fmt}", None
    return "ok", "", EXTENSIONS[fmt]


def _sha1_file(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def store_image(out_dir: Path, slug: str, data: bytes, sha1: str, ext: str) -> Path:
    """Write bytes to <out_dir>/<slug>/<sha1[:16]><ext> unless that exact content is already there."""
    folder = (out_dir / slug).resolve()
    if out_dir.resolve() not in folder.parents:  # slugify makes this impossible; a guard for later edits
        raise VlmbiasError(f"refusing to write outside {out_dir}: {folder}")
    for name in (sha1[:16] + ext, sha1 + ext):  # the full hash only on a 64-bit prefix collision
        path = folder / name
        if not path.exists():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return path
        if _sha1_file(path) == sha1:
            return path
    raise VlmbiasError(f"{folder / (sha1 + ext)} exists with other content; remove it and rerun")


# --------------------------------------------------------------------------------------- candidates

class Rejected(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Candidate:
    origin: str
    load: Callable[[], bytes]       # raises Rejected
    extra: dict = field(default_factory=dict)


@dataclass
class SearchResult:
    candidates: Iterator[Candidate] | list[Candidate]
    status: str = ""                # a KEYWORD_STATUSES value when there are no candidates
    reason: str = ""


def _download(url: str, fetcher: Fetcher, opts: dict) -> bytes:
    try:
        resp = fetcher(url, timeout=opts["timeout"], max_bytes=opts["max_bytes"],
                       headers={"User-Agent": opts["user_agent"]})
    except FetchError as e:
        raise Rejected("fetch-error", str(e)) from None
    if resp.status >= 400:
        raise Rejected("fetch-error", f"HTTP {resp.status}")
    if resp.too_large:
        raise Rejected("too-large", f"more than max_bytes {opts['max_bytes']}")
    ctype = (resp.content_type or "").split(";")[0].strip().lower()
    # Servers often send octet-stream or nothing for images: only a definite non-image type is refused
    # here; the decoder decides the rest.
    if ctype and not ctype.startswith("image/") and ctype not in ("application/octet-stream", "binary/octet-stream"):
        raise Rejected("not-image", f"content-type {ctype}")
    return resp.body


def _url_candidates(urls: list[str], fetcher: Fetcher, opts: dict) -> list[Candidate]:
    return [Candidate(u, lambda u=u: _download(u, fetcher, opts)) for u in dict.fromkeys(urls)]


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        if path.stat().st_size > max_bytes:
            raise Rejected("too-large", f"{path.stat().st_size} bytes > max_bytes {max_bytes}")
        return path.read_bytes()
    except OSError as e:
        raise Rejected("fetch-error", f"cannot read file: {e}") from None


def web_search(keyword: str, fetcher: Fetcher, opts: dict) -> SearchResult:
    url = search_url(keyword, opts.get("search_url"))
    try:
        resp = fetcher(url, timeout=opts["timeout"], max_bytes=10 * 2 ** 20,
                       headers={"User-Agent": opts["user_agent"], "Accept-Language": "en"})
    except AddressRefused as e:
        return SearchResult([], "search-error", str(e))
    except FetchError as e:
        return SearchResult([], "search-error", f"search engine unreachable ({e}); check the network")
    if resp.status in (403, 429, 503):
        return SearchResult([], "search-blocked", f"search engine refused the request (HTTP {resp.status}); "
                            "it is rate-limiting or blocking this machine: wait and rerun (images already "
                            "stored are kept)")
    if resp.status >= 400 or resp.too_large:
        return SearchResult([], "search-error", f"search engine answered HTTP {resp.status}"
                            + (" with an oversized page" if resp.too_large else ""))
    page = resp.body.decode("utf-8", errors="replace")
    links = extract_image_links(page)
    if not links:
        text = (page[:200_000] + " " + resp.url).lower()
        if any(m in text for m in CAPTCHA_MARKERS):
            return SearchResult([], "search-blocked", "search engine returned a captcha / 'unusual traffic' page "
                                "instead of results: wait and rerun (images already stored are kept)")
        return SearchResult([], "no-results", "the search engine returned no image links")
    return SearchResult(_url_candidates(links, fetcher, opts))


def folder_search(root: Path, sub: str, max_bytes: int) -> SearchResult:
    folder = (root / sub).resolve()
    if folder != root and root not in folder.parents:
        return SearchResult([], "search-error", f"folder {sub!r} lies outside root {root}")
    if not folder.is_dir():
        return SearchResult([], "no-results", f"folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        return SearchResult([], "no-results", f"folder is empty: {folder}")
    return SearchResult([Candidate(str(p), lambda p=p: _read_file(p, max_bytes)) for p in files])


# ------------------------------------------------------------------------------------------- spec

def default_concept(keyword: str) -> str:
    return strip_article(keyword)


def resolve_spec(spec: dict) -> tuple[dict, list[dict]]:
    """Validate the config block; returns (options, keyword items)."""
    if not isinstance(spec, dict):
        raise VlmbiasError("acquire: the spec must be a mapping")
    if "max_pixels" in spec:  # one limit for every stage that opens images
        raise VlmbiasError("acquire: max_pixels is no longer set per stage; set images.max_pixels in the config "
                           "(one limit for every stage that opens images)")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise VlmbiasError(f"acquire: unknown key(s) {unknown}; known keys: {sorted(SPEC_KEYS)}")
    source = spec.get("source")
    if source not in SOURCES:
        raise VlmbiasError(f"acquire: source {source!r} is not one of {list(SOURCES)}")
    opts = {**DEFAULTS, **{k: v for k, v in spec.items() if k in DEFAULTS and v is not None}}
    for key in ("limit", "max_bytes"):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 1:
            raise VlmbiasError(f"acquire: {key} must be a positive integer, got {opts[key]!r}")
    opts.update(source=source, search_url=spec.get("search_url"), lang=spec.get("lang"),
                user_agent=spec.get("user_agent") or package_user_agent(),
                allow_private_addresses=allowed_networks(spec.get("allow_private_addresses", False)))
    if opts["search_url"] and "{query}" not in opts["search_url"]:
        raise VlmbiasError("acquire: search_url must contain '{query}' where the quoted keyword goes")
    raw = spec.get("keywords")
    if not raw:
        raise VlmbiasError("acquire: the keyword list is empty; give at least one keyword under 'keywords'")
    if isinstance(raw, str):
        raise VlmbiasError(f"acquire: 'keywords' must be a list, got the string {raw!r}")
    concepts = spec.get("concepts") or {}
    url_map = spec.get("urls") or {}
    if source == "urls" and not isinstance(url_map, dict):
        raise VlmbiasError("acquire: 'urls' must map each keyword to its list of image URLs")
    items, seen = [], set()
    for entry in raw:
        item = {"keyword": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, dict) else None
        if item is None or not isinstance(item.get("keyword"), str) or not item["keyword"].strip():
            raise VlmbiasError(f"acquire: each keyword must be a non-empty string or a mapping with 'keyword', "
                               f"got {entry!r}")
        extra = sorted(set(item) - {"keyword", "concept", "urls", "folder"})
        if extra:
            raise VlmbiasError(f"acquire: keyword {item['keyword']!r} has unknown key(s) {extra}")
        kw = item["keyword"].strip()
        if kw in seen:
            raise VlmbiasError(f"acquire: keyword {kw!r} is listed twice")
        seen.add(kw)
        item["keyword"] = kw
        item["concept"] = item.get("concept") or concepts.get(kw) or default_concept(kw)
        if source == "urls":
            urls = item.get("urls", url_map.get(kw, []))
            if isinstance(urls, str) or not all(isinstance(u, str) for u in urls):
                raise VlmbiasError(f"acquire: the URLs of keyword {kw!r} must be a list of strings")
            item["urls"] = list(urls)
        items.append(item)
    excluded = spec.get("exclude_concepts") or []
    if isinstance(excluded, str) or not all(isinstance(c, str) for c in excluded):
        raise VlmbiasError(f"acquire: exclude_concepts must be a list of concept names, got {excluded!r}")
    dropped = [i["keyword"] for i in items if i["concept"] in set(excluded)]
    if dropped:  # the mitigation split's held-out concepts: a fitted method must never see them
        log.info("acquire: leaving out keyword(s) %s (their concepts are held out)", dropped)
        items = [i for i in items if i["concept"] not in set(excluded)]
    if not items:
        raise VlmbiasError(f"acquire: every keyword's concept is excluded ({sorted(excluded)}); nothing to acquire")
    return opts, items


# ---------------------------------------------------------------------------------------- resuming

def _read_previous(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for p in paths:
        if p is not None and Path(p).is_file():
            try:
                frames.append(read_table(p))
            except Exception as e:  # a damaged old record must not block a rerun; its files are adopted below
                log.warning("cannot read earlier record %s (%s); relying on the files on disk", p, e)
    if not frames:
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    df = pd.concat([f.reindex(columns=MANIFEST_COLUMNS) for f in frames], ignore_index=True)
    df = df.astype(object).where(df.notna(), None)
    return df.drop_duplicates(subset=["keyword", "source", "origin", "sha1", "status"], keep="last")


def _row(opts, item, slug, origin, status, reason="", sha1=None, path=None, extra=None) -> dict:
    extra = extra or {}
    image_id = f"{slug}/{Path(path).name}" if status == "ok" and path else None
    return {"image_id": image_id, "path": str(path) if path else None, "source": opts["source"],
            "keyword": item["keyword"], "concept": extra.get("concept", item["concept"]),
            "caption": extra.get("caption"), "lang": extra.get("lang"), "origin": origin, "sha1": sha1,
            "status": status, "reason": reason}


class _Keyword:
    """State of one keyword: what it already has (from earlier runs) and what this run adds."""

    def __init__(self, opts, item, out_dir: Path, previous: pd.DataFrame):
        self.opts, self.item, self.out_dir = opts, item, out_dir
        self.slug = slugify(item["keyword"])
        self.rows: list[dict] = []
        self.hashes: dict[str, str] = {}   # sha1 -> stored path
        self.origins: set[str] = set()     # origins not to fetch again
        self.recovered: dict[str, dict] = {}  # sha1 -> row of a file adopted from disk, origin unknown
        mine = previous[previous["keyword"] == item["keyword"]]
        # images another source stored under this keyword have their own record: not adopted below
        self.referenced = set(mine.loc[mine["status"] == "ok", "sha1"])
        prev = mine[mine["source"] == opts["source"]]
        lost = 0
        for r in prev[prev["status"] == "ok"].to_dict("records"):
            path = out_dir / str(r["image_id"])
            if r["image_id"] and path.is_file() and _sha1_file(path) == r["sha1"]:
                if r["sha1"] not in self.hashes:
                    self.rows.append({**r, "path": str(path.resolve())})
                    self.hashes[r["sha1"]] = str(path.resolve())
                    if str(r["origin"]).startswith(RECOVERED):
                        self.recovered[r["sha1"]] = self.rows[-1]
                self.origins.add(r["origin"])
            else:
                lost += 1
        if lost:
            log.warning("%r: %d image(s) recorded earlier are missing from %s and will be fetched again",
                        item["keyword"], lost, out_dir)
        for r in prev[prev["status"].isin(FINAL_REJECTIONS)].to_dict("records"):
            if r["status"] == "duplicate" and r["sha1"] not in self.hashes:
                continue  # its twin is gone: fetch it again rather than lose the image
            if r["origin"] not in self.origins:
                self.rows.append(r)
                self.origins.add(r["origin"])
        self.kept_before = len(self.hashes)

    @property
    def n_ok(self) -> int:
        return len(self.hashes)

    def adopt_files_on_disk(self) -> None:
        """Stored images whose record was lost (a crash before the journal was written) are kept."""
        folder = self.out_dir / self.slug
        if not folder.is_dir():
            return
        adopted = 0
        for path in sorted(folder.iterdir()):
            if not _STORED_NAME.match(path.name):
                continue
            sha1 = _sha1_file(path)
            if sha1 in self.hashes or sha1 in self.referenced or not sha1.startswith(path.stem):
                continue
            status, reason, _ = check_image(path.read_bytes(), self.opts["max_bytes"], self.opts["max_pixels"])
            if status == "ok":
                self.hashes[sha1] = str(path.resolve())
                self.rows.append(_row(self.opts, self.item, self.slug, f"{RECOVERED}{path.resolve()}", "ok",
                                      "recovered from disk; origin not recorded", sha1, path.resolve()))
                self.recovered[sha1] = self.rows[-1]
                adopted += 1
        if adopted:
            log.warning("%r: adopted %d stored image(s) that no record lists", self.item["keyword"], adopted)

    def add(self, cand: Candidate) -> None:
        opts = self.opts
        try:
            data = cand.load()
        except Rejected as e:
            self.rows.append(_row(opts, self.item, self.slug, cand.origin, e.status, e.reason, extra=cand.extra))
            if e.status != "fetch-error":
                self.origins.add(cand.origin)
            return
        self.origins.add(cand.origin)
        sha1 = hashlib.sha1(data).hexdigest()
        if sha1 in self.recovered:  # the origin of a file adopted from disk: complete its row in place
            row = self.recovered.pop(sha1)
            row.update(_row(opts, self.item, self.slug, cand.origin, "ok", "", sha1, self.hashes[sha1], cand.extra))
            return
        if sha1 in self.hashes:
            self.rows.append(_row(opts, self.item, self.slug, cand.origin, "duplicate",
                                  f"same content as {Path(self.hashes[sha1]).name}", sha1, self.hashes[sha1],
                                  cand.extra))
            return
        status, reason, ext = check_image(data, opts["max_bytes"], opts["max_pixels"])
        if status != "ok":
            self.rows.append(_row(opts, self.item, self.slug, cand.origin, status, reason, sha1, extra=cand.extra))
            return
        path = store_image(self.out_dir, self.slug, data, sha1, ext)
        self.hashes[sha1] = str(path)
        self.rows.append(_row(opts, self.item, self.slug, cand.origin, "ok", "", sha1, path, cand.extra))


# --------------------------------------------------------------------------------------------- stage

def acquire(spec: dict, out_dir: str | Path, *, manifest: str | Path | None = None, fetcher: Fetcher | None = None, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """Fetch, gate and store images for every keyword; returns the manifest (see the module doc).

    `manifest`: the manifest of an earlier run to resume from (its journal in out_dir is read too).
    `fetcher`: the HTTP layer (`urllib_fetch` unless given, refusing private addresses unless the
    spec's `allow_private_addresses` allows them; tests inject their own).
    `max_pixels`: the image gate's limit (config images.max_pixels).
    """
    opts, items = resolve_spec(spec)
    opts["max_pixels"] = check_limit(max_pixels)
    fetcher = fetcher or partial(urllib_fetch, allow_private=opts["allow_private_addresses"])
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / JOURNAL_NAME
    previous = _read_previous([Path(manifest) if manifest else None, journal])
    root = None
    if opts["source"] == "folder":
        if not spec.get("root"):
            raise VlmbiasError("acquire: source 'folder' needs 'root', the folder holding one subfolder per keyword")
        root = Path(spec["root"]).resolve()
        if not root.is_dir():
            raise VlmbiasError(f"acquire: folder root not found: {root}")
    if opts["source"] == "web-search":
        log.info("web-search: simple-image-download %s installed; its request and link rule are used, its "
                 "downloader is not (see vlmbias.mitigate.acquire)", simple_image_download_version() or "not")

    states, searched = [], 0
    for item in items:
        st = _Keyword(opts, item, out_dir, previous)
        st.adopt_files_on_disk()
        states.append(st)
        kw = item["keyword"]
        if st.n_ok >= opts["limit"]:
            log.info("%r: %d images already stored (limit %d); nothing to fetch", kw, st.n_ok, opts["limit"])
        else:
            if opts["source"] == "web-search":
                if searched and opts["delay"] > 0:
                    time.sleep(float(opts["delay"]))  # spacing requests is what keeps the engine from blocking
                searched += 1
                result = web_search(kw, fetcher, opts)
            elif opts["source"] == "urls":
                result = (SearchResult(_url_candidates(item["urls"], fetcher, opts)) if item["urls"] else
                          SearchResult([], "no-results", "no URLs listed for this keyword"))
            else:
                result = folder_search(root, item.get("folder") or kw, opts["max_bytes"])
            if result.status:
                st.rows.append(_row(opts, item, st.slug, None, result.status, result.reason))
                log_fn = log.error if result.status == "search-blocked" else log.warning
                log_fn("%r: %s: %s", kw, result.status, result.reason)
            bar = tqdm(total=opts["limit"], initial=st.n_ok, desc=f"acquire {kw[:30]}", unit="img",
                       disable=not progress, leave=False)
            for cand in result.candidates:
                if st.n_ok >= opts["limit"]:
                    break
                if cand.origin in st.origins:
                    continue
                before = st.n_ok
                st.add(cand)
                bar.update(st.n_ok - before)
            bar.close()
        _write_journal(journal, previous, states)
        bad = pd.Series([r["status"] for r in st.rows if r["status"] != "ok"]).value_counts().to_dict()
        log.info("%r: %d usable images (%d new)%s", kw, st.n_ok, st.n_ok - st.kept_before,
                 f"; rejected: {bad}" if bad else "")
        if st.n_ok == 0:
            log.warning("%r: no usable image; recorded in the manifest", kw)

    out = _as_table(pd.DataFrame([r for st in states for r in st.rows], columns=MANIFEST_COLUMNS))
    if not any(st.n_ok for st in states):
        raise VlmbiasError("no keyword returned a usable image: " + "; ".join(_why_empty(st) for st in states))
    return out


def _why_empty(st: _Keyword) -> str:
    for r in st.rows:
        if r["status"] in KEYWORD_STATUSES:
            return f"{st.item['keyword']!r}: {r['status']} ({r['reason']})"
    counts = pd.Series([r["status"] for r in st.rows], dtype=object).value_counts().to_dict()
    return f"{st.item['keyword']!r}: every candidate was rejected {counts}" if counts else \
        f"{st.item['keyword']!r}: no candidates"


def _write_journal(journal: Path, previous: pd.DataFrame, states: list[_Keyword]) -> None:
    """Everything known so far, this run's keywords plus every earlier row (never pruned)."""
    current = pd.DataFrame([r for st in states for r in st.rows], columns=MANIFEST_COLUMNS)
    df = pd.concat([previous, current], ignore_index=True) if len(previous) else current
    df = df.astype(object).where(df.notna(), None)
    df = df.drop_duplicates(subset=["keyword", "source", "origin", "sha1", "status"], keep="last")
    write_table(_as_table(df), journal, path_root=journal.parent)


def _as_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every manifest column as a nullable string, so empty and full runs write the same schema."""
    return df.reindex(columns=MANIFEST_COLUMNS).astype("string").reset_index(drop=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.acquire", description="Acquire images per keyword.")
    p.add_argument("--spec-json", required=True, help="the keyword list's config block as JSON")
    p.add_argument("--out-dir", required=True, help="folder the images are stored in (kept between runs)")
    p.add_argument("--manifest", required=True, help="acquired.parquet to write (and to resume from)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    a = p.parse_args(argv)
    manifest = acquire(parse_json_arg(a.spec_json, "--spec-json"), a.out_dir, manifest=a.manifest, max_pixels=a.max_pixels)
    # image paths are stored relative to the image folder (docs/artifacts.md); read_table resolves them
    write_table(manifest, a.manifest, path_root=a.out_dir)
    ok = manifest["status"] == "ok"
    log.info("acquired %d usable images for %d keywords; %d rows in %s", int(ok.sum()),
             manifest.loc[ok, "keyword"].nunique(), len(manifest), a.manifest)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
