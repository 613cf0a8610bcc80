"""Facts of the simulated world the sandbox's contacts live in."""

from __future__ import annotations

from datetime import UTC, datetime


def daytime_zone(now: datetime | None = None) -> str:
    """A real IANA zone (Etc/GMT±N) where it is now about 13:00: inside the default
    calling hours (08:00-21:00) for the next 8 hours, whatever the UTC hour. Simulated
    contacts live there, so the demo and the tests dial under the real compliance rules
    at any time of day instead of switching the rules off."""
    hour = (now or datetime.now(UTC)).astimezone(UTC).hour
    offset = 13 - hour  # -10 .. +13, all of which exist; Etc/GMT's sign is inverted
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
