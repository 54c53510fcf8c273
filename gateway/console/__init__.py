"""The web console under ``/console``: server-rendered pages (Jinja, autoescaped) with htmx, in the gateway
process, using the same services, guards and policy actions as the API. Assets are vendored in ``static/``
(htmx, uPlot, our CSS and one script); nothing is fetched from elsewhere and nothing is built at run time.

``create_app`` adds ``CONSOLE_ROUTERS`` to its route handlers and ``template_config()`` as its template config.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Router
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from gateway.authz.actions import Action
from gateway.console import account, audit, dashboard, datasets, limits, models, policies, principals, runs, signin
from gateway.console.access import PROVIDE_UI
from gateway.console.security import CONSOLE_EXCEPTION_HANDLERS, HEADERS, secure

HERE = Path(__file__).resolve().parent
STATIC_PATH = "/console/static"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    env = Environment(  # noqa: S701 (autoescape is on for every template; select_autoescape covers .html)
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


console_router = Router(
    path="/console",
    route_handlers=[*signin.ROUTES, *account.ROUTES, *dashboard.ROUTES, *principals.ROUTES, *policies.ROUTES,
                    *limits.ROUTES, *audit.ROUTES, *models.ROUTES, *datasets.ROUTES, *runs.ROUTES],
    dependencies={"ui": PROVIDE_UI},
    after_request=secure,
    exception_handlers=CONSOLE_EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    include_in_schema=False,
)

static_router = create_static_files_router(
    path=STATIC_PATH,
    directories=[HERE / "static"],
    opt={"action": Action.PUBLIC},
    name="console-static",
    include_in_schema=False,
    after_request=secure,
)

CONSOLE_ROUTERS = [console_router, static_router]
__all__ = ["CONSOLE_ROUTERS", "HEADERS", "template_config"]
