"""A local stand-in for the image search engine of the `web-search` acquisition source: an HTTP
server on 127.0.0.1 that answers a search request with a results page in the engine's shape
(quoted image links) linking the images of `<folder>/<keyword slug>/`, and serves those images.
The acquire spec reaches it with `search_url` and `allow_private_addresses` (`acquire_overrides`)."""
from __future__ import annotations

import http.server
import threading
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

from vlmbias.mitigate.acquire import slugify

# (blue, red) tints: with the stand-in DeepFace weights (vlmbias.testing.deepface) blue decides the
# gender and red the race, so each keyword gets both genders and two races
TINTS = ((0.2, 0.1), (0.8, 0.1), (0.2, 0.9), (0.8, 0.9))


def portrait(width: int = 128) -> np.ndarray:
    """matplotlib's sample portrait (Grace Hopper; shipped with matplotlib, so offline), RGB, `width`
    pixels wide: a real face, which OpenCV's released Haar cascade finds."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        img = img.convert("RGB")
        return np.asarray(img.resize((width, round(img.height * width / img.width))), np.float32)


def make_search_images(folder: str | Path, keywords: list[str], tints=TINTS, blend: float = 0.7) -> Path:
    """For each keyword, `<folder>/<slug>/<i>.jpg`: the portrait blended (weight `blend`) towards a
    colour whose blue and red levels are tints[i] (green 0.3)."""
    folder, face = Path(folder), portrait()
    for keyword in keywords:
        out = folder / slugify(keyword)
        out.mkdir(parents=True, exist_ok=True)
        for i, (blue, red) in enumerate(tints):
            colour = np.array([red, 0.3, blue], np.float32) * 255
            img = np.clip((1 - blend) * face + blend * colour, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(out / f"{i}.jpg", quality=95)
    return folder


class SearchStandIn:
    """`with SearchStandIn(folder) as search:` serves `folder` (make_search_images) until the block ends."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._httpd = None

    def __enter__(self) -> SearchStandIn:
        folder = self.folder

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                url = urllib.parse.urlsplit(self.path)
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                if url.path == "/search":
                    query = urllib.parse.parse_qs(url.query).get("q", [""])[0]
                    files = sorted((folder / slugify(query)).glob("*.jpg"))
                    body = "<html>" + " ".join(f'["{base}/img/{slugify(query)}/{f.name}",1,2]' for f in files)
                    self._send(200, "text/html", (body + "</html>").encode())
                    return
                path = (folder / url.path.removeprefix("/img/")).resolve()
                if url.path.startswith("/img/") and path.is_file() and folder.resolve() in path.parents:
                    self._send(200, "image/jpeg", path.read_bytes())
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def acquire_overrides(self) -> dict:
        """The acquire spec keys that point the web-search source here."""
        port = self._httpd.server_address[1]
        return {"search_url": f"http://127.0.0.1:{port}/search?q={{query}}",
                "allow_private_addresses": ["127.0.0.1/32"], "delay": 0}
