"""Request bodies, decoded strictly.

Litestar converts bodies in msgspec's lax mode (`"1"` would pass as the
integer 1, `"true"` as a boolean). Handlers declare `data: StrictJSON[S]`:
Litestar documents the body as `S` in the OpenAPI document and hands the
handler the body undecoded (`RawJSON`, from `BoundedRequest.json`); `parse`
decodes it, strictly: wrong types, unknown fields and broken constraints are
400s naming the field.

A body that is valid as it is decodes straight into its Struct (one
msgspec call). Any other goes the long way, which has the exact rules and
messages: the depth limit, JSON decoded as Litestar decodes it, integral
floats taken as integers, then the strict conversion. Decoding to Python
objects first and converting them cost ~12 us more per request, measured
in-process on a Litestar app with just such a handler (~100 us a request).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeAlias, TypeVar

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, InternalServerException, SerializationException
from litestar.params import BodyKwarg, SkipValidationMarker
from litestar.serialization import decode_json

from resv.api.errors import ApiError, ClientDisconnected, rule_message

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

StrictJSON: TypeAlias = Annotated[T, SkipValidationMarker(), BodyKwarg(media_type=RequestEncodingType.JSON)]
"""A JSON body of type T, checked by `parse` rather than by Litestar."""

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


class RawJSON:
    """A JSON body as the handler receives it: read, not yet decoded."""

    __slots__ = ("body", "request")

    def __init__(self, body: bytes, request: BoundedRequest) -> None:
        self.body = body
        self.request = request

    def decoded(self) -> Any:
        """The body as Litestar decodes it (its errors a 400 as Litestar
        makes them), after the depth check."""
        request = self.request
        if too_deep(self.body, request.max_json_depth):
            raise ApiError(400, "BAD_REQUEST", f"body: JSON nested deeper than {request.max_json_depth} levels")
        try:
            return decode_json(self.body or b"null", type_decoders=request.route_handler.resolve_type_decoders())
        except SerializationException as exc:
            raise ClientException(str(exc)) from exc


_DECODERS: dict[type, msgspec.json.Decoder] = {}


def parse(kind: type[S], raw: Any) -> S:
    if type(raw) is RawJSON:
        decoder = _DECODERS.get(kind)
        if decoder is None:
            decoder = _DECODERS[kind] = msgspec.json.Decoder(kind, strict=True)
        try:
            return decoder.decode(raw.body)
        except (msgspec.DecodeError, RecursionError):  # the long way says what is wrong
            raw = raw.decoded()
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
    an internal error). `create_app` makes a subclass with the limit. Its
    `json()` is what Litestar gives a `StrictJSON` parameter: the body
    undecoded (`RawJSON`)."""

    max_json_depth = 32

    async def body(self) -> bytes:
        try:
            return await super().body()
        except InternalServerException as exc:
            if exc.detail == LITESTAR_DISCONNECT:
                raise ClientDisconnected() from None
            raise

    async def json(self) -> Any:
        """The body for a `StrictJSON` parameter: undecoded, `parse` decodes it."""
        return RawJSON(await self.body(), self)


def request_class(max_json_depth: int) -> type[BoundedRequest]:
    return type("ResvRequest", (BoundedRequest,), {"max_json_depth": max_json_depth})
