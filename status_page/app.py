"""The status page's JSON API as a Starlette app: `create_app(config)` wires it, `serve`
runs it with uvicorn on [web] host/port (loopback by default).

ROUTES below is the API: every mounted route comes from it, and so does /openapi.json."""

from __future__ import annotations

from typing import Any

import redis as sync_redis
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from outbound.config import Config
from outbound.model import make_engine, session_factory

from . import admin, agent, callbacks, calls, dashboard, events, metrics, pages
from .auth import LoginPolicy, Sessions
from .context import Ctx, async_twin
from .http import Call, endpoint
from .schema import Api, Field

AGENT_ID = Field(required=True, max_len=32, pattern=r"[0-9]{2,12}", description="2-12 digits")
PASSWORD = Field(required=True, max_len=1024, pattern=r".{1,1024}", description="the password")
BOOL = Field(type="boolean")


async def _openapi(c: Call) -> Any:
    return openapi_document()


def _routes() -> list[Api]:
    out = [
        Api(
            "GET",
            "/healthz",
            admin.healthz,
            "Each component (database, Redis, each bridge's AMI, the scheduler): 503 "
            "listing the degraded ones",
            auth="none",
            errors=(503,),
        ),
        Api(
            "GET",
            "/metrics",
            metrics.metrics,
            "Prometheus metrics (text format 0.0.4); [web] metrics: on, off or a bearer token",
            auth="none",
            errors=(401, 404),
            media="text/plain",
        ),
        Api("GET", "/openapi.json", _openapi, "This document", auth="none"),
        Api(
            "POST",
            "/api/login",
            agent.login,
            "Log in with agent id and password",
            auth="none",
            body={"agent_id": AGENT_ID, "password": PASSWORD},
            errors=(401, 413, 429),
        ),
        Api("POST", "/api/logout", agent.logout, "End the web session", auth="session"),
        Api(
            "POST",
            "/api/agent/session",
            agent.phone_login,
            "Desk-phone log-in: the bridge calls the phone into the agent's conference",
            errors=(409, 504),
        ),
        Api(
            "DELETE",
            "/api/agent/session",
            agent.phone_logout,
            "Desk-phone log-out",
            errors=(409, 504),
        ),
        Api(
            "POST",
            "/api/agent/ready",
            agent.ready,
            "Ready / Not Ready on a channel",
            body={
                "channel": Field(required=True, enum=("voice", "preview"), max_len=10),
                "ready": Field(type="boolean", required=True),
            },
            errors=(409, 413, 504),
        ),
        Api("GET", "/api/me", agent.me, "The agent and their live state", errors=(404,)),
        Api(
            "GET",
            "/api/campaigns",
            agent.campaigns,
            "My campaigns: status, name, delivery mode, description",
            errors=(404,),
        ),
        Api("GET", "/api/notifications", agent.notifications, "My notifications, newest first"),
        Api(
            "POST",
            "/api/notifications/{notification_id}/ack",
            agent.ack,
            "Dismiss a notification",
            errors=(404,),
        ),
        Api(
            "POST",
            "/api/campaigns/{campaign_id}/record",
            agent.record,
            "Get record (preview): the next record, leased to me",
            errors=(404, 409),
        ),
        Api(
            "GET",
            "/api/interaction",
            agent.interaction,
            "My current offer or call: case information, Origin, state",
        ),
        Api(
            "POST",
            "/api/offers/{offer_id}/dial",
            calls.offer_dial,
            "Dial the previewed record (then the bridge originates it)",
            body={"caller_id": calls.CALLER_ID},
            errors=(404, 409, 413, 504),
        ),
        Api(
            "POST",
            "/api/offers/{offer_id}/decline",
            calls.offer_decline,
            "Decline the previewed record: call later (back on top) or do not call",
            body={"choice": Field(required=True, enum=("later", "dnc"), max_len=10)},
            errors=(404, 409, 413),
        ),
        Api(
            "POST",
            "/api/offers/{offer_id}/accept",
            calls.offer_accept,
            "Accept a pushed record (push preview); dial: true dials it at once",
            body={"dial": BOOL, "caller_id": calls.CALLER_ID},
            errors=(404, 409, 413, 504),
        ),
        Api(
            "POST",
            "/api/offers/{offer_id}/reject",
            calls.offer_reject,
            "Reject a pushed record: back to the top of the list",
            errors=(404, 409),
        ),
    ]
    for action, (_, spec) in calls.ACTIONS.items():
        out.append(
            Api(
                "POST",
                f"/api/calls/{{attempt_id}}/{action}",
                calls.call_action(action),
                f"Call action: {action.replace('_', ' ')}",
                body=spec,
                errors=(404, 409, 413, 504) if spec else (404, 409, 504),
            )
        )
    out += [
        Api("POST", "/api/calls/{attempt_id}/done", calls.call_done,
            "Mark done (stop: true = done and stop)",
            body={"disposition": Field(max_len=64), "stop": BOOL}, errors=(404, 409, 413)),
        Api("POST", "/api/callbacks", callbacks.create,
            "Schedule a callback on my call or previewed record (again: replaces it)",
            body=callbacks.SCHEDULE, errors=(404, 409, 413)),
        Api("GET", "/api/callbacks", callbacks.mine, "My pending callbacks"),
        Api("DELETE", "/api/callbacks", callbacks.uncheck,
            "Uncheck 'Schedule callback' on my call or preview: cancel it, clear its error",
            query=callbacks.INTERACTION_QUERY, errors=(404, 409)),
        Api("PUT", "/api/callbacks/{callback_id}", callbacks.update,
            "Edit my pending callback while its interaction is open",
            body=callbacks.CALLBACK, errors=(404, 409, 413)),
        Api("DELETE", "/api/callbacks/{callback_id}", callbacks.remove,
            "Cancel my pending callback while its interaction is open", errors=(404, 409)),
        Api("GET", "/api/events", events.events, "My live events (server-sent events)",
            query={"last_event_id": Field(max_len=45)}, stream=True),
        Api("POST", "/api/admin/campaigns/{name}/{event}", admin.campaign_event,
            "Campaign lifecycle: load / start / stop / unload (members notified)",
            auth="supervisor", errors=(404, 409)),
        Api("GET", "/api/admin/contacts/{contact_id}/why", admin.contact_why,
            "Why is this record (not) dialing: every compliance rule", auth="supervisor",
            query={"campaign": Field(max_len=100, pattern=r"[^\x00-\x1f\x7f]{1,100}")},
            errors=(404,)),
        Api("GET", "/api/admin/dashboard", dashboard.api,
            "Supervisor dashboard: agents, calls in progress, queue depth, answer and abandon "
            "rates per campaign, callbacks due in the next hour", auth="supervisor"),
    ]  # fmt: skip
    return out


ROUTES: list[Api] = _routes()


def openapi_document() -> dict[str, Any]:
    from .schema import openapi

    return openapi(ROUTES)


def create_app(
    config: Config,
    factory: sessionmaker[Session] | None = None,
    redis: sync_redis.Redis | None = None,
) -> Starlette:
    """The API app. `factory` and `redis` default to the configured database and Redis;
    tests pass their own."""
    if factory is None:
        factory = session_factory(make_engine(config.database_url))
    if redis is None:
        redis = sync_redis.Redis.from_url(config.redis_url)
    ar = async_twin(redis)
    policy = LoginPolicy(
        attempts=int(config.get("web", "login_attempts")),
        attempts_ip=int(config.get("web", "login_attempts_ip")),
        window_s=int(config.get("web", "login_window")),
    )
    ctx = Ctx(
        config, factory, redis, ar, Sessions(ar, int(config.get("web", "session_ttl")), policy)
    )
    routes = [Route(a.path, endpoint(ctx, a), methods=[a.method]) for a in ROUTES]
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    app.add_middleware(pages.PageLayer, ctx=ctx)  # GET /, /static (not in the API)

    async def not_found(request: Any, exc: Any) -> JSONResponse:
        status = getattr(exc, "status_code", 404)
        msg = "no such route" if status == 404 else "method not allowed"
        return JSONResponse({"error": msg}, status_code=status)

    async def internal(request: Any, exc: Exception) -> JSONResponse:
        # The server still logs the traceback; the client gets no internals.
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)
    app.add_exception_handler(Exception, internal)
    app.add_middleware(dashboard.SupervisorPage, ctx=ctx)  # GET /supervisor (not in the API)
    return app


def serve(config: Config) -> None:
    """Run the API with uvicorn on [web] host and port."""
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=str(config.get("web", "host")),
        port=int(config.get("web", "port")),
        proxy_headers=False,  # the client address counts log-in failures: never trust headers
        log_level=str(config.get("log", "level")).lower(),
        # uvicorn's loggers go through the root logger that outbound.logs set up (its
        # [log] format), not uvicorn's own handlers.
        log_config=None,
    )
