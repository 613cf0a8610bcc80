"""The agent's status page: server-rendered HTML (Jinja2, autoescape on) and its static
script and style, over the JSON API.

The page is a shell: the log-in form when the request has no session, else the agent
page with the agent's name and the session's CSRF token (in a <meta> tag, so the script
can send it in X-CSRF-Token; the cookie is httponly and never readable by the script).
Everything the agent works on comes from the JSON API at run time (static/agent.js),
which inserts every value with textContent, never as markup.

Every page answer carries a strict Content-Security-Policy (scripts only from this
origin: no inline script, so an injected <script> in data could not run even if it were
inserted as markup), X-Frame-Options DENY (no clickjacking of call controls) and
Cache-Control no-store (the page holds a CSRF token).

The page sits in front of the API as a middleware (`PageLayer`): GET / and GET /static/...
are the page's, every other request goes to the API untouched, so the API's route table
(app.routes, the OpenAPI document) stays exactly the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from outbound.agents import get_agent
from outbound.errors import NotFound

from .auth import COOKIE, Who
from .context import Ctx

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def environment() -> Environment:
    """The templates' environment: autoescape on for every template, whatever its name,
    so no value reaches the page as markup."""
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _agent(ctx: Ctx, who: Who) -> dict[str, Any] | None:
    """The logged-in agent as the page shows them; None when the agent is gone."""
    with ctx.factory() as s:
        try:
            a = get_agent(s, who.agent_id)
        except NotFound:
            return None
        return {"id": a.id, "name": a.name or a.id, "timezone": a.timezone, "role": who.role}


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def routes(ctx: Ctx) -> list[BaseRoute]:
    """The page's routes: GET / and the static files under /static."""
    env = environment()

    async def index(request: Request) -> HTMLResponse:
        who = await ctx.sessions.lookup(request.cookies.get(COOKIE))
        agent = await ctx.blocking(_agent, ctx, who) if who is not None else None
        if who is None or agent is None:
            return _html(env.get_template("login.html").render())
        page = env.get_template("agent.html").render(agent=agent, csrf_token=who.csrf)
        return _html(page)

    return [
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]


class PageLayer:
    """ASGI middleware: GET/HEAD of / and of /static/... are answered by the page, every
    other request by the API app behind it (its JSON 404 / 405 included)."""

    def __init__(self, app: ASGIApp, ctx: Ctx) -> None:
        self.api = app
        self.pages = Starlette(routes=routes(ctx))

        async def missing(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"error": "no such file"}, status_code=404)

        self.pages.add_exception_handler(404, missing)

    @staticmethod
    def is_page(scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return False
        path = scope["path"]
        return path == "/" or path.startswith("/static/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.is_page(scope):
            await self.pages(scope, receive, send)
        else:
            await self.api(scope, receive, send)
