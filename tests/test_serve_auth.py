"""The search service asks for its access token: bearer header, or the cookie the link sets."""

import stat
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from meet_milvus.results import Hit
from meet_milvus.searcher import SearchConfig
from meet_milvus.web.app import create_app
from meet_milvus.web.auth import COOKIE, TOKEN_FILE, access_token

pytestmark = pytest.mark.unit

TOKEN = "Tk_" + "x" * 29


class FakeSearcher:
    """The interface create_app uses, answering every text with one hit."""

    config = SearchConfig()
    gallery = SimpleNamespace(name="fake")

    def search(self, text, k=10, diagnostics=False):
        return [Hit(id=7, score=0.5, source="s.txt", external_id="e", modality="image", image=7)]


@pytest.fixture()
def client():
    with TestClient(create_app(FakeSearcher(), token=TOKEN)) as c:
        yield c


def test_no_token_no_service(client):
    for method, path in [("get", "/api/info"), ("post", "/api/search"), ("get", "/docs"),
                         ("get", "/openapi.json"), ("get", "/api/images/7")]:  # fmt: skip
        r = client.request(method, path, json={"text": "a dog"})
        assert r.status_code == 401, path
        assert "missing or wrong access token" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
    page = client.get("/")
    assert page.status_code == 401 and "access token" in page.text
    assert "<token>" not in page.text  # escaped, not a tag
    wrong = client.get("/api/info", headers={"Authorization": "Bearer " + "y" * 32})
    assert wrong.status_code == 401
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401


def test_a_strangers_upload_is_refused_before_it_is_read(client):
    r = client.post("/api/search", content=b"x" * 10_000_000)
    assert r.status_code == 401  # not 413: the gate stands before the body limit


def test_bearer_token_opens_the_api(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/info", headers=auth).json()["collection"] == "fake"
    hits = client.post("/api/search", json={"text": "a dog", "k": 1}, headers=auth).json()
    assert hits["hits"][0]["id"] == 7


def test_the_link_sets_a_strict_cookie_and_drops_the_token_from_the_address(client):
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    page = client.get("/")  # the client keeps the cookie, as a browser does
    assert page.status_code == 200 and "<form" in page.text
    assert client.get("/api/info").status_code == 200


def test_the_token_is_in_no_repr(client):
    assert TOKEN not in repr(client.app.user_middleware)
    assert TOKEN not in repr(client.app.middleware_stack)


def test_the_token_file_is_private_kept_and_remade_when_garbled(tmp_path):
    token, path = access_token(tmp_path / "data")
    assert path == tmp_path / "data" / TOKEN_FILE and len(token) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert access_token(tmp_path / "data") == (token, path)  # bookmarks survive a restart
    path.write_text("short")
    fresh, _ = access_token(tmp_path / "data")
    assert fresh != token and len(fresh) == 32 and path.read_text().strip() == fresh
