"""The search service's access token: who may search the gallery and see its images.

`meet-milvus serve` asks every request for a token, as the embedded Milvus asks for its
credential. The token lives in the data dir (`serve.token`, 0600) so bookmarks and scripts keep
working across restarts; delete the file for a new one. Requests carry it as
`Authorization: Bearer <token>`: scripts do, and so does the page, which takes it from the link
`serve` prints (`/#token=...`: a fragment never reaches a server or its log) into the tab's
sessionStorage and drops it from the address bar.

No cookie: a browser sends cookies for 127.0.0.1 to every port of it, so a page that another
local user serves on another port would receive it. sessionStorage belongs to one origin
(scheme, host and port). The page itself (`/`, static, no gallery data) is served to anyone;
everything else asks for the token. A request a browser sends from another origin (its `Origin`
or `Sec-Fetch-Site` say so) is refused before anything else, token or not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from pydantic import SecretStr
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meet_milvus.files import write_private

TOKEN_FILE = "serve.token"
_WELL_FORMED = re.compile(r"[A-Za-z0-9_-]{16,256}")
REFUSED = (
    "missing or wrong access token: open the link `meet-milvus serve` printed, or send "
    "'Authorization: Bearer <token>' (the token is in the data dir's serve.token)"
)
CROSS_SITE = "refused: a request from another site (its Origin or Sec-Fetch-Site header)"
_PAGE = f"""<!doctype html><meta charset="utf-8"><title>meet-milvus: access token needed</title>
<p>{html.escape(REFUSED)}</p>"""
# Sent with every answer: no framing, no type sniffing, no referrer, and the page may load
# only its own (inline, hashed) script and style, and images from this origin or blob: URLs.
_SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def access_token(data_dir: Path) -> tuple[str, Path]:
    """The service's token and its file, made (random, 32 characters) when missing or garbled.

    Only the file is made private (0600): the data dir's own mode is left as it is (a missing
    one is made 0700)."""
    path = Path(data_dir) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        token = ""
    if not _WELL_FORMED.fullmatch(token):
        token = secrets.token_urlsafe(24)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, token + "\n")
    return token, path


def content_security_policy(page: str) -> str:
    """The CSP of `page`: its inline <script> and <style> by hash, nothing from elsewhere."""

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in found)
        return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class BrowserGuard:
    """ASGI middleware, outermost: refuses a browser's request from a page of another origin
    (403, before anything else) and adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, csp: str = "default-src 'none'") -> None:
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
        self._headers.append((b"content-security-policy", csp.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._headers]}
            await send(message)

        if _cross_site(dict(scope["headers"]), scope):
            await JSONResponse({"error": CROSS_SITE}, 403)(scope, receive, secured)
        else:
            await self.app(scope, receive, secured)


class TokenGate:
    """ASGI middleware: lets `GET /` (the page) and the bearer token's requests through and
    answers the rest 401 before the app reads a body. `GET /?token=...` (the link of earlier
    versions) is sent on to `/#token=...`."""

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
        return scheme.lower() == b"bearer" and self._matches(value.strip())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = scope["method"] in ("GET", "HEAD") and scope["path"] == "/"
        query = parse_qs(scope["query_string"].decode("latin-1"))
        if "token" in query and page:
            if self._matches(query["token"][0]):
                response: Response = RedirectResponse(
                    f"/#token={query['token'][0]}", status_code=303
                )
            else:
                response = HTMLResponse(_PAGE, 401)
        elif page or self._carries(dict(scope["headers"])):
            await self.app(scope, receive, send)
            return
        else:
            response = JSONResponse({"error": REFUSED}, 401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _cross_site(headers: dict[bytes, bytes], scope: Scope) -> bool:
    """Whether a browser sent this request from a page of another origin (another port of
    127.0.0.1 included). Scripts send neither header and pass."""
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return True
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin or scope["method"] in ("GET", "HEAD") and origin == "null":
        return False
    host = headers.get(b"host", b"").decode("latin-1")
    return origin != f"{scope.get('scheme', 'http')}://{host}"
