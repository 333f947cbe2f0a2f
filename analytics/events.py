"""The one event schema (v1) and its encoder: every output (WebSocket, REST, the event store,
MQTT, webhooks, ``events.jsonl``) carries these same bytes.

One JSON object per event, every key always present (``null`` where it does not apply)::

    {"v":1,"type":"event","kind":"line_cross","stream":"cam1","seq":17,"frame":1234,
     "pts":41.13,"ts":1763798400.123,"rule":"door","track":12,"cls":0,"class":"person",
     "dir":"in","box":[x1,y1,x2,y2],"dwell_s":null,"count":null,"check":null,"state":null,
     "value":null,"reason":null}

- ``kind``: ``line_cross`` (``dir`` ``in``/``out``), ``zone_enter``, ``zone_spawn`` (first
  seen inside), ``zone_exit`` (``dwell_s``; ``reason`` ``left``, ``lost`` when the track ended,
  ``end`` when the source ended), ``zone_loiter`` (``dwell_s`` so far), ``zone_occupancy``
  (``count`` of class ``class`` now inside ``rule``), ``camera_health`` (``check`` ``black``,
  ``uniform``, ``frozen``, ``scene_change`` or ``drift``; ``state`` ``on``/``off``; ``value``
  the measure).
- ``seq``: the stream's event counter; ``frame``/``pts``: the source frame index and stream
  time (seconds) *when it happened* (a crossing is stamped with the first observation past the
  line, an exit with the first one outside); ``ts``: that frame's wall-clock arrival (unix s).
- ``box``: the track's ``xyxy`` source pixels at that moment (one decimal); ``cls``/``class``:
  model class id and name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

EVENT_VERSION = 1
LINE_CROSS = "line_cross"
ZONE_ENTER = "zone_enter"
ZONE_SPAWN = "zone_spawn"
ZONE_EXIT = "zone_exit"
ZONE_LOITER = "zone_loiter"
ZONE_OCCUPANCY = "zone_occupancy"
CAMERA_HEALTH = "camera_health"
EVENT_KINDS = (
    LINE_CROSS, ZONE_ENTER, ZONE_SPAWN, ZONE_EXIT, ZONE_LOITER, ZONE_OCCUPANCY, CAMERA_HEALTH,
)  # fmt: skip


@dataclass(slots=True)
class Event:
    """One analytics event (see the module docstring for the fields' meaning). Built by the
    analytics and numbered (``seq``) before they hand it out; treat it as read-only after."""

    kind: str
    stream: str
    frame: int
    pts: float
    ts: float
    rule: str | None = None
    track: int | None = None
    class_id: int | None = None
    class_name: str | None = None
    direction: str | None = None
    box: tuple[float, float, float, float] | None = None
    dwell_s: float | None = None
    count: int | None = None
    check: str | None = None
    state: str | None = None
    value: float | None = None
    reason: str | None = None
    seq: int = 0

    def as_dict(self) -> dict[str, object]:
        """The wire object (key order fixed)."""
        return {
            "v": EVENT_VERSION,
            "type": "event",
            "kind": self.kind,
            "stream": self.stream,
            "seq": self.seq,
            "frame": self.frame,
            "pts": round(self.pts, 3),
            "ts": round(self.ts, 3),
            "rule": self.rule,
            "track": self.track,
            "cls": self.class_id,
            "class": self.class_name,
            "dir": self.direction,
            "box": None if self.box is None else [round(v, 1) for v in self.box],
            "dwell_s": None if self.dwell_s is None else round(self.dwell_s, 3),
            "count": self.count,
            "check": self.check,
            "state": self.state,
            "value": None if self.value is None else _finite(round(self.value, 4)),
            "reason": self.reason,
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def encode_event(event: Event) -> bytes:
    """The v1 event as compact UTF-8 JSON, no trailing newline."""
    return json.dumps(event.as_dict(), separators=(",", ":")).encode()


def decode_event(data: bytes) -> Event:
    """The inverse of :func:`encode_event` (to the wire's rounding); ValueError if ``data`` is
    not a v1 event message."""
    try:
        d = json.loads(data)
        if d.get("v") != EVENT_VERSION or d.get("type") != "event":
            raise ValueError("not a v1 event")
        box = d.get("box")
        return Event(
            kind=str(d["kind"]),
            stream=str(d["stream"]),
            frame=int(d["frame"]),
            pts=float(d["pts"]),
            ts=float(d["ts"]),
            rule=d.get("rule"),
            track=d.get("track"),
            class_id=d.get("cls"),
            class_name=d.get("class"),
            direction=d.get("dir"),
            box=None
            if box is None
            else (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            dwell_s=d.get("dwell_s"),
            count=d.get("count"),
            check=d.get("check"),
            state=d.get("state"),
            value=d.get("value"),
            reason=d.get("reason"),
            seq=int(d.get("seq", 0)),
        )
    except (KeyError, TypeError, IndexError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed event message: {e!r}") from None
