"""Webhook endpoints and their delivery log: the one module of the notifier
the API uses (as it reads the audit through resv.archiver.reads).

A WebhookStore works on the audit's PostgreSQL pool. It validates what only
it can (URLs and their addresses, event type names) and raises
WebhookInvalid naming the field; the shapes of bodies are the API's. The
secret leaves it only in what `create` and `rotate` return; `Webhook` has no
field for it, so no GET can show it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from resv.archiver.store import EVENTS_CHANNEL
from resv.notifier import events
from resv.notifier.addresses import UrlRefused, checked_address, parse_url
from resv.notifier.settings import NotifierSettings
from resv.notifier.signing import ROTATION_OVERLAP_S, new_secret

__all__ = [
    "DELIVERY_STATUSES",
    "EVERY_TYPE",
    "PAGE_SIZE",
    "PUBLIC_TYPES",
    "Delivery",
    "DeliveryPage",
    "NotifierSettings",
    "Webhook",
    "WebhookInvalid",
    "WebhookStore",
    "is_unavailable",
]

PUBLIC_TYPES = events.PUBLIC_TYPES
EVERY_TYPE = events.EVERY_TYPE
DELIVERY_STATUSES = ("PENDING", "DELIVERED", "FAILED", "CANCELLED")
PAGE_SIZE = 100
RESOLVE_TIMEOUT_S = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WebhookInvalid(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: str
    url: str
    event_types: list[str]
    resource_ids: list[str] | None
    """null: every resource."""
    description: str | None
    enabled: bool
    disabled_reason: str | None
    """Why the endpoint is disabled (an operator, or its 410 Gone); null when enabled."""
    created_at: str


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    """The webhook-id header of its every attempt."""
    event_type: str
    stream_id: str | None
    resource_id: str | None
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None
    """When it is attempted next (PENDING only)."""
    delivered_at: str | None
    created_at: str


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    deliveries: list[Delivery]
    next: str | None
    """Pass as `cursor` for the next page (older deliveries); null on the last page."""


_COLUMNS = "webhook_id, url, event_types, resource_ids, description, enabled, disabled_reason, created_at"
_DELIVERY_COLUMNS = ("delivery_id, event_type, stream_id, resource_id, status, attempts, last_status_code, "
                     "last_error, next_attempt_at, delivered_at, created_at")


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _webhook(row: tuple[Any, ...]) -> Webhook:
    webhook_id, url, types, resources, description, enabled, reason, created_at = row
    return Webhook(webhook_id=webhook_id, url=url, event_types=list(types),
                   resource_ids=list(resources) if resources is not None else None,
                   description=description, enabled=enabled, disabled_reason=reason,
                   created_at=iso(created_at) or "")


def _delivery(row: tuple[Any, ...]) -> Delivery:
    (delivery_id, event_type, stream_id, resource_id, status, attempts, code, error, next_at,
     delivered_at, created_at) = row
    return Delivery(delivery_id=delivery_id, event_type=event_type, stream_id=stream_id,
                    resource_id=resource_id, status=status, attempts=attempts, last_status_code=code,
                    last_error=error, next_attempt_at=iso(next_at) if status == "PENDING" else None,
                    delivered_at=iso(delivered_at), created_at=iso(created_at) or "")


class WebhookStore:
    def __init__(self, pool: AsyncConnectionPool, settings: NotifierSettings | None = None) -> None:
        self.pool = pool
        self.settings = settings or NotifierSettings.from_env()

    # --------------------------------------------------------- validation

    async def check_url(self, url: str) -> None:
        """Raises WebhookInvalid unless the URL may be an endpoint now."""
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                await checked_address(parse_url(url), allow_private=self.settings.allow_private)
        except UrlRefused as exc:
            raise WebhookInvalid("url", str(exc)) from None
        except TimeoutError:
            raise WebhookInvalid("url", "the host name did not resolve in time") from None

    @staticmethod
    def check_event_types(types: list[str]) -> list[str]:
        if not types:
            raise WebhookInvalid("event_types", "at least one event type, or [\"*\"] for all")
        if EVERY_TYPE in types:
            if len(types) > 1:
                raise WebhookInvalid("event_types", '"*" stands alone')
            return [EVERY_TYPE]
        unknown = [t for t in types if t not in PUBLIC_TYPES]
        if unknown:
            shown = unknown[0] if len(unknown[0]) <= 64 else unknown[0][:64] + "..."
            raise WebhookInvalid("event_types", f"unknown event type {shown!r} (GET /webhooks/event-types)")
        return list(dict.fromkeys(types))

    # ------------------------------------------------------------- writes

    async def create(self, url: str, event_types: list[str], resource_ids: list[str] | None,
                     description: str | None) -> tuple[Webhook, str]:
        types = self.check_event_types(event_types)
        await self.check_url(url)
        webhook_id = "wh_" + base64.b32encode(secrets.token_bytes(10)).decode().lower()
        secret = new_secret()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""INSERT INTO webhooks (webhook_id, url, event_types, resource_ids, description, secret)
                    VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
                (webhook_id, url, types, _unique(resource_ids), description, secret))
            row = await cur.fetchone()
        assert row is not None
        return _webhook(row), secret

    async def update(self, webhook_id: str, changes: dict[str, Any]) -> Webhook | None:
        """changes: any of url, event_types, resource_ids (None: all),
        description, enabled. None when there is no such endpoint."""
        sets: list[str] = []
        values: list[Any] = []
        if "url" in changes:
            await self.check_url(changes["url"])
            sets.append("url = %s")
            values.append(changes["url"])
        if "event_types" in changes:
            sets.append("event_types = %s")
            values.append(self.check_event_types(changes["event_types"]))
        if "resource_ids" in changes:
            sets.append("resource_ids = %s")
            values.append(_unique(changes["resource_ids"]))
        if "description" in changes:
            sets.append("description = %s")
            values.append(changes["description"])
        if "enabled" in changes:
            sets.append("enabled = %s, disabled_reason = %s")
            values += [changes["enabled"], None if changes["enabled"] else "disabled by an operator"]
        sets.append("updated_at = now()")
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"UPDATE webhooks SET {', '.join(sets)} WHERE webhook_id = %s AND deleted_at IS NULL "
                f"RETURNING {_COLUMNS}", (*values, webhook_id))
            row = await cur.fetchone()
            if row is not None and changes.get("enabled"):
                await conn.execute(f"NOTIFY {EVENTS_CHANNEL}")
        return _webhook(row) if row is not None else None

    async def delete(self, webhook_id: str) -> bool:
        """Deletes the endpoint (its secrets are forgotten); its pending
        deliveries end CANCELLED. The delivery log stays in the database until
        retention deletes it (and then the endpoint's row: retention.py)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """UPDATE webhooks SET deleted_at = now(), enabled = false, secret = '',
                                       previous_secret = NULL, previous_secret_until = NULL,
                                       owner = NULL, owner_until = NULL
                   WHERE webhook_id = %s AND deleted_at IS NULL RETURNING 1""", (webhook_id,))
            if await cur.fetchone() is None:
                return False
            await conn.execute(
                """UPDATE webhook_deliveries SET status = 'CANCELLED', last_error = 'endpoint deleted',
                                                 lease_until = NULL
                   WHERE webhook_id = %s AND status = 'PENDING'""", (webhook_id,))
        return True

    async def rotate(self, webhook_id: str) -> str | None:
        """A new secret; the current one keeps signing too for 24 hours."""
        secret = new_secret()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """UPDATE webhooks SET previous_secret = secret, secret = %s,
                                       previous_secret_until = now() + make_interval(secs => %s),
                                       updated_at = now()
                   WHERE webhook_id = %s AND deleted_at IS NULL RETURNING 1""",
                (secret, ROTATION_OVERLAP_S, webhook_id))
            found = await cur.fetchone()
        return secret if found is not None else None

    async def send_test(self, webhook_id: str) -> bool:
        """Queues a webhook.test delivery, due now; False for no such endpoint."""
        now = datetime.now(UTC)
        payload = {"type": events.TEST_TYPE, "timestamp": iso(now), "data": {"webhook_id": webhook_id}}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """INSERT INTO webhook_deliveries (webhook_id, event_type, payload, ms, seq)
                   SELECT webhook_id, %s, %s, %s, 0 FROM webhooks
                   WHERE webhook_id = %s AND deleted_at IS NULL RETURNING 1""",
                (events.TEST_TYPE, Jsonb(payload), int(now.timestamp() * 1000), webhook_id))
            found = await cur.fetchone()
            if found is not None:
                await conn.execute(f"NOTIFY {EVENTS_CHANNEL}")
        return found is not None

    async def retry(self, webhook_id: str, delivery_id: str) -> str:
        """`queued`, `unknown` (no such endpoint or delivery) or `final`
        (DELIVERED or CANCELLED: nothing to retry)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """UPDATE webhook_deliveries d SET status = 'PENDING', next_attempt_at = now()
                   FROM webhooks w
                   WHERE d.webhook_id = w.webhook_id AND w.deleted_at IS NULL AND w.webhook_id = %s
                     AND d.delivery_id = %s AND d.status IN ('PENDING', 'FAILED')
                   RETURNING 1""", (webhook_id, delivery_id))
            if await cur.fetchone() is not None:
                await conn.execute(f"NOTIFY {EVENTS_CHANNEL}")
                return "queued"
            cur = await conn.execute(
                """SELECT 1 FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
                   WHERE w.webhook_id = %s AND w.deleted_at IS NULL AND d.delivery_id = %s""",
                (webhook_id, delivery_id))
            return "final" if await cur.fetchone() is not None else "unknown"

    # -------------------------------------------------------------- reads

    async def list(self) -> list[Webhook]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM webhooks WHERE deleted_at IS NULL ORDER BY created_at, webhook_id")
            return [_webhook(row) for row in await cur.fetchall()]

    async def get(self, webhook_id: str) -> Webhook | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM webhooks WHERE webhook_id = %s AND deleted_at IS NULL", (webhook_id,))
            row = await cur.fetchone()
        return _webhook(row) if row is not None else None

    async def delivery(self, webhook_id: str, delivery_id: str) -> Delivery | None:
        """One delivery of a (not deleted) endpoint; None when there is none."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""SELECT {', '.join('d.' + c for c in _DELIVERY_COLUMNS.split(', '))}
                    FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
                    WHERE w.webhook_id = %s AND w.deleted_at IS NULL AND d.delivery_id = %s""",
                (webhook_id, delivery_id))
            row = await cur.fetchone()
        return _delivery(row) if row is not None else None

    async def deliveries(self, webhook_id: str, status: str | None = None,
                         cursor: str | None = None) -> DeliveryPage | None:
        """Newest first, PAGE_SIZE a page. None for no such endpoint.
        Raises WebhookInvalid("cursor", ...) for a cursor it did not give."""
        after = _decode_cursor(cursor) if cursor else None
        where = ["webhook_id = %s"]
        values: list[Any] = [webhook_id]
        if status is not None:
            where.append("status = %s")
            values.append(status)
        if after is not None:
            where.append("(created_at, delivery_id) < (%s, %s)")
            values += list(after)
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM webhooks WHERE webhook_id = %s AND deleted_at IS NULL",
                                     (webhook_id,))
            if await cur.fetchone() is None:
                return None
            cur = await conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {' AND '.join(where)} "
                f"ORDER BY created_at DESC, delivery_id DESC LIMIT {PAGE_SIZE + 1}", values)
            rows = await cur.fetchall()
        page = [_delivery(r) for r in rows[:PAGE_SIZE]]
        more = len(rows) > PAGE_SIZE
        last = rows[PAGE_SIZE - 1] if more else None
        return DeliveryPage(deliveries=page, next=_encode_cursor(last[-1], last[0]) if last else None)

    async def metrics(self) -> dict[str, Any]:
        """What /metrics shows, computed from PostgreSQL now."""
        async with self.pool.connection() as conn:
            # The rows there and those retention deleted (webhook_delivery_totals),
            # in one statement: one snapshot, so a prune between reads counts nothing twice.
            cur = await conn.execute(
                """SELECT status, sum(n), sum(tries) FROM (
                       SELECT status, count(*) AS n, coalesce(sum(attempts), 0) AS tries
                       FROM webhook_deliveries GROUP BY status
                       UNION ALL
                       SELECT status, deliveries, attempts FROM webhook_delivery_totals) AS both_
                   GROUP BY status""")
            by_status = {status: (int(n), int(attempts)) for status, n, attempts in await cur.fetchall()}
            cur = await conn.execute(
                "SELECT count(*), extract(epoch FROM now() - min(created_at)) FROM webhook_deliveries "
                "WHERE status = 'PENDING'")
            pending, oldest = await cur.fetchone() or (0, None)
            cur = await conn.execute(
                """SELECT count(*),
                          percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (
                              ORDER BY extract(epoch FROM delivered_at - decided_at))
                   FROM webhook_deliveries
                   WHERE delivered_at > now() - interval '5 minutes' AND decided_at IS NOT NULL""")
            recent, quantiles = await cur.fetchone() or (0, None)
            cur = await conn.execute(
                "SELECT enabled, count(*) FROM webhooks WHERE deleted_at IS NULL GROUP BY enabled")
            endpoints = dict(await cur.fetchall())
        return {
            "by_status": {s: by_status.get(s, (0, 0)) for s in DELIVERY_STATUSES},
            "pending": pending,
            "oldest_pending_s": float(oldest) if oldest is not None else 0.0,
            "latency_recent": recent,
            "latency_quantiles": dict(zip((0.5, 0.9, 0.99), quantiles or (), strict=False)),
            "endpoints": {"enabled": endpoints.get(True, 0), "disabled": endpoints.get(False, 0)},
        }


def is_unavailable(exc: BaseException) -> bool:
    """Whether a failure means PostgreSQL cannot answer now (503), as
    opposed to a bug. A schema not migrated yet counts: the archiver or the
    notifier applies it when it starts."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.errors.UndefinedTable, PoolTimeout, OSError))


def _unique(values: list[str] | None) -> list[str] | None:
    return list(dict.fromkeys(values)) if values is not None else None


def _encode_cursor(created_at: datetime, delivery_id: str) -> str:
    us = (created_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{us}:{delivery_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        us, _, delivery_id = raw.partition(":")
        if not delivery_id.startswith("msg_"):
            raise ValueError
        return _EPOCH + timedelta(microseconds=int(us)), delivery_id
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise WebhookInvalid("query parameter cursor", "not a cursor from a previous page") from None
