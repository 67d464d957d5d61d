"""Strict HTTP body handling: the request's media type and its JSON syntax, checked before validation.

* A body on a JSON route must be sent as ``Content-Type: application/json`` (or ``application/*+json``);
  another media type is a 415 naming the header (:func:`json_media_type_error`, checked by
  :class:`serving.middleware.ServiceMiddleware` before admission, so it costs no ticket).
* The body must be RFC 8259 JSON: undecodable bytes, a syntax error, the non-standard literals ``NaN``,
  ``Infinity`` and ``-Infinity`` (which Python's ``json`` accepts by default) and nesting too deep for the
  parser are a 400 naming the problem (:class:`StrictJSONRoute`), never a 422 about a "valid dictionary"
  or a 500.
"""

from __future__ import annotations

import email.message
import json
from typing import Any, Callable

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters (``; charset=utf-8``) allowed."""
    msg = email.message.Message()
    msg["content-type"] = content_type
    if msg.get_content_maintype() != "application":
        return False
    sub = msg.get_content_subtype()
    return sub == "json" or sub.endswith("+json")


def json_media_type_error(headers: dict[bytes, bytes]) -> str | None:
    """The 415 message for a request (raw ASGI headers) that has a body but no JSON ``Content-Type``, else
    None. A request without a body needs no Content-Type."""
    length = headers.get(b"content-length")
    has_body = (length is not None and length.strip() not in (b"", b"0")) or b"transfer-encoding" in headers
    if not has_body:
        return None
    ctype = headers.get(b"content-type", b"").decode("latin-1").strip()
    if is_json_media_type(ctype):
        return None
    got = f"got {ctype!r}" if ctype else "the header is missing"
    return f"Content-Type: the request body must be sent as application/json ({got})"


def _constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value (RFC 8259 has no NaN or Infinity; send a number or null)")


class _NotJSON(ValueError):
    pass


def strict_json_loads(body: bytes) -> Any:
    """``json.loads`` refusing NaN / Infinity; raises :class:`fastapi.HTTPException` 400 naming the problem."""
    try:
        return json.loads(body, parse_constant=_constant)
    except _NotJSON as exc:
        why = str(exc)
    except json.JSONDecodeError as exc:
        why = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    except UnicodeDecodeError as exc:
        why = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    except RecursionError:
        why = "nested too deeply"
    raise HTTPException(400, f"request body is not valid JSON: {why}")


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json_loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose handler parses JSON bodies with :func:`strict_json_loads`."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
