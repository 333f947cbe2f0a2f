"""Which stream URLs a client may ask for.

Allowed: ``rtsp://`` and ``rtsps://`` URLs with a host; ``http(s)://`` only when enabled; and
paths (files or frame folders) that resolve inside the configured media root (symlinks are
resolved first, so ``..`` and links cannot escape it). Every other scheme (``file:``,
``concat:``, ``data:``, ``pipe:``, ``subfile:``...) is refused. FFmpeg additionally gets a
protocol whitelist per kind of source (pipeline/sources.py).

Control characters (tab included) are refused anywhere, and network URLs may hold no white
space at all. With ``server.allowed_hosts`` set, a network URL must name one of those hosts (as
written: a name is never resolved here, so DNS cannot widen the list) or an address inside one
of those networks: a client with a key cannot make the server probe the rest of the network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.types import VigilError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    for entry in allowed:
        entry = entry.strip().lower().rstrip(".")
        if addr is None:
            if host == entry:
                return True
            continue
        try:
            if addr in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _network_url(url: str, scheme: str, allowed_hosts: Sequence[str]) -> str:
    if any(ch.isspace() for ch in url):
        raise VigilError(f"{scheme} url contains white space")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number raises here
    except ValueError as e:
        raise VigilError(f"{scheme} url is malformed ({e})") from None
    if not host:
        raise VigilError(f"{scheme} url has no host")
    if allowed_hosts and not _host_allowed(host, allowed_hosts):
        raise VigilError(f"host {host!r} is not in server.allowed_hosts")
    return url


def check_stream_url(
    url: str, media_root: Path, allow_http: bool, allowed_hosts: Sequence[str] = ()
) -> str:
    """Return the URL to open (a path made absolute), or raise VigilError saying why not."""
    if _CONTROL.search(url):
        raise VigilError("stream url contains control characters")
    m = _SCHEME.match(url)
    if m:
        scheme = m.group(1).lower()
        if scheme in ("rtsp", "rtsps"):
            return _network_url(url, scheme, allowed_hosts)
        if scheme in ("http", "https"):
            if not allow_http:
                raise VigilError("http(s) stream urls are disabled (server.allow_http)")
            return _network_url(url, scheme, allowed_hosts)
        allowed = "rtsp, rtsps" + (", http, https" if allow_http else "")
        raise VigilError(
            f"url scheme {scheme!r} is not allowed (use {allowed}, or a path under the media root)"
        )
    root = media_root.resolve()
    path = Path(url)
    try:
        path = (path if path.is_absolute() else root / path).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a name too long...
        raise VigilError(f"stream path cannot be resolved ({type(e).__name__})") from None
    if not path.is_relative_to(root):
        raise VigilError("stream path is outside the media root")
    try:
        exists = path.exists()
    except (OSError, ValueError):
        exists = False
    if not exists:
        raise VigilError(f"stream path not found under the media root: {path.relative_to(root)}")
    return str(path)
