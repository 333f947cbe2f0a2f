"""Where the streams live, behind one protocol the REST routes use: this process's live
pipeline (``vigil serve``: :class:`LocalStreams`) or a cluster's desired state in Redis
(``vigil gateway``: :class:`cluster.gateway.Gateway`).

Errors a backend raises: :class:`pipeline.live.StreamConflict` (the id is taken, or no room,
including :class:`pipeline.live.OverCapacity` from admission control: HTTP 409),
:class:`BackendUnavailable` (nothing changed because a dependency is away, e.g. Redis: HTTP
503), ``KeyError`` (no such stream: HTTP 404, from the routes) and ``VigilError`` (bad rules:
HTTP 422); ``server.errors`` maps the first two and ``VigilError``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from analytics.rules import LineRule, ZoneRule
from pipeline.config import StreamConfig
from pipeline.live import LivePipeline
from pipeline.live_source import LiveStream

Rules = tuple[tuple[LineRule, ...], tuple[ZoneRule, ...]]
RuleEdit = Callable[[Rules], Rules]  # current lines and zones -> new ones (may raise)


class BackendUnavailable(Exception):
    """The backend cannot change anything now (e.g. Redis is away): HTTP 503, nothing changed."""


class StreamBackend(Protocol):
    """``add``, ``remove`` and ``stop`` may block (the app runs them off the loop); the others
    answer from memory. ``add`` raises StreamConflict when the id is taken; ``remove`` returns
    False when there is no such stream (of two racing removals exactly one gets True)."""

    def readiness(self) -> tuple[bool, str]: ...
    def has(self, stream_id: str) -> bool: ...
    def list(self) -> list[dict[str, Any]]: ...
    def status(self, stream_id: str) -> dict[str, Any] | None: ...
    def add(self, spec: StreamConfig, url: str) -> dict[str, Any]: ...
    def remove(self, stream_id: str) -> bool: ...
    def stop(self, drain_timeout_s: float) -> None: ...
    def counts(self, streams: frozenset[str] | None) -> dict[str, Any]:
        """Counts by stream id (``analytics.counts`` shape), of ``streams`` only if given."""
        ...

    def rules(self, stream_id: str) -> Rules | None:
        """The stream's lines and zones (None: no such stream)."""
        ...

    def edit_rules(self, stream_id: str, edit: RuleEdit) -> Rules:
        """Read-modify-write the stream's rules atomically: ``edit`` gets the current ones and
        returns the new ones (or raises: nothing changes); returns what was written. May block.
        KeyError: no such stream; VigilError: rules the stream cannot run."""
        ...

    def reset_counts(self, stream_id: str) -> dict[str, Any]:
        """Zero the stream's counters; returns its counts after the reset. May block.
        KeyError: no such stream (or none with analytics)."""
        ...

    def health(self, stream_id: str) -> dict[str, Any] | None:
        """The stream's camera-health checks now (``CameraHealth.report``; ``{"enabled":
        False}`` when off); None: no such stream."""
        ...


def stream_status(stream: LiveStream, rates: dict[str, float], errors: int = 0) -> dict[str, Any]:
    """One stream's REST status (``server.schema.StreamStatus``)."""
    return {
        "id": stream.spec.id,
        "url": stream.url_public,
        "state": str(stream.state),
        "last_error": stream.last_error or None,
        "last_error_at": round(stream.last_error_at, 3) if stream.last_error else None,
        "width": stream.width,
        "height": stream.height,
        "target_fps": stream.spec.fps,
        "decode_fps": round(rates.get("decode_fps", 0.0), 2),
        "infer_fps": round(rates.get("infer_fps", 0.0), 2),
        "frames_decoded": stream.frames_decoded,
        "frames_inferred": stream.frames_inferred,
        "drops": stream.slot.dropped,
        "skipped": stream.gate.skipped,
        "reconnects": stream.reconnects,
        "decode_errors": stream.decode_errors,
        "errors": errors,
        "queue_depth": stream.slot.depth,
        **capacity_status(stream),
    }


def capacity_status(stream: LiveStream) -> dict[str, Any]:
    """A stream's capacity fields: the rate its gate admits now (lower than ``target_fps`` while
    QoS degrades it), its priority, ``detect_every`` and motion gating."""
    return {
        "effective_fps": round(stream.gate.fps, 2),
        "priority": stream.spec.priority,
        "detect_every": stream.spec.detect_every,
        "motion": stream.spec.motion.enabled,
    }


def detector_counts(pipeline: LivePipeline, stream_id: str) -> dict[str, int]:
    """Frames of the stream that went through the detector and that it skipped (``predicted``:
    ``detect_every``; ``idle``: motion gating)."""
    st = pipeline.runtime(stream_id)
    c = st.schedule.counts() if st is not None else {}
    return {
        "frames_detected": c.get("detected", 0),
        "frames_predicted": c.get("predicted", 0),
        "frames_idle": c.get("idle", 0),
    }


class LocalStreams:
    """The :class:`StreamBackend` of ``vigil serve``: this process's :class:`LivePipeline`."""

    def __init__(self, pipeline: LivePipeline) -> None:
        self.pipeline = pipeline
        self._edits = threading.Lock()  # one rule edit at a time: read-modify-write

    def readiness(self) -> tuple[bool, str]:
        return self.pipeline.ready, self.pipeline.failure

    def has(self, stream_id: str) -> bool:
        return self.pipeline.get(stream_id) is not None

    def status(self, stream_id: str) -> dict[str, Any] | None:
        p = self.pipeline
        s = p.get(stream_id)
        if s is None:
            return None
        return {**stream_status(s, p.rates(stream_id), p.errors(stream_id)),
                **detector_counts(p, stream_id)}  # fmt: skip

    def list(self) -> list[dict[str, Any]]:
        p = self.pipeline
        return [
            {**stream_status(s, p.rates(s.spec.id), p.errors(s.spec.id)),
             **detector_counts(p, s.spec.id)}
            for s in p.streams()
        ]  # fmt: skip

    def add(self, spec: StreamConfig, url: str) -> dict[str, Any]:
        # add_stream checks and inserts under one lock: one of two racing adds gets
        # StreamConflict.
        # admission: a stream past the measured capacity gets OverCapacity (409) or, when its
        # min_fps allows, starts at a lower fps
        return stream_status(self.pipeline.add_stream(spec, url, admission=True), {})

    def remove(self, stream_id: str) -> bool:
        return self.pipeline.remove_stream(stream_id)

    def stop(self, drain_timeout_s: float) -> None:
        self.pipeline.stop(drain_timeout_s)

    def counts(self, streams: frozenset[str] | None) -> dict[str, Any]:
        """Each running stream's analytics counts, since its start or its last reset."""
        p = self.pipeline
        found = {s.spec.id: p.analytics(s.spec.id) for s in p.streams()}
        return {
            sid: a.counts.snapshot()
            for sid, a in found.items()
            if a is not None and (streams is None or sid in streams)
        }

    def rules(self, stream_id: str) -> Rules | None:
        a = self.pipeline.analytics(stream_id)
        return None if a is None else a.rules

    def edit_rules(self, stream_id: str, edit: RuleEdit) -> Rules:
        """Applied from the stream's next frame: an unchanged rule keeps its counts."""
        with self._edits:
            current = self.rules(stream_id)
            if current is None:
                raise KeyError(stream_id)
            lines, zones = edit(current)
            self.pipeline.set_rules(stream_id, lines, zones)  # VigilError: bad rules
            return lines, zones

    def reset_counts(self, stream_id: str) -> dict[str, Any]:
        a = self.pipeline.analytics(stream_id)
        if a is None:
            raise KeyError(stream_id)
        a.reset_counts(time.time())
        return a.counts.snapshot()

    def health(self, stream_id: str) -> dict[str, Any] | None:
        a = self.pipeline.analytics(stream_id)
        if a is None:
            return None
        return {"enabled": False} if a.health is None else a.health.report()
