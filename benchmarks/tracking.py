"""Tracker cost at a given crowd size: a synthetic scene, every registered tracker, one run.

``crowd(n)`` walks ``n`` people across a 1920x1080 frame (random positions, speeds and sizes,
wrapping at the edges), each detected in 95 % of frames with a few pixels of box noise, with
one appearance per person (``dim``-d, plus noise, L2-normalised). Every tracker sees the same
frames; the figure is the median (and p95) milliseconds of ``update`` per frame after the tracks
have settled. Each tracker runs whole passes over the scene, alternating with the others
(interleaving frame by frame would charge one tracker's garbage collection to another: the
reference leaves many Python objects behind), so load from other processes falls on all alike.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.types import Detections


def crowd(n: int, frames: int, dim: int, seed: int = 0) -> list[tuple[Detections, np.ndarray]]:
    """``frames`` frames of ``n`` walkers: detections (xyxy source pixels) and embeddings."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 0], [1920, 1080], size=(n, 2))
    vel = rng.normal(0, 3, size=(n, 2))
    h = rng.uniform(80, 220, n)
    w = h * rng.uniform(0.35, 0.5, n)
    looks = rng.normal(size=(n, dim)).astype(np.float32)
    out = []
    for _ in range(frames):
        pos = (pos + vel) % [1920, 1080]
        seen = rng.random(n) < 0.95
        c = pos[seen] + rng.normal(0, 2, size=(int(seen.sum()), 2))
        half = np.stack((w[seen], h[seen]), axis=1) / 2
        xyxy = np.concatenate((c - half, c + half), axis=1).astype(np.float32)
        conf = rng.uniform(0.3, 0.95, len(xyxy)).astype(np.float32)
        dets = Detections(xyxy, conf, np.zeros(len(xyxy), np.int32))
        emb = looks[seen] + 0.1 * rng.normal(size=(len(xyxy), dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        out.append((dets, emb.astype(np.float32)))
    return out


def bench_trackers(
    names: Sequence[str],
    sizes: Sequence[int],
    dim: int,
    frames: int = 150,
    settle: int = 30,
    rounds: int = 2,
) -> list[dict[str, Any]]:
    """Rows ``{"stage": "track <name>, <n> people (<dim>-d)", median_ms, p95_ms, ...}`` per
    tracker and crowd size: ``rounds`` whole passes per tracker, alternating, frames after
    ``settle`` timed."""
    from trackers.registry import create_tracker

    rows = []
    for n in sizes:
        scene = crowd(n, frames, dim)
        times: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        live: dict[str, int] = {}
        for _ in range(rounds):  # whole passes, alternating trackers between rounds
            for name in names:
                tr = create_tracker(name)
                gc.collect()  # one tracker's garbage must not be collected on another's clock
                for i, (dets, emb) in enumerate(scene):
                    t, c = time.perf_counter(), time.process_time()
                    tr.update(dets, emb if tr.uses_appearance else None, i)
                    if i >= settle:
                        times[name].append((time.perf_counter() - t) * 1e3)
                        cpu[name].append((time.process_time() - c) * 1e3)
                live[name] = int(getattr(tr, "live_tracks", 0))
                del tr
        for name in names:
            med = statistics.median(times[name])
            rows.append(
                {
                    "stage": f"track {name}, {n} people ({dim}-d)",
                    "median_ms": round(med, 3),
                    "p95_ms": round(float(np.percentile(times[name], 95)), 3),
                    "frames_per_call": 1,
                    "fps": round(1000.0 / med, 1) if med else 0.0,
                    "live_tracks": live.get(name, 0),
                    # CPU time of the update: on a shared machine, less skewed by other loads
                    "cpu_median_ms": round(statistics.median(cpu[name]), 3),
                }
            )
    return rows
