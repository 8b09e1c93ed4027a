"""The operator console (/console): server-rendered pages over the engine and
the audit, served by the API process.

  session   sign-in with an operator key: the signed session cookie, CSRF, the guard,
            the sign-in rate limit
  pages     the pages (resources, one resource, actions, a request's story)
  webhooks  the webhook endpoints, their deliveries and the retry (resv.notifier.manage)
  pictures  the SVG pictures, drawn here
  errors    every failure as a page in words
  templates/, static/  Jinja2 templates, the stylesheet and the script (no CDN, no build step)

It is its own Router: its session and CSRF middleware run on /console only,
so the commit path (/reservations, ...) has nothing more to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Router
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.middleware import DefineMiddleware
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from resv.api.auth import PUBLIC, KeyRing
from resv.api.console import errors
from resv.api.console.pages import ConsoleController, SignInController
from resv.api.console.session import PATH, ConsoleCookies, ConsoleSessions, console_secret, sign_in_limit
from resv.api.console.webhooks import WebhookPages
from resv.api.settings import ApiSettings
from resv.api.times import iso_or_none

HERE = Path(__file__).resolve().parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    def tune(engine: JinjaTemplateEngine) -> None:
        engine.engine.globals["asset"] = f"{PATH}/static"
        engine.engine.globals["iso"] = lambda us: iso_or_none(us) or ""
        engine.engine.trim_blocks = True
        engine.engine.lstrip_blocks = True

    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=tune)


def console(settings: ApiSettings, keyring: KeyRing) -> tuple[list[Router], ConsoleSessions] | None:
    """The console's routers and its session checker; None when there is
    no operator key (nobody could sign in)."""
    secret = console_secret(settings)
    if secret is None:
        return None
    # The sign-in POST alone is rate-limited per client address: its
    # limiter is mounted on the sign-in controller's own router.
    sign_in: Any = SignInController
    if settings.console_sign_in_limit:
        sign_in = Router(path="/", route_handlers=[SignInController],
                         middleware=[sign_in_limit(settings.console_sign_in_limit).middleware])
    pages = Router(
        path="/",
        route_handlers=[sign_in, ConsoleController, WebhookPages],
        # the API key check (KeyRing.check) skips these: the session is their key
        opt={PUBLIC: True},
        middleware=[DefineMiddleware(ConsoleCookies, secret=secret)],
        exception_handlers=errors.HANDLERS,  # type: ignore[arg-type]
        include_in_schema=False,
    )
    assets = create_static_files_router(path=f"{PATH}/static", directories=[HERE / "static"],
                                        opt={PUBLIC: True}, include_in_schema=False,
                                        name="console-static")
    return [pages, assets], ConsoleSessions(keyring, secret)
