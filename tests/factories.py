"""Factories and paths every test may use; tests import from here, never from each other."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from pipeline.types import Detections, Tracks

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_CLIP = REPO / "assets" / "one-by-one-person-detection.mp4"
TINY_SIZE = 96  # input size of the tiny YOLOv5 the toolchain tests use
_T = TypeVar("_T")


def wait_until(check: Callable[[], _T], timeout: float, what: str, every: float = 0.1) -> _T:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` never happened.
    Tests wait on conditions with generous deadlines instead of sleeping and counting."""
    deadline = time.monotonic() + timeout
    last: _T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(every)
        last = check()
    return last


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data is not beside this checkout)")
    return path


def tiny_yolo() -> object:
    """A 3-class YOLOv5n with random weights (seed 0) and non-trivial BatchNorm statistics, so
    that folding and pruning both matter. Returned in eval mode."""
    import torch

    from models.yolov5 import YOLOv5

    torch.manual_seed(0)
    net = YOLOv5(nc=3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def tiny_manifest() -> object:
    """The manifest of :func:`tiny_yolo` (classes a, b, c; input :data:`TINY_SIZE`)."""
    from models.manifest import ModelManifest
    from models.yolov5 import V6_ANCHORS

    return ModelManifest(
        name="tiny",
        version="1.0.0",
        architecture={"nc": 3, "depth_multiple": 0.33, "width_multiple": 0.25},
        class_names=["a", "b", "c"],
        strides=[8, 16, 32],
        anchors_px=[[[float(v) for v in row]] for row in V6_ANCHORS],
        source_sha256="0" * 64,
        source_name="test",
        input_size=TINY_SIZE,
    )


def random_images(n: int = 6, h: int = 120, w: int = 160, seed: int = 0) -> list[np.ndarray]:
    """``n`` random ``(h, w, 3) uint8`` images."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def dets(boxes: list[list[float]] | np.ndarray, conf: float = 0.9, cls: int = 0) -> Detections:
    """Detections of one frame from xyxy rows, all with ``conf`` and class ``cls``."""
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    return Detections(xyxy, np.full(n, conf, np.float32), np.full(n, cls, np.int32))


def unit_rows(rng: np.random.Generator, n: int, d: int = 64) -> np.ndarray:
    """``(n, d) float32`` random L2-normalised rows (stand-in appearance embeddings)."""
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass
class FakeStream:
    """What the live step needs of a stream: its id, last error and inferred-frame count."""

    id: str
    last_error: str = ""
    frames_inferred: int = 0

    @property
    def stream_id(self) -> str:
        return self.id


class Exploit:
    """Pickles to a call of ``os.system`` that would create ``marker``: a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def track_frame(
    frame: int,
    boxes: dict[int, tuple[float, float, float, float]],
    fps: float = 10.0,
    cls: int | dict[int, int] = 0,
    tentative: frozenset[int] = frozenset(),
) -> Tracks:
    """The tracks of one frame from ``{track_id: (x1, y1, x2, y2)}`` (source pixels); ``cls`` is
    every track's class or one per id; ids in ``tentative`` are reported unconfirmed."""
    ids = list(boxes)
    n = len(ids)
    classes = [cls[i] if isinstance(cls, dict) else cls for i in ids]
    return Tracks(
        np.asarray([boxes[i] for i in ids], np.float32).reshape(n, 4),
        np.asarray(ids, np.int64),
        np.asarray(classes, np.int32),
        np.ones(n, np.float32),
        np.arange(n, dtype=np.int32),
        "cam",
        frame,
        frame / fps,
        np.asarray([i not in tentative for i in ids], bool),
    )


def foot_box(
    x: float, y: float, w: float = 40.0, h: float = 100.0
) -> tuple[float, float, float, float]:
    """A ``w`` x ``h`` box whose bottom centre (the default anchor) is at (x, y)."""
    return (x - w / 2, y - h, x + w / 2, y)
