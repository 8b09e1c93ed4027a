"""The console's webhook pages: the endpoints (never a secret), one
endpoint's deliveries (filtered by status, paged newest first with the
store's keyset cursor), and a retry per FAILED or PENDING delivery.

Everything goes through resv.notifier.manage's WebhookStore, as
/webhooks does: the retry is `WebhookStore.retry`, the very call of POST
/webhooks/{id}/deliveries/{delivery_id}/retry. Without DATABASE_URL there is
no store, and the pages say that webhooks need the audit database.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from litestar import Controller, Request, get, post
from litestar.params import PathParameter
from litestar.response import Template

from resv.api.console.errors import Refused
from resv.api.console.pages import page, query_text
from resv.api.console.session import PATH, signed_in
from resv.api.services import services
from resv.archiver.reads import AuditUnavailable
from resv.notifier.manage import DELIVERY_STATUSES, WebhookInvalid, WebhookStore, is_unavailable

WEBHOOK_ID = re.compile(r"[!-~]{1,64}")
"""As /webhooks/{webhook_id} accepts; the store says whether it exists."""
CURSOR = re.compile(r"[A-Za-z0-9_\-]{1,200}")
RETRYABLE = ("FAILED", "PENDING")
NO_AUDIT = ("Webhooks need the audit database (PostgreSQL), and this server has no DATABASE_URL. "
            "Set it, run the archiver and the notifier, and register endpoints with POST /webhooks.")

RawId = Annotated[str, PathParameter()]
"""Checked by the handler (_id), so a bad id gets a sentence."""

T = TypeVar("T")


def _id(value: str, what: str) -> str:
    if not WEBHOOK_ID.fullmatch(value):
        raise Refused(400, f"The {what} is not valid.")
    return value


async def _call(awaitable: Awaitable[T]) -> T:
    """The store's failures in the console's terms: PostgreSQL away is the
    audit unavailable (a 503 page), a cursor it did not give a sentence."""
    try:
        return await awaitable
    except WebhookInvalid:
        raise Refused(400, "The page cursor is not valid: go back to the newest deliveries.") from None
    except Exception as exc:
        if is_unavailable(exc):
            raise AuditUnavailable(f"webhooks: {type(exc).__name__}") from exc
        raise


class WebhookPages(Controller):
    path = f"{PATH}/webhooks"
    guards = [signed_in]

    @get("/")
    async def endpoints(self, request: Request[Any, Any, Any]) -> Template:
        store = services(request).webhooks
        if store is None:
            return page(request, "webhooks.html", no_audit=NO_AUDIT, hooks=None)
        return page(request, "webhooks.html", no_audit=None, hooks=await _call(store.list()))

    @get("/{webhook_id:str}")
    async def endpoint(self, request: Request[Any, Any, Any], webhook_id: RawId) -> Template:
        store = services(request).webhooks
        if store is None:
            return page(request, "webhooks.html", no_audit=NO_AUDIT, hooks=None)
        hook_id = _id(webhook_id, "endpoint id")
        status = query_text(request, "status", re.compile("[A-Z]{1,16}"), "status")
        if status is not None and status not in DELIVERY_STATUSES:
            raise Refused(400, f"The status is one of {', '.join(DELIVERY_STATUSES)}.")
        cursor = query_text(request, "cursor", CURSOR, "page cursor")
        hook = await _call(store.get(hook_id))
        deliveries = await _call(store.deliveries(hook_id, status, cursor)) if hook is not None else None
        if hook is None or deliveries is None:
            raise Refused(404, f"There is no webhook endpoint {hook_id}.")
        return page(request, "webhook.html", hook=hook, deliveries=deliveries, filter_status=status or "",
                    statuses=DELIVERY_STATUSES, retryable=RETRYABLE, first_page=cursor is None)

    @post("/{webhook_id:str}/deliveries/{delivery_id:str}/retry")
    async def retry(self, request: Request[Any, Any, Any], webhook_id: RawId, delivery_id: RawId) -> Template:
        """Two steps, as the rule changes: without `confirmed`, a page saying
        what will be retried; with it, WebhookStore.retry (what POST
        /webhooks/{id}/deliveries/{delivery_id}/retry does)."""
        store = _store(request)
        hook_id, did = _id(webhook_id, "endpoint id"), _id(delivery_id, "delivery id")
        form = await request.form()
        hook = await _call(store.get(hook_id))
        if hook is None:
            raise Refused(404, f"There is no webhook endpoint {hook_id}.")
        if form.get("confirmed") != "yes":
            delivery = await _call(store.delivery(hook_id, did))
            if delivery is None:
                raise Refused(404, f"The endpoint {hook_id} has no delivery {did}.")
            if delivery.status not in RETRYABLE:
                raise Refused(409, f"Not retried: the delivery is {delivery.status}; only FAILED and PENDING "
                                   "deliveries are retried.")
            return page(request, "retry.html", hook=hook, delivery=delivery, done=None)
        result = await _call(store.retry(hook_id, did))
        if result == "unknown":
            raise Refused(404, f"The endpoint {hook_id} has no delivery {did}.")
        if result == "final":
            raise Refused(409, "Not retried: the delivery is DELIVERED or CANCELLED now; only FAILED and "
                               "PENDING deliveries are retried.")
        return page(request, "retry.html", hook=hook, delivery=None, delivery_id=did,
                    done=(f"Queued: delivery {did} is PENDING and due now; the notifier attempts it "
                          + ("at once." if hook.enabled else "once the endpoint is enabled again.")))


def _store(request: Request[Any, Any, Any]) -> WebhookStore:
    store = services(request).webhooks
    if store is None:
        raise Refused(503, NO_AUDIT)
    return store
