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

Links scraped from a page are chosen by whoever wrote the page, so `urllib_fetch` fetches only
from public addresses: the host is resolved (`socket.getaddrinfo`) and every address it resolves
to is checked; loopback, private, link-local, multicast, reserved and unspecified addresses are
refused (`AddressRefused`), on the first request and on every redirect, and a redirect may only
lead to http(s). The connection is then made to the address that was checked, not to the name
resolved again, so a DNS answer that changes in between (rebinding) cannot slip through. Through a
configured proxy the proxy connects: the target's addresses are still checked first.
`allow_private` (the acquire spec's `allow_private_addresses`: true, or a list of networks) lifts
the refusal, for tests and intranet image servers.
"""
from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import partial
from typing import Callable

from vlmbias import VlmbiasError

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
    """The request got no HTTP answer (DNS, refused, reset, timeout, bad URL, refused address)."""


class AddressRefused(FetchError):
    """The URL's host resolves to an address that is not public, and nothing allows it."""


# ipaddress' own categories, the most specific first (127.0.0.1 is also "private")
_NOT_PUBLIC = (("loopback", "is_loopback"), ("link-local", "is_link_local"), ("multicast", "is_multicast"),
               ("unspecified", "is_unspecified"), ("reserved", "is_reserved"), ("private", "is_private"))
_OPT_IN = "set allow_private_addresses in the acquire spec to fetch from it"
Allowed = bool | tuple  # True: any address; a tuple of ip networks: those too; False: public only


def allowed_networks(value) -> Allowed:
    """The acquire spec's `allow_private_addresses`: true, false or a list of networks ("10.1.0.0/16")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and value:
        try:
            return tuple(ipaddress.ip_network(str(v), strict=False) for v in value)
        except ValueError as e:
            raise VlmbiasError(f"acquire: allow_private_addresses: {e}") from None
    raise VlmbiasError(f"acquire: allow_private_addresses must be true, false or a list of networks "
                       f"(e.g. ['10.1.0.0/16']), got {value!r}")


def _ip(address: str):
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone ("fe80::1%eth0")
    if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:127.0.0.1 is 127.0.0.1
        return ip.ipv4_mapped
    return ip


def address_kind(address: str) -> str | None:
    """Why an address is not public ("loopback", "private", ...), or None when it is public."""
    ip = _ip(address)
    return next((kind for kind, attr in _NOT_PUBLIC if getattr(ip, attr)), None)


def resolve_checked(host: str, port: int, allow: Allowed = False) -> list[tuple]:
    """`socket.getaddrinfo` of host:port; AddressRefused when ANY address is not public and not allowed
    (a name with one public and one private address could be steered to the private one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchError(f"cannot resolve {host!r}: {e}") from None
    if allow is True:
        return infos
    for *_, sockaddr in infos:
        kind = address_kind(sockaddr[0])
        if kind and not (allow and any(_ip(sockaddr[0]) in net for net in allow)):
            raise AddressRefused(f"refused {host}: it resolves to {sockaddr[0]}, a {kind} address, which a scraped "
                                 f"link may not reach; {_OPT_IN}")
    return infos


def check_url(url: str, allow: Allowed = False) -> None:
    """An http(s) URL whose host resolves to allowed addresses only, or FetchError / AddressRefused."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme in {url[:80]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchError(f"bad port in {url[:80]!r}") from None
    if not parts.hostname:
        raise FetchError(f"no host in {url[:80]!r}")
    resolve_checked(parts.hostname, port, allow)


class _Pinned:
    """Mixin for http.client connections: connect only to addresses that pass the check, resolved
    once here, so no second lookup between check and connect can return another address."""

    def __init__(self, *args, allow: Allowed = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = partial(_connect_checked, allow=allow)


class _PinnedHTTPConnection(_Pinned, http.client.HTTPConnection):
    pass


class _PinnedHTTPSConnection(_Pinned, http.client.HTTPSConnection):  # TLS still verifies the host's name
    pass


def _connect_checked(address, timeout, source_address=None, *, allow: Allowed):
    host, port = address
    error = None
    for *_, sockaddr in resolve_checked(host, port, allow):
        try:
            return socket.create_connection(sockaddr[:2], timeout, source_address)
        except OSError as e:
            error = e
    raise error or OSError(f"no address for {host}")


def _proxied(req) -> bool:  # the connection goes to a proxy, which resolves the target itself
    return req.has_proxy() or bool(getattr(req, "_tunnel_host", None))


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow: Allowed):
        super().__init__()
        self.allow = allow

    def http_open(self, req):
        conn = http.client.HTTPConnection if _proxied(req) else partial(_PinnedHTTPConnection, allow=self.allow)
        return self.do_open(conn, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow: Allowed):
        super().__init__()
        self.allow = allow

    def https_open(self, req):
        conn = http.client.HTTPSConnection if _proxied(req) else partial(_PinnedHTTPSConnection, allow=self.allow)
        return self.do_open(conn, req, context=self._context)


class _GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Every redirect target is checked like the first URL: http(s) only, allowed addresses only."""

    def __init__(self, allow: Allowed):
        self.allow = allow

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
                raise FetchError(f"redirect to a non-http(s) URL refused: {newurl[:80]!r}")
            check_url(newurl, self.allow)
        except FetchError:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(allow: Allowed) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_GuardedHTTPHandler(allow), _GuardedHTTPSHandler(allow),
                                       _GuardedRedirectHandler(allow))


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None  # the raw header, None when the server sent none
    url: str = ""                    # after redirects
    too_large: bool = False          # body over max_bytes: not kept


Fetcher = Callable[..., Response]  # fetcher(url, *, timeout, max_bytes, headers) -> Response


def urllib_fetch(url: str, *, timeout: float, max_bytes: int, headers: dict | None = None,
                 allow_private: bool | tuple | list = False) -> Response:
    """GET with a per-operation timeout, an overall deadline and a byte cap (never reads past it),
    from public addresses only unless `allow_private` (see the module doc)."""
    allow = allowed_networks(allow_private)
    check_url(url, allow)
    req = urllib.request.Request(url, headers=headers or {})
    deadline = time.monotonic() + 4 * timeout  # a server dribbling bytes must not hang the stage
    try:
        resp = _opener(allow).open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            body = e.read(min(max_bytes, 2 ** 20)) if e.fp is not None else b""
        if 300 <= e.code < 400:  # a redirect urllib would not follow (loop, or a scheme it refuses)
            raise FetchError(f"redirect not followed (HTTP {e.code}): {e.reason}") from None
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
