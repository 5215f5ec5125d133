"""The web image-search client of the `web-search` acquisition source, and the HTTP fetcher every
acquisition source that downloads uses.

The thesis used `simple-image-download` (Google Images). The installed package is NOT called:
every release has a defect that silently corrupts or hangs an unattended run:
- 0.2 (what pip installs on Linux) turns every HTTP or network error (429, 403, unreachable)
  into `exit(0)`, a silent "success";
- when a page has fewer links than `limit`, its link scanner wraps around and returns repeats;
  on a page with no link at all (a captcha page) it loops forever;
- it splits the keyword on commas (0.2; later releases split further, and 0.4/0.5 import `magic`
  from `python-magic-bin==0.4.14`, which has no Linux wheel, so pip falls back to 0.2);
- its file names (`<keyword>_<n>.jpg`, or random 3-hex ids in 0.4+) collide and overwrite.
So this module sends the package's own search request (the same URL and User-Agent, read from
the package when its release exposes them) for the WHOLE phrase, and applies the package's own
link rule (a quoted `https://...` string cut at the first backslash, kept if it names an image
extension), here bounded and de-duplicated. Rate limiting (HTTP 429/403/503), a captcha page,
an empty result page and an unreachable network each get a status of their own.
"""
from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

# simple-image-download 0.2's request, inlined there; 0.4+ exposes BASE_URL, GOOGLE_PICTURE_ID, HEADERS.
_SID_BASE_URL = "https://www.google.com/search?q="
_SID_PICTURE_ID = ("&biw=1536&bih=674&tbm=isch&sxsrf=ACYBGNSXXpS6YmAKUiLKKBs6xWb4uUY5gA:1581168823770"
                   "&source=lnms&sa=X&ved=0ahUKEwioj8jwiMLnAhW9AhAIHbXTBMMQ_AUI3QUoAQ")
_SID_USER_AGENT = ("Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/80.0.3987.87 Safari/537.36")
_LINK_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")
_ENGINE_HOSTS = ("google.com", "gstatic.com", "googleusercontent.com", "googleapis.com")
CAPTCHA_MARKERS = ("captcha", "unusual traffic", "/sorry/", "detected unusual")


class FetchError(Exception):
    """The request got no HTTP answer (DNS, refused, reset, timeout, bad URL)."""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None  # the raw header, None when the server sent none
    url: str = ""                    # after redirects
    too_large: bool = False          # body over max_bytes: not kept


Fetcher = Callable[..., Response]  # fetcher(url, *, timeout, max_bytes, headers) -> Response


def urllib_fetch(url: str, *, timeout: float, max_bytes: int, headers: dict | None = None) -> Response:
    """GET with a per-operation timeout, an overall deadline and a byte cap (never reads past it)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme in {url[:80]!r}")
    req = urllib.request.Request(url, headers=headers or {})
    deadline = time.monotonic() + 4 * timeout  # a server dribbling bytes must not hang the stage
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            body = e.read(min(max_bytes, 2 ** 20)) if e.fp is not None else b""
        return Response(e.code, body, e.headers.get("Content-Type") if e.headers else None, url)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise FetchError(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        ctype, final = resp.headers.get("Content-Type"), resp.geturl()
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            return Response(resp.status, b"", ctype, final, too_large=True)
        chunks, size = [], 0
        try:
            while size <= max_bytes:
                if time.monotonic() > deadline:
                    raise FetchError(f"download took longer than {4 * timeout:g} s")
                chunk = resp.read(min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (OSError, ValueError) as e:
            raise FetchError(f"{type(e).__name__} while reading: {e}") from None
    if size > max_bytes:
        return Response(resp.status, b"", ctype, final, too_large=True)
    return Response(resp.status, b"".join(chunks), ctype, final)


def search_url(keyword: str, template: str | None = None) -> str:
    """The search request for the whole phrase ('a doctor' is one query, never 'a' and 'doctor')."""
    query = urllib.parse.quote(keyword.encode("utf-8"))
    if template:
        return template.replace("{query}", query)
    base, picture_id = _SID_BASE_URL, _SID_PICTURE_ID
    try:  # releases 0.4+ expose the request as module constants
        from simple_image_download import simple_image_download as sid
        base, picture_id = getattr(sid, "BASE_URL", base), getattr(sid, "GOOGLE_PICTURE_ID", picture_id)
    except Exception:  # 0.4/0.5 fail to import without python-magic; the inlined copy is the same request
        pass
    return base + query + picture_id


def extract_image_links(page: str) -> list[str]:
    """simple-image-download's link rule, bounded and de-duplicated, skipping the engine's own assets."""
    links = []
    for m in re.finditer(r'"(https?://[^"]+)"', page):
        link = m.group(1).split("\\", 1)[0]  # JSON-escaped tails (\u003d...) are cut as the package does
        host = urllib.parse.urlsplit(link).hostname or ""
        if any(host == h or host.endswith("." + h) for h in _ENGINE_HOSTS):
            continue
        if any(ext in link.lower() for ext in _LINK_EXTENSIONS):
            links.append(link)
    return list(dict.fromkeys(links))


def package_user_agent() -> str:
    try:
        from simple_image_download import simple_image_download as sid
        return getattr(sid, "HEADERS", {}).get("User-Agent", _SID_USER_AGENT)
    except Exception:
        return _SID_USER_AGENT


def simple_image_download_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("simple-image-download")
    except PackageNotFoundError:
        return None
