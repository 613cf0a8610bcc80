"""The sandbox's Asterisk configuration files, from the ``asterisk_conf`` package.

``_conf_files`` reads the product snippets and the sandbox overlay as package data
(``importlib.resources``, so it works from a checkout, an editable or a wheel install);
``_render`` fills the overlay's ``@@KEY@@`` placeholders for one instance.
"""

from __future__ import annotations

import re
from importlib import resources

from .root import SandboxError


def _render(text: str, values: dict[str, str]) -> str:
    """Replace ``@@KEY@@`` placeholders (Asterisk owns ``${...}``)."""
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    left = sorted(set(re.findall(r"@@[A-Z0-9_]+@@", text)))
    if left:
        raise SandboxError(f"unknown placeholders in sandbox configuration: {left}")
    return text


def _conf_files() -> tuple[dict[str, str], dict[str, str]]:
    """The product snippets and the sandbox overlay, from the asterisk_conf package."""
    pkg = resources.files("asterisk_conf")
    product = {
        p.name: p.read_text() for p in pkg.iterdir() if p.is_file() and p.name.endswith(".conf")
    }
    overlay_dir = pkg.joinpath("sandbox")
    overlay = {
        p.name: p.read_text()
        for p in overlay_dir.iterdir()
        if p.is_file() and p.name.endswith(".conf")
    }
    if "asterisk.conf" not in overlay or "extensions_outbound.conf" not in product:
        raise SandboxError("the asterisk_conf package is incomplete (is it installed?)")
    return product, overlay
