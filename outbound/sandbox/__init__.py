"""Sandbox Asterisk for tests and the demo.

A real Asterisk (22 or newer) from Debian unstable, installed once per machine into a
debootstrap chroot kept in a cache folder outside the repository, then run as any number
of independent instances inside that chroot. Each instance has its own directory tree,
its own ``asterisk.conf`` (passed with ``-C``) and its own free loopback ports, so
parallel test runs never collide.

The package is split by responsibility:

* ``root``: building and caching the Debian chroot (``ensure_root``,
  ``asterisk_version``, the cache folder and its lock) and ``SandboxError``;
* ``instance``: ``Sandbox`` instances (ports, configuration, start/stop, state file),
  ``SandboxInfo`` and ``list_instances``;
* ``conf``: the configuration files from the ``asterisk_conf`` package and their
  ``@@KEY@@`` templating;
* ``probes``: free ports, pid and AMI-login checks;
* ``corpus``: the greeting corpus (espeak-ng + sox) every instance gets in
  ``sounds/corpus`` for the ``greet_<file>`` simulated contacts.

Import from here (``from outbound.sandbox import Sandbox``); the submodules are an
implementation detail.

Pure standard library plus subprocess: no panoramisk, celery or web imports here.
"""

from __future__ import annotations

from .corpus import CORPUS, CorpusFile, Greeting, ensure_corpus, load_manifest, scenario
from .instance import Sandbox, SandboxInfo, list_instances
from .probes import free_port
from .root import (
    CACHE_ENV,
    DEBIAN_MIRROR,
    MIN_MAJOR,
    PACKAGES,
    SUITE,
    Log,
    SandboxError,
    asterisk_version,
    default_cache_dir,
    ensure_root,
)
from .world import daytime_zone

__all__ = [
    "daytime_zone",
    "CACHE_ENV",
    "CORPUS",
    "CorpusFile",
    "DEBIAN_MIRROR",
    "Greeting",
    "MIN_MAJOR",
    "PACKAGES",
    "SUITE",
    "Log",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "asterisk_version",
    "default_cache_dir",
    "ensure_corpus",
    "ensure_root",
    "free_port",
    "list_instances",
    "load_manifest",
    "scenario",
]
