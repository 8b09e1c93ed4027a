"""Request bodies, decoded strictly.

Litestar converts bodies in msgspec's lax mode (`"1"` would pass as the
integer 1, `"true"` as a boolean). Handlers declare `data: StrictJSON[S]`:
Litestar parses the JSON and documents the body as `S` in the OpenAPI
document, but leaves the conversion to `parse`, which is strict: wrong types,
unknown fields and broken constraints are 400s naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeAlias, TypeVar

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import InternalServerException
from litestar.params import BodyKwarg, SkipValidationMarker
from litestar.utils.empty import value_or_default

from resv.api.errors import ApiError, ClientDisconnected, rule_message

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

StrictJSON: TypeAlias = Annotated[T, SkipValidationMarker(), BodyKwarg(media_type=RequestEncodingType.JSON)]
"""A JSON body of type T, checked by `parse` rather than by Litestar."""

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def parse(kind: type[S], raw: Any) -> S:
    if type(raw) is dict:
        # A JSON number with an integral value is an integer (JSON Schema
        # agrees); strict msgspec would refuse 1.0 for an int field.
        raw = {k: int(v) if type(v) is float and v.is_integer() and abs(v) <= 2**53 else v for k, v in raw.items()}
    try:
        return msgspec.convert(raw, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "BAD_REQUEST", describe(str(exc))) from None


def describe(error: str) -> str:
    """`Expected `int`, got `str` - at `$.quantity`` -> `quantity: Expected `int`, got `str``."""
    matched = _AT.match(error)
    message = matched.group("message") if matched else error
    path = (matched.group("path") or "").lstrip(".") if matched else ""
    return f"{path or 'body'}: {rule_message(message)}"


# ------------------------------------------------------ the request's body

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")

LITESTAR_DISCONNECT = "client disconnected prematurely"
"""The text of the InternalServerException Litestar raises when the client
goes away while its body is read (litestar/connection/request.py)."""


def too_deep(body: bytes, limit: int) -> bool:
    """Whether arrays/objects nest deeper than `limit` in a JSON text. Most
    bodies have fewer brackets than the limit (two C-level counts); only the
    others are walked, their strings removed first."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b"", body)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class BoundedRequest(Request):  # type: ignore[type-arg]
    """Litestar's Request with the body's edge cases in the error contract:
    JSON nested deeper than `max_json_depth` is a 400 (msgspec would recurse
    until Python's limit: ~990 levels in a 2 KB body were a 500), and a client
    that disconnects mid-body raises ClientDisconnected (a client event, not
    an internal error). `create_app` makes a subclass with the limit."""

    max_json_depth = 32

    async def body(self) -> bytes:
        try:
            return await super().body()
        except InternalServerException as exc:
            if exc.detail == LITESTAR_DISCONNECT:
                raise ClientDisconnected() from None
            raise

    async def json(self) -> Any:
        if value_or_default(self._connection_state.json, None) is None and too_deep(
                await self.body(), self.max_json_depth):
            raise ApiError(400, "BAD_REQUEST", f"body: JSON nested deeper than {self.max_json_depth} levels")
        return await super().json()


def request_class(max_json_depth: int) -> type[BoundedRequest]:
    return type("ResvRequest", (BoundedRequest,), {"max_json_depth": max_json_depth})
