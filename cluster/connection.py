"""Reaching Redis: one client per role from ``RedisConfig``, and the key names Vigil uses.

Keys (``P`` is ``redis.key_prefix``; a camera's keys share the hash tag ``{id}`` so that every
script touching one camera stays in one Redis Cluster slot)::

    P:streams            HASH   desired state: camera id -> StreamConfig JSON
    P:streams:rev        INT    bumped on every change of the desired state
    P:{id}:lease         STRING "<worker> <token>", PX = lease TTL
    P:{id}:fence         INT    fencing token, +1 on every claim
    P:{id}:claims        STREAM who claimed the camera with which token (bounded)
    P:{id}:out           STREAM track messages (kind=track), XADD MAXLEN ~ cluster.stream_maxlen
    P:{id}:events        STREAM events (kind=event), read by a consumer group (stored once)
    P:{id}:reset         INT    counts resets asked for (the owner resets when it grows)
    P:workers            ZSET   worker -> last heartbeat (ms)
    P:worker:<node>      STRING the worker's status JSON (its cameras, their counters), with a TTL
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from pipeline.config import RedisConfig
from pipeline.types import VigilError

# Errors that mean "Redis is away for now": reconnect with backoff, never crash a thread.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.ReadOnlyError,
    OSError,
)


def node_id(configured: str, role: str) -> str:
    """``cluster.node_id`` or ``<hostname>-<role>-<pid>`` (unique per process on a host)."""
    if configured:
        return configured
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())[:40]
    return f"{host or 'host'}-{role}-{os.getpid()}"


def _password(cfg: RedisConfig) -> str | None:
    if cfg.password_file:
        try:
            lines = Path(cfg.password_file).read_text().splitlines()
        except OSError as e:
            raise VigilError(f"redis.password_file: {e.strerror}: {cfg.password_file}") from None
        return lines[0].strip() if lines else ""
    return cfg.password or None


def connect(cfg: RedisConfig) -> redis.Redis:
    """A client for ``cfg`` (lazy: nothing is sent until the first command). Responses are
    bytes. Raises VigilError for a malformed URL."""
    if not cfg.url.startswith(("redis://", "rediss://", "unix://")):
        raise VigilError(f"redis.url must start with redis://, rediss:// or unix:// ({cfg.url!r})")
    kwargs: dict[str, Any] = {
        "socket_timeout": cfg.timeout_s,
        "socket_connect_timeout": cfg.timeout_s,
        "health_check_interval": 0,
        "retry_on_timeout": False,
    }
    password = _password(cfg)
    if password is not None:
        kwargs["password"] = password
    if cfg.username:
        kwargs["username"] = cfg.username
    if cfg.url.startswith("rediss://"):
        kwargs["ssl_ca_certs"] = cfg.tls_ca_file or None
        kwargs["ssl_certfile"] = cfg.tls_cert_file or None
        kwargs["ssl_keyfile"] = cfg.tls_key_file or None
    try:
        client: redis.Redis = redis.Redis.from_url(cfg.url, **kwargs)
    except ValueError as e:
        raise VigilError(f"redis.url: {e}") from None
    return client


def redacted(url: str) -> str:
    """The URL without its userinfo (for logs and /readyz)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host = rest.rsplit("@", 1)[-1]
    return f"{scheme}://{host}"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (see the module docstring)."""

    prefix: str

    @property
    def streams(self) -> str:
        return f"{self.prefix}:streams"

    @property
    def streams_rev(self) -> str:
        return f"{self.prefix}:streams:rev"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, node: str) -> str:
        return f"{self.prefix}:worker:{node}"

    def lease(self, cam: str) -> str:
        return f"{self.prefix}:{{{cam}}}:lease"

    def fence(self, cam: str) -> str:
        return f"{self.prefix}:{{{cam}}}:fence"

    def claims(self, cam: str) -> str:
        return f"{self.prefix}:{{{cam}}}:claims"

    def out(self, cam: str) -> str:
        return f"{self.prefix}:{{{cam}}}:out"

    def events(self, cam: str) -> str:
        return f"{self.prefix}:{{{cam}}}:events"

    def reset(self, cam: str) -> str:
        return f"{self.prefix}:{{{cam}}}:reset"

    def camera_of(self, key: bytes | str) -> str:
        """The camera id inside a per-camera key."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[text.index("{") + 1 : text.index("}")]
