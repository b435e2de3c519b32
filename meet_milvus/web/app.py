"""The search service: `create_app(searcher)` -> a FastAPI application.

Why FastAPI (on uvicorn): requests and responses are pydantic models, which the project already
uses for `SearchConfig` and `Hit`, so validation, JSON and the OpenAPI description
(/openapi.json) come from the same types; it is well kept, and its TestClient lets the tests call
the app in-process.
No hand-written HTTP server: parsing, multipart uploads (python-multipart) and limits are the
part to leave to maintained code.

    POST /api/search         {"text": ..., "k": 10, "diagnostics": false, "switches": {...}}
    POST /api/search/image   multipart: file=<image>, k, diagnostics, switches (JSON text)
    GET  /api/images/{id}    the image of a gallery item that a result returned (by id)
    GET  /api/info           the gallery, the model and the searcher's default switches
    GET  /                   the web page
    GET  /openapi.json       the API's description (no /docs: Swagger UI would load a CDN's
                             script into the service's origin)

Errors are JSON, `{"error": "one line"}`: MeetError (bad query, k, setting) 400, no or a wrong
access token 401, schema errors 422, unknown image 404, oversized upload 413, not an image 415,
anything else 500.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime.
import io
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from meet_milvus.errors import MeetError, ParameterError
from meet_milvus.inputs import is_file
from meet_milvus.results import Hit
from meet_milvus.search_config import SearchConfig
from meet_milvus.web.auth import BrowserGuard, TokenGate, content_security_policy
from meet_milvus.web.page import PAGE

MAX_UPLOAD = 10 * 1024 * 1024  # bytes of one uploaded image
# Pixels of an uploaded or served image: a photo has far fewer, and PIL's own ceiling (89 Mpx)
# lets a small crafted PNG take seconds and gigabytes to decode.
MAX_PIXELS = 40_000_000
# An upload larger than this on a side is shrunk (outside the search lock) before the search
# decodes it again; the model sees 224 x 224 anyway.
MAX_SIDE = 2048
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")  # what PIL may open, for uploads and serving
MAX_BODY = 64 * 1024  # bytes of any other request body (a query is a sentence, not a book)
MAX_K = 100  # results a request may ask for: a page of thumbnails, not a data dump
KNOWN_IMAGES = 50_000  # gallery image ids remembered from results, most recent first
UPLOAD_PATH = "/api/search/image"
# The `SearchConfig` settings a request may override: the stages and the re-ranker's weights.
# Not where the gallery is read from (`tier`), nor sizes that would let one request scan it all.
SWITCHES = ("hash", "pq", "exact", "rerank", "alpha", "beta", "z", "exact_keep")


class _Overrides(BaseModel):
    # strict: no JSON true for a number, no "1" for true
    model_config = ConfigDict(extra="forbid", strict=True)

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def _switches_model() -> type[_Overrides]:
    """Switches: each of SWITCHES with `SearchConfig`'s type and description, None (the
    server's value) by default; the ranges are checked by `SearchConfig.updated` (400)."""
    fields: dict[str, Any] = {}
    for name in SWITCHES:
        info = SearchConfig.model_fields[name]
        fields[name] = (info.annotation | None, Field(None, description=info.description))
    return create_model(
        "Switches",
        __base__=_Overrides,
        __doc__="Per-request overrides of the searcher's `SearchConfig` (None: the server's).",
        **fields,
    )


Switches = _switches_model()


class TextSearch(BaseModel):
    """Images for a text."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., description="the query, e.g. 'a tiger next to a flower'")
    # strict: JSON true or "5" is not a count (lax pydantic would take them as 1 and 5).
    k: int = Field(10, strict=True, description=f"results, 1 to {MAX_K}")
    diagnostics: bool = Field(False, description="each hit's rank and score after every stage")
    switches: Switches = Field(default_factory=Switches)


class ResultHit(Hit):
    """A `Hit` with its rank and, for an image, the URL of its picture."""

    rank: int
    thumbnail: str | None = None  # /api/images/{id} for image hits


class SearchResponse(BaseModel):
    query: str  # the text, or the uploaded file's name
    hits: list[ResultHit]
    modality: Literal["image", "text"]  # what the hits are
    k: int
    ms: float  # time in the searcher (encoding and the cascade), not in the queue or network
    warnings: list[str] = []


class Info(BaseModel):
    collection: str
    model: str
    config: dict[str, Any]  # the server's SearchConfig: the defaults a request overrides
    max_upload_bytes: int
    max_k: int


class ErrorResponse(BaseModel):
    error: str


Search = Callable[[SearchConfig | None], list[Hit]]


@dataclass
class Service:
    """What the handlers share (`app.state.service`): the searcher and the upload limit, and
    the image ids results have named. Requests search concurrently (FastAPI runs the handlers
    in a thread pool): the searcher batches concurrent calls into shared passes."""

    searcher: Any
    max_upload: int
    known: "_KnownImages" = field(default_factory=lambda: _KnownImages(KNOWN_IMAGES))

    def answer(
        self,
        query: str,
        modality: str,
        k: int,
        switches: _Overrides,
        search: Search,
        notices: list[str] | None = None,
    ) -> SearchResponse:
        """`search` run with the request's switches over the searcher's config (the searcher's
        own is never changed: other requests use it), timed, its hits ranked; `notices` (e.g.
        a truncated query) go back with them."""
        if isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ParameterError(f"k={k}: must be an integer between 1 and {MAX_K}")
        given = switches.given()
        config = self.searcher.config.updated(**given) if given else None
        start = time.perf_counter()
        hits = search(config)
        ms = 1000 * (time.perf_counter() - start)
        out = []
        for rank, hit in enumerate(hits, 1):
            thumbnail = None
            if hit.modality == "image":
                self.known.add(hit.id, hit.source)
                thumbnail = f"/api/images/{hit.id}"
            out.append(ResultHit(**hit.model_dump(), rank=rank, thumbnail=thumbnail))
        return SearchResponse(query=query, hits=out, modality=modality, k=k, ms=round(ms, 2),
                              warnings=list(notices or []))  # fmt: skip


def _service(request: Request) -> Service:
    return request.app.state.service


Served = Annotated[Service, Depends(_service)]
router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})


@router.get("/api/info")
def info(service: Served) -> Info:
    searcher = service.searcher
    gallery = getattr(searcher, "gallery", None)
    model_config = getattr(getattr(searcher, "model", None), "config", None)
    return Info(
        collection=getattr(gallery, "name", "gallery"),
        model=getattr(model_config, "fingerprint", "")[:12],
        config=searcher.config.model_dump(),
        max_upload_bytes=service.max_upload,
        max_k=MAX_K,
    )


@router.post("/api/search")
def search_text(query: TextSearch, service: Served) -> SearchResponse:
    notices = service.searcher.check_texts([query.text])

    def search(config: SearchConfig | None) -> list[Hit]:
        return service.searcher.search(
            query.text, k=query.k, diagnostics=query.diagnostics, config=config, warn=False
        )

    return service.answer(query.text, "image", query.k, query.switches, search, notices)


@router.post(UPLOAD_PATH, responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}})
def search_image(
    service: Served,
    file: Annotated[UploadFile, File(description="an image, at most max_upload_bytes (/api/info)")],
    k: Annotated[int, Form()] = 10,
    diagnostics: Annotated[bool, Form()] = False,
    switches: Annotated[str, Form(description="JSON object of Switches")] = "{}",
) -> SearchResponse:
    chosen = _parse_switches(switches)
    data = file.file.read(service.max_upload + 1)
    name = Path(file.filename or "upload").name
    # Decoded before the search: a bad upload costs no model pass.
    kind, data = _check_image(data, name, service.max_upload)
    # search_image reads a file: the upload goes to a private (0700) temp dir, removed after.
    with tempfile.TemporaryDirectory(prefix="meet-upload-") as tmp:
        path = Path(tmp) / f"upload.{kind.lower()}"
        path.write_bytes(data)

        def search(config: SearchConfig | None) -> list[Hit]:
            return service.searcher.search_image(path, k=k, diagnostics=diagnostics, config=config)

        return service.answer(name, "text", k, chosen, search)


@router.get("/api/images/{item_id}", responses={404: {"model": ErrorResponse}})
def gallery_image(item_id: int, service: Served) -> FileResponse:
    # Only ids a result returned, served from the source recorded in Milvus for them: the
    # client names an id, never a path.
    source = service.known.get(item_id)
    if source is None:
        raise HTTPException(404, f"image {item_id}: not among the results served")
    path = Path(source)
    kind = _image_format(path) if is_file(path) else None
    if kind is None:
        raise HTTPException(404, f"image {item_id}: its source is not an image file here")
    return FileResponse(
        path,
        media_type=Image.MIME[kind],  # what it decodes as, whatever its name says
        headers={"Cache-Control": "private, max-age=3600"},
    )


def create_app(
    searcher: Any,
    *,
    token: str | None = None,
    max_upload: int = MAX_UPLOAD,
    title: str = "meet-milvus",
) -> FastAPI:
    """The service over `searcher`: a `MeetSearcher`, or any object with its interface
    (`.search` and `.search_image` taking `config=`, `.config` a `SearchConfig`). With a
    `token`, every request must carry it (`meet_milvus.web.auth`); `meet-milvus serve` always
    gives one."""
    app = FastAPI(
        title=title,
        description="MEET image-text retrieval on Milvus",
        responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = Service(searcher, max_upload)
    app.include_router(router)
    # The upload's envelope (boundaries, form fields) may add a little to the file's own limit.
    upload = (max_upload + MAX_BODY, f"upload larger than {size(max_upload)}")
    app.add_middleware(BodyLimit, limits={UPLOAD_PATH: upload}, default=MAX_BODY)
    if token is not None:  # added late, so outer: a stranger's body is never read
        app.add_middleware(TokenGate, token=SecretStr(token))
    app.add_middleware(BrowserGuard, csp=content_security_policy(PAGE))  # outermost
    _error_handlers(app)
    return app


def warm_up(searcher: Any) -> float:
    """One query through the whole cascade, so the first user does not pay for loading the
    gallery's caches; returns its seconds."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher.search("warm up", k=1)
    return time.perf_counter() - start


# -- helpers ----------------------------------------------------------------------------------


def _parse_switches(text: str) -> _Overrides:
    try:
        return Switches.model_validate_json(text or "{}")
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", "switches", *err["loc"])} for err in e.errors()]
        ) from None


def _check_image(data: bytes, name: str, limit: int) -> tuple[str, bytes]:
    """The upload's format (PNG, JPEG, ...) and the bytes to search with: the upload itself, or,
    past MAX_SIDE, a smaller PNG of it. 400/413/415 with a reason when it is not an image of
    IMAGE_FORMATS, or has more than MAX_PIXELS pixels. Decodes the whole image."""
    if not data:
        raise HTTPException(400, f"upload {name}: the file is empty")
    if len(data) > limit:
        raise HTTPException(413, f"upload {name}: larger than {size(limit)}")
    try:
        with warnings.catch_warnings():
            # As meet_milvus.model.features.load_image: more pixels than PIL's limit is
            # refused, not warned.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                kind = im.format or "image"
                if im.width * im.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(kind)
                im.load()  # every pixel: a truncated or corrupt file fails here, not in the lock
                if max(im.size) <= MAX_SIDE:
                    return kind, data
                im.thumbnail((MAX_SIDE, MAX_SIDE))
                out = io.BytesIO()
                im.save(out, "PNG")
                return "PNG", out.getvalue()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        message = f"upload {name}: too many pixels (more than {MAX_PIXELS:,})"
        raise HTTPException(413, message) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        formats = ", ".join("WebP" if f == "WEBP" else f for f in IMAGE_FORMATS)
        raise HTTPException(415, f"upload {name}: not an image ({formats})") from None


def _image_format(path: Path) -> str | None:
    """The format of the image at `path` when it opens as one of IMAGE_FORMATS, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                if im.width * im.height > MAX_PIXELS:
                    return None
                im.verify()  # the structure, without decoding every pixel
                return im.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


class _KnownImages:
    """Gallery image id -> source, for the images results have returned (bounded, LRU)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[int, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, item_id: int, source: str) -> None:
        with self._lock:
            self._items[item_id] = source
            self._items.move_to_end(item_id)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def get(self, item_id: int) -> str | None:
        with self._lock:
            return self._items.get(item_id)


class BodyLimit:
    """Refuses request bodies over a size (413) while they arrive, declared or chunked, so an
    oversized upload is never read whole into memory or onto disk."""

    def __init__(self, app: ASGIApp, limits: dict[str, tuple[int, str]], default: int) -> None:
        self.app, self.limits = app, limits
        self.default = (default, f"request body larger than {size(default)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message = self.limits.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"error": message}, 413)(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            item = await receive()
            received += len(item.get("body", b""))
            if received > limit:
                # An HTTPException passes FastAPI's body parsing unchanged (others become 400).
                raise HTTPException(413, message)
            return item

        await self.app(scope, limited, send)


def size(n: int) -> str:
    """Bytes as people read them: 10 MB, 64 KB, 1.95 KB."""
    return f"{n / 2**20:.3g} MB" if n >= 2**20 else f"{n / 2**10:.3g} KB"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MeetError)
    async def meet_error(_: Request, e: MeetError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, 400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        return JSONResponse({"error": f"{where}: {err['msg']}"}, 422)

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        # The traceback goes to the server log (uvicorn prints it); the client gets one line.
        return JSONResponse({"error": f"internal error: {type(e).__name__}"}, 500)
