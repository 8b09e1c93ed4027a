"""The console's pages: sign-in, resources, one resource (state, waiting
list, timeline, pictures, actions), a request's story.

Reads go to the engine (the live state, the waiting list) and to the audit
(resv.archiver.reads: timelines, the resources projection). Changes go to
the engine with the version the page showed, after a confirmation page.
Inputs are checked here and answered in words; nothing from Redis, Lua or
PostgreSQL reaches a page (api/console/errors.py).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from resv.api.console import pictures
from resv.api.console.errors import Refused
from resv.api.console.session import PATH, signed_in
from resv.api.services import services
from resv.api.times import iso_or_none, us_from_datetime
from resv.archiver.reads import OUTCOMES, TimelineEvent, TimelineFilter
from resv.engine.types import Resource

RESOURCE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PRINTABLE_ID = re.compile(r"[!-~]{1,128}")
TYPE_NAME = re.compile(r"[A-Z_]{1,40}")
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
PAGE_SIZES = (50, 100, 200, 500, 1000)
PICTURE_WINDOW = 5000
"""The pictures cover the resource's newest decisions, this many at most."""
MAX_INT = 1_000_000_000

RawResourceId = Annotated[str, PathParameter()]
"""Checked by the handler (_resource_id), so a bad id gets a sentence."""


def query_text(request: Request[Any, Any, Any], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = (request.query_params.get(name) or "").strip()
    if not value:
        return None
    if not pattern.fullmatch(value):
        raise Refused(400, f"The {what} is not valid.")
    return value


def _resource_id(value: str) -> str:
    if not RESOURCE_ID.fullmatch(value):
        raise Refused(400, "A resource id is 1 to 64 letters, digits, '_', '.' or '-'.")
    return value


def _me(request: Request[Any, Any, Any]) -> str:
    return request.scope["console_principal"].key_id  # type: ignore[typeddict-item]


def page(request: Request[Any, Any, Any], name: str, status: int = 200, **context: Any) -> Template:
    return Template(template_name=name, context={"me": _me(request), "base": PATH, **context},
                    status_code=status)


class SignInController(Controller):
    """The sign-in form and its POST (rate-limited: api/console/__init__.py)."""

    path = PATH

    @get("/sign-in", name="console-sign-in")
    async def sign_in_form(self, request: Request[Any, Any, Any]) -> Template:
        return Template(template_name="sign_in.html", context={"base": PATH, "next": _next(request), "me": None})

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await request.form()
        session = request.app.state.console_sessions.sign_in(str(form.get("key") or "").strip())
        if session is None:
            return Template(template_name="sign_in.html", status_code=401, context={
                "base": PATH, "me": None, "next": _safe_next(str(form.get("next") or "")),
                "refused": "That is not an operator key of this server. The console signs in with an operator key only.",
            })
        request.set_session(session)
        return Redirect(_safe_next(str(form.get("next") or "")) or f"{PATH}/resources", status_code=303)


def _next(request: Request[Any, Any, Any]) -> str:
    return _safe_next(request.query_params.get("next") or "")


def _safe_next(value: str) -> str:
    """Only a console path: never a redirect to another site."""
    return value if value.startswith(PATH + "/") and "//" not in value and "\\" not in value \
        and len(value) < 2000 else ""


class ConsoleController(Controller):
    path = PATH
    guards = [signed_in]

    @get("/", name="console-home")
    async def home(self) -> Redirect:
        return Redirect(f"{PATH}/resources")

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request[Any, Any, Any]) -> Redirect:
        request.clear_session()
        return Redirect(f"{PATH}/sign-in", status_code=303)

    # ------------------------------------------------------------ resources

    @get("/resources")
    async def resources(self, request: Request[Any, Any, Any]) -> Response[Any]:
        svc = services(request)
        wanted = query_text(request, "id", RESOURCE_ID, "resource id")
        if wanted is not None:
            if await svc.within_deadline(svc.engine.resource(wanted)) is not None:
                return Redirect(f"{PATH}/resources/{wanted}")
            return page(request, "resources.html", 404, listing=None, query={}, missing=wanted)
        search = query_text(request, "q", RESOURCE_ID, "search text")
        kind = query_text(request, "type", PRINTABLE_ID, "type")
        after = query_text(request, "after", RESOURCE_ID, "page cursor")
        listing = await svc.audit.resources(search=search, type_=kind, after=after, limit=50)
        return page(request, "resources.html", listing=listing,
                    query={"q": search or "", "type": kind or ""}, has_audit=svc.audit.has_audit)

    # ------------------------------------------------------------- resource

    @get("/resources/{resource_id:str}")
    async def resource(self, request: Request[Any, Any, Any], resource_id: RawResourceId) -> Template:
        svc = services(request)
        rid = _resource_id(resource_id)
        found = await svc.within_deadline(svc.engine.resource(rid))
        if found is None:
            raise Refused(404, f"There is no resource {rid}.")
        where, query = _filters(request)
        limit = _limit(request)
        after = query_text(request, "after", STREAM_ID, "page cursor")
        before = query_text(request, "before", STREAM_ID, "page cursor")
        slice_ = await svc.audit.timeline_slice(rid, after=after, before=before, limit=limit, where=where)
        recent = await svc.audit.timeline_slice(rid, limit=PICTURE_WINDOW)
        waiting = await svc.within_deadline(svc.engine.waiting_list(rid, count=100))
        notified = await svc.audit.notified_entries(rid) if found.waitlist_enabled else None
        events = slice_.events
        return page(
            request, "resource.html",
            r=found, rules=_rules(found), groups=groups(events), slice=slice_, query=query, limit=limit,
            page_sizes=PAGE_SIZES, outcomes=OUTCOMES, types=_types(),
            first_id=events[0].stream_id if events else None,
            last_id=events[-1].stream_id if events else None,
            live=not slice_.has_newer,
            waiting=waiting, notified=notified,
            recent_count=len(recent.events),
            period=(iso_or_none(recent.events[0].ts), iso_or_none(recent.events[-1].ts)) if recent.events else None,
            picture_remaining=pictures.remaining_over_time(recent.events, found.capacity),
            picture_rate=pictures.decisions_per_second(recent.events),
            picture_reasons=pictures.refusal_reasons(recent.events),
        )

    @get("/resources/{resource_id:str}/tail")
    async def tail(self, request: Request[Any, Any, Any], resource_id: RawResourceId) -> Response[Any]:
        """Rows after `after`, for the live tail (the page polls it)."""
        svc = services(request)
        rid = _resource_id(resource_id)
        after = query_text(request, "after", STREAM_ID, "page cursor") or "0-0"
        where, _ = _filters(request)
        slice_ = await svc.audit.timeline_slice(rid, after=after, limit=200, where=where)
        template = request.app.template_engine.get_template("rows.html")
        html = template.render(groups=groups(slice_.events), base=PATH)
        last = slice_.events[-1].stream_id if slice_.events else after
        return Response({"rows": html, "last": last, "count": len(slice_.events), "more": slice_.has_newer})

    # --------------------------------------------------------------- actions

    @post("/resources/{resource_id:str}/change")
    async def change(self, request: Request[Any, Any, Any], resource_id: RawResourceId) -> Template:
        """Two steps: without `confirmed`, a page saying what would change;
        with it, the one engine call, sent with the page's version."""
        svc = services(request)
        rid = _resource_id(resource_id)
        form = await request.form()
        action = str(form.get("action") or "")
        version = _form_int(form, "version", 1, 10**10, "version")
        if version is None:
            raise Refused(400, "The form did not say which version it showed. Reload the page.")
        current = await svc.within_deadline(svc.engine.resource(rid))
        if current is None:
            raise Refused(404, f"There is no resource {rid}.")
        if action in ("open", "close"):
            changes: dict[str, Any] = {}
            summary = [("state", current.state, "OPEN" if action == "open" else "CLOSED")]
        elif action == "rules":
            changes, summary = _rule_changes(form, current)
            if not changes:
                raise Refused(400, "Nothing to change: the values are the ones the resource has.")
        else:
            raise Refused(400, "Unknown action.")
        fields = {k: str(v) for k, v in form.items() if k not in ("_csrf_token", "confirmed")}
        if form.get("confirmed") != "yes":
            return page(request, "confirm.html", r=current, rid=rid, action=action, version=version,
                        summary=summary, fields=fields)
        if action == "open":
            decision = await svc.within_deadline(svc.engine.open(rid, version))
        elif action == "close":
            decision = await svc.within_deadline(svc.engine.close(rid, version))
        else:
            decision = await svc.within_deadline(svc.engine.configure(rid, version, changes))
        if decision.decision == "CONFIRMED":
            return page(request, "outcome.html", rid=rid, ok=True, decision=decision,
                        message=f"Done: {decision.type}, the resource is at version {decision.version} now.")
        return page(request, "outcome.html", 409, rid=rid, ok=False, decision=decision,
                    message=refusal_in_words(decision.reason, version, decision.version, changes, current))

    # ------------------------------------------------------------ a request

    @get("/requests")
    async def request_story(self, request: Request[Any, Any, Any]) -> Template:
        svc = services(request)
        request_id = query_text(request, "request_id", PRINTABLE_ID, "request id")
        rid = query_text(request, "resource_id", RESOURCE_ID, "resource id")
        story = None
        if request_id:
            story = await svc.audit.request_decisions(request_id, resource_id=rid)
        return page(request, "request.html", request_id=request_id or "", resource_id=rid or "", story=story)


# ------------------------------------------------------------------ helpers


class Group:
    """Consecutive timeline events decided in the same millisecond of server time."""

    def __init__(self, ms: int | None, events: list[TimelineEvent]) -> None:
        self.ms = ms
        self.events = events


def groups(events: list[TimelineEvent]) -> list[Group]:
    out: list[Group] = []
    for e in events:
        ms = e.ts // 1000 if e.ts is not None else None
        if out and out[-1].ms == ms and ms is not None:
            out[-1].events.append(e)
        else:
            out.append(Group(ms, [e]))
    return out


def _filters(request: Request[Any, Any, Any]) -> tuple[TimelineFilter, dict[str, str]]:
    client = query_text(request, "client_id", PRINTABLE_ID, "client id")
    rid = query_text(request, "request_id", PRINTABLE_ID, "request id")
    kind = query_text(request, "type", TYPE_NAME, "event type")
    outcome = query_text(request, "outcome", TYPE_NAME, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise Refused(400, "The outcome is CONFIRMED or REJECTED.")
    query = {k: v for k, v in (("client_id", client), ("request_id", rid), ("type", kind),
                               ("outcome", outcome)) if v}
    return TimelineFilter(client_id=client, request_id=rid, type=kind, outcome=outcome), query


def _limit(request: Request[Any, Any, Any]) -> int:
    raw = request.query_params.get("limit") or "100"
    if not raw.isdigit() or int(raw) not in PAGE_SIZES:
        raise Refused(400, f"Rows per page: one of {', '.join(map(str, PAGE_SIZES))}.")
    return int(raw)


def _types() -> list[str]:
    return sorted(KNOWN_TYPES)


KNOWN_TYPES = (
    "RESOURCE_CREATED", "RESOURCE_REJECTED", "RULES_CHANGED", "RULES_REJECTED",
    "RESERVATION_CONFIRMED", "RESERVATION_REJECTED", "RESERVATION_REPLAYED",
    "RESERVATION_CANCELLED", "CANCEL_REJECTED", "CANCEL_REPLAYED",
    "WAITLIST_JOINED", "WAITLIST_JOIN_REPLAYED", "WAITLIST_REJECTED", "WAITLIST_LEFT",
    "WAITLIST_LEAVE_REJECTED", "WAITLIST_NOTIFIED", "WAITLIST_FULFILLED",
)


def _rules(r: Resource) -> list[tuple[str, Any]]:
    return [
        ("type", r.resource_type),
        ("capacity", r.capacity),
        ("state", r.state),
        ("waiting list", "enabled" if r.waitlist_enabled else "disabled"),
        ("max per request", r.max_per_request if r.max_per_request is not None else "no limit"),
        ("max per client", r.max_per_client if r.max_per_client is not None else "no limit"),
    ]


RULE_INPUTS = ("capacity", "max_per_request", "max_per_client")


def _form_int(form: Any, name: str, low: int, high: int, label: str) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Refused(400, f"The {label} must be a whole number from {low} to {high}.")
    return int(raw)


def _form_time(form: Any, name: str, label: str) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise Refused(400, f"The {label} must be a time in UTC such as 2026-12-24T18:00:00Z, or empty.")
    return us_from_datetime(moment)


def _rule_changes(form: Any, r: Resource) -> tuple[dict[str, Any], list[tuple[str, Any, Any]]]:
    """What the form changes against the resource as it is now: rule -> value
    for the engine, and (rule, from, to) lines for the confirmation."""
    wanted: dict[str, Any] = {
        "capacity": _form_int(form, "capacity", 0, MAX_INT, "capacity"),
        "max_per_request": _form_int(form, "max_per_request", 1, MAX_INT, "limit per request"),
        "max_per_client": _form_int(form, "max_per_client", 1, MAX_INT, "limit per client"),
        "waitlist_enabled": form.get("waitlist_enabled") == "on",
        "opens_at": _form_time(form, "opens_at", "opening time"),
        "closes_at": _form_time(form, "closes_at", "closing time"),
    }
    if wanted["capacity"] is None:
        raise Refused(400, "The capacity is required.")
    if wanted["opens_at"] is not None and wanted["closes_at"] is not None \
            and wanted["opens_at"] >= wanted["closes_at"]:
        raise Refused(400, "The closing time must be after the opening time.")
    changes: dict[str, Any] = {}
    summary: list[tuple[str, Any, Any]] = []
    for name, value in wanted.items():
        now = getattr(r, name)
        if value != now:
            changes[name] = value
            shown = (lambda v: iso_or_none(v) or "none") if name in ("opens_at", "closes_at") else \
                (lambda v: "no limit" if v is None else v)
            summary.append((name, shown(now), shown(value)))
    return changes, summary


def refusal_in_words(reason: str | None, shown: int, now: int | None, changes: dict[str, Any], r: Resource) -> str:
    if reason == "VERSION_MISMATCH":
        return (f"Not changed: this page showed version {shown}, but the resource is at version {now} now: "
                "it changed after the page was loaded. Reload the page, look at the rules again, and retry.")
    if reason == "CAPACITY_BELOW_RESERVED":
        return (f"Not changed: the capacity {changes.get('capacity')} is below what is already reserved "
                f"({r.reserved}).")
    if reason == "UNKNOWN_RESOURCE":
        return "Not changed: the resource does not exist."
    return f"Not changed: the engine refused it ({reason or 'no reason given'})."
