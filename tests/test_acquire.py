"""acquire: the gate, every source, resuming, the search engine's failure modes, and the refusal of
private addresses. Offline: the HTTP layer is a fake fetcher or a local http.server on 127.0.0.1,
which the fetcher reaches only with the opt-in (OPT_IN); no test connects anywhere else."""
import hashlib
import http.server
import io
import socket
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.imagegate import refusal
from vlmbias.io import run_cli
from vlmbias.mitigate.acquire import acquire, check_image, main, slugify
from vlmbias.mitigate.websearch import (
    AddressRefused,
    FetchError,
    Response,
    address_kind,
    extract_image_links,
    search_url,
    urllib_fetch,
)


def image_bytes(colour, fmt="PNG", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), colour, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


RED, GREEN, BLUE = image_bytes((200, 0, 0)), image_bytes((0, 200, 0), "JPEG"), image_bytes((0, 0, 200))
BIG = image_bytes((9, 9, 9), "PNG", (64, 64)) + b"\0" * 5000  # trailing bytes: still decodes, but > cap
OPT_IN = {"allow_private_addresses": True}  # the local test server is on 127.0.0.1, a loopback address


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).hits.append(self.path)
        status, ctype, body, *headers = self.routes.get(urllib.parse.urlsplit(self.path).path,
                                                        (404, "text/plain", b"nope"))
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for key, value in (headers[0] if headers else {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local server; tests fill `routes` {path: (status, content-type, body)} and read `hits`."""
    handler = type("H", (_Handler,), {"routes": {}, "hits": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def ok_rows(df):
    return df[df["status"] == "ok"]


# --------------------------------------------------------------------------------------------- gate

def test_slug_is_ascii_unique_and_cannot_escape():
    slugs = [slugify(k) for k in ["a doctor", "a-doctor", "../../x", "医生", "A Doctor"]]
    assert len(set(slugs)) == len(slugs)
    for s in slugs:
        assert s.isascii() and "/" not in s and not s.startswith(".")
    assert slugify("a doctor") == slugify("a doctor")  # stable between runs


def test_check_image_statuses():
    assert check_image(RED, 10 ** 6, 10 ** 6)[::2] == ("ok", ".png")
    assert check_image(GREEN, 10 ** 6, 10 ** 6)[::2] == ("ok", ".jpg")
    assert check_image(b"<html>hi</html>", 10 ** 6, 10 ** 6)[0] == "not-image"
    assert check_image(b"", 10 ** 6, 10 ** 6)[0] == "not-image"
    assert check_image(GREEN[: len(GREEN) // 2], 10 ** 6, 10 ** 6)[0] == "undecodable"
    assert check_image(RED, 10, 10 ** 6)[0] == "too-large"                   # bytes
    status, reason, _ = check_image(RED, 10 ** 6, 100)                        # pixels: 16 x 16 > 100
    assert status == "too-large" and reason == refusal(100)


def test_decompression_bomb_refused_from_header():
    # 1-bit 20000 x 20000 PNG: a few KB on disk, 400 Mpixels when decoded
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    status, reason, _ = check_image(buf.getvalue(), 10 ** 7, 40_000_000)
    assert status == "too-large" and reason == refusal(40_000_000)


# ------------------------------------------------------------------------------------- urls source

def test_urls_source_against_local_server(server, tmp_path):
    handler, base = server
    handler.routes.update({
        "/red.png": (200, "image/png", RED),
        "/green.jpg": (200, "image/jpeg; charset=binary", GREEN),
        "/red-again.png": (200, "image/png", RED),
        "/blue.bin": (200, "application/octet-stream", BLUE),
        "/page.html": (200, "text/html", b"<html>not an image</html>"),
        "/big.png": (200, "image/png", BIG),
        "/broken.jpg": (200, "image/jpeg", GREEN[: len(GREEN) // 2]),
    })
    urls = [f"{base}/{p}" for p in ["red.png", "green.jpg", "red-again.png", "blue.bin", "page.html", "big.png",
                                     "broken.jpg", "missing.png"]]
    spec = {"source": "urls", "keywords": ["a doctor"], "urls": {"a doctor": urls}, "limit": 10,
            "max_bytes": 4000, "timeout": 5, **OPT_IN}
    df = acquire(spec, tmp_path / "img", progress=False)
    status = dict(zip(df["origin"].str.rsplit("/", n=1).str[1], df["status"]))
    assert status == {"red.png": "ok", "green.jpg": "ok", "red-again.png": "duplicate", "blue.bin": "ok",
                      "page.html": "not-image", "big.png": "too-large", "broken.jpg": "undecodable",
                      "missing.png": "fetch-error"}
    ok = ok_rows(df)
    assert ok["image_id"].is_unique and ok["image_id"].str.startswith(slugify("a doctor") + "/").all()
    for row in ok.itertuples():
        data = Path(row.path).read_bytes()
        assert hashlib.sha1(data).hexdigest() == row.sha1 and Path(row.path).name.startswith(row.sha1[:16])
        assert Path(row.path).is_relative_to((tmp_path / "img").resolve())
    dup = df[df["status"] == "duplicate"].iloc[0]
    assert dup["path"] == ok.loc[ok["origin"].str.endswith("red.png"), "path"].iloc[0]
    assert set(df.columns) >= {"image_id", "path", "source", "keyword", "origin", "sha1", "status", "reason"}


def test_rerun_keeps_everything_and_refetches_only_failures(server, tmp_path):
    handler, base = server
    handler.routes.update({"/a.png": (200, "image/png", RED), "/b.png": (200, "image/png", BLUE),
                           "/c.html": (200, "text/html", b"<p>")})
    spec = {"source": "urls", "keywords": ["nurse"], "limit": 10, "timeout": 5, **OPT_IN,
            "urls": {"nurse": [f"{base}/a.png", f"{base}/b.png", f"{base}/c.html", f"{base}/late.png"]}}
    manifest = tmp_path / "acquired.parquet"
    first = acquire(spec, tmp_path / "img", manifest=manifest, progress=False)
    first.to_parquet(manifest)
    files = sorted(p.name for p in (tmp_path / "img").rglob("*.png"))
    handler.hits.clear()
    handler.routes["/late.png"] = (200, "image/png", image_bytes((1, 2, 3)))  # the failed URL now works
    second = acquire(spec, tmp_path / "img", manifest=manifest, progress=False)
    assert handler.hits == ["/late.png"]                      # nothing else fetched again
    assert set(ok_rows(first)["sha1"]) < set(ok_rows(second)["sha1"])
    assert set(files) <= {p.name for p in (tmp_path / "img").rglob("*.png")}
    assert (second["status"] == "not-image").sum() == 1       # the rejection is kept, not re-fetched

    # lost manifest and journal (a crash): the stored files are adopted, then their origins filled in
    manifest.unlink()
    (tmp_path / "img" / ".acquire-journal.parquet").unlink()
    third = acquire(spec, tmp_path / "img", manifest=manifest, progress=False)
    assert set(ok_rows(third)["sha1"]) == set(ok_rows(second)["sha1"])
    assert not third["origin"].fillna("").str.startswith("file on disk").any()


def test_limit_counts_usable_images(server, tmp_path):
    handler, base = server
    handler.routes.update({f"/{i}.png": (200, "image/png", image_bytes((i, 0, 0))) for i in range(5)})
    spec = {"source": "urls", "keywords": ["x"], "limit": 2, "urls": {"x": [f"{base}/{i}.png" for i in range(5)]},
            **OPT_IN}
    df = acquire(spec, tmp_path / "img", progress=False)
    assert len(ok_rows(df)) == 2 and len(handler.hits) == 2


# ------------------------------------------------------------------------------------ web-search

class FakeEngine:
    """A fetcher standing in for the search engine and the image hosts."""

    def __init__(self, page=None, status=200, error=None, images=None):
        self.page, self.status, self.error, self.images, self.calls = page, status, error, images or {}, []

    def __call__(self, url, *, timeout, max_bytes, headers=None):
        self.calls.append(url)
        if url in self.images:
            return Response(200, self.images[url], "image/png", url)
        if self.error:
            raise FetchError(self.error)
        return Response(self.status, (self.page or "").encode(), "text/html", url)


def results_page(links):
    # the shape the package's parser expects: quoted URLs, JSON-escaped tails, engine assets mixed in
    junk = '"https://www.gstatic.com/images/branding/logo.png" "https://encrypted-tbn0.gstatic.com/images?q=tbn"'
    return "<html>" + junk + " ".join(f'["{u}\\u003dx",1,2]' for u in links) + "</html>"


def test_web_search_whole_phrase_and_every_file(tmp_path):
    links = [f"https://img{i}.example/p/{i}.png" for i in range(3)]
    engine = FakeEngine(results_page(links + links[:1]), images={links[0]: RED, links[1]: BLUE, links[2]: RED})
    df = acquire({"source": "web-search", "keywords": ["a doctor"], "limit": 10, "delay": 0}, tmp_path,
                 fetcher=engine, progress=False)
    searches = [u for u in engine.calls if "google" in u]
    assert len(searches) == 1 and "q=a%20doctor&" in searches[0]   # one request for the whole phrase
    assert extract_image_links(results_page(links)) == links
    assert list(df["status"]) == ["ok", "ok", "duplicate"]
    assert len(list(tmp_path.rglob("*.png"))) == 2


@pytest.mark.parametrize("engine, status, words", [
    (FakeEngine(status=429), "search-blocked", "HTTP 429"),
    (FakeEngine(status=403), "search-blocked", "HTTP 403"),
    (FakeEngine('<html class="x">Our systems have detected unusual traffic</html>'), "search-blocked", "captcha"),
    (FakeEngine(error="URLError: [Errno -3] name resolution failed"), "search-error", "unreachable"),
    (FakeEngine('<html class="x">no results</html>'), "no-results", "no image links"),
])
def test_web_search_failures_are_named(tmp_path, engine, status, words):
    spec = {"source": "web-search", "keywords": ["a doctor", "a nurse"], "delay": 0}
    with pytest.raises(VlmbiasError, match="no keyword returned a usable image") as e:
        acquire(spec, tmp_path, fetcher=engine, progress=False)
    assert words in str(e.value) and "'a nurse'" in str(e.value)
    journal = pd.read_parquet(tmp_path / ".acquire-journal.parquet")
    assert list(journal["status"]) == [status, status]


def test_one_blocked_keyword_is_recorded_not_fatal(tmp_path):
    link = "https://img.example/1.png"

    def fetch(url, **kw):
        if "q=a%20nurse" in url:
            return Response(429, b"", "text/html", url)
        return FakeEngine(results_page([link]), images={link: RED})(url, **kw)

    df = acquire({"source": "web-search", "keywords": ["a doctor", "a nurse"], "delay": 0}, tmp_path, fetcher=fetch,
                 progress=False)
    assert df.set_index("keyword")["status"].to_dict() == {"a doctor": "ok", "a nurse": "search-blocked"}


def test_web_search_real_http_layer(server, tmp_path):
    handler, base = server
    handler.routes["/search"] = (429, "text/html", b"Too Many Requests")
    spec = {"source": "web-search", "keywords": ["a doctor"], "search_url": base + "/search?q={query}", "delay": 0,
            **OPT_IN}
    with pytest.raises(VlmbiasError, match="HTTP 429"):
        acquire(spec, tmp_path, progress=False)
    assert handler.hits == ["/search?q=a%20doctor"]
    assert search_url("a doctor").startswith("https://www.google.com/search?q=a%20doctor&")


def test_urllib_fetch_caps_and_refuses():
    with pytest.raises(FetchError, match="scheme"):
        urllib_fetch("file:///etc/passwd", timeout=1, max_bytes=10)
    with pytest.raises(FetchError, match="Connection refused") as e:  # port 9: nothing listens
        urllib_fetch("http://127.0.0.1:9/x.png", timeout=2, max_bytes=10, allow_private=True)
    assert not isinstance(e.value, AddressRefused)
    with pytest.raises(FetchError, match="Connection refused"):  # the https connection class, the same way
        urllib_fetch("https://127.0.0.1:9/x.png", timeout=2, max_bytes=10, allow_private=["127.0.0.1/32"])


def test_urllib_fetch_byte_cap(server):
    handler, base = server
    handler.routes["/big.png"] = (200, "image/png", BIG)
    r = urllib_fetch(base + "/big.png", timeout=5, max_bytes=100, allow_private=True)
    assert r.too_large and r.body == b""


# ------------------------------------------------------------------------------ private addresses

@pytest.fixture
def only_local_connections(monkeypatch):
    """Fail a test that would open a connection anywhere but 127.0.0.1 (no refusal may come too late)."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"connection attempted to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("10.1.2.3", "private"),
    ("192.168.0.7", "private"), ("172.16.0.1", "private"), ("169.254.169.254", "link-local"),
    ("fe80::1%eth0", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::", "unspecified"), ("240.0.0.1", "reserved"), ("fd00::1", "private"),
    ("93.184.215.14", None), ("2606:4700:4700::1111", None),
])
def test_address_kinds(address, kind):
    assert address_kind(address) == kind


def test_local_server_refused_without_opt_in(server, tmp_path, only_local_connections):
    handler, base = server
    handler.routes["/a.png"] = (200, "image/png", RED)
    with pytest.raises(AddressRefused, match=r"refused 127\.0\.0\.1: it resolves to 127\.0\.0\.1, a loopback address"):
        urllib_fetch(base + "/a.png", timeout=5, max_bytes=10 ** 6)
    spec = {"source": "urls", "keywords": ["x"], "urls": {"x": [base + "/a.png"]}, "timeout": 5}
    with pytest.raises(VlmbiasError, match="no keyword returned a usable image"):
        acquire(spec, tmp_path / "img", progress=False)
    journal = pd.read_parquet(tmp_path / "img" / ".acquire-journal.parquet")
    assert journal["status"].tolist() == ["fetch-error"]
    assert "loopback address" in journal["reason"].iat[0] and "allow_private_addresses" in journal["reason"].iat[0]
    assert handler.hits == []                                  # refused before any connection
    # the opt-in: the same fetch goes through, and a rerun retries the refused URL
    df = acquire({**spec, **OPT_IN}, tmp_path / "img", progress=False)
    assert ok_rows(df)["origin"].tolist() == [base + "/a.png"] and handler.hits == ["/a.png"]


def test_names_are_checked_after_dns_resolution(monkeypatch, only_local_connections):
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):  # a public-looking name whose DNS answer is a private address
        if host == "images.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.8", 80)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 80))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(AddressRefused, match="images.example.com: it resolves to 10.0.0.8, a private address"):
        urllib_fetch("http://images.example.com/a.png", timeout=5, max_bytes=100)


def test_connection_goes_to_the_checked_address(server, monkeypatch, only_local_connections):
    """DNS rebinding: a name that passes the check, then resolves to 127.0.0.1 when urllib connects.
    The connection resolves and checks again itself, so the second answer is refused too."""
    handler, base = server
    handler.routes["/a.png"] = (200, "image/png", RED)
    port = int(base.rsplit(":", 1)[1])
    real, answers = socket.getaddrinfo, iter(["93.184.215.14"])

    def rebinding(host, *args, **kwargs):
        if host == "rebind.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers, "127.0.0.1"), port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(AddressRefused, match="resolves to 127.0.0.1"):
        urllib_fetch(f"http://rebind.example.com:{port}/a.png", timeout=5, max_bytes=10 ** 6)
    assert handler.hits == []


def test_web_search_page_on_private_address_is_named(tmp_path, only_local_connections):
    spec = {"source": "web-search", "keywords": ["a doctor"], "search_url": "http://127.0.0.1:9/s?q={query}",
            "delay": 0}
    with pytest.raises(VlmbiasError, match="search-error .*loopback address") as e:
        acquire(spec, tmp_path, progress=False)
    assert "check the network" not in str(e.value)


def test_redirect_to_private_address_refused(server, only_local_connections):
    handler, base = server
    port = base.rsplit(":", 1)[1]
    handler.routes.update({"/a.png": (200, "image/png", RED),
                           "/to-ok": (302, "text/plain", b"", {"Location": "/a.png"}),
                           "/to-private": (302, "text/plain", b"", {"Location": f"http://10.11.12.13:{port}/a.png"}),
                           "/to-metadata": (301, "text/plain", b"", {"Location": "http://169.254.169.254/latest/"})})
    allow_local = ["127.0.0.1/32"]  # the test server only: every other private address stays refused
    assert urllib_fetch(base + "/to-ok", timeout=5, max_bytes=10 ** 6, allow_private=allow_local).body == RED
    with pytest.raises(AddressRefused, match="10.11.12.13, a private address"):
        urllib_fetch(base + "/to-private", timeout=5, max_bytes=10 ** 6, allow_private=allow_local)
    with pytest.raises(AddressRefused, match="169.254.169.254, a link-local address"):
        urllib_fetch(base + "/to-metadata", timeout=5, max_bytes=10 ** 6, allow_private=allow_local)
    assert handler.hits == ["/to-ok", "/a.png", "/to-private", "/to-metadata"]


def test_redirect_to_ftp_is_a_clean_fetch_error(server, tmp_path, only_local_connections):
    handler, base = server
    port = base.rsplit(":", 1)[1]
    handler.routes["/ftp"] = (302, "text/plain", b"", {"Location": f"ftp://127.0.0.1:{port}/a.png"})
    handler.routes["/file"] = (302, "text/plain", b"", {"Location": "file:///etc/passwd"})
    with pytest.raises(FetchError, match="redirect to a non-http"):
        urllib_fetch(base + "/ftp", timeout=5, max_bytes=10 ** 6, allow_private=True)
    with pytest.raises(FetchError, match="redirect not followed"):  # urllib itself refuses file:
        urllib_fetch(base + "/file", timeout=5, max_bytes=10 ** 6, allow_private=True)
    spec = {"source": "urls", "keywords": ["x"], "urls": {"x": [base + "/ftp"]}, "timeout": 5, **OPT_IN}
    with pytest.raises(VlmbiasError, match="every candidate was rejected"):
        acquire(spec, tmp_path / "img", progress=False)
    journal = pd.read_parquet(tmp_path / "img" / ".acquire-journal.parquet")
    assert journal["status"].tolist() == ["fetch-error"] and "non-http(s)" in journal["reason"].iat[0]


def test_allow_private_addresses_is_validated(tmp_path):
    for bad in ("yes", [], ["not-a-network"], 1):
        with pytest.raises(VlmbiasError, match="allow_private_addresses"):
            acquire({"source": "urls", "keywords": ["x"], "allow_private_addresses": bad}, tmp_path)


# ----------------------------------------------------------------- folder, and the world's folder

def test_folder_source(tmp_path):
    root = tmp_path / "src"
    (root / "doctor").mkdir(parents=True)
    (root / "doctor" / "1.png").write_bytes(RED)
    (root / "doctor" / "2.jpg").write_bytes(GREEN)
    (root / "doctor" / "notes.txt").write_text("hello")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes(BLUE)
    spec = {"source": "folder", "root": str(root),
            "keywords": ["doctor", "nurse", {"keyword": "sneaky", "folder": "../outside"}]}
    df = acquire(spec, tmp_path / "img", progress=False)
    by_kw = df.groupby("keyword")["status"].apply(sorted).to_dict()
    assert by_kw == {"doctor": ["not-image", "ok", "ok"], "nurse": ["no-results"], "sneaky": ["search-error"]}
    assert not list((tmp_path / "outside").glob("*.jpg"))
    assert all(Path(p).is_relative_to((tmp_path / "img").resolve()) for p in ok_rows(df)["path"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlmbias.world.generate import generate_world

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world({"seed": 0, "image_size": 16, "images_per_concept": 12, "group_images": 0, "test_per_cell": 1,
                    "concepts": {"doctor": {"names": {"en": "a doctor", "zh": "医生"},
                                            "planted": {"gender": {"Male": 0.8}}},
                                 "nurse": {"names": {"en": "a nurse"}}}}, out)
    return out


def test_world_search_folder_is_read_as_a_folder_and_rerun_is_idempotent(world, tmp_path):
    from vlmbias.world.generate import search

    spec = {"source": "folder", "root": str(world / "search"), "keywords": ["doctor", "nurse", "plumber"], "limit": 4}
    first = acquire(spec, tmp_path / "img", progress=False)
    ok = ok_rows(first)
    assert ok.groupby("keyword").size().to_dict() == {"doctor": 4, "nurse": 4}
    assert first.loc[first["keyword"] == "plumber", "status"].tolist() == ["no-results"]
    # the folder holds the world's search results in search order, bytes unchanged: the first 4
    # acquired images are the search's first 4
    hits = search(world, "doctor", limit=4, seed=0)
    expected = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in hits["path"]]
    assert ok.loc[ok["keyword"] == "doctor", "sha1"].tolist() == expected
    first.to_parquet(tmp_path / "acq.parquet")
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "img").rglob("*.jpg")}
    second = acquire(spec, tmp_path / "img", manifest=tmp_path / "acq.parquet", progress=False)
    pd.testing.assert_frame_equal(ok_rows(second).reset_index(drop=True), ok.reset_index(drop=True))
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "img").rglob("*.jpg")}


def test_there_is_no_world_source(world, tmp_path):
    with pytest.raises(VlmbiasError, match="source 'world' is not one of"):
        acquire({"source": "world", "keywords": ["doctor"]}, tmp_path / "img", progress=False)


# -------------------------------------------------------------------------------------- bad input

def test_empty_keyword_list(tmp_path):
    for spec in ({"source": "urls", "keywords": []}, {"source": "urls"}):
        with pytest.raises(VlmbiasError, match="keyword list is empty"):
            acquire(spec, tmp_path)


def test_bad_specs(tmp_path):
    with pytest.raises(VlmbiasError, match="source"):
        acquire({"source": "bing", "keywords": ["x"]}, tmp_path)
    with pytest.raises(VlmbiasError, match="listed twice"):
        acquire({"source": "urls", "keywords": ["x", "x"]}, tmp_path)
    with pytest.raises(VlmbiasError, match="unknown key"):
        acquire({"source": "urls", "keywords": ["x"], "limt": 3}, tmp_path)


def test_all_keywords_empty_fails_clearly(tmp_path):
    with pytest.raises(VlmbiasError, match="'x': no-results"):
        acquire({"source": "urls", "keywords": ["x"], "urls": {}}, tmp_path, progress=False)


def test_cli(server, tmp_path, capsys):
    handler, base = server
    handler.routes["/a.png"] = (200, "image/png", RED)
    spec = '{"source": "urls", "keywords": ["a"], "urls": {"a": ["%s/a.png"]}, "allow_private_addresses": true}' % base
    args = ["--spec-json", spec, "--out-dir", str(tmp_path / "img"), "--manifest", str(tmp_path / "acq.parquet")]
    assert run_cli(main, args) == 0
    assert pd.read_parquet(tmp_path / "acq.parquet")["status"].tolist() == ["ok"]
    bad = ["--spec-json", '{"source": "urls", "keywords": []}', "--out-dir", str(tmp_path / "i2"),
           "--manifest", str(tmp_path / "m2.parquet")]
    assert run_cli(main, bad) == 2
    assert "keyword list is empty" in capsys.readouterr().err
