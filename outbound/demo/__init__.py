"""`outbound demo`: a predictive campaign on the sandbox Asterisk, worked by simulated
agents on simulated desk phones, with every product process running for real.

* ``run``: the whole demo from start to end (options, live figures, summary, cleanup);
* ``world``: the campaign, its agents and contacts, and each contact's behaviour;
* ``agents``: the simulated agents (talk, end, callback, wrap-up, mark done);
* ``stats``: the figures from the database, and Asterisk's CDR for the summary;
* ``procs``: child processes (private Redis, worker, beat, status page) and their stop.

The bridge and FastAGI server are started by the caller (``outbound.cli.start_stack``), so that
this package, like all of ``outbound``, imports none of the runtime packages.
"""

from __future__ import annotations

from .run import Options, StartStack, parse_talk, run_demo

__all__ = ["Options", "StartStack", "parse_talk", "run_demo"]
