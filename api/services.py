"""What handlers work with, built once per app by its lifespan.

Handlers reach it as `services(request)`; the app keeps it in its state, so a
test can build the app with its own engine or settings (`api.app.create_app`).
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from resv.api.auth import KeyRing
from resv.api.cache import AvailabilityCache
from resv.api.deadline import Deadline
from resv.api.settings import ApiSettings
from resv.archiver.reads import AuditReader
from resv.engine import Engine
from resv.notifier.manage import WebhookStore


class Services:
    def __init__(self, settings: ApiSettings, engine: Engine, audit: AuditReader,
                 webhooks: WebhookStore | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.keyring = KeyRing(settings.api_keys, insecure_no_auth=settings.insecure_no_auth)
        """Who a caller is, on routes the key check skips (/ready's details)."""
        self.audit = audit
        """The audit's read side for the operator routes (resv.archiver.reads)."""
        self.webhooks = webhooks
        """Webhook endpoints and deliveries (resv.notifier.manage), on the
        audit's pool; None without DATABASE_URL."""
        self.deadline = Deadline(settings.request_deadline_s)
        self.within_deadline = self.deadline.run
        """Awaits an engine call for at most the request deadline (503 past it)."""
        self.availability = AvailabilityCache(
            engine.resource, ttl_ms=settings.availability_ttl_ms, deadline=self.deadline
        )


def services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services
