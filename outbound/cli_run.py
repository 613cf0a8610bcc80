"""`outbound run ...` and `outbound agi`: the dialer's processes on a real PBX, each in
the foreground (systemd or docker keep them up)."""

from __future__ import annotations

import sys

import click

from .cli_common import Ctx, errors


# ---------------------------------------------------------------- run
@click.group()
def run() -> None:
    """Run the dialer's processes on a real PBX (each in the foreground)."""


@run.command("bridge")
@click.pass_obj
@errors
def run_bridge(obj: Ctx) -> None:
    """The AMI bridge for [dialer] server: originates, tracks and controls calls."""
    import asyncio
    import logging
    import signal

    import redis.asyncio as aredis

    from ami_bridge.service import Bridge

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def go() -> None:
        bridge = Bridge(obj.config, obj.factory, aredis.Redis.from_url(obj.config.redis_url))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.stop)
        await bridge.run()

    asyncio.run(go())


@run.command("agi")
@click.pass_obj
@errors
def run_agi(obj: Ctx) -> None:
    """The FastAGI server the dialplan calls on answered legs (route `classify`)."""
    import asyncio
    import logging
    import signal

    import redis.asyncio as aredis

    from agi_scripts.routes import register
    from agi_scripts.server import AgiServer

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def go() -> None:
        server = AgiServer(obj.config.get("agi", "host"), obj.config.get("agi", "port"))
        register(server, obj.factory, aredis.Redis.from_url(obj.config.redis_url), obj.config)
        port = await server.start()
        click.echo(f"FastAGI listening on {obj.config.get('agi', 'host')}:{port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    asyncio.run(go())


@run.command("web")
@click.pass_obj
@errors
def run_web(obj: Ctx) -> None:
    """The status page: the agent page at / and the JSON API, with uvicorn on [web] host
    and port (loopback by default; put a TLS proxy in front for anything else)."""
    import logging

    from status_page.app import serve

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    serve(obj.config)


_CELERY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}
# One process, one sweep at a time; no gossip/mingle/heartbeat: their fanout bindings
# vanish with a FLUSHALL and the scheduler needs none of them.
_WORKER = ("worker", "--pool=solo", "--without-gossip", "--without-mingle", "--without-heartbeat")
_BEAT = ("beat",)


@run.command("worker", context_settings=_CELERY_ARGS)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
@errors
def run_worker(obj: Ctx, celery_args: tuple[str, ...]) -> None:
    """The Celery worker that runs the scheduler's sweeps (fires due callbacks, brings
    retries back). Extra arguments go to `celery worker` (e.g. --hostname)."""
    from scheduler.app import make_app

    level = f"--loglevel={obj.config.get('log', 'level')}"
    make_app(obj.config).worker_main([*_WORKER, level, *celery_args])


@run.command("beat", context_settings=_CELERY_ARGS)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
@errors
def run_beat(obj: Ctx, celery_args: tuple[str, ...]) -> None:
    """Celery beat: sends a sweep every [scheduler] sweep_interval seconds. Extra
    arguments go to `celery beat` (e.g. --schedule FILE). Two beats are safe."""
    from scheduler.app import make_app

    level = f"--loglevel={obj.config.get('log', 'level')}"
    make_app(obj.config).start([*_BEAT, level, *celery_args])


@click.command("agi", context_settings={"ignore_unknown_options": True})
@click.argument("route", required=False)
@click.argument("call_args", nargs=-1)
@click.pass_obj
@errors
def agi(obj: Ctx, route: str | None, call_args: tuple[str, ...]) -> None:
    """One call as a classic process AGI on stdin/stdout (Asterisk starts it per call:
    ``AGI(/usr/local/bin/outbound-agi,classify)``). ROUTE defaults to agi_arg_1, else
    the script's name. Logs go to stderr; stdout is the AGI stream only. Asterisk also
    passes the AGI() arguments on the command line: CALL_ARGS are accepted and ignored,
    since the handlers read them from the AGI header (agi_arg_N)."""
    import logging

    import redis.asyncio as aredis

    from agi_scripts.process import run as run_process_agi
    from agi_scripts.routes import register

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redis = aredis.Redis.from_url(obj.config.redis_url)
    cfg = obj.config
    raise SystemExit(run_process_agi(lambda s: register(s, obj.factory, redis, cfg), route))
