"""API keys: stored hashed, compared in constant time, never logged; per-key rate limits.

Keys come from the config (``auth.keys``) and/or a keys file (one key per line, ``KEY=value``
lines, or ``sha256:<hex>`` digests, ``#`` comments). Only SHA-256 digests are kept in memory.
Clients present a key as ``X-API-Key: <key>``, ``Authorization: Bearer <key>``, or, for browser
WebSockets that cannot set headers, ``?token=<key>``. The dashboard trades the key for a
short-lived session token instead (server/tokens.py), accepted in the same places and as a
WebSocket subprotocol, so that no secret is put in a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from pathlib import Path

from pipeline.config import AuthConfig
from pipeline.types import VigilError


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse_entry(entry: str) -> bytes | None:
    entry = entry.strip()
    if not entry or entry.startswith("#"):
        return None
    if "=" in entry and not entry.startswith("sha256:"):
        entry = entry.split("=", 1)[1].strip().strip("'\"")
    if entry.startswith("sha256:"):
        hexpart = entry[len("sha256:") :]
        try:
            raw = bytes.fromhex(hexpart)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise VigilError("auth: a sha256: key must be 64 hex digits")
        return raw
    if len(entry) < 16:
        raise VigilError("auth: API keys must be at least 16 characters")
    return digest(entry)


class ApiKeys:
    """The set of accepted key digests. ``enabled`` is False when none are configured."""

    def __init__(self, cfg: AuthConfig) -> None:
        entries = list(cfg.keys)
        if cfg.keys_file:
            try:
                entries += Path(cfg.keys_file).read_text().splitlines()
            except OSError as e:
                msg = f"auth: cannot read keys file {cfg.keys_file} ({e.strerror})"
                raise VigilError(msg) from None
        self._digests = [d for d in (_parse_entry(e) for e in entries) if d is not None]
        self.enabled = bool(self._digests)

    @property
    def digests(self) -> tuple[bytes, ...]:
        return tuple(self._digests)

    def check(self, key: str | None) -> bool:
        """Constant-time membership test (every stored digest is compared)."""
        if key is None:
            return False
        d = digest(key)
        ok = False
        for stored in self._digests:
            ok |= hmac.compare_digest(d, stored)
        return ok


class RateLimiter:
    """Token bucket per client identity (a key digest or a peer address), bounded in size:
    beyond ``max_clients`` identities the least recently seen one is forgotten (it comes back
    with a full bucket, the same as an identity that stayed away for a minute)."""

    def __init__(self, per_minute: int, max_clients: int = 4096) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[bytes | str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._max = max_clients

    def allow(self, who: bytes | str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(who, (self.capacity, now))  # re-inserted: LRU
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            while len(self._buckets) >= self._max:
                self._buckets.pop(next(iter(self._buckets)))
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                return False
            self._buckets[who] = (tokens - 1.0, now)
            return True
