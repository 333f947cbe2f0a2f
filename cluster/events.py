"""Events stored once across gateways: each camera's ``events`` stream is read through one
consumer group (``cluster.event_group``); every gateway is a consumer of it.

Redis hands each entry to one consumer only. An entry is acknowledged (``XACK``) after
``store`` returned, so a gateway that dies between reading and storing leaves it pending; any
other gateway claims pending entries idle for longer than ``claim_idle_s`` (``XAUTOCLAIM``) and
stores them. Delivery is therefore at least once per event and, while gateways stay up,
exactly once; the gateway's store (``server.event_store``) is idempotent on (camera, stream
entry id), so the rare retry of an entry it already committed stores nothing twice.

Fan-out of events to WebSocket clients is not this: every gateway reads every event with plain
``XREAD`` (like track messages) and gives it to its hub.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

from cluster.connection import Keys
from cluster.entries import Entry, decode_entry
from pipeline.types import VigilError

StoreFn = Callable[[Sequence[tuple[bytes, Entry]]], None]  # (stream entry id, entry) pairs


class EventConsumer:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        group: str,
        consumer: str,
        store: StoreFn,
        count: int = 100,
        claim_idle_s: float = 30.0,
    ) -> None:
        self.client: Any = client  # replies are bytes; redis-py types them as unions
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.store = store
        self.count = count
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self._grouped: set[str] = set()
        self.stored = 0
        self.malformed = 0

    def _ensure_groups(self, cameras: Sequence[str]) -> None:
        for cam in cameras:
            if cam in self._grouped:
                continue
            try:  # from the stream's start: events written before any gateway came are kept
                self.client.xgroup_create(self.keys.events(cam), self.group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
            self._grouped.add(cam)

    def poll(self, cameras: Sequence[str], block_ms: int) -> int:
        """Read new events of ``cameras`` for this consumer, store them, acknowledge them.
        Returns how many were stored."""
        if not cameras:
            return 0
        self._ensure_groups(cameras)
        reply = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.keys.events(c): ">" for c in cameras},
            count=self.count,
            block=block_ms,
        )
        return self._store(reply or [])

    def reclaim(self, cameras: Sequence[str]) -> int:
        """Take over events another consumer read but never acknowledged (it died)."""
        self._ensure_groups(cameras)
        stored = 0
        for cam in cameras:
            key = self.keys.events(cam)
            reply = self.client.xautoclaim(
                key, self.group, self.consumer, self.claim_idle_ms, start_id="0-0",
                count=self.count,
            )  # fmt: skip
            stored += self._store([(key, reply[1])])
        return stored

    def _store(self, reply: Sequence[Any]) -> int:
        batch: list[tuple[bytes, Entry]] = []
        acks: dict[bytes, list[bytes]] = {}
        for key, entries in reply:
            cam = self.keys.camera_of(key)
            for entry_id, fields in entries:
                acks.setdefault(key, []).append(entry_id)
                if not fields:  # trimmed away (MAXLEN) while pending: nothing to store
                    continue
                try:
                    batch.append((entry_id, decode_entry(cam, fields)))
                except VigilError:
                    self.malformed += 1  # acknowledged too: a bad entry must not loop forever
        if batch:
            self.store(batch)  # raises -> nothing acknowledged: retried (here or elsewhere)
        if acks:
            pipe = self.client.pipeline(transaction=False)
            for key, ids in acks.items():
                pipe.xack(key, self.group, *ids)
            pipe.execute()
        self.stored += len(batch)
        return len(batch)
