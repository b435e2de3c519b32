"""`meet-milvus serve`: the JSON API over a real MeetSearcher on the demo gallery, the command as
a process, and the page in headless Chromium, beside another local user's page on another port
(where /usr/bin/chromium is absent the browser test is skipped, and the run says so loudly:
tests/conftest.py; `.ci/run` installs it)."""

import http.server
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from meet_milvus.results import Hit
from meet_milvus.search_config import SearchConfig
from meet_milvus.web.app import MAX_BODY, SWITCHES, Switches, create_app
from meet_milvus.web.run import serving
from tests.tools.browser import (
    chromium_missing,
    chromium_page,
    loaded_images,
    search_text,
    wait_until,
)


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher)) as c:
        yield c


def _ids(hits):
    return [h["id"] if isinstance(h, dict) else h.id for h in hits]


@pytest.mark.integration
def test_text_search_answers_with_the_searchers_hits(client, searcher, split):
    response = client.post("/api/search", json={"text": split.captions[0], "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = searcher.search(split.captions[0], k=5)
    assert body["modality"] == "image" and body["k"] == 5 and body["ms"] > 0
    assert _ids(body["hits"]) == _ids(expected)
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected])
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert all(h["thumbnail"] == f"/api/images/{h['id']}" for h in body["hits"])
    assert all(h["source"] == split.image_paths[h["id"]] for h in body["hits"])
    assert body["hits"][0]["stages"] is None


@pytest.mark.integration
def test_switches_change_one_request_not_the_server(client, searcher, split):
    def stages(**switches):
        response = client.post(
            "/api/search",
            json={"text": split.captions[1], "k": 3, "diagnostics": True, "switches": switches},
        )
        assert response.status_code == 200, response.text
        return [list(h["stages"]) for h in response.json()["hits"]]

    assert stages() == [["hash", "pq", "dense", "rerank"]] * 3
    assert stages(rerank=False) == [["hash", "pq", "dense"]] * 3
    assert stages(hash=False, pq=False) == [["dense", "rerank"]] * 3
    assert searcher.config.rerank and searcher.config.hash and searcher.config.pq
    assert stages() == [["hash", "pq", "dense", "rerank"]] * 3


@pytest.mark.integration
def test_bad_requests_get_a_json_error_with_a_status(client):
    def error(status, **body):
        response = client.post("/api/search", json=body)
        assert response.status_code == status, response.text
        return response.json()["error"]

    assert error(400, text="  ") == "query 0: the text is empty"
    assert error(400, text="an apple", k=0).startswith("k=0: must be an integer between 1 and")
    assert error(400, text="an apple", k=101).startswith("k=101: must be an integer")
    assert error(400, text="an apple", switches={"z": 0}).startswith("search setting 'z':")
    assert error(422, text="an apple", switches={"zz": 1}).startswith("switches.zz: Extra")
    assert error(422, k=3) == "text: Field required"
    response = client.post(
        "/api/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and "JSON" in response.json()["error"]
    response = client.post("/api/search", json={"text": "a " * MAX_BODY})
    assert response.status_code == 413
    assert response.json()["error"] == "request body larger than 64 KB"
    response = client.get("/api/nothing")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}


@pytest.mark.integration
def test_gallery_images_are_served_by_id_from_results_only(searcher, split):
    with TestClient(create_app(searcher)) as fresh:
        first = fresh.get("/api/images/0")  # in the gallery, but no result has named it yet
        assert first.status_code == 404
        assert first.json()["error"] == "image 0: not among the results served"
        hits = fresh.post("/api/search", json={"text": split.captions[2], "k": 3}).json()["hits"]
        for hit in hits:
            image = fresh.get(hit["thumbnail"])
            assert image.status_code == 200
            assert image.headers["content-type"].startswith("image/")
            assert image.content == Path(split.image_paths[hit["id"]]).read_bytes()
        for bad in ("999999", "-1", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
            response = fresh.get(f"/api/images/{bad}")
            assert response.status_code in (404, 422), bad
            assert "root:" not in response.text and "error" in response.json()


@pytest.mark.integration
def test_concurrent_requests_get_their_sequential_answers(searcher, split, monkeypatch):
    texts = split.captions[:16]
    sizes: list[int] = []
    answer = searcher._answer

    def counted(calls):
        sizes.append(len(calls))
        return answer(calls)

    with serving(create_app(searcher, token="Tk_" + "c" * 29)) as url:
        headers = {"Authorization": "Bearer Tk_" + "c" * 29}

        def ask(text: str) -> dict:
            r = httpx.post(f"{url}/api/search", json={"text": text, "k": 5}, headers=headers,
                           timeout=120)  # fmt: skip
            assert r.status_code == 200, r.text
            return r.json()

        alone = [ask(t) for t in texts]
        monkeypatch.setattr(searcher._calls, "_run", counted)
        together: list = [None] * len(texts)
        start = threading.Barrier(8)

        def client(mine: range) -> None:
            start.wait()
            for i in mine:
                together[i] = ask(texts[i])

        threads = [threading.Thread(target=client, args=(range(c, 16, 8),)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        shared = list(sizes)
        long = ask("a very long caption about a lion " * 30)
    for a, b in zip(alone, together, strict=True):
        assert _ids(b["hits"]) == _ids(a["hits"])
        assert [h["score"] for h in b["hits"]] == pytest.approx([h["score"] for h in a["hits"]],
                                                                abs=1e-4)  # fmt: skip
    assert sum(shared) == len(texts) and max(shared) > 1  # requests shared passes
    assert any("(truncated)" in w for w in long["warnings"]) and long["hits"]


class Spy:
    """A MeetSearcher stand-in that delegates, and notes what an image query received."""

    def __init__(self, inner):
        self.inner, self.config, self.seen = inner, inner.config, []

    def check_texts(self, texts):
        return self.inner.check_texts(texts)

    def search(self, text, k=10, diagnostics=False, config=None, warn=True):
        return self.inner.search(text, k=k, diagnostics=diagnostics, config=config, warn=warn)

    def search_image(self, path, k=10, diagnostics=False, config=None):
        path = Path(path)
        self.seen.append((path, stat.S_IMODE(path.parent.stat().st_mode), path.read_bytes()))
        return self.inner.search_image(path, k=k, diagnostics=diagnostics, config=config)


@pytest.mark.integration
def test_an_uploaded_image_finds_captions_via_a_private_temp_file(
    searcher, split, tmp_path, monkeypatch
):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spy = Spy(searcher)
    data = Path(split.image_paths[0]).read_bytes()

    def upload(app, **form):
        with TestClient(app) as client:
            files = {"file": ("my stamp.jpg", data, "image/jpeg")}
            response = client.post("/api/search/image", files=files, data=form)
        assert response.status_code == 200, response.text
        return response.json()

    body = upload(create_app(spy), k="4")
    # The real searcher here: the spy delegates to an object whose config it does not change.
    plain = upload(create_app(searcher), k="2", diagnostics="true", switches='{"rerank": false}')
    assert body["modality"] == "text" and body["query"] == "my stamp.jpg"
    assert _ids(body["hits"]) == _ids(searcher.search_image(split.image_paths[0], k=4))
    assert all(h["source"] in split.captions and h["thumbnail"] is None for h in body["hits"])
    assert [list(h["stages"]) for h in plain["hits"]] == [["hash", "pq", "dense"]] * 2
    for path, mode, written in spy.seen:
        assert mode == 0o700 and written == data and path.parent.parent == tmp_path
    assert len(spy.seen) == 1 and list(tmp_path.iterdir()) == []  # removed after each query


@pytest.mark.integration
def test_uploads_that_are_not_images_or_too_big_are_refused(searcher, tmp_path):
    png = tmp_path / "big.png"
    Image.effect_noise((60, 60), 64).save(png)  # noise: about 4 KB, over a 2 KB limit
    with TestClient(create_app(searcher, max_upload=2000)) as client:

        def upload(name, data, **kw):
            return client.post("/api/search/image", files={"file": (name, data)}, **kw)

        response = upload("notes.txt", b"hello, not an image")
        assert response.status_code == 415
        assert response.json()["error"].startswith("upload notes.txt: not an image")
        assert upload("empty.png", b"").json()["error"] == "upload empty.png: the file is empty"
        response = upload("big.png", png.read_bytes())  # read by the handler: over its limit
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "upload big.png: larger than 1.95 KB"
        response = upload("huge.png", b"\0" * 200_000)  # declared too long: never read
        assert response.status_code == 413
        assert response.json()["error"] == "upload larger than 1.95 KB"

        def chunks():  # no Content-Length: counted as it arrives
            yield b"--x\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"
            for _ in range(20):
                yield b"\0" * 10_000

        response = client.post(
            "/api/search/image",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "upload larger than 1.95 KB"


@pytest.mark.integration
def test_info_page_and_openapi(client, demo_gallery, searcher):
    info = client.get("/api/info").json()
    assert info["collection"] == demo_gallery and info["config"] == searcher.config.model_dump()
    assert info["max_upload_bytes"] == 10 * 1024 * 1024 and len(info["model"]) == 12
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert all(f'id="{i}"' in page.text for i in ("q", "upload", "results", "diagnostics"))
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/images/{item_id}"} <= set(paths)


class Recorder:
    """Answers every text with one hit and notes the config each call received."""

    config = SearchConfig()

    def __init__(self):
        self.seen = []

    def check_texts(self, texts):
        return []

    def search(self, text, k=10, diagnostics=False, config=None, warn=True):
        self.seen.append(config)
        return [Hit(id=1, score=0.5, source="a.png", external_id="a", modality="image", image=1)]


@pytest.mark.unit
def test_the_switches_are_exactly_the_search_settings_they_expose():
    assert list(Switches.model_fields) == list(SWITCHES)
    for name, switch in Switches.model_fields.items():
        setting = SearchConfig.model_fields[name]  # a KeyError if one is not a setting
        assert switch.annotation == setting.annotation | None and switch.default is None
        assert switch.description == setting.description
    recorder = Recorder()
    with TestClient(create_app(recorder)) as client:

        def post(switches):
            return client.post("/api/search", json={"text": "a", "k": 1, "switches": switches})

        every = {"hash": False, "pq": False, "exact": True, "rerank": "reference", "alpha": 0.5,
                 "beta": 0.1, "z": 7, "exact_keep": 20}  # fmt: skip
        assert set(every) == set(SWITCHES)
        assert post(every).status_code == 200 and post({}).status_code == 200
        assert recorder.seen == [SearchConfig().updated(**every), None]
        assert recorder.config == SearchConfig()  # the server's own is never changed
        for setting in set(SearchConfig.model_fields) - set(SWITCHES):  # not exposed: refused
            answer = post({setting: getattr(SearchConfig(), setting)})
            assert answer.status_code == 422, setting
            assert answer.json()["error"] == f"switches.{setting}: Extra inputs are not permitted"
        answer = post({"rerank": 1})  # strict: no number for a switch
        assert answer.status_code == 422 and answer.json()["error"].startswith("switches.rerank")
        assert post({"z": 0}).json()["error"].startswith("search setting 'z': Input should be")
    assert len(recorder.seen) == 2


# -- the command ------------------------------------------------------------------------------

MAIN = [sys.executable, "-c", "from meet_milvus.cli import main; main()"]


@pytest.mark.unit
def test_a_port_in_use_is_one_line_before_any_loading():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [*MAIN, "--uri", "http://127.0.0.1:9", "serve", "--collection", "x", "--port",
               str(port)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1: Address already in use (choose another with --port)"
    ]


@pytest.mark.integration
def test_serve_answers_over_http_until_interrupted(runtime_settings, demo_gallery, split):
    s = runtime_settings
    cmd = [*MAIN, "--uri", s.milvus_uri, "--data-dir", str(s.data_dir), "--cache-dir",
           str(s.cache_dir), "--device", "cpu", "serve", "--collection", demo_gallery,
           "--port", "0"]  # fmt: skip
    # The token through the environment: a command line is visible to every local user.
    env = dict(os.environ, MEET_MILVUS_TOKEN=s.milvus_token.get_secret_value())
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline, line = time.monotonic() + 180, ""
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        match = re.search(r"serving '(\w+)' at (http://127\.0\.0\.1:\d+) \(ready in", line)
        assert match and match[1] == demo_gallery, line
        url = match[2]
        # Not a terminal: the link names the token's file, never the token itself.
        token_file = s.data_dir / "serve.token"
        assert proc.stderr.readline().strip() == (
            f"open {url}/#token=<the token in {token_file}> "
            "(scripts: 'Authorization: Bearer <token>')"
        )
        assert httpx.get(f"{url}/api/info").status_code == 401
        auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert httpx.get(f"{url}/api/info", headers=auth).json()["collection"] == demo_gallery
        query = {"text": split.captions[0], "k": 2}
        hits = httpx.post(f"{url}/api/search", json=query, headers=auth).json()
        assert len(hits["hits"]) == 2
        proc.send_signal(2)  # Ctrl-C: uvicorn shuts down cleanly
        # Everything it wrote, to its end: a line read before it was written would be missing.
        rest = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0, rest
        assert rest.strip().splitlines()[-1:] == ["stopped"], rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the page in a real browser ---------------------------------------------------------------

NO_BROWSER = chromium_missing()


class _StrangersPage:
    """A page another local user serves on another port of 127.0.0.1: it notes every request's
    headers (a cookie for 127.0.0.1 would arrive here) and submits a form to the service."""

    def __init__(self, target: str) -> None:
        self.seen: list[str] = []
        page = (f'<form id="f" method="post" enctype="multipart/form-data" '
                f'action="{target}/api/search/image"><input name="k" value="5"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()  # fmt: skip
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                seen.append(str(self.headers))
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
@pytest.mark.skipif(NO_BROWSER is not None, reason=f"browser test: {NO_BROWSER}")
def test_the_page_in_headless_chromium(searcher, split):
    token = "browser-test-token-0123456789"
    with serving(create_app(searcher, token=token)) as url, chromium_page() as page:
        page.goto(f"{url}/")  # no token: the page says what it needs
        page.wait_for_selector("#error:not([hidden])")
        assert "access token" in page.text_content("#error")
        page.goto(f"{url}/#token={token}")  # the link `serve` prints, in the same tab
        wait_until(page, "() => document.body.dataset.ready === '1'")
        assert page.url == f"{url}/"  # the token left the address bar
        assert page.context.cookies() == []  # and goes into no cookie
        search_text(page, url, split.captions[0], k=5)  # types it and presses Enter
        widths = loaded_images(page)
        assert len(widths) == 5 and all(w > 0 for w in widths), widths
        status = page.text_content("#status")
        assert re.search(r"5 images for .* in [\d.]+ ms \(search\)", status), status
        assert page.locator("details.stages").count() == 0

        page.check("#diagnostics")
        page.click("button[type=submit]")
        page.wait_for_selector("details.stages")
        assert page.locator("details.stages").count() == 5

        page.set_input_files("#upload", split.image_paths[1])
        page.wait_for_selector("ol.captions li")
        captions = page.locator("ol.captions .caption").all_text_contents()
        assert len(captions) == 5 and all(c in split.captions for c in captions)
        wait_until(page, "() => document.querySelector('#query-preview').naturalWidth > 0")
        assert page.is_visible("#query-image")

        page.fill("#q", "   ")
        page.keyboard.press("Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert page.text_content("#error") == "query 0: the text is empty"

        # Another local user's page, on another port, opened in the same browser: it receives
        # no token, and the upload its form sends the service is refused (a session cookie
        # would reach it, and the form would be accepted).
        stranger = _StrangersPage(url)
        try:
            page.goto(stranger.url)
            page.wait_for_url(f"{url}/api/search/image")
            answer = page.text_content("body")
            assert "refused: a request from another site" in answer, answer
            assert stranger.seen and not any(token in headers for headers in stranger.seen)
            assert not any("cookie" in headers.lower() for headers in stranger.seen)
        finally:
            stranger.close()


@pytest.mark.unit
def test_chromium_absence_is_reported_not_crashed(monkeypatch):
    from tests.tools import browser

    monkeypatch.setattr(browser, "CHROMIUM", Path("/nonexistent/chromium"))
    assert browser.chromium_missing().startswith("no Chromium at /nonexistent/chromium")
