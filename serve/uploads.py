"""Reading uploaded images with every cost bounded.

Bytes: the body stops being read the moment it passes ``max_body_bytes`` (declared
Content-Length or not, chunked or not, raw or multipart). Time: the whole body must arrive
within ``body_timeout_s`` (a slow sender is cut off with 408, never held indefinitely).
Concurrency: at most ``max_uploads`` bodies are received at once; beyond, 503 + Retry-After
before a byte is read. Multipart: at most ``max_form_fields`` text fields of
``max_field_bytes`` each besides the files. A client that disconnects mid-body ends the
request quietly (499 in the access log), never as a traceback.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from .budget import Budget
from .errors import ApiError
from .settings import ServeSettings


class _BodyTooLarge(Exception):
    pass


class Uploads(list):
    """The uploaded images as (name, bytes), and the multipart text fields that came with
    them (``fields``: name -> its first value; a raw body has none)."""

    def __init__(self, images=(), fields: dict[str, str] | None = None) -> None:
        super().__init__(images)
        self.fields = fields or {}


def _capped(request: Request, limit: int) -> Request:
    """The same request, whose body stops being read the moment it passes ``limit`` bytes."""
    receive = request.receive
    seen = 0

    async def capped_receive():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge()
        return message

    return Request(request.scope, capped_receive)


async def read_images(request: Request, settings: ServeSettings, slots: Budget,
                      max_count: int) -> Uploads:
    """Uploaded images as (name, bytes): multipart ``file`` fields or the raw body, each
    body holding one of ``slots`` while it arrives (none free: 503 before a byte is read)."""
    limit = settings.max_body_bytes
    too_large = ApiError(413, "body_too_large", f"request body exceeds the limit of {limit:,} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    ctype = request.headers.get("content-type", "")
    if ctype and not ctype.startswith(("multipart/form-data", "image/", "application/octet-stream")):
        raise ApiError(415, "unsupported_media_type",
                       f"send an image as multipart/form-data (field 'file') or as image/*, not {ctype[:100]}")
    if not slots.try_take():
        raise ApiError(503, "too_many_uploads", f"{slots.limit} uploads are in progress; retry shortly",
                       retry_after=settings.retry_after)
    try:
        try:
            async with asyncio.timeout(settings.body_timeout):
                if ctype.startswith("multipart/form-data"):
                    return await _multipart(_capped(request, limit), settings, max_count)
                return await _raw(_capped(request, limit))
        except _BodyTooLarge:
            raise too_large from None
        except TimeoutError:
            raise ApiError(408, "body_timeout",
                           f"the request body did not arrive within {settings.body_timeout:g} s") from None
        except ClientDisconnect:
            raise ApiError(499, "client_gone", "the client disconnected while sending the body") from None
    finally:
        slots.give()


async def _raw(request: Request) -> Uploads:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    if not body:
        raise ApiError(400, "empty_body", "no image in the request body")
    return Uploads([("upload", bytes(body))])


async def _multipart(request: Request, settings: ServeSettings, max_count: int) -> Uploads:
    try:
        form = await request.form(max_files=max_count, max_fields=settings.max_form_fields,
                                  max_part_size=settings.max_field_bytes)
    except (_BodyTooLarge, ClientDisconnect):
        raise
    except Exception as exc:  # Starlette's MultiPartException and parser errors
        raise ApiError(400, "bad_multipart", f"malformed or over-limit multipart body: {str(exc)[:200]}") from None
    try:
        uploads = [v for k, v in form.multi_items() if k == "file" and hasattr(v, "read")]
        if not uploads:
            raise ApiError(400, "no_file", "multipart body has no 'file' field")
        fields: dict[str, str] = {}
        for k, v in form.multi_items():
            if isinstance(v, str):
                fields.setdefault(k, v)
        return Uploads([((u.filename or "upload")[:200], await u.read()) for u in uploads], fields)
    finally:
        await form.close()
