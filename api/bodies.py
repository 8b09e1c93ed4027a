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
from litestar.enums import RequestEncodingType
from litestar.params import BodyKwarg, SkipValidationMarker

from resv.api.errors import ApiError, rule_message

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
