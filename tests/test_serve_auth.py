"""The search service asks for its access token (a bearer header; the page takes it from the
link's fragment into sessionStorage, never a cookie), refuses browsers' cross-site requests and
sends its security headers."""

import stat
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from meet_milvus.results import Hit
from meet_milvus.search_config import SearchConfig
from meet_milvus.web.app import create_app
from meet_milvus.web.auth import TOKEN_FILE, access_token

pytestmark = pytest.mark.unit

TOKEN = "Tk_" + "x" * 29


class FakeSearcher:
    """The interface create_app uses, answering every text with one hit."""

    config = SearchConfig()
    gallery = SimpleNamespace(name="fake")

    def check_texts(self, texts):
        return []

    def search(self, text, k=10, diagnostics=False, config=None, warn=True):
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
    # The page is static code, no gallery data: anyone gets it; it asks the API with the token.
    page = client.get("/")
    assert page.status_code == 200 and "sessionStorage" in page.text
    wrong = client.get("/api/info", headers={"Authorization": "Bearer " + "y" * 32})
    assert wrong.status_code == 401
    refused = client.get("/?token=wrong", follow_redirects=False)
    assert refused.status_code == 401 and "<token>" not in refused.text  # escaped, not a tag
    # The token in a cookie, as earlier versions set it, opens nothing.
    client.cookies.set("meet_milvus_token", TOKEN)
    assert client.get("/api/info").status_code == 401
    client.cookies.clear()


def test_a_strangers_upload_is_refused_before_it_is_read(client):
    r = client.post("/api/search", content=b"x" * 10_000_000)
    assert r.status_code == 401  # not 413: the gate stands before the body limit


def test_bearer_token_opens_the_api(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/info", headers=auth).json()["collection"] == "fake"
    hits = client.post("/api/search", json={"text": "a dog", "k": 1}, headers=auth).json()
    assert hits["hits"][0]["id"] == 7


def test_an_old_link_moves_the_token_to_the_fragment_and_sets_no_cookie(client):
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/#token={TOKEN}"
    assert "set-cookie" not in r.headers
    assert client.get("/api/info").status_code == 401  # nothing was kept


def test_cross_site_browser_requests_are_refused_whatever_they_carry(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # A form another local user's page (another port) submits: refused before the token.
    for headers in ({"Origin": "http://127.0.0.1:18766"}, {"Sec-Fetch-Site": "same-site"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):  # fmt: skip
        r = client.post("/api/search", json={"text": "a dog"}, headers={**auth, **headers})
        assert r.status_code == 403 and "another site" in r.json()["error"], headers
    own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/search", json={"text": "a dog"}, headers={**auth, **own}).is_success


def test_every_answer_has_the_security_headers_and_no_docs_from_a_cdn(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for r in (client.get("/"), client.get("/api/info"), client.get("/api/info", headers=auth)):
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "http" not in csp  # nothing from another host
    assert client.get("/docs", headers=auth).status_code == 404  # Swagger UI loads a CDN
    assert client.get("/openapi.json", headers=auth).json()["info"]["title"] == "meet-milvus"
    page = client.get("/").text
    assert "cdn" not in page.lower() and "<script src" not in page


def test_the_token_is_in_no_repr(client):
    assert TOKEN not in repr(client.app.user_middleware)
    assert TOKEN not in repr(client.app.middleware_stack)


def test_the_token_file_is_private_kept_and_remade_when_garbled(tmp_path):
    token, path = access_token(tmp_path / "data")
    assert path == tmp_path / "data" / TOKEN_FILE and len(token) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # made by it: private
    assert access_token(tmp_path / "data") == (token, path)  # bookmarks survive a restart
    path.write_text("short")
    fresh, _ = access_token(tmp_path / "data")
    assert fresh != token and len(fresh) == 32 and path.read_text().strip() == fresh


def test_the_token_file_leaves_a_shared_data_dirs_mode_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o775)
    shared.chmod(0o775)
    _, path = access_token(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o775  # serve used to chmod it 0700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
