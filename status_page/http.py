"""The one request path every API route goes through: session, CSRF, role, input
validation, the handler, and domain errors mapped to HTTP statuses.

Domain errors carry no HTTP codes (DESIGN.md); this is where they get them:
NotAllowed -> 403 (an agent acting on what is not theirs), NotFound -> 404, Invalid ->
422, Conflict (an illegal state, a refused dial) -> 409, a bridge that refused the
command -> 409 with its reason, a bridge that did not answer -> 504. Every error answer is
`{"error": "..."}`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from outbound.campaigns.feedback import NotAllowed
from outbound.commands import CommandFailed, CommandTimeout
from outbound.errors import Conflict, Invalid, NotFound, OutboundError

from .auth import COOKIE, CSRF_HEADER, Who, csrf_ok
from .context import ApiError, Ctx
from .schema import PATH_PARAMS, Api, check_body

log = logging.getLogger("status_page.api")

MAX_BODY = 16 * 1024  # every body of this API is a few small fields


@dataclass
class Call:
    """One request as a handler sees it: checked input and the caller."""

    ctx: Ctx
    request: Request
    who: Who | None
    body: dict[str, Any]
    params: dict[str, str]
    query: dict[str, Any]

    @property
    def me(self) -> str:
        assert self.who is not None
        return self.who.agent_id


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def status_of(exc: OutboundError) -> int:
    if isinstance(exc, NotAllowed):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Invalid):
        return 422
    if isinstance(exc, CommandTimeout):
        return 504
    if isinstance(exc, Conflict | CommandFailed):
        return 409
    return 400


async def read_json(request: Request) -> Any:
    """The JSON body (None when empty), refusing oversized and non-JSON bodies."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return None
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(422, "send the body as application/json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "the request body is not valid JSON") from None


async def _authorize(ctx: Ctx, api: Api, request: Request) -> Who | None:
    if api.auth == "none":
        return None
    who = await ctx.sessions.lookup(request.cookies.get(COOKIE))
    if who is None:
        raise ApiError(401, "log in first")
    if api.mutating and not csrf_ok(who, request.headers.get(CSRF_HEADER)):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER} header")
    if api.auth == "supervisor" and who.role != "supervisor":
        raise ApiError(403, "supervisors only")
    return who


def _checked(api: Api, request: Request) -> tuple[dict[str, str], dict[str, Any]]:
    params = {p: PATH_PARAMS[p].check(p, request.path_params[p]) for p in api.params}
    query: dict[str, Any] = {}
    for name, f in api.query.items():
        raw = request.query_params.get(name)
        if raw is None:
            if f.required:
                raise Invalid(f"query parameter {name} is required")
            continue
        query[name] = f.check(name, raw)
    return params, query


def endpoint(ctx: Ctx, api: Api) -> Any:
    """The Starlette endpoint of one route of the table."""

    async def run(request: Request) -> Response:
        resp = await answer(request)
        # No browser may guess another type from an answer (a contact's name is data).
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    async def answer(request: Request) -> Response:
        try:
            who = await _authorize(ctx, api, request)
            params, query = _checked(api, request)
            body = check_body(api.body, await read_json(request)) if api.body is not None else {}
            out = await api.handler(Call(ctx, request, who, body, params, query))
        except ApiError as exc:
            return error(exc.status, exc.message, exc.headers)
        except OutboundError as exc:
            status = status_of(exc)
            log.info("%s %s -> %s: %s", api.method, api.path, status, exc)
            return error(status, str(exc))
        if isinstance(out, Response):
            return out
        return JSONResponse(out)

    return run
