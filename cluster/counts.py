"""The counts a gateway folds from the events it relays, kept in step with the owners' counts.

A worker's counts live in its pipeline; a gateway only sees the events, inside each frame's
track entry. It folds them per camera (since it first saw the camera, across owners) with the
same rules and the same semantics as a worker:

- **rules** follow the camera's desired spec: an unchanged rule keeps its counts, a rule
  replaced under the same id starts from zero, a removed one is forgotten (as
  ``StreamAnalytics.set_rules``);
- **resets** are numbered (the camera's ``P:{id}:reset`` counter in Redis). A track entry says
  after which reset its events were counted (``epoch``: read under the counts' lock where the
  worker added them). Events of an older reset than the fold's are not folded (the owner
  counted them before a reset this gateway already applied), a newer one restarts the fold
  first, so after a reset the fold holds exactly the relayed events the owner counts. The
  gateway that takes a reset request restarts its fold at once with the new number; the
  others restart at the first entry counted after it. A new owner (another fencing token)
  whose number is lower (Redis lost its data) becomes the new baseline: nothing is skipped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from analytics.counts import Counts
from analytics.events import Event


def _rules_of(spec: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The spec's lines and zones as id -> canonical JSON (to tell a replaced rule)."""
    return tuple(  # type: ignore[return-value]
        {str(r["id"]): json.dumps(r, sort_keys=True) for r in spec.get(kind, ())}
        for kind in ("lines", "zones")
    )


@dataclass
class _Fold:
    counts: Counts
    rules: tuple[dict[str, str], dict[str, str]] = ({}, {})
    spec: dict[str, Any] | None = None  # the spec ``rules`` were read from (by identity)
    epoch: int = -1  # the reset the fold follows (-1: none seen yet)
    token: int = -1  # the owner's fencing token of the last folded entry
    lock: threading.Lock = field(default_factory=threading.Lock)


class RelayedCounts:
    """Per-camera folds (thread-safe: the reader folds, the routes read and reset)."""

    def __init__(self) -> None:
        self._folds: dict[str, _Fold] = {}
        self._lock = threading.Lock()

    def _fold(self, cam: str, spec: dict[str, Any]) -> _Fold:
        """The camera's fold, its rules brought up to ``spec`` (a gateway replaces the spec
        object when it changes: the same object is not read again)."""
        with self._lock:
            fold = self._folds.get(cam)
            if fold is None:
                fold = self._folds[cam] = _Fold(Counts(time.time()))
        with fold.lock:
            if fold.spec is spec:
                return fold
            fold.spec = spec
            rules = _rules_of(spec)
            if fold.rules != rules:
                old = {**fold.rules[0], **fold.rules[1]}
                new = {**rules[0], **rules[1]}
                fresh = [r for r, body in new.items() if r in old and old[r] != body]
                fold.counts.set_rules(list(rules[0]), list(rules[1]), fresh)
                fold.rules = rules
        return fold

    def add(
        self, cam: str, spec: dict[str, Any], token: int, epoch: int, events: Sequence[Event]
    ) -> None:
        """Fold one relayed frame's events (counted by owner ``token`` after reset ``epoch``)."""
        fold = self._fold(cam, spec)
        with fold.lock:
            if token != fold.token and epoch < fold.epoch:  # a new owner behind: a baseline
                fold.epoch = epoch
            fold.token = token
            if epoch < fold.epoch:
                return
            if epoch > fold.epoch:
                if fold.epoch >= 0:
                    fold.counts.reset(time.time(), epoch)
                fold.epoch = epoch
            fold.counts.add(events)

    def reset(self, cam: str, spec: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Reset number ``epoch`` was asked through this gateway: restart now; returns the
        counts after it."""
        fold = self._fold(cam, spec)
        with fold.lock:
            if epoch > fold.epoch:
                fold.counts.reset(time.time(), epoch)
                fold.epoch = epoch
        return fold.counts.snapshot()

    def snapshot(self, cam: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self._fold(cam, spec).counts.snapshot()

    def keep(self, cams: Iterable[str]) -> None:
        """Forget the folds of cameras no longer desired."""
        wanted = set(cams)
        with self._lock:
            self._folds = {c: f for c, f in self._folds.items() if c in wanted}
