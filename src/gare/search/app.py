"""``gare serve``: a FastAPI app with a search page and a JSON API over a :class:`SearchEngine`.

Routes::

    GET /                      the search page (query box, result grid of thumbnail strips, a player)
    GET /static/<name>         the page's script and style sheet (a fixed list of files)
    GET /api/search?q=...&k=N  {"query", "k", "took_ms", "results": [{rank, id, name, score, first_stage,
                               duration, thumb, video}]}; 400 {"error": "..."} for a bad query or k
    GET /api/info              index size, model and settings
    GET /video/<id>            the indexed file with that id (HTTP range requests: 206; a malformed Range
                               header answers 400, one outside the file 416)
    GET /thumb/<id>            its thumbnail strip (JPEG)

Files are addressed only by their numeric id in the index, so nothing outside the index can be read.
Handlers are synchronous (run in the server's thread pool); the engine serializes model use with a lock.
"""

from __future__ import annotations

import ipaddress
import logging
import mimetypes
import re
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .search import MAX_K, QueryError, SearchEngine, validate_k, validate_query

log = logging.getLogger(__name__)

STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
DEFAULT_K = 12
MAX_RANGES = 16  # byte ranges accepted in one request (a player asks for one)
_ID = re.compile(r"[0-9]{1,18}")
_BYTE_RANGE = re.compile(r"([0-9]*)-([0-9]*)")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; media-src 'self'; script-src 'self'; "
                                "style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
}


def _load_static() -> dict[str, bytes]:
    root = resources.files("gare.search") / "static"
    return {name: (root / name).read_bytes() for name in STATIC_FILES}


def check_range(header: str, size: int) -> tuple[int, str] | None:
    """Validate a ``Range`` request header against a file of ``size`` bytes (RFC 9110 section 14).

    Returns None when every range overlaps the file (it is then served with 206), else ``(status, message)``:
    400 for a malformed header, another unit than bytes, a range that ends before it starts, or more than
    :data:`MAX_RANGES` ranges; 416 when a range lies outside the file (as Starlette's FileResponse decides:
    stricter than RFC 9110, which would serve the satisfiable ones).
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return 400, "malformed Range header: expected bytes=FIRST-LAST"
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        return 400, "malformed Range header: no range given"
    if len(parts) > MAX_RANGES:
        return 400, f"too many ranges in the Range header ({len(parts)}, at most {MAX_RANGES})"
    for part in parts:
        m = _BYTE_RANGE.fullmatch(part)
        if m is None or not (m[1] or m[2]):
            return 400, "malformed Range header: expected bytes=FIRST-LAST"
        # more than 18 digits is beyond any file: treat as infinite (int() of huge strings is refused anyway)
        first = int(m[1]) if m[1] and len(m[1]) <= 18 else (None if not m[1] else size + 1)
        last = int(m[2]) if m[2] and len(m[2]) <= 18 else (None if not m[2] else size + 1)
        if first is not None and last is not None and last < first:
            return 400, "malformed Range header: a range ends before it starts"
        inside = (last > 0 and size > 0) if first is None else first < size  # first None: the last N bytes
        if not inside:
            return 416, "range not satisfiable"
    return None


def create_app(engine: SearchEngine) -> FastAPI:
    """The FastAPI application serving ``engine``."""
    static = _load_static()
    app = FastAPI(title="gare search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            msg = "not found"
        return JSONResponse({"error": msg}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "invalid request"}, status_code=400)

    def not_found() -> Response:
        return JSONResponse({"error": "not found"}, status_code=404)

    @app.get("/")
    def page() -> Response:
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            return not_found()
        return Response(static[name], media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    def info() -> dict:
        return engine.info()

    @app.get("/api/search")
    def api_search(request: Request) -> Response:
        params = request.query_params
        t0 = time.perf_counter()
        try:
            if len(params.getlist("q")) > 1 or len(params.getlist("k")) > 1:
                raise QueryError("pass q and k once each")
            text = validate_query(params.get("q"))
            k = validate_k(params.get("k", str(DEFAULT_K)), MAX_K)
            hits = engine.search(text, k)
        except QueryError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        results = [{"rank": h.rank, "id": h.id, "name": h.rel_path, "score": h.score, "first_stage": h.first_stage,
                    "duration": h.duration, "thumb": f"/thumb/{h.id}", "video": f"/video/{h.id}"} for h in hits]
        return JSONResponse({"query": text, "k": k, "took_ms": round(1000 * (time.perf_counter() - t0), 2),
                             "results": results})

    @app.get("/video/{vid}")
    def video(vid: str, request: Request) -> Response:
        if not _ID.fullmatch(vid):
            return not_found()
        path = engine.video_file(int(vid))
        if path is None or not path.is_file():
            return not_found()
        rng = request.headers.get("range")
        if rng is not None:
            size = path.stat().st_size
            bad = check_range(rng, size)
            if bad is not None:
                headers = {"Content-Range": f"bytes */{size}"} if bad[0] == 416 else None
                return JSONResponse({"error": bad[1]}, status_code=bad[0], headers=headers)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @app.get("/thumb/{vid}")
    def thumb(vid: str) -> Response:
        if not _ID.fullmatch(vid):
            return not_found()
        path = engine.thumb_file(int(vid))
        if path is None or not path.is_file():
            return not_found()
        return FileResponse(path, media_type="image/jpeg")

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(engine: SearchEngine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted (loopback by default)."""
    import uvicorn  # lazy on purpose: the app object (tests, embedding) does not need the server

    if not is_loopback(host):
        log.warning("serving on %s: the search page and every indexed video are reachable from other machines",
                    host)
    uvicorn.run(create_app(engine), host=host, port=port, log_level=log_level, access_log=False)
