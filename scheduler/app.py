"""The Celery app of the scheduler: Redis broker, one periodic task, `scheduler.sweep`.

Beat sends `scheduler.sweep` every `[scheduler] sweep_interval` seconds (1 s); a worker
runs `outbound.callbacks_fire.sweep`, which fires the due callbacks and brings due retries
into the dial queues. Nothing is ever scheduled as an ETA/countdown task: Redis
redelivers those after the visibility timeout (a callback would fire twice) and loses
them with the broker's data. Callbacks are rows in the database, claimed atomically, so:

- two beats at once (no beat lock is needed for correctness): sweeps simply run twice as
  often; two sweeps claim disjoint rows (FOR UPDATE SKIP LOCKED) and a fired callback is
  no longer PENDING, so none fires twice;
- a worker killed mid-sweep: its transaction rolls back (nothing fired) or committed (the
  next sweep republishes what it could not announce); acks_late redelivers the message,
  which is just one more sweep;
- a sweep message that waited too long (worker down) expires instead of piling up;
- FLUSHALL: the callback queues are rebuilt from the database by the next sweep; beat
  goes on sending, since Celery sends to the default queue through the anonymous direct
  exchange (no `_kombu.binding.*` key to lose), and the worker has remote control off
  (its fanout bindings would be lost).

The CLI (`outbound run worker|beat`) is the composition root that builds the app.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from outbound import callbacks_fire, callbacks_ontime
from outbound.config import Config

log = logging.getLogger(__name__)

SWEEP_TASK = "scheduler.sweep"
# A sweep hands over this long before the next one is due (beat's message is not held up).
ON_TIME_MARGIN_S = 0.05


class _Runtime:
    """The database and Redis a worker process uses, made on first use (after a fork)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @cached_property
    def factory(self) -> sessionmaker[Session]:
        from outbound.model import make_engine, session_factory

        return session_factory(make_engine(self.config.database_url))

    @cached_property
    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.config.redis_url)


def make_app(config: Config) -> Celery:
    """The app for `config`: broker `[scheduler] broker` (else `[redis] url`), the sweep
    task, and the beat schedule."""
    sched = config.values["scheduler"]
    interval = float(sched["sweep_interval"])
    budget = float(sched["sweep_budget"])
    app = Celery("outbound-scheduler", broker=config.broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # Remote control and events use fanout bindings that a FLUSHALL removes; the
        # scheduler needs neither.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": max(60.0, 3 * budget)},
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": interval,
                # A sweep not started within this time is dropped: the next one does it.
                "options": {"expires": max(5.0, 10 * interval)},
            }
        },
    )
    rt = _Runtime(config)

    # The sweep stops claiming after `sweep_budget` seconds by itself; the time limits
    # are a backstop where the pool enforces them (prefork; `run worker` uses solo).
    @app.task(
        name=SWEEP_TASK,
        acks_late=True,
        soft_time_limit=budget + 10,
        time_limit=budget + 30,
    )
    def sweep() -> dict[str, Any]:
        """Idempotent: any number of these may run, at once or again. Then, until the
        next sweep is due, callbacks coming due meanwhile are fired at their time
        (outbound/callbacks_ontime.py)."""
        started, t0 = datetime.now(UTC), time.monotonic()
        res = callbacks_fire.sweep(
            rt.factory, rt.redis, batch=int(sched["batch_size"]), budget_s=budget
        )
        more = callbacks_ontime.fire_until(
            rt.factory, rt.redis, t0 + interval - ON_TIME_MARGIN_S, int(sched["batch_size"])
        )
        summary = {
            "fired": len(res.fired) + len(more.fired),
            "waiting": res.waiting,
            "expired": res.expired,
            "cancelled": res.cancelled,
            "requeued": res.requeued,
            "published": res.published + more.published,
            "rebuilt": res.rebuilt,
            "retries": res.retries,
        }
        if any(summary.values()):
            took = (datetime.now(UTC) - started).total_seconds()
            log.info("sweep in %.3f s: %s", took, summary)
        return summary

    return app
