"""Camera ownership: one lease per camera with a fencing token, and fenced writes.

- **claim**: ``SET lease "<worker> <token>" NX PX ttl`` where ``token = INCR fence`` (raised to
  at least ``floor + 1`` so a Redis that lost its data cannot hand out an old token again); the
  claim is logged in the camera's ``claims`` stream. Atomic (one script).
- **renew** (every third of the TTL) and **release** compare the whole value first, so a worker
  can only extend or delete its own lease.
- **fenced append**: every write of results checks, inside the same script, that the lease
  still holds this worker's value before its ``XADD``: a worker that lost the lease (paused,
  partitioned, slow) gets its late writes refused, whatever its own clock believes.

All scripts touch the keys of one camera only (one hash tag): they work on Redis Cluster too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from cluster.connection import Keys

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
local value = ARGV[1] .. ' ' .. token
if not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then return false end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'worker', ARGV[1], 'token', token)
return token
"""

# 1: renewed; 0: no lease (expired); -1: someone else's lease.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then return 0 end
return -1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# ARGV: lease value, maxlen, fields per entry (n), then the entries' field/value pairs.
# Returns the number of entries appended; 0 when another worker holds the lease, -1 when
# nobody does (it expired: the writer keeps the entries until the worker claims it again).
_APPEND = """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if v ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[3])
local count = 0
for i = 4, #ARGV, n do
  local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*'}
  for j = i, i + n - 1 do args[#args + 1] = ARGV[j] end
  redis.call(unpack(args))
  count = count + 1
end
return count
"""

CLAIMS_MAXLEN = 100


@dataclass(frozen=True)
class Lease:
    """A held lease: the camera, the holder and its fencing token."""

    camera: str
    worker: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.worker} {self.token}"


def parse_value(value: bytes | str | None) -> tuple[str, int] | None:
    """``b"<worker> <token>"`` -> (worker, token); None for no lease."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    worker, _, token = text.rpartition(" ")
    return worker, int(token)


class Leases:
    """The lease scripts bound to one client and key prefix. Thread-safe (redis-py clients are)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._append = client.register_script(_APPEND)

    def claim(self, camera: str, worker: str, floor: int = 0) -> Lease | None:
        """Take the camera's lease if nobody holds it; the new token is > every earlier one."""
        k = self.keys
        token = self._claim(
            keys=[k.lease(camera), k.fence(camera), k.claims(camera)],
            args=[worker, self.ttl_ms, floor, CLAIMS_MAXLEN],
        )
        return None if token is None else Lease(camera, worker, int(token))

    def renew(self, leases: Sequence[Lease]) -> list[int]:
        """One round trip for all: 1 renewed, 0 expired (nobody holds it), -1 someone else's."""
        if not leases:
            return []
        pipe = self.client.pipeline(transaction=False)
        for lease in leases:
            self._renew(keys=[self.keys.lease(lease.camera)], args=[lease.value, self.ttl_ms],
                        client=pipe)  # fmt: skip
        return [int(r) for r in pipe.execute()]

    def release(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        pipe = self.client.pipeline(transaction=False)
        for lease in leases:
            self._release(keys=[self.keys.lease(lease.camera)], args=[lease.value], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def holders(self, cameras: Sequence[str]) -> list[tuple[str, int] | None]:
        """Who holds each camera's lease now (one MGET per hash slot group; here one MGET)."""
        if not cameras:
            return []
        values = self.client.mget([self.keys.lease(c) for c in cameras])
        return [parse_value(v) for v in values]

    def append_many(
        self,
        batches: Sequence[tuple[Lease, str, int, Sequence[Sequence[bytes | str]]]],
    ) -> list[int]:
        """Fenced appends, one script call per (lease, stream key, maxlen, entries) in one
        round trip. Each entry is a flat field/value list of the same length. Returns how many
        entries each call appended: 0 refused (another worker holds the lease), -1 refused
        for now (nobody holds it)."""
        pipe = self.client.pipeline(transaction=False)
        calls = 0
        for lease, key, maxlen, entries in batches:
            if not entries:
                continue
            width = len(entries[0])
            args: list[bytes | str | int] = [lease.value, maxlen, width]
            for entry in entries:
                args.extend(entry)
            self._append(keys=[self.keys.lease(lease.camera), key], args=args, client=pipe)
            calls += 1
        if not calls:
            return [0] * len(batches)
        results = iter(int(r) for r in pipe.execute())
        return [next(results) if entries else 0 for _, _, _, entries in batches]
