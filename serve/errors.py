"""One error envelope for every 4xx and 5xx: ``{"error": {"status", "code", "message"}}``.

``envelope`` is the one builder: the service's own errors (``ApiError``), refusals of the
access layer (serve.access, which returns them as values), FastAPI's validation errors,
Starlette's 404/405, the 500 of an unexpected exception (serve.observe), a WebSocket
handshake refused (serve.stream) and the page HAProxy answers for a lost replica
(serve.ray_deploy) all answer in this shape, so a client parses one thing and no
traceback ever reaches it. A job's or a stream frame's error is the same ``entry``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

# Query parameters whose bad values have their own code (bad_format, bad_alpha, ...).
NAMED_PARAMETERS = ("format", "colormap", "alpha", "overlay", "known_depths")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def entry(status: int, code: str, message: str) -> dict:
    return {"status": status, "code": code, "message": message}


def envelope(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error answer (a JSONResponse is also an ASGI app: middleware sends it as one)."""
    return JSONResponse({"error": entry(status, code, message)}, status_code=status, headers=headers or None)


class ApiError(Exception):
    """An error answer, raised by routes or returned as a value (a refusal) by access checks."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)

    def response(self) -> JSONResponse:
        return envelope(self.status, self.code, self.message, self.headers)

    def entry(self) -> dict:
        return entry(self.status, self.code, self.message)


def install(app: FastAPI) -> None:
    """Every error FastAPI or Starlette would answer in its own shape, in ours."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404:
            message = f"no such resource: {request.url.path[:200]!r}"
        return envelope(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        first = problems[0] if problems else {}
        where = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
        name = where[0] if where else "request"
        code = f"bad_{name}" if name in NAMED_PARAMETERS else "bad_request"
        got = first.get("input")
        shown = f" (got {str(got)[:80]!r})" if isinstance(got, (str, int, float)) else ""
        message = f"{name}: {first.get('msg', 'invalid')}{shown}"
        if len(problems) > 1:
            message += f"; and {len(problems) - 1} more problem(s)"
        return envelope(422, code, message)
