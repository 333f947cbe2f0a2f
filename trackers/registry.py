"""Tracker registry: a name -> factory map, so configs and the CLI pick trackers by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.types import VigilError
from trackers.base import Tracker
from trackers.deepsort import DeepSortTracker

_REGISTRY: dict[str, Callable[..., Tracker]] = {
    "deepsort": DeepSortTracker,
}


def register(name: str, factory: Callable[..., Tracker]) -> None:
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def create_tracker(name: str, **params: Any) -> Tracker:
    """A new tracker state (call once per stream)."""
    if name not in _REGISTRY:
        raise VigilError(f"unknown tracker {name!r} (choose {', '.join(names())})")
    try:
        return _REGISTRY[name](**params)
    except TypeError as e:
        raise VigilError(f"tracker {name}: bad parameter ({e})") from None
