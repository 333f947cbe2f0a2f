"""Which stream URLs a client may ask for.

Allowed: ``rtsp://`` and ``rtsps://`` URLs with a host; ``http(s)://`` only when enabled; and
paths (files or frame folders) that resolve inside the configured media root (symlinks are
resolved first, so ``..`` and links cannot escape it). Every other scheme (``file:``,
``concat:``, ``data:``, ``pipe:``, ``subfile:``...) is refused. FFmpeg additionally gets a
protocol whitelist per kind of source (pipeline/sources.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.types import VigilError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def check_stream_url(url: str, media_root: Path, allow_http: bool) -> str:
    """Return the URL to open (a path made absolute), or raise VigilError saying why not."""
    if any(ch in url for ch in "\x00\n\r"):
        raise VigilError("stream url contains control characters")
    m = _SCHEME.match(url)
    if m:
        scheme = m.group(1).lower()
        if scheme in ("rtsp", "rtsps"):
            if not urlsplit(url).hostname:
                raise VigilError(f"{scheme} url has no host")
            return url
        if scheme in ("http", "https"):
            if not allow_http:
                raise VigilError("http(s) stream urls are disabled (server.allow_http)")
            if not urlsplit(url).hostname:
                raise VigilError(f"{scheme} url has no host")
            return url
        allowed = "rtsp, rtsps" + (", http, https" if allow_http else "")
        raise VigilError(
            f"url scheme {scheme!r} is not allowed (use {allowed}, or a path under the media root)"
        )
    root = media_root.resolve()
    path = Path(url)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise VigilError("stream path is outside the media root")
    if not path.exists():
        raise VigilError(f"stream path not found under the media root: {path.relative_to(root)}")
    return str(path)
