"""What `serve` takes and gives on a shared machine: uploads only in the listed formats and under
a pixel ceiling, decoded (and shrunk) before the search; only real images served, whatever a
source links to; connections that never finish their headers closed."""

import io
import socket
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from meet_milvus.results import Hit
from meet_milvus.search_config import SearchConfig
from meet_milvus.web import run as web_run
from meet_milvus.web.app import MAX_PIXELS, MAX_SIDE, create_app
from meet_milvus.web.run import serving

pytestmark = pytest.mark.unit


class FakeSearcher:
    """Answers a text with one image hit (its source settable) and notes what image queries
    received: the file's size in pixels."""

    config = SearchConfig()
    gallery = SimpleNamespace(name="fake")

    def __init__(self, source: str = "s.png") -> None:
        self.source, self.seen = source, []

    def check_texts(self, texts):
        return []

    def search(self, text, k=10, diagnostics=False, config=None, warn=True):
        return [Hit(id=7, score=0.5, source=self.source, external_id="e", modality="image",
                    image=7)]  # fmt: skip

    def search_image(self, path, k=10, diagnostics=False, config=None):
        with Image.open(path) as im:
            self.seen.append(im.size)
        return []


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("L", size).save(out, "PNG")  # one colour: a few KB however many pixels
    return out.getvalue()


def _encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, fmt)
    return out.getvalue()


def _upload(client: TestClient, name: str, data: bytes):
    return client.post("/api/search/image", files={"file": (name, data)})


def test_only_the_listed_formats_are_opened():
    with TestClient(create_app(FakeSearcher())) as client:
        for fmt in ("TIFF", "ICO", "PCX", "SGI"):  # PIL opens these by default; EPS runs gs
            r = _upload(client, f"x.{fmt.lower()}", _encoded(fmt))
            assert r.status_code == 415, fmt
            assert r.json()["error"] == (
                f"upload x.{fmt.lower()}: not an image (PNG, JPEG, GIF, WebP, BMP)"
            )
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n/tmp/leak\n"
        r = _upload(client, "x.eps", eps)
        assert r.status_code == 415 and "/tmp" not in r.text
        for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP"):
            assert _upload(client, f"x.{fmt.lower()}", _encoded(fmt)).status_code == 200, fmt


def test_a_pixel_bomb_is_refused_and_a_large_image_shrunk_before_the_search():
    searcher = FakeSearcher()
    with TestClient(create_app(searcher)) as client:
        bomb = _png((9000, 9940))  # 89.5 Mpx passed PIL's own ceiling
        assert len(bomb) < 400_000
        began = time.perf_counter()
        r = _upload(client, "bomb.png", bomb)
        assert r.status_code == 413
        assert r.json()["error"] == f"upload bomb.png: too many pixels (more than {MAX_PIXELS:,})"
        assert time.perf_counter() - began < 2  # refused from its header, not decoded
        assert searcher.seen == []
        r = _upload(client, "large.png", _png((6000, 3000)))  # 18 Mpx: taken, and shrunk
        assert r.status_code == 200, r.text
        assert searcher.seen == [(MAX_SIDE, MAX_SIDE // 2)]
        _upload(client, "small.png", _png((300, 200)))
        assert searcher.seen[-1] == (300, 200)  # small ones pass as they came


def test_a_truncated_upload_fails_before_the_search(tmp_path):
    searcher = FakeSearcher()
    data = _encoded("PNG")
    with TestClient(create_app(searcher)) as client:
        r = _upload(client, "cut.png", data[: len(data) // 2])
        assert r.status_code == 415 and searcher.seen == []


def test_only_sources_that_decode_as_images_are_served(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root's notes")
    secret.chmod(0o600)
    link = tmp_path / "stamp.png"
    link.symlink_to(secret)  # a gallery source leading to a private text file
    real = tmp_path / "photo.dat"  # an image whatever its name
    real.write_bytes(_encoded("PNG"))
    for source, status, kind in ((link, 404, None), (real, 200, "image/png")):
        with TestClient(create_app(FakeSearcher(str(source)))) as client:
            assert client.post("/api/search", json={"text": "x"}).status_code == 200
            r = client.get("/api/images/7")
            assert r.status_code == status, source
            assert "root's notes" not in r.text
            if kind:
                assert r.headers["content-type"] == kind


def test_connections_that_never_finish_their_headers_are_closed():
    with serving(create_app(FakeSearcher()), header_timeout=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        slow = []
        for _ in range(100):  # a slowloris: headers begun, never ended
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        time.sleep(2.5)
        closed = 0
        for s in slow:
            s.settimeout(2)
            try:
                closed += s.recv(100) == b""  # the server hung up
            except ConnectionResetError:
                closed += 1
            except TimeoutError:  # still held open: how a slowloris wins
                pass
            s.close()
        assert closed == len(slow)
        with socket.create_connection(("127.0.0.1", port)) as fresh:
            fresh.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert fresh.recv(20).startswith(b"HTTP/1.1 200")


def test_connections_are_bounded():
    assert web_run.MAX_CONNECTIONS <= 256
    config = web_run.config(create_app(FakeSearcher()))
    assert config.limit_concurrency == web_run.MAX_CONNECTIONS
