"""Tracker registry: name -> (factory, parameter dataclass), so configs and the CLI pick
trackers by name and each tracker's knobs are its own typed, bounded dataclass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.types import VigilError
from trackers.base import Tracker
from trackers.deepsort import DeepSortParams, DeepSortTracker


@dataclass(frozen=True)
class TrackerSpec:
    factory: Callable[[Any], Tracker]  # called with an instance of ``params``
    params: type  # the tracker's parameter dataclass (``tracker.<name>`` in the config)


TRACKERS: dict[str, TrackerSpec] = {
    "deepsort": TrackerSpec(DeepSortTracker, DeepSortParams),
}


def names() -> list[str]:
    return sorted(TRACKERS)


def create_tracker(name: str, params: Any = None) -> Tracker:
    """A new tracker state (call once per stream); ``params`` defaults to the tracker's own."""
    spec = TRACKERS.get(name)
    if spec is None:
        raise VigilError(f"unknown tracker {name!r} (choose {', '.join(names())})")
    if params is None:
        params = spec.params()
    if not isinstance(params, spec.params):
        raise VigilError(f"tracker {name}: parameters must be {spec.params.__name__}")
    return spec.factory(params)
