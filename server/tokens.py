"""Short-lived session tokens: what a browser holds instead of the API key.

The dashboard asks for the key once, trades it for a token (``POST /api/session`` with the key
in a header) and forgets the key. The token is accepted wherever a key is
(``Authorization: Bearer <token>``, and on the WebSocket as the subprotocol
``vigil.token.<token>``, so it never appears in a URL or an access log); it ends after
``dashboard.token_ttl_s`` and the page trades it for a fresh one before then.

A token is signed, not stored: ``<kid>.<expiry>.<nonce>.<mac>`` where ``kid`` names the API key
that obtained it (an HMAC of the key's digest: the token does not reveal the key or its digest),
``expiry`` is unix seconds and ``mac`` is HMAC-SHA256 over the rest with the server's token
secret. So a token stays valid across a server restart and on every gateway replica that shares
``dashboard.token_secret_file`` (without one, each process draws a random secret: its tokens end
with it, and the page asks for the key again). Removing a key from the config ends its tokens at
once (its ``kid`` is no longer known). Signing out revokes a token in this process (a bounded
list of revoked tokens, each kept until it would have expired anyway).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from pipeline.config import DashboardConfig
from pipeline.types import VigilError

WS_PROTOCOL = "vigil.v1"  # the subprotocol the server selects
WS_TOKEN_PREFIX = "vigil.token."  # a second offered subprotocol carries the token
MAX_TOKEN_CHARS = 160
MAX_REVOKED = 4096


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load_secret(cfg: DashboardConfig) -> bytes:
    """The signing secret: the first line of ``token_secret_file`` (at least 32 characters), or
    32 random bytes drawn now."""
    if not cfg.token_secret_file:
        return secrets.token_bytes(32)
    try:
        lines = Path(cfg.token_secret_file).read_text().splitlines()
    except OSError as e:
        raise VigilError(
            f"dashboard: cannot read token_secret_file {cfg.token_secret_file} ({e.strerror})"
        ) from None
    secret = lines[0].strip() if lines else ""
    if len(secret) < 32:
        raise VigilError("dashboard: the token secret must be at least 32 characters")
    return secret.encode()


class SessionTokens:
    """Issues and checks signed tokens for the API keys whose SHA-256 digests are ``keys``."""

    def __init__(self, secret: bytes, ttl_s: float, keys: Iterable[bytes]) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._owners = {self._kid(d): d for d in keys}  # kid -> the key's digest
        self._revoked: OrderedDict[bytes, float] = OrderedDict()  # token digest -> expiry
        self._lock = threading.Lock()

    def _kid(self, key_digest: bytes) -> str:
        return _b64(hmac.new(self._secret, b"kid:" + key_digest, hashlib.sha256).digest()[:9])

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, owner: bytes, now: float | None = None) -> str:
        """A new token for the key whose digest is ``owner``, valid for ``ttl_s``."""
        now = time.time() if now is None else now
        kid = self._kid(owner)
        if kid not in self._owners:
            raise ValueError("not a configured key")
        payload = f"{kid}.{int(now + self.ttl_s)}.{_b64(secrets.token_bytes(12))}"
        return f"{payload}.{self._mac(payload)}"

    def owner(self, token: str | None, now: float | None = None) -> bytes | None:
        """The digest of the key behind ``token`` if it is genuine, unexpired, of a key still
        configured and not revoked; else None."""
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 3:
            return None
        payload, mac = token.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        kid, expiry, _ = payload.split(".")
        now = time.time() if now is None else now
        if not expiry.isdigit() or int(expiry) <= now:
            return None
        with self._lock:
            if hashlib.sha256(token.encode()).digest() in self._revoked:
                return None
        return self._owners.get(kid)

    def revoke(self, token: str, now: float | None = None) -> bool:
        """End a genuine token in this process; False if it was not one."""
        if self.owner(token, now) is None:
            return False
        now = time.time() if now is None else now
        expiry = float(token.split(".")[1])
        with self._lock:
            for d in [d for d, t in self._revoked.items() if t <= now]:
                del self._revoked[d]
            while len(self._revoked) >= MAX_REVOKED:
                self._revoked.popitem(last=False)
            self._revoked[hashlib.sha256(token.encode()).digest()] = expiry
        return True


def ws_token(protocols: str | None) -> tuple[str | None, bool]:
    """From a ``Sec-WebSocket-Protocol`` header: (the offered token or None, whether
    ``vigil.v1`` was offered; then the server must select it)."""
    token, offered = None, False
    for raw in (protocols or "").split(",")[:8]:
        p = raw.strip()
        if p == WS_PROTOCOL:
            offered = True
        elif p.startswith(WS_TOKEN_PREFIX) and token is None:
            token = p[len(WS_TOKEN_PREFIX) :][:MAX_TOKEN_CHARS]
    return token, offered
