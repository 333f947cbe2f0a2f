"""Tracker registry: name -> (factory, parameter dataclass, config section), so configs and the
CLI pick trackers by name and each tracker's knobs are its own typed, bounded dataclass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.types import VigilError
from trackers.base import Tracker
from trackers.bytetrack import ByteTracker, ByteTrackParams
from trackers.deepsort import DeepSortParams, VectorizedDeepSort
from trackers.deepsort_reference import ReferenceDeepSort


@dataclass(frozen=True)
class TrackerSpec:
    factory: Callable[[Any], Tracker]  # called with an instance of ``params``
    params: type  # the tracker's parameter dataclass
    section: str  # its section of the config: ``tracker.<section>``
    summary: str  # one line for help texts and the README


TRACKERS: dict[str, TrackerSpec] = {
    "deepsort": TrackerSpec(
        VectorizedDeepSort,
        DeepSortParams,
        "deepsort",
        "DeepSORT over arrays: Kalman + appearance cascade + IoU (uses the embedder)",
    ),
    "deepsort-reference": TrackerSpec(
        ReferenceDeepSort,
        DeepSortParams,
        "deepsort",
        "deep-sort-realtime, the reference implementation (same knobs as deepsort; slow)",
    ),
    "bytetrack": TrackerSpec(
        ByteTracker,
        ByteTrackParams,
        "bytetrack",
        "ByteTrack: motion only, high- then low-score association (no embedder)",
    ),
}


def names() -> list[str]:
    return sorted(TRACKERS)


def spec(name: str) -> TrackerSpec:
    found = TRACKERS.get(name)
    if found is None:
        raise VigilError(f"unknown tracker {name!r} (choose {', '.join(names())})")
    return found


def create_tracker(name: str, params: Any = None) -> Tracker:
    """A new tracker state (call once per stream); ``params`` defaults to the tracker's own."""
    s = spec(name)
    if params is None:
        params = s.params()
    if not isinstance(params, s.params):
        raise VigilError(f"tracker {name}: parameters must be {s.params.__name__}")
    return s.factory(params)
