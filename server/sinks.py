"""What every event sink shares: a name, its counters, and the filter of what it sends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from analytics.events import Event
from pipeline.types import VigilError


@dataclass
class SinkStats:
    """Counters of one sink: events delivered (acknowledged), dropped (buffer overflow or a
    permanent refusal), failed attempts; events waiting; whether it is connected now."""

    sent: int = 0
    dropped: int = 0
    errors: int = 0
    queue: int = 0
    connected: bool = False
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors,
                "queue": self.queue, "connected": self.connected,
                "last_error": self.last_error or None}  # fmt: skip


class Sink(Protocol):
    name: str

    def start(self) -> None: ...

    def publish(self, events: Sequence[Event], data: Sequence[bytes]) -> None:
        """Buffer events (``data[i]`` the encoded ``events[i]``); never waits."""

    def close(self, timeout: float) -> None: ...

    def stats(self) -> SinkStats: ...


def wanted(
    events: Sequence[Event], data: Sequence[bytes], kinds: Sequence[str], streams: Sequence[str]
) -> list[tuple[Event, bytes]]:
    """The (event, bytes) pairs a sink configured with ``kinds``/``streams`` (empty: all) sends."""
    return [
        (e, d)
        for e, d in zip(events, data, strict=True)
        if (not kinds or e.kind in kinds) and (not streams or e.stream in streams)
    ]


def read_secret(value: str, path: str, what: str) -> str:
    """A secret from the config, or the first line of ``path``; VigilError (never the secret)
    when the file cannot be read."""
    if not path:
        return value
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise VigilError(f"{what}: cannot read {path} ({e.strerror})") from None
    return lines[0].strip() if lines else ""
