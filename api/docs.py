"""The OpenAPI document: served by Litestar at /schema and /schema/openapi.json.

Handlers declare their typed bodies and an operation id; this module adds the
bearer security scheme and the documented error responses, so the document is
the contract.

The page at /schema is Redoc, served from the package (api/static/, a pinned
release copied from its npm package: see api/static/README.md), so it works
offline and never changes under us; no asset is loaded from elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import RedocRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Parameter,
    Reference,
    Schema,
    SecurityScheme,
    Tag,
)
from litestar.static_files import create_static_files_router
from msgspec import Struct

from resv.api import schemas as schemas_module
from resv.api.auth import PUBLIC
from resv.api.schemas import ErrorBody, Rejection

BEARER = "bearerAuth"
SECURED: list[dict[str, list[str]]] = [{BEARER: []}]
"""`security` of every route that needs a key."""

_ERRORS: dict[int, str] = {
    400: "Malformed request: `detail` names the field, parameter or header and the rule it broke.",
    401: "Missing or unknown API key (`UNAUTHORIZED`).",
    403: "The key's role may not call this route (`FORBIDDEN`).",
    404: "No such thing (`NOT_FOUND`).",
    412: "If-Match names a version that is no longer current (`VERSION_MISMATCH`).",
    413: "Request body over the size limit (`PAYLOAD_TOO_LARGE`).",
    422: "This Idempotency-Key was already used on this resource with another body (`IDEMPOTENCY_KEY_REUSED`).",
    428: "If-Match is required (`PRECONDITION_REQUIRED`).",
    429: "Too many requests for this API key; see Retry-After (`RATE_LIMITED`).",
    503: "Redis is unreachable or out of memory; safe to retry (`UNAVAILABLE`).",
}


def errors(*statuses: int, conflict: str | None = None, rejection: str | None = None) -> dict[int, ResponseSpec]:
    """Response specs for the error statuses a route can answer. Every route
    that needs a key can also answer 401, 429 and 503."""
    specs = {
        status: ResponseSpec(data_container=ErrorBody, description=_ERRORS[status], generate_examples=False)
        for status in sorted({*statuses, 401, 429, 503})
    }
    if rejection is not None:
        specs[409] = ResponseSpec(data_container=Rejection, description=rejection, generate_examples=False)
    elif conflict is not None:
        specs[409] = ResponseSpec(data_container=ErrorBody, description=conflict, generate_examples=False)
    return specs


REQUIRED_HEADERS = frozenset({"If-Match"})
"""Headers Litestar takes as optional (so that their absence is our 428, not
its 400) but without which the operation cannot succeed."""


MIN_ONE_FIELD = frozenset({"ResourcePatch"})
"""Bodies that must name at least one field."""


def finish_document(app: Litestar) -> None:
    """Start-up hook: what the API enforces and Litestar does not write into
    the document. Request bodies refuse unknown fields (`additionalProperties:
    false`, PATCH at least one field); a header is a string, never null;
    If-Match is required."""
    document = app.openapi_schema
    document_every_status(document)
    for name, schema in (document.components.schemas or {}).items():
        struct = getattr(schemas_module, name, None)
        if isinstance(struct, type) and issubclass(struct, Struct) and struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        if name in MIN_ONE_FIELD:
            schema.min_properties = 1
    for item in (document.paths or {}).values():
        for operation in (item.get, item.post, item.patch, item.delete, item.put):
            for parameter in (operation.parameters or []) if operation else []:
                if not isinstance(parameter, Parameter) or parameter.param_in != "header":
                    continue
                schema = parameter.schema
                if isinstance(schema, Schema) and schema.one_of:
                    kept = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == OpenAPIType.NULL)]
                    if len(kept) == 1 and isinstance(kept[0], Schema):
                        schema.type, schema.one_of = kept[0].type, None
                if parameter.name in REQUIRED_HEADERS:
                    parameter.required = True


STATIC = Path(__file__).resolve().parent / "static"
REDOC_VERSION = "2.5.4"
"""The vendored Redoc release (api/static/redoc-<version>/)."""
ASSETS_PATH = "/schema/assets"


def assets_router() -> Router:
    """The page's assets, from the package; public, like the document."""
    return create_static_files_router(path=ASSETS_PATH, directories=[STATIC], opt={PUBLIC: True},
                                      include_in_schema=False, send_as_attachment=False)


INTERNAL = "Unexpected failure (`INTERNAL`); the operator log has the details."


def document_every_status(document) -> None:
    """Statuses every route can answer that no handler declares: 500. Added
    as a reference-free response so the document lists every status."""
    for item in (document.paths or {}).values():
        for operation in (item.get, item.post, item.patch, item.delete, item.put):
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            if "500" not in responses:
                responses["500"] = OpenAPIResponse(description=INTERNAL, content={
                    "application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/ErrorBody"))})
            operation.responses = responses


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="resv",
        version=version,
        description=(
            "Strongly consistent reservations. Every decision is taken by the engine on the real "
            "state at server time; times are ISO-8601 UTC with microseconds. Every route except "
            "/health, /ready and this document needs `Authorization: Bearer <key>`; operator keys "
            "may call every client route. At the connection, before any key is checked: a request "
            "line and headers over RESV_MAX_HEADER_BYTES get 431 (`HEADERS_TOO_LARGE`) and a closed "
            "connection; a request not complete within RESV_HEADER_TIMEOUT_S (head) or "
            "RESV_BODY_TIMEOUT_S (body) is closed."
        ),
        path="/schema",
        render_plugins=[RedocRenderPlugin(
            js_url=f"{ASSETS_PATH}/redoc-{REDOC_VERSION}/redoc.standalone.js",
            google_fonts=False, favicon="", path="/redoc")],
        # the document is public: its routes skip the key check
        openapi_router=Router(path="/schema", route_handlers=[], opt={PUBLIC: True}, include_in_schema=False),
        components=Components(security_schemes={
            BEARER: SecurityScheme(type="http", scheme="bearer",
                                   description="An API key from RESV_API_KEYS (role client or operator).")
        }),
        tags=[
            Tag(name="clients",
                description="Availability, reservations and the waiting list (client or operator key)."),
            Tag(name="operators", description="Resources: creation and rules (operator key)."),
            Tag(name="operations", description="Health, readiness and metrics."),
        ],
        create_examples=False,
        use_handler_docstrings=True,
    )
