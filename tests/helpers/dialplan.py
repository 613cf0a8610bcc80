"""Extra dialplan for one test in a running sandbox: appended to the instance's
extensions_sandbox_extra.conf (the sandbox's `#tryinclude`), reloaded, and put back as it
was afterwards, so the other tests of the session see the dialplan they expect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from outbound.sandbox import Sandbox


@contextmanager
def extra_dialplan(sb: Sandbox, text: str, context: str, name: str) -> Iterator[str]:
    """Add `text`; checks that `dialplan show <context>` then names `name`; yields it."""
    extra = sb.etc_dir / "extensions_sandbox_extra.conf"
    before = extra.read_text() if extra.exists() else None
    extra.write_text((before or "") + text)
    sb.cli("dialplan reload")
    assert name in sb.cli(f"dialplan show {context}")
    try:
        yield name
    finally:
        if before is None:
            extra.unlink(missing_ok=True)
        else:
            extra.write_text(before)
        sb.cli("dialplan reload")
