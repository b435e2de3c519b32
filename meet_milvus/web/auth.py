"""The search service's access token: who may search the gallery and see its images.

`meet-milvus serve` asks every request for a token, as the embedded Milvus asks for its
credential. The token lives in the data dir (`serve.token`, 0600) so bookmarks and scripts keep
working across restarts; delete the file for a new one. A browser brings it once, in the link
`serve` prints (`/?token=...`): the page answers with an HttpOnly, SameSite=Strict cookie and
sends the browser on to `/` without the token in its address. Scripts send
`Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import html
import re
import secrets
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from pydantic import SecretStr
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from meet_milvus.private import private_dir, write_private

TOKEN_FILE = "serve.token"
COOKIE = "meet_milvus_token"
_WELL_FORMED = re.compile(r"[A-Za-z0-9_-]{16,256}")
REFUSED = (
    "missing or wrong access token: open the link `meet-milvus serve` printed, or send "
    "'Authorization: Bearer <token>' (the token is in the data dir's serve.token)"
)
_PAGE = f"""<!doctype html><meta charset="utf-8"><title>meet-milvus: access token needed</title>
<p style="font: 16px system-ui; margin: 3em">{html.escape(REFUSED)}</p>"""


def access_token(data_dir: Path) -> tuple[str, Path]:
    """The service's token and its file, made (random, 32 characters) when missing or garbled."""
    path = Path(data_dir) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        token = ""
    if not _WELL_FORMED.fullmatch(token):
        token = secrets.token_urlsafe(24)
        private_dir(path.parent)
        write_private(path, token + "\n")
    return token, path


class TokenGate:
    """ASGI middleware: a request passes with the token as a bearer header or as the cookie;
    `GET /?token=...` sets the cookie. Anything else gets 401 before the app reads its body."""

    def __init__(self, app: ASGIApp, token: SecretStr) -> None:
        self.app = app
        self._token = token.get_secret_value().encode()

    def __repr__(self) -> str:
        return "TokenGate(token=***)"

    def _matches(self, given: str | bytes) -> bool:
        given = given.encode() if isinstance(given, str) else given
        return hmac.compare_digest(given, self._token)

    def _carries(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and self._matches(value.strip()):
            return True
        try:
            cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        except CookieError:
            return False
        return COOKIE in cookie and self._matches(cookie[COOKIE].value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._carries(dict(scope["headers"])):
            await self.app(scope, receive, send)
            return
        page = scope["method"] in ("GET", "HEAD") and scope["path"] == "/"
        query = parse_qs(scope["query_string"].decode("latin-1"))
        if page and self._matches(query.get("token", [""])[0]):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(
                COOKIE, self._token.decode(), httponly=True, samesite="strict", path="/"
            )
        elif page:
            response = HTMLResponse(_PAGE, 401)
        else:
            response = JSONResponse(
                {"error": REFUSED}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
        await response(scope, receive, send)
