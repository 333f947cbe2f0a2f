"""Short-lived session tokens: what a browser holds instead of the API key.

The dashboard asks for the key once, trades it for a token (``POST /api/session`` with the key
in a header) and forgets the key. The token is accepted wherever a key is
(``Authorization: Bearer <token>``, and on the WebSocket as the subprotocol
``vigil.token.<token>``, so it never appears in a URL or an access log); it ends after
``dashboard.token_ttl_s``, and the page trades it for a fresh one before then (renewal needs a
valid token, so a stolen one dies with its lifetime unless renewed in time).

Only SHA-256 digests of tokens are kept, with the digest of the key that obtained them (the
identity the mutation rate limit counts) and their expiry; at most ``max_tokens`` live at once
(the oldest issued is dropped first), so nothing grows without bound.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict

TOKEN_BYTES = 32
WS_PROTOCOL = "vigil.v1"  # the subprotocol the server selects
WS_TOKEN_PREFIX = "vigil.token."  # a second offered subprotocol carries the token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class SessionTokens:
    """Issued tokens by digest: ``(owner key digest, expiry in monotonic seconds)``."""

    def __init__(self, ttl_s: float, max_tokens: int) -> None:
        self.ttl_s = ttl_s
        self.max_tokens = max_tokens
        self._live: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._live)

    def issue(self, owner: bytes, now: float | None = None) -> str:
        """A new token for the identity ``owner`` (a key digest), valid for ``ttl_s``."""
        now = time.monotonic() if now is None else now
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            self._expire(now)
            while len(self._live) >= self.max_tokens:
                self._live.popitem(last=False)
            self._live[_digest(token)] = (owner, now + self.ttl_s)
        return token

    def owner(self, token: str | None, now: float | None = None) -> bytes | None:
        """The owner's key digest if ``token`` is live, else None. (The lookup is by SHA-256
        of the token: timing reveals nothing about a token's text.)"""
        if not token:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            found = self._live.get(_digest(token))
            if found is None:
                return None
            if found[1] <= now:
                del self._live[_digest(token)]
                return None
            return found[0]

    def revoke(self, token: str) -> bool:
        with self._lock:
            return self._live.pop(_digest(token), None) is not None

    def _expire(self, now: float) -> None:
        # issued in order with one ttl: the expired ones are at the front
        while self._live:
            key, (_, expiry) = next(iter(self._live.items()))
            if expiry > now:
                break
            del self._live[key]


def ws_token(protocols: str | None) -> tuple[str | None, bool]:
    """From a ``Sec-WebSocket-Protocol`` header: (the offered token or None, whether
    ``vigil.v1`` was offered; then the server must select it)."""
    token, offered = None, False
    for raw in (protocols or "").split(",")[:8]:
        p = raw.strip()
        if p == WS_PROTOCOL:
            offered = True
        elif p.startswith(WS_TOKEN_PREFIX) and token is None:
            token = p[len(WS_TOKEN_PREFIX) :][:128]
    return token, offered
