"""Webhook endpoints and their delivery log (operator keys).

The work is the notifier's (resv.notifier.manage, the only module of it the
API imports): this controller checks the bodies' shapes and maps answers to
statuses. Without DATABASE_URL, or while PostgreSQL is unreachable, every
route answers 503 `UNAVAILABLE`. The secret is in the answers of POST
/webhooks and POST /webhooks/{id}/rotate-secret, nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import PathParameter, QueryParameter
from msgspec import UNSET, Meta, Struct, UnsetType

from resv.api import docs
from resv.api.auth import operator_only
from resv.api.bodies import StrictJSON, parse
from resv.api.errors import ApiError
from resv.api.schemas import ResourceId
from resv.api.services import services
from resv.notifier.manage import (
    PUBLIC_TYPES,
    DeliveryPage,
    Webhook,
    WebhookInvalid,
    WebhookStore,
    is_unavailable,
)

_NO_CONTROL = "^[^\\x00-\\x1f\\x7f]*$"

WebhookUrl = Annotated[str, Meta(min_length=1, max_length=2048, examples=["https://example.com/hooks/resv"],
                                 description="http or https; no credentials; a public address "
                                             "(RESV_WEBHOOK_ALLOW_PRIVATE=1 also allows loopback and private).")]
EventTypeName = Annotated[str, Meta(min_length=1, max_length=64, examples=["waitlist.notified"])]
EventTypes = Annotated[list[EventTypeName], Meta(
    min_length=1, max_length=64, description='Names from GET /webhooks/event-types, or ["*"] for all.')]
ResourceIds = Annotated[list[ResourceId], Meta(
    min_length=1, max_length=1000, description="Only these resources' events; absent or null: every resource.")]
Description = Annotated[str, Meta(max_length=256, pattern=_NO_CONTROL)]

WebhookIdPath = Annotated[str, PathParameter(min_length=1, max_length=64, pattern="^[!-~]{1,64}$")]
DeliveryIdPath = Annotated[str, PathParameter(min_length=1, max_length=64, pattern="^[!-~]{1,64}$")]
StatusQuery = Annotated[Literal["PENDING", "DELIVERED", "FAILED", "CANCELLED"] | None,
                        QueryParameter(required=False, description="Only deliveries with this status.")]
CursorQuery = Annotated[str | None, QueryParameter(
    required=False, max_length=200, description="`next` of the previous page; absent for the first page.")]


class WebhookCreate(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    url: WebhookUrl
    event_types: EventTypes
    resource_ids: ResourceIds | None = None
    description: Description | None = None


class WebhookPatch(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    url: WebhookUrl | UnsetType = UNSET
    event_types: EventTypes | UnsetType = UNSET
    resource_ids: ResourceIds | None | UnsetType = UNSET
    """null: every resource."""
    description: Description | None | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    """false stops deliveries (pending ones wait); true resumes them."""


class WebhookCreated(Struct, frozen=True, kw_only=True):
    webhook_id: str
    url: str
    event_types: list[str]
    resource_ids: list[str] | None
    description: str | None
    enabled: bool
    created_at: str
    secret: str
    """`whsec_...`: verifies the signatures. Shown here and at rotation only."""


class SecretOut(Struct, frozen=True):
    secret: str
    """The new `whsec_...`; for 24 hours deliveries carry the old secret's signature too."""


class WebhookList(Struct, frozen=True):
    webhooks: list[Webhook]


class EventTypeList(Struct, frozen=True):
    event_types: list[str]


def _store(request: Request[Any, Any, Any]) -> WebhookStore:
    store = services(request).webhooks
    if store is None:
        raise ApiError(503, "UNAVAILABLE", headers={"Retry-After": "1"})
    return store


async def _call(awaitable: Any) -> Any:
    try:
        return await awaitable
    except WebhookInvalid as exc:
        raise ApiError(400, "BAD_REQUEST", str(exc)) from None
    except Exception as exc:
        if is_unavailable(exc):
            raise ApiError(503, "UNAVAILABLE", headers={"Retry-After": "1"}) from exc
        raise


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]
    guards = [operator_only]
    security = docs.SECURED

    @get("/event-types", operation_id="listWebhookEventTypes", responses=docs.errors(403))
    async def event_types(self, request: Request[Any, Any, Any]) -> EventTypeList:
        """Every event type a webhook can receive (replays of an earlier
        decision are not delivered)."""
        _store(request)
        return EventTypeList(event_types=list(PUBLIC_TYPES))

    @post(operation_id="createWebhook", status_code=201, responses=docs.errors(400, 403, 413))
    async def create(self, request: Request[Any, Any, Any], data: StrictJSON[WebhookCreate]) -> WebhookCreated:
        """Registers an endpoint; it receives the matching events committed
        from now on. The answer's `secret` is shown this once."""
        store = _store(request)
        body = parse(WebhookCreate, data)
        hook, secret = await _call(store.create(body.url, list(body.event_types), body.resource_ids,
                                                body.description))
        return WebhookCreated(webhook_id=hook.webhook_id, url=hook.url, event_types=hook.event_types,
                              resource_ids=hook.resource_ids, description=hook.description,
                              enabled=hook.enabled, created_at=hook.created_at, secret=secret)

    @get(operation_id="listWebhooks", responses=docs.errors(403))
    async def list_webhooks(self, request: Request[Any, Any, Any]) -> WebhookList:
        return WebhookList(webhooks=await _call(_store(request).list()))

    @get("/{webhook_id:str}", operation_id="getWebhook", responses=docs.errors(400, 403, 404))
    async def get_webhook(self, request: Request[Any, Any, Any], webhook_id: WebhookIdPath) -> Webhook:
        """The endpoint (never its secret); `disabled_reason` says why it is disabled."""
        found = await _call(_store(request).get(webhook_id))
        if found is None:
            raise ApiError(404, "NOT_FOUND")
        return found

    @patch("/{webhook_id:str}", operation_id="updateWebhook", responses=docs.errors(400, 403, 404, 413))
    async def update(self, request: Request[Any, Any, Any], webhook_id: WebhookIdPath,
                     data: StrictJSON[WebhookPatch]) -> Webhook:
        store = _store(request)
        body = parse(WebhookPatch, data)
        changes = {name: getattr(body, name) for name in body.__struct_fields__
                   if getattr(body, name) is not UNSET}
        if not changes:
            raise ApiError(400, "BAD_REQUEST",
                           "body: at least one of url, event_types, resource_ids, description, enabled")
        if "event_types" in changes:
            changes["event_types"] = list(changes["event_types"])
        found = await _call(store.update(webhook_id, changes))
        if found is None:
            raise ApiError(404, "NOT_FOUND")
        return found

    @delete("/{webhook_id:str}", operation_id="deleteWebhook", status_code=204,
            responses=docs.errors(400, 403, 404))
    async def remove(self, request: Request[Any, Any, Any], webhook_id: WebhookIdPath) -> None:
        """Deletes the endpoint; its pending deliveries end CANCELLED."""
        if not await _call(_store(request).delete(webhook_id)):
            raise ApiError(404, "NOT_FOUND")

    @post("/{webhook_id:str}/rotate-secret", operation_id="rotateWebhookSecret", status_code=200,
          responses=docs.errors(400, 403, 404))
    async def rotate(self, request: Request[Any, Any, Any], webhook_id: WebhookIdPath) -> SecretOut:
        """A new secret. For 24 hours every delivery carries two signatures
        in webhook-signature: the new secret's and the old one's."""
        secret = await _call(_store(request).rotate(webhook_id))
        if secret is None:
            raise ApiError(404, "NOT_FOUND")
        return SecretOut(secret=secret)

    @post("/{webhook_id:str}/test", operation_id="testWebhook", status_code=202,
          responses=docs.errors(400, 403, 404))
    async def send_test(self, request: Request[Any, Any, Any], webhook_id: WebhookIdPath) -> Response[None]:
        """Delivers a `webhook.test` event now (once the endpoint is enabled)."""
        if not await _call(_store(request).send_test(webhook_id)):
            raise ApiError(404, "NOT_FOUND")
        return Response(None, status_code=202)

    @get("/{webhook_id:str}/deliveries", operation_id="listWebhookDeliveries", responses=docs.errors(400, 403, 404))
    async def deliveries(self, request: Request[Any, Any, Any], webhook_id: WebhookIdPath,
                         status: StatusQuery = None, cursor: CursorQuery = None) -> DeliveryPage:
        """The endpoint's deliveries, newest first, 100 a page."""
        page = await _call(_store(request).deliveries(webhook_id, status, cursor))
        if page is None:
            raise ApiError(404, "NOT_FOUND")
        return page

    @post("/{webhook_id:str}/deliveries/{delivery_id:str}/retry", operation_id="retryWebhookDelivery",
          status_code=202, responses=docs.errors(400, 403, 404, conflict="The delivery is DELIVERED or "
                                                                          "CANCELLED (`INVALID_STATE`)."))
    async def retry(self, request: Request[Any, Any, Any], webhook_id: WebhookIdPath,
                    delivery_id: DeliveryIdPath) -> Response[None]:
        """A FAILED or PENDING delivery is attempted now."""
        result = await _call(_store(request).retry(webhook_id, delivery_id))
        if result == "unknown":
            raise ApiError(404, "NOT_FOUND")
        if result == "final":
            raise ApiError(409, "INVALID_STATE")
        return Response(None, status_code=202)
